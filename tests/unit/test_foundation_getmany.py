"""The worker's ``getmany`` yields what Faust's yields (issue 16: it reads each partition's end
offset for the monitor once per fetch, not once per record).

Both are run on the same stand-in consumer (no network): Faust's own ``Consumer.getmany``
(faust-streaming 0.15.3) and ``_Consumer.getmany``, over the same fetch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from pipeline.faust_app import _Consumer

INBOUND = [TP("care.inbound", p) for p in range(3)]
COPY = TP("care-router-cases-changelog", 1)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def dev(self, msg: str, *args: Any) -> None:
        self.lines.append(msg % args if args else msg)

    def warning(self, msg: str, *args: Any) -> None:
        self.lines.append(msg % args if args else msg)


@dataclass
class Fetch:
    """What ``getmany`` reads of its consumer: one fetch of ``records``."""

    records: dict[TP, list[int]]
    active: set[TP] | None
    flow_active: bool = True
    should_stop: bool = False
    #: After this many records handed out, the consumer's generation changes (a rebalance).
    rebalance_after: int | None = None
    seeks: int = 0
    seek_fails: bool = False
    handed: int = 0
    highwaters_read: int = 0
    _buffered_partitions: set[TP] = field(default_factory=set)
    scheduler: DefaultSchedulingStrategy = field(default_factory=DefaultSchedulingStrategy)
    log: _Log = field(default_factory=_Log)
    app: Any = field(
        default_factory=lambda: SimpleNamespace(
            consumer_generation_id=1, monitor=SimpleNamespace(tp_end_offsets={})
        )
    )

    def __post_init__(self) -> None:
        ends = self.app.monitor.tp_end_offsets
        self.app.monitor.track_tp_end_offset = ends.__setitem__

    async def _wait_next_records(
        self, timeout: float
    ) -> tuple[dict[TP, list[int]] | None, set[TP] | None]:
        return dict(self.records), self.active

    def _to_message(self, tp: TP, record: int) -> tuple[TP, int]:
        self.handed += 1
        if self.rebalance_after is not None and self.handed >= self.rebalance_after:
            self.app.consumer_generation_id = 2
        return tp, record

    def highwater(self, tp: TP) -> int:
        self.highwaters_read += 1
        return 100 + tp.partition

    async def perform_seek(self) -> None:
        self.seeks += 1
        if self.seek_fails:
            raise RuntimeError("broker down")


GetMany = Callable[[Any, float], AsyncIterator[tuple[TP, Any]]]


async def _read(getmany: GetMany, fetch: Fetch) -> list[tuple[TP, Any]]:
    return [item async for item in getmany(fetch, 1.0)]


def _both(**kwargs: Any) -> tuple[Fetch, Fetch]:
    def records() -> dict[TP, list[int]]:
        return {**{tp: [10 * tp.partition + i for i in range(3)] for tp in INBOUND}, COPY: [7, 8]}

    return Fetch(records(), **kwargs), Fetch(records(), **kwargs)


@pytest.mark.parametrize(
    "active", [None, {*INBOUND[:2], COPY}], ids=["every-partition", "one-not-active"]
)
async def test_a_fetch_yields_what_fausts_yields_and_the_same_end_offsets(
    active: set[TP] | None,
) -> None:
    theirs, ours = _both(active=active)
    expected = await _read(faust_consumer.Consumer.getmany, theirs)
    assert await _read(_Consumer.getmany, ours) == expected
    assert len(expected) == (11 if active is None else 8)
    assert expected[:2] == [(INBOUND[0], (INBOUND[0], 0)), (COPY, (COPY, 7))]  # round robin
    ends = ours.app.monitor.tp_end_offsets
    assert ends == theirs.app.monitor.tp_end_offsets
    assert ours.highwaters_read == len(ends) < theirs.highwaters_read == len(expected)


async def test_a_rebalance_during_a_fetch_stops_it_where_fausts_stops() -> None:
    theirs, ours = _both(active=None, rebalance_after=4)
    expected = await _read(faust_consumer.Consumer.getmany, theirs)
    assert await _read(_Consumer.getmany, ours) == expected
    assert len(expected) == 4


async def test_a_fetch_while_the_flow_is_stopped_seeks_and_yields_nothing() -> None:
    theirs, ours = _both(active=None, flow_active=False)
    assert await _read(faust_consumer.Consumer.getmany, theirs) == []
    assert await _read(_Consumer.getmany, ours) == []
    assert theirs.seeks == ours.seeks == 1
    assert ours.log.lines == theirs.log.lines


async def test_a_seek_that_fails_is_logged_and_the_fetch_yields_nothing() -> None:
    theirs, ours = _both(active=None, flow_active=False, seek_fails=True)
    assert await _read(faust_consumer.Consumer.getmany, theirs) == []
    assert await _read(_Consumer.getmany, ours) == []
    assert ours.log.lines == theirs.log.lines
    assert "exception performing seek when flow not active broker down" in ours.log.lines
