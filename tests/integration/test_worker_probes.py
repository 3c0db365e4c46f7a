"""The worker's probes as Kubernetes uses them (deploy/k8s/base/worker.yaml): liveness on
/healthz, readiness on /readyz, which answers 503 while the worker joins its group and recovers
its tables and turns 200 once it holds its partitions and has recovered them. The starting
worker also shows its log in JSON lines (``PIPELINE_LOG_FORMAT=json``), Faust's own included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.config import Settings
from pipeline.runtime import child_env, children

if TYPE_CHECKING:
    from tests.plugins.stack import GetJson, ProbeJson, ProbeUntil, StackSettings
    from tests.plugins.waiting import WaitUntilSync

pytestmark = pytest.mark.integration


def test_worker_turns_ready_after_recovery_and_stays_live(
    stack: Settings, get_json: GetJson, probe_until: ProbeUntil
) -> None:
    base = f"http://{stack.web_host}:{stack.web_port}"
    doc = probe_until(f"{base}/readyz", 200, timeout_s=120, what="/readyz answering 200")
    assert doc == {"status": "ready", "rebalancing": False, "in_recovery": False, "recovered": True}
    status, health = get_json(f"{base}/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["assigned_partitions"] > 0


def test_a_starting_worker_answers_503_until_recovered_and_logs_json_lines(
    broker_settings: Settings,
    stack_settings: StackSettings,
    tmp_path: Path,
    probe_json: ProbeJson,
    wait_until_sync: WaitUntilSync,
) -> None:
    s = stack_settings(broker_settings, "rz")
    readyz = f"http://{s.web_host}:{s.web_port}/readyz"
    seen: list[tuple[int, Any]] = []

    def answer() -> tuple[int, Any] | None:
        got = probe_json(readyz)
        if got is None:
            return None  # not listening yet
        seen.append(got)
        return got if got[0] == 200 else None

    log_path = tmp_path / "worker.log"
    with children(log_path) as group:
        group.start("worker", ["worker"], child_env(s, PIPELINE_LOG_FORMAT="json"))
        # The web server starts before the consumer joins its group (Faust's boot order), and
        # a new group's first join alone takes seconds: the first answers are 503.
        wait_until_sync(answer, timeout_s=600, what="/readyz answering 200", interval_s=0.05)
    status, doc = seen[0]
    assert status == 503, seen[:3]
    assert doc["status"] == "recovering" and doc["recovered"] is False, doc
    assert seen[-1] == (
        200,
        {"status": "ready", "rebalancing": False, "in_recovery": False, "recovered": True},
    )
    lines = log_path.read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines]  # every line the worker wrote is one JSON object
    assert docs and all({"time", "level", "logger", "message"} <= d.keys() for d in docs)
    assert any(d["logger"].startswith(("faust", "mode")) for d in docs), "Faust's own lines too"
    assert any(d["message"] == "event loop: uvloop" for d in docs), "the default loop"


def test_a_worker_not_ready_for_longer_than_the_recovery_timeout_is_unhealthy(
    broker_settings: Settings,
    stack_settings: StackSettings,
    tmp_path: Path,
    get_json: GetJson,
    probe_until: ProbeUntil,
) -> None:
    # A worker stuck joining or restoring is 503 on /readyz, which only keeps it out of a
    # rollout: /healthz must say so too once that lasts, or nothing restarts it. The timeout is
    # tiny here, so the worker's own first join (seconds on a new group) outlasts it.
    s = stack_settings(broker_settings, "rt")
    base = f"http://{s.web_host}:{s.web_port}"
    with children(tmp_path / "worker.log") as group:
        group.start("worker", ["worker"], child_env(s, PIPELINE_RECOVERY_TIMEOUT_S="0.01"))
        doc = probe_until(
            f"{base}/healthz",
            503,
            timeout_s=600,  # a failure bound: the model may be trained first
            what="/healthz answering 503 while not ready",
            interval_s=0.05,
        )
        assert doc["status"] == "recovering" and "not ready for" in doc["recovery"], doc
        probe_until(f"{base}/readyz", 200, timeout_s=600, what="/readyz answering 200")
        # Ready: the clock stopped, and a live worker is healthy again.
        status, health = get_json(f"{base}/healthz")
        assert status == 200 and health["status"] == "ok", health
        assert "recovery" not in health
