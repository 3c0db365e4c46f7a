"""Administrators change the workflow: running workers follow it; replay shows the difference."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.events import Outcome, SubRequest, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import Children
from pipeline.topics import task_topic

if TYPE_CHECKING:
    from tests.plugins.stack import GetText, RunningStack, Telegram
    from tests.plugins.topics import Records
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration

Routed = Callable[[Settings, int, int, str], Awaitable[Outcome]]

LOYALTY = "    then: [{type: internal, department: loyalty-it}]\n"
TO_CARE = "    then: [{type: internal, department: customer-care}]\n"
TO_BONUS_DESK = "    then: [{type: internal, department: bonus-desk}]\n"
NEW_DEPARTMENT = (
    "departments:\n"
    "  bonus-desk: {kind: internal, title: {ru: Бонусы, en: Bonuses}, "
    "hours: {timezone: Europe/Moscow}}\n"
)


@pytest.fixture
def live_stack(
    broker_settings: Settings, outbox: Outbox, tmp_path: Path, running_stack: RunningStack
) -> Iterator[tuple[Settings, Children, Path]]:
    rules = tmp_path / "workflow.yaml"
    shutil.copy(broker_settings.rules_path, rules)
    base = broker_settings.model_copy(update={"rules_path": rules})
    with running_stack(base, outbox, "rl") as (stack, group):
        yield stack, group, rules


def _cli(stack: Settings, rules: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap_servers or "",
        PIPELINE_TOPIC_PREFIX=stack.topic_prefix,
        PIPELINE_RULES_PATH=str(rules),
    )
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _workflow_sha(get_text: GetText, stack: Settings) -> str:
    """The sha256 of the workflow the worker runs (from its /healthz)."""
    _, body = get_text(f"http://{stack.web_host}:{stack.web_port}/healthz")
    return str(json.loads(body)["workflow"]["sha256"])


@pytest.fixture
def routed(telegram: Telegram, records: Records) -> Routed:
    """``await routed(stack, chat, n, text)``: send a Telegram message; its outcome."""

    async def _routed(stack: Settings, chat: int, n: int, text: str) -> Outcome:
        status, _ = telegram(stack, chat, n, text)
        assert status == 200
        mid = derive_id("msg", "telegram", f"{chat}:{n}")
        return await records.first(
            stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id == mid
        )

    return _routed


async def test_workers_follow_a_changed_workflow_and_replay_shows_it(
    live_stack: tuple[Settings, Children, Path],
    routed: Routed,
    get_text: GetText,
    wait_until: WaitUntil,
) -> None:
    stack, _, rules = live_stack
    start = datetime.now(UTC) - timedelta(seconds=5)
    chat = 6_000_000 + int(uuid.uuid4().int % 100_000)
    text = "Мне не начислили бонусы на карту лояльности за покупку"
    before = await routed(stack, chat, 1, text)
    assert before.departments == ["loyalty-it"]

    original = rules.read_text(encoding="utf-8")
    assert LOYALTY in original
    new_rules = rules.with_name("new-workflow.yaml")
    new_rules.write_text(original.replace(LOYALTY, TO_CARE), encoding="utf-8")
    shutil.copy(new_rules, rules)
    want = hashlib.sha256(new_rules.read_bytes()).hexdigest()
    await wait_until(  # the workers check the file every 5 s
        lambda: _workflow_sha(get_text, stack) == want,
        timeout_s=60,
        what="the worker running the changed workflow file",
    )
    after = await routed(stack, chat + 1, 1, text)
    assert after.departments == ["customer-care"], after

    # Replay the traffic since the start against the ORIGINAL rules as "new": the loyalty
    # message would move back from customer-care to loyalty-it.
    old_rules = rules.with_name("old-workflow.yaml")
    old_rules.write_text(original, encoding="utf-8")
    proc = _cli(
        stack,
        rules,
        "rules",
        "replay",
        "--from",
        start.isoformat(),
        "--rules",
        str(old_rules),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["messages"] >= 2
    assert report["after"].get("loyalty-it", 0) > report["before"].get("loyalty-it", 0)
    assert report["changed"] >= 2


async def test_a_workflow_published_to_the_config_topic_reaches_the_running_worker(
    live_stack: tuple[Settings, Children, Path],
    routed: Routed,
    records: Records,
    get_text: GetText,
    wait_until: WaitUntil,
) -> None:
    stack, _, rules = live_stack
    start = datetime.now(UTC) - timedelta(seconds=5)
    chat = 6_500_000 + int(uuid.uuid4().int % 100_000)
    text = "Мне не начислили бонусы на карту лояльности за покупку"
    assert (await routed(stack, chat, 1, text)).departments == ["loyalty-it"]

    # A department the worker has never heard of, in a file the worker cannot see.
    original = rules.read_text(encoding="utf-8")
    assert LOYALTY in original and "departments:\n" in original
    published = rules.parent / "published" / "workflow.yaml"
    published.parent.mkdir()
    published.write_text(
        original.replace(LOYALTY, TO_BONUS_DESK).replace("departments:\n", NEW_DEPARTMENT, 1),
        encoding="utf-8",
    )
    broken = rules.parent / "broken.yaml"
    broken.write_text(original.replace(LOYALTY, TO_BONUS_DESK), encoding="utf-8")
    refused = _cli(stack, rules, "rules", "publish", str(broken))
    assert refused.returncode == 1 and "bonus-desk" in refused.stderr, refused.stderr

    proc = _cli(stack, rules, "rules", "publish", str(published))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert stack.topic("config") in proc.stdout
    want = hashlib.sha256(published.read_bytes()).hexdigest()
    assert want[:12] in proc.stdout
    await wait_until(  # the worker follows the config topic as it is written
        lambda: _workflow_sha(get_text, stack) == want,
        timeout_s=60,
        what="the worker running the published workflow",
    )
    after = await routed(stack, chat + 1, 1, text)
    assert after.departments == ["bonus-desk"], after
    mid = derive_id("msg", "telegram", f"{chat + 1}:1")
    task = await records.first(
        stack, task_topic(stack, "bonus-desk"), SubRequest, lambda s: s.message_id == mid
    )
    assert task.department == "bonus-desk"

    # `rules current` says what the workers run, and gives back the published YAML to edit.
    current = _cli(stack, rules, "rules", "current", "--json")
    assert current.returncode == 0, current.stderr[-2000:]
    info = json.loads(current.stdout.strip().splitlines()[-1])
    assert info["sha256"] == want and info["origin"].startswith("config topic")
    yaml_text = _cli(stack, rules, "rules", "current", "--yaml").stdout
    assert yaml_text == published.read_text(encoding="utf-8")

    # `rules replay` compares against what the workers run (the published workflow), not the
    # file: the file would have sent both messages to loyalty-it.
    replay = _cli(stack, rules, "rules", "replay", "--from", start.isoformat(), "--json")
    assert replay.returncode == 0, replay.stderr[-2000:]
    report = json.loads(replay.stdout.strip().splitlines()[-1])
    assert report["before"].get("bonus-desk", 0) >= 2, report
