"""Outputs are acknowledged before the source record is: a broker that drops them is an error."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.context import AckBehind, Context
from pipeline.errors import BrokerUnavailable
from pipeline.events import Outcome, OutcomeKind, utcnow
from pipeline.metrics import Metrics


class _Publisher:
    """Test seam for ``Context.publisher``: acks, or fails, every record it is given."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sent: list[tuple[str, str | None]] = []
        self.lost: str | None = None  # the broker never lost what it acknowledged here

    async def enqueue(self, topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(ConnectionError("broker went away"))
        else:
            fut.set_result(None)
        return fut


def _outcome() -> Outcome:
    return Outcome(message_id="m", outcome=OutcomeKind.routed, stage="t", decided_at=utcnow())


@pytest.mark.parametrize("fail", [False, True])
async def test_flush_waits_for_every_ack_and_reports_losses(fail: bool) -> None:
    ctx = Context(settings=Settings(topic_prefix="u."), metrics=Metrics(), app=None)
    pub = _Publisher(fail)
    ctx.publisher = pub  # type: ignore[assignment]
    await ctx.send("outcomes", "m", _outcome())
    await ctx.send("u.replies", "c", _outcome())
    assert pub.sent == [("u.outcomes", "m"), ("u.replies", "c")]
    if fail:
        with pytest.raises(BrokerUnavailable, match="2 output records not acknowledged"):
            await ctx.flush()
    else:
        await ctx.flush()
    assert ctx.own_outputs() == []
    await ctx.flush()  # nothing pending: no-op


class _HeldPublisher:
    """Test seam: acknowledges a record only when the test says so."""

    lost: str | None = None

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Any]] = {}

    async def enqueue(self, topic: str, key: str | None, value: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures[str(key)] = fut
        return fut


async def test_an_agents_flush_waits_for_its_own_outputs_not_for_another_agents() -> None:
    """Two agents share the Context: when A's flush ran first it used to take B's outputs
    too, and B's flush returned at once — B acknowledged its batch before its outputs were."""
    ctx = Context(settings=Settings(topic_prefix="u."), metrics=Metrics(), app=None)
    pub = _HeldPublisher()
    ctx.publisher = pub  # type: ignore[assignment]
    sent = asyncio.Event()
    a_may_flush = asyncio.Event()

    async def agent(key: str, first: bool) -> None:
        ctx.own_outputs(fresh=True)
        await ctx.send("outcomes", key, _outcome())
        if first:
            sent.set()
        else:
            await sent.wait()
            a_may_flush.set()
            await asyncio.sleep(0)  # let A's flush start before B's
        if first:
            await a_may_flush.wait()
        await ctx.flush()

    a = asyncio.create_task(agent("a", True))
    b = asyncio.create_task(agent("b", False))
    while "b" not in pub.futures or "a" not in pub.futures:
        await asyncio.sleep(0)
    pub.futures["a"].set_result(None)
    for _ in range(5):
        await asyncio.sleep(0)
    assert a.done(), "A's flush waited for B's output"
    assert not b.done(), "B's flush returned before B's output was acknowledged"
    pub.futures["b"].set_result(None)
    await asyncio.gather(a, b)


async def test_an_output_never_acknowledged_fails_the_flush_after_produce_timeout() -> None:
    # A lent producer (Faust's) waits for acks for 20 minutes: the flush has its own bound.
    s = Settings(topic_prefix="u.", produce_timeout_s=0.05)
    ctx = Context(settings=s, metrics=Metrics(), app=None)
    ctx.publisher = _HeldPublisher()  # type: ignore[assignment]
    await ctx.send("outcomes", "m", _outcome())
    with pytest.raises(BrokerUnavailable, match="1 output records not acknowledged"):
        await asyncio.wait_for(ctx.flush(), 60)  # 60 s: only a guard against the old hang
    assert ctx.status["broker"] == "1 output records not acknowledged"


async def test_the_flush_waits_for_every_output_whatever_order_the_acks_come_in() -> None:
    # The flush waits from the last output to the first, skipping those already done: acks
    # coming in another order must still all be waited for, a failure still reported.
    ctx = Context(settings=Settings(topic_prefix="u."), metrics=Metrics(), app=None)
    pub = _HeldPublisher()
    ctx.publisher = pub  # type: ignore[assignment]
    ctx.own_outputs(fresh=True)
    keys = [f"k{n}" for n in range(6)]
    for key in keys:
        await ctx.send("outcomes", key, _outcome())
    flushing = asyncio.ensure_future(ctx.flush())
    order = ["k5", "k0", "k3", "k4", "k1"]  # the last first, k2 late and failed
    for key in order:
        pub.futures[key].set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert not flushing.done(), f"the flush returned with k2 not acknowledged ({key})"
    pub.futures["k2"].set_exception(ConnectionError("broker went away"))
    with pytest.raises(BrokerUnavailable, match="1 output records not acknowledged"):
        await flushing


async def test_a_timed_out_flush_counts_exactly_the_outputs_not_acknowledged() -> None:
    s = Settings(topic_prefix="u.", produce_timeout_s=0.05)
    ctx = Context(settings=s, metrics=Metrics(), app=None)
    pub = _HeldPublisher()
    ctx.publisher = pub  # type: ignore[assignment]
    ctx.own_outputs(fresh=True)
    for key in ("a", "b", "c", "d"):
        await ctx.send("outcomes", key, _outcome())
    pub.futures["d"].set_result(None)
    pub.futures["b"].set_result(None)
    with pytest.raises(BrokerUnavailable, match=r"2 output records not acknowledged.*no ack"):
        await asyncio.wait_for(ctx.flush(), 60)  # 60 s: only a guard against a hang


class _LentProducer:
    """Test seam for a started aiokafka producer the app lends: acks every record."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []
        self.stopped = False

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> Any:
        self.sent.append((topic, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(topic=topic, partition=0, offset=len(self.sent)))
        return fut

    async def stop(self) -> None:
        self.stopped = True


async def test_outputs_go_through_the_lent_producer_which_the_context_does_not_stop() -> None:
    # The worker lends its Faust producer: table changelogs and outputs share produce requests.
    lent: Any = _LentProducer()
    settings = Settings(topic_prefix="u.")
    ctx = Context(settings=settings, metrics=Metrics(), app=None, lend_producer=lambda: lent)
    await ctx.send("outcomes", "m", _outcome())
    await ctx.flush()
    assert lent.sent == [("u.outcomes", b"m")]
    assert ctx.publisher is not None
    await ctx.publisher.close()
    assert not lent.stopped  # its owner (Faust) stops it


def test_a_delivered_mark_has_a_producer_of_its_own_not_the_lent_one() -> None:
    # aiokafka keeps one produce request in flight per broker: on the shared producer a mark
    # waited for the changelogs and outputs before it (issue 11's window, longer).
    lent: Any = _LentProducer()
    ctx = Context(settings=Settings(), metrics=Metrics(), app=None, lend_producer=lambda: lent)
    assert ctx.output_publisher()._producer is lent
    assert ctx.mark_publisher()._producer is None  # made at its first send
    assert ctx.mark_publisher() is not ctx.output_publisher()


class _Stream:
    """Test seam for a Faust stream: records which events were acknowledged, in order."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event: str) -> bool:
        self.acked.append(event)
        return True


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _ack_behind() -> tuple[Context, _HeldPublisher, _Stream, AckBehind]:
    """A Context whose outputs are acknowledged when the test says so, a stream, its acks."""
    ctx = Context(settings=Settings(topic_prefix="u."), metrics=Metrics(), app=None)
    pub = _HeldPublisher()
    ctx.publisher = pub  # type: ignore[assignment]
    stream = _Stream()
    ctx.own_outputs(fresh=True)
    return ctx, pub, stream, AckBehind(ctx, stream)


async def test_ack_behind_acknowledges_a_batch_after_its_outputs_and_batches_in_order() -> None:
    """The agent goes on with batch 2 while batch 1 waits for its acks; nothing of batch 2 is
    acknowledged before batch 1, and no batch before its own outputs."""
    ctx, pub, stream, acks = _ack_behind()
    await ctx.send("outcomes", "one", _outcome())
    await acks.done(["e1", "e2"])  # returns at once: batch 1 waits in the background
    await ctx.send("outcomes", "two", _outcome())
    await _turns()
    assert stream.acked == [], "acknowledged before its outputs were"
    pub.futures["one"].set_result(None)
    await _turns()
    assert stream.acked == ["e1", "e2"]
    second = asyncio.create_task(acks.done(["e3"]))  # batch 1 done: batch 2 starts waiting
    await _turns()
    assert second.done()
    assert stream.acked == ["e1", "e2"], "batch 2 acknowledged before its output was"
    pub.futures["two"].set_result(None)
    await acks.finish()
    assert stream.acked == ["e1", "e2", "e3"]


async def test_ack_behind_holds_the_next_batch_until_the_one_waiting_is_acknowledged() -> None:
    """At most one batch waits: ``done`` for batch 2 returns only after batch 1's acks."""
    ctx, pub, stream, acks = _ack_behind()
    await ctx.send("outcomes", "one", _outcome())
    await acks.done(["e1"])
    await ctx.send("outcomes", "two", _outcome())
    second = asyncio.create_task(acks.done(["e2"]))
    await _turns()
    assert not second.done(), "a second batch started waiting beside the first"
    pub.futures["one"].set_result(None)
    await second
    assert stream.acked == ["e1"]
    pub.futures["two"].set_result(None)
    await acks.finish()
    assert stream.acked == ["e1", "e2"]


async def test_ack_behind_raises_a_lost_output_in_the_agents_loop_and_never_acknowledges() -> None:
    ctx, pub, stream, acks = _ack_behind()
    await ctx.send("outcomes", "one", _outcome())
    await acks.done(["e1"])
    pub.futures["one"].set_exception(ConnectionError("broker went away"))
    with pytest.raises(BrokerUnavailable, match="1 output records not acknowledged"):
        await acks.done(["e2"])
    assert stream.acked == []


async def test_ack_behind_abandons_the_waiting_batch_when_the_agent_stops() -> None:
    """Stopping leaves the waiting batch unacknowledged (it is read again: at least once)."""
    ctx, pub, stream, acks = _ack_behind()
    await ctx.send("outcomes", "one", _outcome())
    await acks.done(["e1"])
    waiting = acks.waiting
    acks.abandon()
    await _turns()
    assert waiting is not None and waiting.cancelled()
    pub.futures["one"].set_result(None)
    await _turns()
    assert stream.acked == []
    await acks.finish()  # nothing waits any more


async def test_ack_behind_acknowledges_nothing_when_the_agent_is_cancelled_while_it_waits() -> None:
    """The agent cancelled (a rebalance, the worker stopping) while ``done`` waits for the
    batch before: neither batch is acknowledged, even once their outputs are (read again)."""
    ctx, pub, stream, acks = _ack_behind()
    await ctx.send("outcomes", "one", _outcome())
    await acks.done(["e1"])
    await ctx.send("outcomes", "two", _outcome())

    async def agent() -> None:
        try:
            await acks.done(["e2"])  # waits for batch 1
        finally:
            acks.abandon()  # as the agent's loop does

    running = asyncio.create_task(agent())
    await _turns()
    assert not running.done()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    pub.futures["one"].set_result(None)
    pub.futures["two"].set_result(None)
    await _turns()
    assert stream.acked == []
    assert acks.waiting is None
