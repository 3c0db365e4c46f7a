"""A restore cut short restores everything (invariant 3; docs/ARCHITECTURE.md, Recovery):
the worker killed (SIGKILL) in the middle of it and started again, or the broker stopped
(SIGSTOP) for longer than the group session in the middle of it and resumed. Then the
customers' messages read again are decided as before and answered no more (dedup and
customer-cases restored), and their replies read again are dropped (the delivered ids
restored).

The tables live in memory, so every start restores them from their changelogs' start, after
fencing them (``RouterRecovery``). Filler records on the delivered-replies changelog make the
restore last long enough to be cut in; the test asserts that the kill or the pause came after
the restore began and before it completed, so it cannot pass without testing that.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline import bus
from pipeline.config import Settings
from pipeline.events import DeliveryReceipt, InboundMessage, Outcome, Reply, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import child_env, children, departments, wait_http

if TYPE_CHECKING:
    from tests.plugins.stack import Deliveries, OwnBroker, StackSettings, Telegram
    from tests.plugins.topics import Records
    from tests.plugins.waiting import Patience, WaitUntil

pytestmark = pytest.mark.integration

MESSAGES = 12
#: Records written straight to the delivered-replies changelog before the restart (other
#: keys than the customers'): a restore of a few seconds on this machine.
FILLER = 60_000
#: How long the broker answers nothing: longer than the group session (6 s in the tests).
PAUSE_S = 10.0
#: What ``RouterRecovery`` logs as a restore starts, and once it is over.
RESTORING = b"Restoring state from changelog topics..."
COMPLETE = b"Recovery complete"
TEXTS = [
    "Где мой заказ? Жду уже неделю.",
    "I want to cancel my order, please.",
    "Не пришёл возврат денег за товар.",
    "How do I change my shipping address?",
]


class Log:
    """The children's shared log, read from a point on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = 0

    def mark(self) -> None:
        """Later reads see only what is written from now on."""
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def since(self) -> bytes:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read()


async def write_filler(stack: Settings, n: int) -> None:
    """``n`` delivered-ids values of 2,000 other keys, as ``notify.agents._marked`` writes
    them (a JSON string in the table's value encoding)."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        topic = f"{stack.app_id}-delivered-replies-changelog"
        value = orjson.dumps(orjson.dumps({"at": 0.0, "ids": ["reply_filler"]}).decode())
        futures = [
            await producer.send(topic, value=value, key=f"filler-{i % 2000}".encode())
            for i in range(n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Fault:
    """What happens to the restore: the worker is killed (``broker`` None), or the test's own
    broker stops answering."""

    settings: Settings
    broker: OwnBroker | None = None


@pytest.fixture(params=["worker-killed", "broker-paused"])
def fault(
    request: pytest.FixtureRequest, broker_settings: Settings, stack_settings: StackSettings
) -> Fault:
    """Topics, a consumer group and ports of the test's own; with the broker paused, on a
    broker of the test's own too."""
    if request.param == "worker-killed":
        return Fault(stack_settings(broker_settings, "rk"))
    own: OwnBroker = request.getfixturevalue("own_broker")
    asyncio.run(bus.ensure_topics(own.settings, departments=departments(own.settings)))
    return Fault(own.settings, own)


