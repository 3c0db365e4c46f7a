"""Outputs and changelog records go to the broker a batch per topic partition (``bus.Batches``,
issue 16), on the real broker: each key's records keep their order across full batches,
nothing is written twice, a flush raises when a batch is refused, and records nobody flushes
(a timer's table writes) still go out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from pipeline import bus
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import BrokerUnavailable
from pipeline.events import Outcome, OutcomeKind, utcnow
from pipeline.metrics import Metrics

if TYPE_CHECKING:
    from tests.plugins.stack import OwnBroker

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(kafka: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer with small batches (1 KiB), lent to the Context as a worker's is."""
    p = AIOKafkaProducer(
        bootstrap_servers=kafka.kafka_bootstrap_servers, acks="all", max_batch_size=1024
    )
    await p.start()
    yield p
    await p.stop()


def _context(settings: Settings, producer: AIOKafkaProducer) -> tuple[Context, list[str]]:
    """A Context on ``producer`` whose per-record ``send`` is counted (batched records do not
    go through it)."""
    ctx = Context(settings=settings, metrics=Metrics(), app=None, lend_producer=lambda: producer)
    per_record: list[str] = []
    send = producer.send

    async def counted(topic: str, *args: Any, **kwargs: Any) -> Any:
        per_record.append(topic)
        return await send(topic, *args, **kwargs)

    producer.send = counted  # type: ignore[method-assign]
    return ctx, per_record


def _outcome(n: int, customer: str) -> Outcome:
    return Outcome(
        message_id=f"m{n}",
        customer_id=customer,
        outcome=OutcomeKind.routed,
        stage="t",
        decided_at=utcnow(),
    )


async def _topics(settings: Settings, *names: str) -> list[str]:
    return await bus.ensure_topics(settings, [settings.topic(n) for n in names])


async def _ready(
    settings: Settings, producer: AIOKafkaProducer, *names: str, agent: bool = True
) -> tuple[list[str], Context, list[str]]:
    """The topics (their partitions known to the producer, as after a worker's first
    records), a Context on the producer and its per-record sends; ``agent``: the test's task
    starts as an agent loop does (``own_outputs(fresh=True)``)."""
    topics = await _topics(settings, *names)
    for topic in topics:
        await producer.partitions_for(topic)
    ctx, per_record = _context(settings, producer)
    if agent:
        ctx.own_outputs(fresh=True)
    return topics, ctx, per_record


async def test_each_keys_records_keep_their_order_and_none_is_written_twice(
    kafka: Settings, producer: AIOKafkaProducer
) -> None:
    s = kafka.model_copy(update={"partitions": 3})
    (outcomes, replies), ctx, per_record = await _ready(s, producer, "outcomes", "replies")
    customers = [f"c{k}" for k in range(7)]
    for n in range(400):  # ~190 bytes each: a 1 KiB batch fills every few records
        customer = customers[n % len(customers)]
        await ctx.send("outcomes", customer, _outcome(n, customer))
        ctx.write_changelog(replies, customer, f'{{"n":{n}}}'.encode())
    assert per_record == []  # every record went in a batch
    waiting = ctx.own_outputs()
    assert 0 < len(waiting) < 400  # one acknowledgement per batch, not per record
    await ctx.flush()
    got = await bus.read_all(s, [outcomes, replies])
    assert len(got) == 800  # all of them, each once (read until the topics were quiet)
    for topic, field in ((outcomes, "message_id"), (replies, "n")):
        for customer in customers:
            seen = [
                orjson.loads(r.value or b"{}")[field]
                for r in sorted(got, key=lambda r: r.offset)
                if r.topic == topic and r.key == customer.encode()
            ]
            wanted = [n for n in range(400) if customers[n % len(customers)] == customer]
            expected = [f"m{n}" for n in wanted] if field == "message_id" else wanted
            assert seen == expected, (topic, customer)


