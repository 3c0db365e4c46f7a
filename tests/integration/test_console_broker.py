"""A console replica whose broker goes away after it started says so on ``/healthz`` (503)
within a few of its broker checks, so its supervisor (a Kubernetes liveness probe) notices;
and answers 200 again once the broker is back. Before, its follower's consumer retried the
dead broker quietly and the probe stayed 200 (issue 11, item 4: broker loss is loud).

Its own embedded Tansu (not the session's), killed with SIGKILL and started again on the same
port, as in test_broker_loss.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.broker import free_port
from pipeline.runtime import child_env, children, wait_http

if TYPE_CHECKING:
    from tests.plugins.stack import GetJson, OwnBroker, ProbeUntil

pytestmark = pytest.mark.integration


def test_a_console_whose_broker_goes_away_answers_503_and_recovers(
    own_broker: OwnBroker, tmp_path: Path, get_json: GetJson, probe_until: ProbeUntil
) -> None:
    s = own_broker.settings  # lag_interval_s=1: the console asks its broker every second
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"

    with children(tmp_path / "console.log") as group:
        group.start("console", ["console"], child_env(s, PIPELINE_CONSOLE_PORT=str(port)))
        wait_http(healthz, 120, group)
        status, doc = get_json(healthz)
        assert status == 200 and doc["status"] == "ok", doc

        own_broker.kill()
        # A failure bound only: two missed checks at 1 s make it 503.
        doc = probe_until(healthz, 503, timeout_s=60, what="console /healthz 503, broker gone")
        assert doc["status"] == "broker", doc
        assert own_broker.broker.bootstrap_servers in doc["broker"], "the address it asked"
        group.check_alive()  # unhealthy, not crashed: the supervisor decides

        own_broker.broker.start()  # same port
        doc = probe_until(healthz, 200, timeout_s=60, what="console /healthz 200, broker back")
        assert doc["status"] == "ok", doc
