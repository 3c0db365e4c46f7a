"""The live workflow: the file or the config topic, the newest wins, a bad one never replaces."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.domain.workflow import Workflow
from pipeline.errors import ConfigError
from pipeline.live_workflow import LiveWorkflow, published

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit


@pytest.fixture
def to_care(kit: RouteKit) -> str:
    """The minimal workflow with loyalty questions sent to triage instead."""
    return kit.minimal.replace("department: loyalty-it", "department: triage")


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


def _target(wf: Workflow) -> str:
    return wf.rules[0].then[0].department or ""


@pytest.fixture
def live(kit: RouteKit, tmp_path: Path) -> LiveWorkflow:
    path = tmp_path / "workflow.yaml"
    _write(path, kit.minimal, 1_000_000.0)
    return LiveWorkflow(path)


def test_a_newer_publication_replaces_the_file_and_calls_listeners(
    live: LiveWorkflow,
    to_care: str,
) -> None:
    seen: list[str] = []
    live.on_change(lambda wf: seen.append(_target(wf)))
    _, record = published(to_care, "new.yaml", now=_at(1_000_100.0))
    assert live.apply(record)
    assert _target(live.current) == "triage"
    assert seen == ["triage"]
    assert live.origin == "config topic (new.yaml)"
    assert not live.apply(record), "the same text again is not a change"
    assert seen == ["triage"]


def test_a_publication_older_than_the_file_is_not_taken(live: LiveWorkflow, to_care: str) -> None:
    _, record = published(to_care, "old.yaml", now=_at(999_000.0))
    assert not live.apply(record)
    assert _target(live.current) == "loyalty-it"


def test_a_file_edited_after_the_publication_wins_again(
    kit: RouteKit,
    live: LiveWorkflow,
    to_care: str,
) -> None:
    _, record = published(to_care, "new.yaml", now=_at(1_000_100.0))
    live.apply(record)
    assert not live.poll_file(), "the file did not change"
    _write(live.path, kit.minimal.replace("name: loyalty", "name: loyalty2"), 1_000_200.0)
    assert live.poll_file()
    assert live.current.rules[0].name == "loyalty2"
    assert live.origin.startswith("file ")


def test_a_file_touched_before_the_publication_does_not_undo_it(
    kit: RouteKit,
    live: LiveWorkflow,
    to_care: str,
) -> None:
    _, record = published(to_care, "new.yaml", now=_at(1_000_100.0))
    live.apply(record)
    _write(live.path, kit.minimal, 1_000_050.0)  # e.g. restored from a backup with its old time
    assert not live.poll_file()
    assert _target(live.current) == "triage"


def test_invalid_workflows_keep_the_current_one(
    kit: RouteKit, live: LiveWorkflow, caplog: pytest.LogCaptureFixture
) -> None:
    bad = kit.minimal.replace("department: loyalty-it", "department: nowhere")
    with pytest.raises(ConfigError, match="nowhere"):
        published(bad, "bad.yaml")
    # A record that bypassed the CLI (another producer) is validated again by the worker.
    _, good = published(kit.minimal, "x.yaml", now=_at(1_000_100.0))
    forged = good.model_copy(update={"text": bad})
    assert not live.apply(forged)
    _write(live.path, "version: 1\nrules: [", 1_000_300.0)
    assert not live.poll_file()
    live.path.unlink()
    assert not live.poll_file()
    assert _target(live.current) == "loyalty-it"
    assert "keeping" in caplog.text


def test_rules_publish_refuses_an_invalid_file_before_touching_kafka(
    kit: RouteKit,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.cli import main

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text(kit.minimal.replace("kind: internal}", "kind: sideways}", 1), encoding="utf-8")
    assert main(["rules", "publish", str(bad)]) == 1
    assert "bad.yaml:3" in capsys.readouterr().err


def test_under_rules_source_topic_a_published_workflow_always_wins(
    kit: RouteKit,
    tmp_path: Path,
    to_care: str,
) -> None:
    path = tmp_path / "workflow.yaml"
    _write(path, kit.minimal, 2_000_000.0)  # e.g. an image built after the publication
    live = LiveWorkflow(path, "topic")
    _, old = published(to_care, "published.yaml", now=_at(1_000_000.0))
    assert live.apply(old) and _target(live.current) == "triage"
    _write(path, kit.minimal.replace("name: loyalty", "name: edited"), 3_000_000.0)
    assert not live.poll_file(), "file edits are ignored once the topic has spoken"
    assert _target(live.current) == "triage"
    _, older = published(kit.minimal, "older.yaml", now=_at(500_000.0))
    assert not live.apply(older), "but an older publication does not replace a newer one"


def test_under_rules_source_file_the_topic_is_ignored(
    kit: RouteKit,
    live: LiveWorkflow,
    tmp_path: Path,
    to_care: str,
) -> None:
    path = tmp_path / "only-file.yaml"
    _write(path, kit.minimal, 1_000_000.0)
    only_file = LiveWorkflow(path, "file")
    _, record = published(to_care, "new.yaml", now=_at(9_000_000.0))
    assert not only_file.apply(record) and _target(only_file.current) == "loyalty-it"
    assert live.apply(record)  # the default ("newest") takes it


def test_under_rules_source_topic_the_same_text_published_still_pins_the_topic(
    kit: RouteKit,
    tmp_path: Path,
    to_care: str,
) -> None:
    path = tmp_path / "workflow.yaml"
    _write(path, kit.minimal, 2_000_000.0)
    live = LiveWorkflow(path, "topic")
    _, same = published(kit.minimal, "same.yaml", now=_at(1_000_000.0))
    assert live.apply(same) and live.origin == "config topic (same.yaml)"
    _write(path, to_care, 3_000_000.0)
    assert not live.poll_file() and _target(live.current) == "loyalty-it"
