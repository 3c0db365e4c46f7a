"""A worker killed (SIGKILL) mid-scenario and restarted sends nothing twice (invariant 3).

The department and the director answer while the worker is down, so their updates are
waiting when the replacement starts: this is what exposed Faust's recovery race (records
fetched during start-up dropped from the agents' queues; see ``pipeline.recovery``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from pipeline.config import Settings
from pipeline.events import Outcome, SubRequest, derive_id
from pipeline.outbox import Outbox
from pipeline.runtime import Children, child_env, wait_http
from pipeline.topics import task_topic

from .helpers import (
    reply_by_mail,
    resolve_internal,
    start_stack,
    telegram,
    until_delivered,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(broker_settings: Settings, outbox: Outbox) -> Iterator[tuple[Settings, Children]]:
    stack, group = start_stack(broker_settings, outbox, "rs")
    try:
        yield stack, group
    finally:
        group.stop()


async def test_killed_worker_sends_nothing_twice(
    own_stack: tuple[Settings, Children], outbox: Outbox
) -> None:
    stack, group = own_stack
    chat = 9_000_000 + int(uuid.uuid4().int % 100_000)
    text = (
        "В магазине на Тверской, 7 продают просроченный творог. И ещё мне не начислили "
        "бонусы на карту лояльности за покупку."
    )
    status, _ = telegram(stack, chat, 1, text)
    assert status == 200
    mid = derive_id("msg", "telegram", f"{chat}:1")
    [outcome] = await wait_for(
        stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id == mid, 1
    )
    internal = await wait_for(
        stack, task_topic(stack, "loyalty-it"), SubRequest, lambda s: s.message_id == mid, 1
    )
    external = await wait_for(
        stack, stack.topic("external"), SubRequest, lambda s: s.message_id == mid, 1
    )
    assert internal and external, outcome
    sr = external[0].sub_request_id
    mail = await until_delivered(
        lambda: next(
            (i for i in outbox.snapshot() if i.channel == "email" and sr in (i.subject or "")),
            None,
        )
    )
    await until_delivered(lambda: next((i for i in outbox.snapshot() if i.to == str(chat)), None))

    # Kill the worker hard, mid-scenario. The department and the director answer while it
    # is down, so their updates wait in the topic for the worker that replaces it.
    name, worker = group.procs[0]
    assert name == "worker"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    group.procs = [(n, p) for n, p in group.procs if p is not worker]
    await resolve_internal(stack, internal[0], "Бонусы начислены.")
    director = external[0].recipient or "director@example.com"
    reply_by_mail(stack, director, mail.reply_to or "", "Творог сняли с продажи.\n")
    # Tansu does not rebalance a live member when a dead one's session expires, so the
    # replacement joins only after the dead member is gone (as a supervisor's back-off would).
    time.sleep(stack.session_timeout_s + 2)
    group.start("worker", ["worker"], child_env(stack, **outbox.env()))
    wait_http(f"http://{stack.web_host}:{stack.web_port}/healthz", 180, group)

    await until_delivered(
        lambda: next(
            (i for i in outbox.snapshot() if i.to == str(chat) and "Творог сняли" in i.text),
            None,
        )
    )
    await asyncio.sleep(5)  # let any replayed record reach the sinks
    to_customer = Counter(i.text for i in outbox.snapshot() if i.to == str(chat))
    assert to_customer and max(to_customer.values()) == 1, to_customer
    to_director = [i for i in outbox.snapshot() if sr in (i.subject or "")]
    assert len(to_director) == 1, [i.subject for i in to_director]
