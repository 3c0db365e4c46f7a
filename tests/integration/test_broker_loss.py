"""A broker that dies and comes back empty: no 2xx for a message that is not stored afterwards.

Its own embedded Tansu (not the session's), killed with SIGKILL and started again on the same
port — in memory, so it comes back without topics, offsets or groups, like a Kafka cluster
whose topics were deleted and auto-created again. What ingest acknowledged before the kill
is gone with the broker's memory (that is Tansu's nature, docs/ARCHITECTURE.md, Broker); what it
acknowledges afterwards must be readable, and ingest and the worker must say they are
unhealthy, and the worker must stop when told to.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import TYPE_CHECKING

import pytest

from pipeline import bus
from pipeline.codec import decode
from pipeline.errors import DecodeError
from pipeline.events import InboundMessage, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import Children, child_env, departments, wait_http

if TYPE_CHECKING:
    from tests.plugins.stack import GetJson, GetText, OwnBroker, Telegram
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration


async def test_after_the_broker_lost_its_data_nothing_is_acknowledged_into_the_void(
    own_broker: OwnBroker,
    outbox: Outbox,
    telegram: Telegram,
    wait_until: WaitUntil,
    get_json: GetJson,
    get_text: GetText,
) -> None:
    broker, s = own_broker.broker, own_broker.settings
    await bus.ensure_topics(s, departments=departments(s))
    # child_env passes the broker and ports; these two are the test's own.
    with_env = child_env(
        s, **outbox.env(), PIPELINE_PRODUCE_TIMEOUT_S="3", PIPELINE_SHUTDOWN_GRACE_S="10"
    )
    group = Children()
    try:
        group.start("ingest", ["ingest"], with_env)
        group.start("worker", ["worker"], with_env)
        ingest = f"http://{s.ingest_host}:{s.ingest_port}/healthz"
        worker = f"http://{s.web_host}:{s.web_port}/healthz"
        wait_http(ingest, 60, group)
        # Ready: partitions assigned and tables recovered (a failure bound: the model may be
        # trained first). /healthz alone answers while Faust is still starting.
        wait_http(f"http://{s.web_host}:{s.web_port}/readyz", 600, group)
        name, proc = group.procs[1]
        assert name == "worker"

        def loud() -> bool:
            # Unhealthy on its probe, or ended (a supervisor restarts it either way).
            try:
                return proc.poll() is not None or get_json(worker)[0] == 503
            except OSError:  # it was ending while asked
                return proc.poll() is not None

        chat = 7_000_000 + int(uuid.uuid4().int % 900_000)
        for n in range(1, 9):  # every partition of inbound has records before the loss
            status, _ = telegram(s, chat + n, 1, "Где мой заказ?")
            assert status == 200
        # Processed and committed, and the worker saw the group's commits on the broker.
        committed = f'pipeline_consumer_committed{{topic="{s.topic("inbound")}"}} 8.0'
        metrics = f"http://{s.web_host}:{s.web_port}/metrics"
        await wait_until(
            lambda: committed in get_text(metrics)[1], timeout_s=300, what="8 inbound commits"
        )

        own_broker.kill()
        await wait_until(loud, timeout_s=120, what="worker /healthz 503 (or the worker ended)")
        broker.start()  # same port, empty
        # The topics come back empty too (an operator's create-topics, a worker's start): the
        # case where a produce succeeds again and an ack could go into the void.
        await bus.ensure_topics(s, departments=departments(s))

        accepted: list[str] = []
        refused = 0
        for n in range(9, 41):
            status, _ = telegram(s, chat + n, 1, "Не пришёл возврат денег.")
            if status == 200:
                accepted.append(derive_id("msg", "telegram", f"{chat + n}:1"))
            else:
                assert status == 503, status
                refused += 1
        assert refused > 0  # the loss was noticed, not acknowledged through
        assert get_json(ingest)[0] == 503
        stored: set[str] = set()
        for r in await bus.read_all(s, [s.topic("inbound")], idle_s=2.0):
            try:
                stored.add(decode(InboundMessage, r.value).message_id)
            except DecodeError:
                continue
        assert set(accepted) <= stored, sorted(set(accepted) - stored)

        # The worker stays unhealthy with the broker back: its tables and offsets went with
        # the broker's memory. Asked after the group's commits were seen gone (sticky).
        def lost() -> bool:
            try:
                return proc.poll() is not None or "lost" in str(get_json(worker)[1])
            except OSError:
                return proc.poll() is not None

        await wait_until(lost, timeout_s=120, what="the worker to see the broker lost its commits")
        assert loud()

        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        # A failure bound well above shutdown_grace_s: the watchdog ends a stuck stop.
        code = await asyncio.to_thread(proc.wait, 120)
        assert code is not None
    finally:
        group.stop()
