"""Two workers, one SIGKILLed under load, a replacement joins: nothing is sent twice that
the delivered-ids table knew of.

Invariant 3 across rebalances (docs/ARCHITECTURE.md, Invariants; Recovery): the survivor takes
over the dead worker's partitions and, later, hands some to the replacement; both restore the
delivered-ids table from its changelog (from a standby copy kept up to date, or, without
one, from the changelog's start). The outbox is counted once the topics and the outbox
are quiet.

One window is documented and cannot be closed against a platform that has no idempotency key
(``DeliveryLoop``): a worker killed between the platform's answer and its mark's ack leaves no
mark, and the new owner sends that reply again. So a reply sent twice is allowed only if no
mark of it made before the kill is on the changelog (a durable mark that the new owner did not
honour is a bug), and at most one per key the victim could have been delivering at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pipeline.config import Settings
from pipeline.events import DeliveryReceipt, Outcome, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import Children, audit, child_env, wait_http

if TYPE_CHECKING:
    from tests.plugins.stack import AddWorker, Deliveries, RunningStack, Telegram
    from tests.plugins.topics import OnlyTheWindowTwice, Records

pytestmark = pytest.mark.integration

#: Few enough for a loaded 2-core machine, enough that the kill lands mid-stream.
MESSAGES = 40
KILL_AT = 16
TEXTS = [
    "Где мой заказ? Жду уже неделю.",
    "I want to cancel my order, please.",
    "Не пришёл возврат денег за товар.",
    "How do I change my shipping address?",
    "Мне не начислили бонусы на карту лояльности.",
    "I was charged twice for the same invoice.",
    "Как сменить пароль в личном кабинете?",
    "Where can I download my invoice?",
]


@pytest.fixture(params=[1, 0], ids=["standby-copies", "no-standby-copies"])
def two_workers(
    request: pytest.FixtureRequest,
    broker_settings: Settings,
    outbox: Outbox,
    running_stack: RunningStack,
    add_worker: AddWorker,
) -> Iterator[tuple[Settings, Children]]:
    # 4 partitions: each worker owns some of every topic, and the handovers move several.
    # Without standby copies (PIPELINE_TABLE_STANDBY_REPLICAS=0) a takeover restores the
    # tables from their changelogs alone.
    # Nothing committed by the time of the kill (a minute between commits): the new owners read
    # all of the victim's input again, the replies it delivered included.
    update = {"partitions": 4, "table_standby_replicas": request.param, "commit_interval_s": 60.0}
    base = broker_settings.model_copy(update=update)
    with running_stack(base, outbox, "rb") as (stack, group):
        add_worker(stack, group, outbox)
        yield stack, group


async def test_a_killed_worker_and_a_joining_one_send_nothing_marked_twice(
    two_workers: tuple[Settings, Children],
    outbox: Outbox,
    records: Records,
    only_the_window_twice: OnlyTheWindowTwice,
    deliveries: Deliveries,
    telegram: Telegram,
) -> None:
    stack, group = two_workers
    base = 8_000_000 + int(uuid.uuid4().int % 900_000) * 10
    chats = [base + n for n in range(MESSAGES)]  # one customer per message: no dedup between
    mids = {derive_id("msg", "telegram", f"{chat}:1") for chat in chats}

    killed_at = 0.0
    for n, chat in enumerate(chats):
        if n == KILL_AT:
            # Hard kill of the first worker while the rest of the load is still arriving, once
            # the replies to the first customers went out: the victim's are marked and will be
            # read again.
            first = {str(c) for c in chats[:KILL_AT]}
            await deliveries.settled(lambda i, first=first: i.to in first, enough=KILL_AT)
            assert group.procs[0][0] == "worker"
            killed_at = time.time()
            group.kill("worker")
        status, _ = telegram(stack, chat, 1, TEXTS[n % len(TEXTS)])
        assert status == 200
    # A replacement joins once the dead member's session is over (Tansu keeps listing it as
    # Stable afterwards, so this is a fixed wait as in test_restart), a second rebalance.
    await asyncio.sleep(stack.session_timeout_s + 2)
    group.start("worker", ["worker"], child_env(stack, **outbox.env()))
    wait_http(f"http://{stack.web_host}:{stack.web_port}/healthz", 180, group)

    # Every id (a replay repeats records: counting records would stop before the last ids).
    outcomes = await records.settled(
        stack,
        stack.topic("outcomes"),
        Outcome,
        lambda o: o.message_id in mids,
        lambda seen: {o.message_id for o in seen} >= mids,
    )
    assert {o.message_id for o in outcomes} == mids
    report = await audit(stack, idle_s=1.0)
    assert report.missing == [] and report.conflicting == [], report

    wanted = {str(chat) for chat in chats}
    for chat in sorted(wanted):
        await deliveries.first(lambda i, chat=chat: i.to == chat, f"a reply to {chat}")
    delivered = await deliveries.settled(lambda i: i.to in wanted, enough=len(wanted))
    assert {i.to for i in delivered} == wanted  # every customer was answered
    replies, marks = await records.replies_and_marks(stack, wanted)
    reply_ids = {r.reply_id for r in replies}
    only_the_window_twice(delivered, replies, marks, killed_at)

    # The marks were tested: replies delivered before the kill were read again and dropped.
    receipts = await records.settled(
        stack,
        stack.topic("deliveries"),
        DeliveryReceipt,
        lambda r: r.delivery_id in reply_ids,
        lambda seen: {r.delivery_id for r in seen} >= reply_ids,
    )
    skipped = {r.delivery_id for r in receipts if r.status == "skipped_duplicate"}
    marked_early = {
        d.split("#")[0] for v in marks.values() for at, got in v if at < killed_at for d in got
    }
    assert marked_early and skipped & marked_early, (len(marked_early), len(skipped))
