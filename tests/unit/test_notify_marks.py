"""A delivered mark is acknowledged by the broker before anything else of its key proceeds.

Issue 11: the mark went into Faust's buffered changelog; a worker SIGKILLed after the platform
accepted a reply, but before that buffer was sent, left the next owner without the mark, and
it sent the reply again. Here the notify loop runs on a real (memory-store) Faust table with a
publisher whose acknowledgements the test releases: while a mark is not acknowledged, the
key's next reply (or a long reply's next part) must not go out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import BrokerUnavailable
from pipeline.events import Channel, Reply, ReplyKind
from pipeline.faust_app import RouterApp
from pipeline.metrics import Metrics
from pipeline.notify import delivery
from pipeline.notify.agents import MAX_CONCURRENT, DeliveryLoop, Replies, Senders, _delivered
from pipeline.notify.channels import Target, reply_parts
from pipeline.notify.delivery import Deliverer
from pipeline.stage import RawRecord

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CUSTOMER = "tg:6000042"
#: Event-loop turns to let the loop run as far as it can (a count, not a time).
TURNS = 200


@dataclass
class HeldPublisher:
    """Stands in for ``bus.Publisher``: outputs are acknowledged at once; a ``send_raw``
    (the durable path) waits until the test releases it."""

    outputs: list[tuple[str, str | None]] = field(default_factory=list)
    held: list[tuple[str, str | None, bytes | None]] = field(default_factory=list)
    acked: list[tuple[str, str | None, bytes | None]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    lost: str | None = None

    async def enqueue(self, topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        self.outputs.append((topic, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def send_raw(self, topic: str, key: str | None, value: bytes | None) -> None:
        record = (topic, key, value)
        self.held.append(record)
        await self.gate.wait()
        self.held.remove(record)
        self.acked.append(record)

    def release(self) -> None:
        self.gate.set()


def reply(n: int, text: str = "Готово") -> Reply:
    return Reply(
        reply_id=f"rep_{n}",
        message_id=f"msg_{n}",
        customer_id=CUSTOMER,
        channel=Channel.telegram,
        reply_to={"chat_id": "6000042"},
        language="ru",
        kind=ReplyKind.resolution,
        text=text,
        created_at=NOW,
    )


def record(r: Reply, offset: int) -> RawRecord:
    return RawRecord("replies", 0, offset, r.customer_id.encode(), encode(r))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the platform accepted, in order."""
    texts: list[str] = []

    async def accept(
        _session: Any, _s: Settings, r: Reply, *, target: Target, text: str | None = None
    ) -> str:
        texts.append(text or r.text)
        return str(len(texts))

    monkeypatch.setattr(delivery, "send_reply", accept)
    return texts


def notify_loop() -> tuple[DeliveryLoop, HeldPublisher]:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        partitions=4,
        telegram_bot_token="123:x",
        delivery_rate_limits={},
    )
    app = RouterApp("marks-test", broker="kafka://127.0.0.1:1", store="memory://")
    ctx = Context(settings=settings, metrics=Metrics(), app=app)
    publisher = HeldPublisher()
    ctx.publisher = ctx.marks = publisher  # type: ignore[assignment]
    senders = Senders(settings)
    senders._deliverer = Deliverer(settings, session=None)  # type: ignore[arg-type]
    return DeliveryLoop(ctx, Replies(senders, ctx.table("delivered-replies"))), publisher


async def turns_until(done: Any) -> bool:
    for _ in range(TURNS):
        if done():
            return True
        await asyncio.sleep(0)
    return bool(done())


async def test_the_next_reply_of_a_key_waits_for_the_marks_ack(sent: list[str]) -> None:
    loop, publisher = notify_loop()
    first, second = reply(1, "первый"), reply(2, "второй")
    batch = asyncio.ensure_future(loop.handle_batch([record(first, 0), record(second, 1)]))

    assert await turns_until(lambda: publisher.held), "the mark was not sent through the publisher"
    assert sent == ["первый"] and not batch.done()
    assert not await turns_until(lambda: len(sent) > 1), "sent before the mark was acknowledged"
    publisher.release()
    await batch

    assert sent == ["первый", "второй"]
    table = loop.outbound.table
    topic = table.changelog_topic
    names = {t for t, _, _ in publisher.acked}
    assert names == {topic.get_topic_name()}
    # the last record is the table's value, as Faust would restore it, under the raw key
    _, key, value = publisher.acked[-1]
    assert key is not None and topic.prepare_key(key, table.key_serializer)[0] == key.encode()
    restored = loop.ctx.app.serializers.loads_value(str, value, serializer=table.value_serializer)
    assert restored == table[CUSTOMER]
    assert _delivered(table, CUSTOMER) == ["rep_1", "rep_2"]

    # a replay of both is skipped: the in-memory value is the table's
    await loop.handle_batch([record(first, 0), record(second, 1)])
    assert sent == ["первый", "второй"] and len(publisher.acked) == 2


async def test_each_part_of_a_long_reply_is_durable_before_the_next_part(
    sent: list[str],
) -> None:
    loop, publisher = notify_loop()
    long = reply(3, "\n".join(["Абзац ответа о замене товара и начислении бонусов."] * 200))
    parts = reply_parts(long, "telegram")
    assert len(parts) > 1
    handled = asyncio.ensure_future(loop.handle(record(long, 0)))

    assert await turns_until(lambda: publisher.held)
    assert sent == parts[:1]
    assert not await turns_until(lambda: len(sent) > 1), "part 2 before part 1's mark"
    publisher.release()
    await handled

    assert sent == parts
    ids = [f"rep_3#{n}" for n in range(1, len(parts) + 1)] + ["rep_3"]
    assert _delivered(loop.outbound.table, CUSTOMER) == ids
    assert len(publisher.acked) == len(ids)


async def test_no_delivery_starts_once_a_mark_failed(sent: list[str]) -> None:
    """The broker stops acknowledging marks: the deliveries under way finish (their marks
    fail too), and no key's delivery starts after that. Each would reach the customer with no
    mark and go out again after the restart; before, every key of the batch went on (a broker
    outage sent a whole batch twice)."""
    loop, publisher = notify_loop()
    keys = MAX_CONCURRENT * 3

    async def refused(topic: str, key: str | None, value: bytes | None) -> None:
        await asyncio.sleep(0)
        raise BrokerUnavailable("broker did not acknowledge the record: TimeoutError()")

    publisher.send_raw = refused  # type: ignore[method-assign]
    records = [
        RawRecord(
            "replies",
            0,
            n,
            f"tg:{n}".encode(),
            encode(
                reply(n).model_copy(
                    update={"customer_id": f"tg:{n}", "reply_to": {"chat_id": str(n)}}
                )
            ),
        )
        for n in range(keys)
    ]
    with pytest.raises(BrokerUnavailable):
        await loop.handle_batch(records)
    # The first slots' deliveries were under way when the first mark failed; nothing after.
    assert 0 < len(sent) <= MAX_CONCURRENT, len(sent)
