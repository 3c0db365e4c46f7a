"""The worker's probes as Kubernetes uses them (deploy/k8s/base/worker.yaml): liveness on
/healthz, readiness on /readyz, which turns 200 once the worker holds its partitions and has
recovered its tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings

if TYPE_CHECKING:
    from tests.plugins.stack import GetJson
    from tests.plugins.waiting import WaitUntilSync

pytestmark = pytest.mark.integration


def test_worker_turns_ready_after_recovery_and_stays_live(
    stack: Settings, get_json: GetJson, wait_until_sync: WaitUntilSync
) -> None:
    base = f"http://{stack.web_host}:{stack.web_port}"
    status, doc = wait_until_sync(
        lambda: (got := get_json(f"{base}/readyz"))[0] == 200 and got,
        timeout_s=120,
        what="/readyz answering 200",
    )
    assert doc == {"status": "ready", "rebalancing": False, "in_recovery": False, "recovered": True}
    status, health = get_json(f"{base}/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["assigned_partitions"] > 0