async def test_a_restore_cut_short_restores_everything(
    fault: Fault,
    outbox: Outbox,
    telegram: Telegram,
    records: Records,
    deliveries: Deliveries,
    patience: Patience,
    wait_until: WaitUntil,
    tmp_path: Path,
) -> None:
    stack = fault.settings
    chat0 = 6_000_000 + int(uuid.uuid4().int % 900_000) * 100
    chats = [chat0 + n for n in range(MESSAGES)]
    mids = {derive_id("msg", "telegram", f"{chat}:1") for chat in chats}
    wanted = {str(chat) for chat in chats}
    log = Log(tmp_path / "stack.log")
    env = child_env(stack, **outbox.env())
    healthz = f"http://{stack.web_host}:{stack.web_port}/healthz"

    with children(log.path) as group:
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{stack.ingest_host}:{stack.ingest_port}/healthz", 60, group)
        group.start("worker", ["worker"], env)
        wait_http(healthz, 600, group)  # a failure bound (model loading), not a timing check
        for n, chat in enumerate(chats):
            status, _ = telegram(stack, chat, 1, TEXTS[n % len(TEXTS)])
            assert status == 200
        inbound = await records.settled(
            stack, stack.topic("inbound"), InboundMessage, lambda m: m.message_id in mids, MESSAGES
        )
        # Every reply delivered and its mark durable (the receipt follows the mark's ack).
        replies = await records.settled(
            stack,
            stack.topic("replies"),
            Reply,
            lambda r: r.message_id in mids,
            lambda seen: {r.message_id for r in seen} >= mids,
        )
        reply_ids = {r.reply_id for r in replies}
        receipts = stack.topic("deliveries")
        await records.settled(
            stack,
            receipts,
            DeliveryReceipt,
            lambda r: r.delivery_id in reply_ids,
            lambda seen: {r.delivery_id for r in seen} >= reply_ids,
        )
        group.kill("worker")
        await write_filler(stack, FILLER)
        # The dead member's session ends first (Tansu does not rebalance a live member when a
        # dead one's session expires; tests/integration/test_restart.py).
        await asyncio.sleep(stack.session_timeout_s + 2)

        # Started again, and the worker killed or the broker paused while it restores.
        log.mark()
        group.start("worker", ["worker"], env)
        await wait_until(
            lambda: RESTORING in log.since(),
            timeout_s=patience.timeout_s,
            what="the restore to start",
            interval_s=0.01,
        )
        if fault.broker is None:
            group.kill("worker")
            assert COMPLETE not in log.since(), "the restore was over before the kill"
            # Once more (after the dead member's session): the whole restore.
            await asyncio.sleep(stack.session_timeout_s + 2)
            group.start("worker", ["worker"], env)
        else:
            with fault.broker.paused():
                assert COMPLETE not in log.since(), "the restore was over before the pause"
                await asyncio.sleep(PAUSE_S)
        wait_http(healthz, 600, group)
        # The customers' messages and their replies read again, as after a crash before their
        # offsets were committed (ingest itself drops a platform's retry of a message it
        # accepted recently).
        pub = bus.Publisher(stack)
        try:
            for message in {m.message_id: m for m in inbound}.values():
                await pub.send(stack.topic("inbound"), message.customer_id, message)
            for reply in {r.reply_id: r for r in replies}.values():
                await pub.send(stack.topic("replies"), reply.customer_id, reply)
        finally:
            await pub.close()
        outcomes = await records.settled(
            stack,
            stack.topic("outcomes"),
            Outcome,
            lambda o: o.message_id in mids,
            lambda seen: Counter(o.message_id for o in seen) >= Counter({m: 2 for m in mids}),
        )
        skipped = await records.settled(
            stack,
            receipts,
            DeliveryReceipt,
            lambda r: r.delivery_id in reply_ids and r.status == "skipped_duplicate",
            lambda seen: {r.delivery_id for r in seen} >= reply_ids,
        )
        delivered = await deliveries.settled(lambda i: i.to in wanted, enough=len(wanted))

    # Each message decided again (a replay repeats its Outcome), the same way.
    assert Counter(o.message_id for o in outcomes) >= Counter({m: 2 for m in mids})
    decisions = {(o.message_id, o.outcome, o.case_id) for o in outcomes}
    assert {m for m, _, _ in decisions} == mids and len(decisions) == len(mids), decisions
    assert {r.delivery_id for r in skipped} == reply_ids  # every reply's mark was restored
    twice = {k: v for k, v in Counter((i.to, i.text) for i in delivered).items() if v > 1}
    assert twice == {}, f"{len(twice)} replies sent more than once: {list(twice)[:3]}"
    assert {i.to for i in delivered} == wanted