async def test_a_flush_raises_when_the_broker_refuses_a_batch(
    kafka: Settings, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ctx, _ = await _ready(kafka, producer, "outcomes")
    await ctx.send("outcomes", "c1", _outcome(1, "c1"))

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise KafkaConnectionError("broker went away")

    monkeypatch.setattr(producer, "send_batch", refuse)
    with pytest.raises(BrokerUnavailable, match="1 output records not acknowledged"):
        await ctx.flush()


async def test_records_of_a_task_that_never_flushes_still_go_out(
    kafka: Settings, producer: AIOKafkaProducer
) -> None:
    (replies,), ctx, per_record = await _ready(kafka, producer, "replies", agent=False)

    async def timer() -> None:  # no agent loop: nobody's flush waits for it
        ctx.write_changelog(replies, "c1", b'{"swept":true}')
        await ctx.send("replies", "c2", _outcome(2, "c2"))

    await asyncio.create_task(timer())
    got = await bus.read_all(kafka, [replies])
    assert sorted(r.key for r in got) == [b"c1", b"c2"]
    assert per_record == []


async def test_a_record_too_large_for_a_request_is_refused_at_once(
    kafka: Settings, producer: AIOKafkaProducer
) -> None:
    _, ctx, _ = await _ready(kafka, producer, "outcomes")
    huge = _outcome(1, "c1").model_copy(update={"reason": "x" * 1_100_000})
    with pytest.raises(BrokerUnavailable, match="MessageSizeTooLarge"):
        await ctx.send("outcomes", "c1", huge)
    batches = ctx.output_batches()
    assert batches is not None and not batches  # nothing left queued
    await ctx.flush()  # and nothing else pending


async def test_every_record_of_the_publisher_is_batched_in_order(
    kafka: Settings, producer: AIOKafkaProducer
) -> None:
    """A record without a key, and one for a topic whose partitions the producer has not
    learnt yet, are batched too, in order: the broker-loss check sees a batch's ack a loop
    turn after a single record's, so a record sent alone after a batch of the same partition
    looked like an offset gone back (``Publisher._note_ack``)."""
    s = kafka.model_copy(update={"partitions": 1})
    dlq, outcomes = await _topics(s, "dlq", "outcomes")
    ctx, per_record = _context(s, producer)
    ctx.own_outputs(fresh=True)
    await ctx.send("dlq", "k", _outcome(1, "c1"))  # metadata not known yet: learnt first
    await ctx.send("dlq", None, _outcome(2, "c1"))  # no key: the batcher picks the partition
    await ctx.send("dlq", "k", _outcome(3, "c1"))
    ctx.write_changelog(outcomes, "k", b'{"message_id":"m4"}')  # not known yet: queued
    ctx.write_changelog(outcomes, "k", b'{"message_id":"m5"}')  # behind it
    await ctx.flush()
    assert per_record == []
    publisher = ctx.output_publisher()
    assert publisher.lost is None
    got = sorted(await bus.read_all(s, [dlq, outcomes]), key=lambda r: (r.topic, r.offset))
    ids = [orjson.loads(r.value or b"{}")["message_id"] for r in got]
    assert ids == ["m1", "m2", "m3", "m4", "m5"]


async def test_a_caller_cancelled_while_batches_are_handed_over_leaves_none_unsent(
    kafka: Settings, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches hold several agents' records: an agent cancelled in its flush (a rebalance, a
    stop) while they are handed over must not leave the rest unsent (the other agents'
    flushes would wait for acks that never come, and fail)."""
    s = kafka.model_copy(update={"partitions": 4})
    (outcomes,), ctx, _ = await _ready(s, producer, "outcomes")
    batches = ctx.output_batches()
    assert batches is not None
    waiting: list[asyncio.Future[Any]] = []
    for n in range(40):
        assert batches.add(outcomes, f"c{n}", b"{}", waiting) is not None
    assert len(waiting) == 4  # a batch per partition
    send_batch = producer.send_batch
    handing = asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        handing.set()
        await asyncio.sleep(0.05)
        return await send_batch(*args, **kwargs)

    monkeypatch.setattr(producer, "send_batch", slow)
    caller = asyncio.create_task(batches.submit())
    await handing.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(asyncio.gather(*waiting), 30)  # 30 s: only a guard against a hang
    assert len(await bus.read_all(s, [outcomes])) == 40


async def test_submit_returns_once_the_batches_another_task_hands_over_are_in_the_producer(
    kafka: Settings, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust's producer flush before a commit or a revocation first asks for every record to
    be in the producer (``Context.drain_changelogs``): a batch the hand-over task has taken
    but not given to the producer yet must be waited for, or it lands after the new owner's
    fence."""
    _, ctx, _ = await _ready(kafka, producer, "outcomes")
    await ctx.send("outcomes", "c1", _outcome(1, "c1"))
    send_batch = producer.send_batch
    handing, given = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        handing.set()
        await asyncio.sleep(0.05)
        ack = await send_batch(*args, **kwargs)
        given.set()
        return ack

    monkeypatch.setattr(producer, "send_batch", slow)
    # the hand-over runs at the loop's next turn, as for a timer's write (30 s: a guard)
    await asyncio.wait_for(handing.wait(), 30)
    await ctx.drain_changelogs()
    assert given.is_set()


async def test_a_bug_handing_batches_over_fails_them_all_and_the_next_ones_go_out(
    kafka: Settings, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a broker error (those fail only their own batch): the hand-over stops, every batch
    it had not handed over fails (no flush waits forever for it), the flushing agent sees the
    bug, and the batches after it are handed over by a new hand-over."""
    s = kafka.model_copy(update={"partitions": 4})
    (outcomes,), ctx, _ = await _ready(s, producer, "outcomes")
    for n in range(40):  # several 1 KiB batches on each of the 4 partitions
        await ctx.send("outcomes", f"c{n}", _outcome(n, f"c{n}"))
    waiting = list(ctx.own_outputs())
    assert len(waiting) > 4
    send_batch = producer.send_batch

    async def buggy(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the hand-over")

    monkeypatch.setattr(producer, "send_batch", buggy)
    with pytest.raises(RuntimeError, match="a bug in the hand-over"):
        await ctx.flush()
    assert all(f.done() for f in waiting)
    assert all(isinstance(f.exception(), BrokerUnavailable) for f in waiting)
    monkeypatch.setattr(producer, "send_batch", send_batch)
    ctx.own_outputs(fresh=True)
    await ctx.send("outcomes", "c1", _outcome(100, "c1"))
    await ctx.flush()
    got = await bus.read_all(s, [outcomes])
    assert [orjson.loads(r.value or b"{}")["message_id"] for r in got] == ["m100"]


async def test_a_first_record_for_a_topic_while_the_broker_is_gone_raises_and_is_sent_once_after(
    own_broker: OwnBroker,
) -> None:
    """A topic's first record needs its partitions (``Batches.ready``): with the broker gone
    the send raises BrokerUnavailable (the error policy stops the agent before its ack)
    and queues nothing a flush would wait for; the record sent again once the broker is
    back (the agent's restart reads its input again) is written once."""
    s = own_broker.settings
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap_servers, acks="all", request_timeout_ms=1000
    )
    await producer.start()
    try:
        ctx, _ = _context(s, producer)
        ctx.own_outputs(fresh=True)
        own_broker.kill()
        with pytest.raises(BrokerUnavailable, match="no metadata for"):
            await ctx.send("outcomes", "c1", _outcome(1, "c1"))
        batches = ctx.output_batches()
        assert batches is not None and not batches
        assert ctx.own_outputs() == []
        own_broker.broker.start()  # empty, on the same port
        (outcomes,) = await _topics(s, "outcomes")
        await ctx.send("outcomes", "c1", _outcome(1, "c1"))
        await ctx.flush()
        got = await bus.read_all(s, [outcomes])
        assert [orjson.loads(r.value or b"{}")["message_id"] for r in got] == ["m1"]
    finally:
        await producer.stop()
