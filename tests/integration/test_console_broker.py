"""A console replica whose broker goes away after it started says so on ``/healthz`` (503)
within a few of its broker checks, so its supervisor (a Kubernetes liveness probe) notices;
and answers 200 again once the broker is back. Before, its follower's consumer retried the
dead broker quietly and the probe stayed 200 (issue 11, item 4: broker loss is loud).

Its own embedded Tansu (not the session's), killed with SIGKILL and started again on the same
port, as in test_broker_loss.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.config import Settings
from pipeline.runtime import child_env, children, wait_http

if TYPE_CHECKING:
    from tests.plugins.stack import GetJson, ProbeJson
    from tests.plugins.waiting import WaitUntilSync

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_console_whose_broker_goes_away_answers_503_and_recovers(
    own_broker: EmbeddedBroker,
    tmp_path: Path,
    get_json: GetJson,
    probe_json: ProbeJson,
    wait_until_sync: WaitUntilSync,
) -> None:
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        kafka_bootstrap_servers=own_broker.bootstrap_servers,
        topic_prefix=f"cb{tag}.",
        app_id=f"cb-{tag}",
        data_dir=tmp_path,
        lag_interval_s=1.0,  # the console asks its broker this often
    )
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"

    with children(tmp_path / "console.log") as group:
        group.start("console", ["console"], child_env(s, PIPELINE_CONSOLE_PORT=str(port)))
        wait_http(healthz, 120, group)
        status, doc = get_json(healthz)
        assert status == 200 and doc["status"] == "ok", doc

        tansu, own_broker._proc = own_broker._proc, None  # stopped by the test, not "died"
        assert tansu is not None
        tansu.kill()
        tansu.wait()
        # A failure bound only: two missed checks at 1 s make it 503.
        status, doc = wait_until_sync(
            lambda: (got := probe_json(healthz)) is not None and got[0] == 503 and got,
            timeout_s=60,
            what="console /healthz 503 with its broker gone",
        )
        assert doc["status"] == "broker", doc
        assert own_broker.bootstrap_servers in doc["broker"], "the address it asked is named"
        group.check_alive()  # unhealthy, not crashed: the supervisor decides

        own_broker.start()  # same port
        status, doc = wait_until_sync(
            lambda: (got := probe_json(healthz)) is not None and got[0] == 200 and got,
            timeout_s=60,
            what="console /healthz 200 with its broker back",
        )
        assert doc["status"] == "ok", doc
