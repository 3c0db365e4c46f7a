"""Reading records back from the real topics in integration tests."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email.mime.text import MIMEText
from email.utils import make_msgid
from typing import Any, TypeVar

from pipeline import bus
from pipeline.broker import free_port
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.errors import DecodeError
from pipeline.events import Event, SubRequest, TaskStatus, TaskUpdate, utcnow
from pipeline.outbox import Outbox, OutboxItem
from pipeline.runtime import Children, child_env, departments, wait_http

E = TypeVar("E", bound=Event)


async def wait_for(
    settings: Settings,
    topic: str,
    model: type[E],
    predicate: Callable[[E], bool],
    count: int,
    timeout_s: float = 120.0,
) -> list[E]:
    """Read ``topic`` from the beginning until ``count`` events match ``predicate``."""
    found: list[E] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with bus.reader(settings, topic) as consumer:
        while loop.time() < deadline and len(found) < count:
            batch = await consumer.getmany(timeout_ms=300)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        ev = decode(model, m.value)
                    except DecodeError:
                        continue
                    if predicate(ev):
                        found.append(ev)
    return found


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON; returns (status, parsed body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


def get_text(url: str) -> tuple[int, str]:
    """GET a URL; returns (status, body text)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()


def start_stack(base: Settings, outbox: Outbox, prefix: str) -> tuple[Settings, Children]:
    """Start a worker + ingest pair on fresh topics; the caller stops the Children."""
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(
        update={
            "topic_prefix": f"{prefix}{tag}.",
            "app_id": f"{prefix}-{tag}",
            "web_port": free_port(),
            "ingest_port": free_port(),
            "smtp_port": free_port(),
            "session_timeout_s": 6.0,
            "lag_interval_s": 1.0,
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
    except BaseException:
        group.stop()
        raise
    return s, group


def telegram(stack: Settings, chat: int, msg_id: int, text: str) -> tuple[int, Any]:
    """Post a Telegram Bot API Update to the ingest webhook."""
    update = {
        "update_id": chat * 1000 + msg_id,
        "message": {
            "message_id": msg_id,
            "date": int(time.time()),
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": False, "first_name": "Тест"},
            "text": text,
        },
    }
    return post_json(f"http://{stack.ingest_host}:{stack.ingest_port}/webhooks/telegram", update)


async def resolve_internal(stack: Settings, sub: SubRequest, resolution: str) -> None:
    """The department answers its sub-request in the system (a TaskUpdate)."""
    pub = bus.Publisher(stack)
    try:
        await pub.send(
            stack.topic("task-updates"),
            sub.case_id,
            TaskUpdate(
                update_id=f"upd-{sub.sub_request_id}",
                sub_request_id=sub.sub_request_id,
                case_id=sub.case_id,
                status=TaskStatus.resolved,
                resolution=resolution,
                at=utcnow(),
            ),
        )
    finally:
        await pub.close()


def reply_by_mail(stack: Settings, sender: str, to: str, text: str) -> None:
    """An external party answers the e-mail it got (to its reply+TOKEN address)."""
    answer = MIMEText(text, "plain", "utf-8")
    answer["From"] = sender
    answer["To"] = to
    answer["Subject"] = "Re: обращение"
    answer["Message-ID"] = make_msgid(domain="example.com")
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, timeout=30) as smtp:
        smtp.send_message(answer)


async def until_delivered(
    predicate: Callable[[], OutboxItem | None], timeout_s: float = 90
) -> OutboxItem:
    """Wait until the outbox holds a matching delivery."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = predicate()
        if item is not None:
            return item
        await asyncio.sleep(0.3)
    raise AssertionError("expected delivery did not arrive")
