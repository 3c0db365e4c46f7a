"""A fetch that a rebalance overtook gives its records back (issue 11, a new owner's first
record far past the committed offset).

Faust asks its consumer thread for records and waits; at a rebalance it cancels the waiting
task, but the call in the thread goes on, hands over what aiokafka fetched for the new
assignment (moving aiokafka's position past it) to a cancelled future. ``_ConsumerThread``
seeks those records back instead. The aiokafka consumer here is a stand-in: the fetch is
Faust's own ``_fetch_records``, the rebalance is the thread's callback counter moving while
the fetch waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from pipeline.faust_app import _ConsumerThread

KEPT = TopicPartition("replies", 2)
MOVED = TopicPartition("replies", 3)


@dataclass
class Record:
    offset: int


@dataclass
class Subscriptions:
    @contextlib.contextmanager
    def fetch_context(self) -> Iterator[None]:
        yield


@dataclass
class Fetcher:
    """``fetched_records``: the records aiokafka hands over; a rebalance while it waits."""

    thread: _ConsumerThread
    records: dict[TopicPartition, list[Record]]
    rebalance: bool
    _closed: bool = False
    _subscriptions: Subscriptions = field(default_factory=Subscriptions)

    async def fetched_records(
        self, partitions: Any, timeout: float = 0, max_records: Any = None
    ) -> Any:
        if self.rebalance:
            await self.thread.on_partitions_assigned({KEPT})
        return self.records


@dataclass
class Kafka:
    """The aiokafka consumer: what is assigned now, and the seeks asked of it."""

    _fetcher: Any = None
    _closed: bool = False
    sought: list[tuple[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return {KEPT}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought.append((tp, offset))


def thread_and_kafka(rebalance: bool) -> tuple[_ConsumerThread, Kafka]:
    thread = _ConsumerThread.__new__(_ConsumerThread)  # only its fetch path is used
    thread.consumer = SimpleNamespace(flow_active=True)  # type: ignore[assignment]
    records = {KEPT: [Record(o) for o in range(64, 186)], MOVED: [Record(9), Record(10)]}
    kafka = Kafka()
    kafka._fetcher = Fetcher(thread, records, rebalance)
    return thread, kafka


async def test_a_fetch_overtaken_by_a_rebalance_gives_its_records_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def faust_part(self: Any, assigned: set[Any], generation_id: int = 0) -> None:
        return None  # Faust's own callback: it tells the main thread's consumer

    # our subclass counts the callback, then hands over to Faust's
    monkeypatch.setattr(AIOKafkaConsumerThread, "on_partitions_assigned", faust_part)
    thread, kafka = thread_and_kafka(rebalance=True)
    got = await thread._fetch_records(kafka, {KEPT, MOVED}, timeout=1.0)
    assert got == {}
    # aiokafka reads the kept partition again from the first record handed over; the
    # partition that went to another worker is not ours to seek
    assert kafka.sought == [(KEPT, 64)]


async def test_a_fetch_without_a_rebalance_is_handed_over() -> None:
    thread, kafka = thread_and_kafka(rebalance=False)
    got = await thread._fetch_records(kafka, {KEPT, MOVED}, timeout=1.0)
    assert [r.offset for r in got[KEPT]] == list(range(64, 186)) and kafka.sought == []
