"""A worker killed (SIGKILL) mid-scenario and restarted sends nothing twice (invariant 3)."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from email.mime.text import MIMEText
from email.utils import make_msgid

import pytest

from pipeline import bus
from pipeline.broker import free_port
from pipeline.config import Settings
from pipeline.events import Outcome, SubRequest, TaskStatus, TaskUpdate, derive_id, utcnow
from pipeline.outbox import Outbox, OutboxItem
from pipeline.runtime import Children, child_env, departments, wait_http
from pipeline.topics import task_topic

from .helpers import wait_for
from .test_scenarios import _telegram

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(broker_settings: Settings, outbox: Outbox) -> Iterator[tuple[Settings, Children]]:
    tag = uuid.uuid4().hex[:8]
    s = broker_settings.model_copy(
        update={
            "topic_prefix": f"rs{tag}.",
            "app_id": f"rs-{tag}",
            "web_port": free_port(),
            "ingest_port": free_port(),
            "smtp_port": free_port(),
            "session_timeout_s": 6.0,
        }
    )
    asyncio.run(bus.ensure_topics(s, departments=departments(s)))
    group = Children()
    try:
        env = child_env(s, **outbox.env())
        group.start("worker", ["worker"], env)
        group.start("ingest", ["ingest"], env)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 60, group)
        wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 180, group)
        yield s, group
    finally:
        group.stop()


async def _until(predicate: Callable[[], OutboxItem | None], timeout_s: float = 90) -> OutboxItem:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = predicate()
        if item is not None:
            return item
        await asyncio.sleep(0.3)
    raise AssertionError("expected delivery did not arrive")


async def test_killed_worker_sends_nothing_twice(
    own_stack: tuple[Settings, Children], outbox: Outbox
) -> None:
    stack, group = own_stack
    chat = 9_000_000 + int(uuid.uuid4().int % 100_000)
    text = (
        "В магазине на Тверской, 7 продают просроченный творог. И ещё мне не начислили "
        "бонусы на карту лояльности за покупку."
    )
    status, _ = _telegram(stack, chat, 1, text)
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
    mail = await _until(
        lambda: next(
            (i for i in outbox.snapshot() if i.channel == "email" and sr in (i.subject or "")),
            None,
        )
    )
    await _until(lambda: next((i for i in outbox.snapshot() if i.to == str(chat)), None))

    # Kill the worker hard, mid-scenario, and start a new one with the same app id.
    name, worker = group.procs[0]
    assert name == "worker"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    group.procs = [(n, p) for n, p in group.procs if p is not worker]
    group.start("worker", ["worker"], child_env(stack, **outbox.env()))
    wait_http(f"http://{stack.web_host}:{stack.web_port}/healthz", 180, group)

    pub = bus.Publisher(stack)
    try:
        await pub.send(
            stack.topic("task-updates"),
            internal[0].case_id,
            TaskUpdate(
                update_id=f"upd-{chat}",
                sub_request_id=internal[0].sub_request_id,
                case_id=internal[0].case_id,
                status=TaskStatus.resolved,
                resolution="Бонусы начислены.",
                at=utcnow(),
            ),
        )
    finally:
        await pub.close()
    answer = MIMEText("Творог сняли с продажи.\n", "plain", "utf-8")
    answer["From"] = external[0].recipient or "director@example.com"
    answer["To"] = mail.reply_to
    answer["Subject"] = "Re: обращение"
    answer["Message-ID"] = make_msgid(domain="example.com")
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, timeout=30) as smtp:
        smtp.send_message(answer)
    await _until(
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
