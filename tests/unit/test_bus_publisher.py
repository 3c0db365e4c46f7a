"""The publisher refuses to go on acknowledging once the broker lost records it acknowledged."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.broker import any_broker_answers, free_port
from pipeline.bus import Publisher
from pipeline.config import Settings
from pipeline.errors import BrokerUnavailable


def _acked(topic: str, partition: int, offset: int) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(SimpleNamespace(topic=topic, partition=partition, offset=offset))
    return fut


def _with_partitions(pub: Publisher, count: dict[str, int]) -> None:
    cluster = SimpleNamespace(partitions_for_topic=lambda t: set(range(count[t])))
    pub._producer = SimpleNamespace(client=SimpleNamespace(cluster=cluster))  # type: ignore[assignment]


async def test_an_offset_at_or_below_an_earlier_one_means_the_broker_lost_data() -> None:
    pub = Publisher(Settings())
    _with_partitions(pub, {"t": 2})
    for partition, offset in [(0, 5), (0, 6), (1, 0), (1, 1)]:
        pub._note_ack(_acked("t", partition, offset))
    pub.check()  # increasing per partition: fine
    pub._note_ack(_acked("t", 0, 0))  # a restarted, empty broker numbers from 0 again
    assert pub.lost is not None and "t[0]" in pub.lost
    with pytest.raises(BrokerUnavailable, match="restarted without its data"):
        pub.check()
    with pytest.raises(BrokerUnavailable):
        await pub.enqueue("t", "k", b"v")  # refused before anything is sent


async def test_a_topic_created_again_with_other_partitions_is_a_loss() -> None:
    pub = Publisher(Settings())
    count = {"t": 2}
    _with_partitions(pub, count)
    pub._note_ack(_acked("t", 0, 0))
    count["t"] = 4  # auto-created again with the broker's default
    pub._note_ack(_acked("t", 3, 0))
    assert pub.lost is not None and "4 partitions, had 2" in pub.lost


async def test_a_failed_send_is_not_a_loss() -> None:
    pub = Publisher(Settings())
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(ConnectionError("down"))
    pub._note_ack(fut)
    assert pub.lost is None


def test_no_broker_answers_on_a_closed_port_or_a_malformed_address() -> None:
    port = free_port()  # nothing listens there
    assert not any_broker_answers(f"127.0.0.1:{port}, not-an-address", timeout=0.5)
