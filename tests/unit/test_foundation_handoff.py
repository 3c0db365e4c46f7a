"""The worker's fetch loop hands each record to the agents' queues directly (issue 16:
Faust's per-record race against the flow's suspension cost ~24 µs a record against ~4,
``bench/consumer_handoff.py``).

The loop is ``_Consumer._drain_messages`` itself; the consumer around it is a stand-in with
the bookkeeping the loop reads (no network): a fetch yields the records given, the callback
is the conductor's hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from pipeline.faust_app import _Consumer

INBOUND = TP("care.inbound", 0)
REPLIES = TP("care.replies", 1)
COPY = TP("care-router-cases-changelog", 2)


@dataclass
class Message:
    tp: TP
    offset: int

    @property
    def topic(self) -> str:
        return self.tp.topic


@dataclass
class Loop:
    """What ``_drain_messages`` reads of its consumer: one fetch of ``fetched``, then stop."""

    fetched: list[Message]
    callback: Callable[[Message], Awaitable[None]]
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _read_offset: defaultdict[TP, int | None] = field(
        default_factory=lambda: defaultdict(lambda: None)  # as Faust keeps it
    )
    gaps: list[tuple[TP, int, int]] = field(default_factory=list)
    commits: int = 0
    _commit_every: int | None = None
    _n_acked: int = 0
    should_stop: bool = False
    consumer_stopped_errors: tuple[type[BaseException], ...] = ()
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test"))
    diag: Any = field(
        default_factory=lambda: SimpleNamespace(set_flag=lambda f: None, unset_flag=lambda f: None)
    )
    app: Any = field(
        default_factory=lambda: SimpleNamespace(
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            tables=SimpleNamespace(recovery=None),  # Faust's, with no ``take_changelog``
        )
    )
    transport: Any = field(
        default_factory=lambda: SimpleNamespace(app=SimpleNamespace(should_stop=False))
    )

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        fetched, self.fetched = self.fetched, []
        for m in fetched:
            yield m.tp, m
        self._stopped.set()  # one fetch is enough here

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    async def commit(self) -> bool:
        self.commits += 1
        return True

    async def drain(self) -> None:
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        await _Consumer._drain_messages(self, fetcher)  # type: ignore[arg-type]


async def test_each_record_is_handed_over_in_order_then_counted_read() -> None:
    seen: list[tuple[TP, int, int | None]] = []

    async def hand_over(m: Message) -> None:
        seen.append((m.tp, m.offset, loop._read_offset[m.tp]))

    fetched = [Message(INBOUND, 7), Message(REPLIES, 3), Message(INBOUND, 8)]
    loop = Loop(fetched, hand_over)
    loop._read_offset[INBOUND] = 7
    await loop.drain()
    # Read offsets move after each hand-over: the one seen during it is the previous record's.
    assert seen == [(INBOUND, 7, 7), (REPLIES, 3, None), (INBOUND, 8, 7)]
    assert dict(loop._read_offset) == {INBOUND: 8, REPLIES: 3}
    assert loop.gaps == []


async def test_the_agents_get_the_loop_between_two_records() -> None:
    # As under Faust's race. Handed over in runs, a fetch ran far ahead of busy agents, and
    # the one-worker pipeline measured costlier per message (ARCHITECTURE.md, Throughput).
    order: list[str] = []

    async def hand_over(m: Message) -> None:
        order.append(f"record {m.offset}")

    async def agent() -> None:
        while True:
            order.append("agent")
            await asyncio.sleep(0)

    running = asyncio.create_task(agent())
    await asyncio.sleep(0)
    await Loop([Message(INBOUND, n) for n in range(3)], hand_over).drain()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    records = [i for i, step in enumerate(order) if step.startswith("record")]
    assert len(records) == 3
    assert all(b - a > 1 for a, b in itertools.pairwise(records)), order


async def test_a_record_below_the_read_offset_is_not_handed_over_again() -> None:
    seen: list[int] = []

    async def hand_over(m: Message) -> None:
        seen.append(m.offset)

    loop = Loop([Message(INBOUND, 4), Message(INBOUND, 5), Message(INBOUND, 6)], hand_over)
    loop._read_offset[INBOUND] = 5
    await loop.drain()
    assert seen == [5, 6]


async def test_a_jump_past_the_read_offset_is_a_gap_for_the_consumer_to_judge() -> None:
    async def hand_over(m: Message) -> None:
        return None

    loop = Loop([Message(INBOUND, 5), Message(INBOUND, 9)], hand_over)
    loop._read_offset[INBOUND] = 4
    await loop.drain()
    assert loop.gaps == [(INBOUND, 6, 9)]  # _Consumer._add_gap decides what it counts as


async def test_a_hand_over_cancelled_while_it_waits_leaves_its_record_unread() -> None:
    # The flow stopped (a rebalance, the worker stopping) while the agents' queue was full:
    # the fetcher's stop cancels the loop. Faust's race, once the flow stopped, went on and
    # counted the record read.
    waiting = asyncio.Event()

    async def hand_over(m: Message) -> None:
        if m.offset == 11:
            waiting.set()
            await asyncio.Event().wait()  # a full queue that never drains

    loop = Loop([Message(INBOUND, 10), Message(INBOUND, 11), Message(INBOUND, 12)], hand_over)
    task = asyncio.create_task(loop.drain())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dict(loop._read_offset) == {INBOUND: 10}


async def test_a_cancel_while_the_worker_stops_ends_the_loop_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker stopping (Ctrl-C, SIGTERM) cancels the fetcher while a hand-over waits: the
    # loop ends without an error, as Faust's; cancelled otherwise, the cancel goes on up.
    async def hand_over(m: Message) -> None:
        waiting.set()
        await asyncio.Event().wait()

    for stopping in (True, False):
        waiting = asyncio.Event()
        loop = Loop([Message(INBOUND, 1)], hand_over)
        loop.transport.app.should_stop = stopping
        task = asyncio.create_task(loop.drain())
        await waiting.wait()
        task.cancel()
        with caplog.at_level(logging.INFO, "test"):
            if stopping:
                await task
            else:
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert ("shutting down for user cancel" in caplog.text) is stopping
        assert loop._read_offset[INBOUND] is None  # its record was not read
        caplog.clear()


async def test_a_failing_hand_over_stops_the_loop_loudly(caplog: pytest.LogCaptureFixture) -> None:
    async def hand_over(m: Message) -> None:
        raise RuntimeError("decode failed in the conductor")

    loop = Loop([Message(INBOUND, 1)], hand_over)
    with pytest.raises(RuntimeError), caplog.at_level(logging.ERROR, "test"):
        await loop.drain()
    assert "Drain messages raised" in caplog.text
    assert loop._read_offset[INBOUND] is None


async def test_a_commit_is_due_after_commit_every_acknowledgements() -> None:
    # Faust's ``broker_commit_every``: the loop commits before the next hand-over.
    seen: list[tuple[int, int]] = []

    async def hand_over(m: Message) -> None:
        seen.append((m.offset, loop.commits))
        loop._n_acked += 1

    loop = Loop([Message(INBOUND, n) for n in range(5)], hand_over, _commit_every=2)
    await loop.drain()
    assert seen == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2)]
    assert loop._n_acked == 1


async def test_a_broker_stopping_the_consumer_ends_the_loop_only_when_the_app_stops() -> None:
    class Stopped(Exception):
        pass

    async def hand_over(m: Message) -> None:
        raise Stopped

    stopping = Loop([Message(INBOUND, 1)], hand_over, consumer_stopped_errors=(Stopped,))
    stopping.transport.app.should_stop = True
    await stopping.drain()  # the worker is stopping: a quiet end
    running = Loop([Message(INBOUND, 1)], hand_over, consumer_stopped_errors=(Stopped,))
    with pytest.raises(Stopped):
        await running.drain()


@dataclass
class Standbys:
    """What the loop reads of ``RouterRecovery``: its standby and active changelog partitions
    and ``take_changelog`` (which declines what ``declined`` names, as it does a record it
    cannot decode)."""

    standby_tps: set[TP]
    active_tps: set[TP] = field(default_factory=set)
    declined: set[int] = field(default_factory=set)
    taken: list[tuple[TP, int, int | None]] = field(default_factory=list)
    loop: Loop | None = None

    async def take_changelog(self, tp: TP, message: Message) -> bool:
        if message.offset in self.declined:
            return False
        assert self.loop is not None
        self.taken.append((tp, message.offset, self.loop._read_offset[tp]))
        return True


async def test_a_standby_copys_records_go_to_the_recovery_the_others_to_the_agents() -> None:
    # A standby copy's changelog record is applied by the recovery from the loop itself,
    # not through the conductor and Faust's changelog queue (bench/changelog_apply.py).
    handed: list[tuple[TP, int]] = []

    async def hand_over(m: Message) -> None:
        handed.append((m.tp, m.offset))

    fetched = [Message(COPY, 4), Message(INBOUND, 1), Message(COPY, 5), Message(COPY, 9)]
    loop = Loop(fetched, hand_over)
    standbys = Standbys({COPY}, declined={5}, loop=loop)
    loop.app.tables.recovery = standbys
    await loop.drain()
    assert standbys.taken == [(COPY, 4, None), (COPY, 9, 5)]  # counted read after each
    assert handed == [(INBOUND, 1), (COPY, 5)]  # a record it declines takes Faust's path
    assert dict(loop._read_offset) == {COPY: 9, INBOUND: 1}
    assert loop.gaps == []  # a taken record skips the gap check (Faust's: acknowledged topics)


async def test_a_restored_partitions_records_go_to_the_recovery_too() -> None:
    handed: list[tuple[TP, int]] = []

    async def hand_over(m: Message) -> None:
        handed.append((m.tp, m.offset))

    loop = Loop([Message(COPY, 0), Message(INBOUND, 1)], hand_over)
    standbys = Standbys(set(), active_tps={COPY}, loop=loop)  # a restore under way
    loop.app.tables.recovery = standbys
    await loop.drain()
    assert standbys.taken == [(COPY, 0, None)] and handed == [(INBOUND, 1)]


async def test_once_a_partition_is_no_standby_its_records_go_to_the_agents() -> None:
    handed: list[tuple[TP, int]] = []

    async def hand_over(m: Message) -> None:
        handed.append((m.tp, m.offset))

    loop = Loop([Message(COPY, 4)], hand_over)
    standbys = Standbys(set(), loop=loop)  # a rebalance made it active (or took it away)
    loop.app.tables.recovery = standbys
    await loop.drain()
    assert handed == [(COPY, 4)] and standbys.taken == []
