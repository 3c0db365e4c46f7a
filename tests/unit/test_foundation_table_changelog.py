"""A table's changelog records go through the outputs' producer path (issue 16), with the
guarantees Faust's send path gave: the writing agent's ``flush`` waits for their acks, and
Faust's producer flush (before a commit, at a revocation) hands over every queued record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import BrokerUnavailable
from pipeline.faust_app import RouterApp
from pipeline.metrics import Metrics


@dataclass
class HeldPublisher:
    """Stands in for ``bus.Publisher``: keeps every record, acks only when told."""

    records: list[tuple[str, str | None, bytes | None]] = field(default_factory=list)
    acks: list[asyncio.Future[Any]] = field(default_factory=list)
    lost: str | None = None

    async def enqueue(
        self, topic: str, key: str | None, value: bytes | None
    ) -> asyncio.Future[Any]:
        self.records.append((topic, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(fut)
        return fut


def _context() -> tuple[Context, HeldPublisher, Any]:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", partitions=4)
    app = RouterApp("changelog-test", broker="kafka://127.0.0.1:1", store="memory://")
    ctx = Context(settings=settings, metrics=Metrics(), app=app)
    publisher = HeldPublisher()
    ctx.publisher = publisher  # type: ignore[assignment]
    return ctx, publisher, ctx.table("cases")


async def test_an_agents_flush_waits_for_its_table_changelog_acks() -> None:
    ctx, publisher, table = _context()
    ctx.own_outputs(fresh=True)  # as every agent loop starts
    table["tg:1"] = '{"status": "open"}'
    table["Ёлка"] = "x"
    del table["tg:1"]
    flushing = asyncio.ensure_future(ctx.flush())
    for _ in range(5):
        await asyncio.sleep(0)
    topic = table.changelog_topic
    name = topic.get_topic_name()
    assert [(t, k) for t, k, _ in publisher.records] == [
        (name, "tg:1"),
        (name, "Ёлка"),
        (name, "tg:1"),
    ]
    # the value reads back as the restore decodes it; a delete is a tombstone
    values = [v for _, _, v in publisher.records]
    assert values[2] is None
    assert values[0] is not None
    assert app_loads(ctx, topic, values[0]) == '{"status": "open"}'
    assert not flushing.done()  # no ack yet: the source record must not be acknowledged
    assert table.get("Ёлка") == "x" and "tg:1" not in table
    for ack in publisher.acks:
        ack.set_result(None)
    await asyncio.wait_for(flushing, 5)
    assert ctx.own_outputs() == []


async def test_a_changelog_record_the_broker_refuses_fails_the_agents_flush() -> None:
    ctx, publisher, table = _context()
    ctx.own_outputs(fresh=True)
    table["tg:3"] = "open"
    flushing = asyncio.ensure_future(ctx.flush())
    for _ in range(5):
        await asyncio.sleep(0)
    publisher.acks[0].set_exception(ConnectionError("broker gone"))
    # The source record is not acknowledged: the agent's error policy takes it from here.
    with pytest.raises(BrokerUnavailable, match="broker gone"):
        await asyncio.wait_for(flushing, 5)
    assert ctx.status["broker"] == "1 output records not acknowledged"


async def test_fausts_producer_flush_hands_over_records_no_agent_waits_for() -> None:
    ctx, publisher, table = _context()
    table["tg:2"] = "swept"  # a timer's write: no agent flush waits for it
    await ctx.app.producer.flush()  # what Faust runs before a commit and at a revocation
    assert [k for _, k, _ in publisher.records] == ["tg:2"]
    publisher.acks[0].set_result(None)


def app_loads(ctx: Context, topic: Any, data: bytes) -> Any:
    return ctx.app.serializers.loads_value(str, data, serializer=topic.value_serializer)
