"""The publisher refuses to go on acknowledging once the broker lost records it acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import struct
import warnings
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.conn import AIOKafkaConnection
from aiokafka.partitioner import DefaultPartitioner

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


class HalfBroker:
    """Takes connections and answers ApiVersions (v0), but never a Metadata request: an
    aiokafka client's start waits in its bootstrap step, on a connection it holds outside the
    client (aiokafka 0.14)."""

    def __init__(self) -> None:
        self.asked_metadata = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                request = await reader.readexactly(size)
                api_key, _, correlation = struct.unpack(">hhi", request[:8])
                if api_key == 3:  # Metadata: never answered
                    self.asked_metadata.set()
                elif api_key == 18:  # ApiVersions v0: ApiVersions, Metadata, Produce
                    apis = [(18, 0, 0), (3, 0, 1), (0, 0, 2)]
                    body = struct.pack(">ihi", correlation, 0, len(apis))
                    body += b"".join(struct.pack(">hhh", *a) for a in apis)
                    writer.write(struct.pack(">i", len(body)) + body)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()


@pytest.fixture
async def half_broker() -> AsyncIterator[HalfBroker]:
    broker = HalfBroker()
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    broker.port = server.sockets[0].getsockname()[1]
    try:
        yield broker
    finally:
        server.close()


async def test_a_publisher_cancelled_while_starting_leaves_no_connection_open(
    half_broker: HalfBroker,
) -> None:
    # An adapter's request cancelled while its publisher connects (a client hanging up, a
    # shutdown): aiokafka's bootstrap connection used to stay open, found only by the garbage
    # collector at the end of a test session, its loop closed.
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{half_broker.port}", produce_timeout_s=0.5
    )
    pub = Publisher(settings)
    sending = asyncio.create_task(pub.enqueue("t", "k", b"v"))
    await half_broker.asked_metadata.wait()
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError, BrokerUnavailable):
        await sending
    await pub.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    unclosed = [str(w.message) for w in caught if "Unclosed AIOKafkaConnection" in str(w.message)]
    still_open = [
        c
        for c in gc.get_objects()
        if isinstance(c, AIOKafkaConnection) and c.port == half_broker.port and c.connected()
    ]
    assert unclosed == [] and still_open == [], (unclosed, still_open)


def _random_keys(count: int) -> list[bytes]:
    rng = random.Random(16)
    keys = [f"c{n:05d}".encode() for n in range(count // 2)]  # customer-id-like
    keys += [rng.randbytes(rng.randrange(0, 64)) for _ in range(count // 2)]  # any bytes
    return [*keys, "Клиент-42".encode(), b""]


@contextlib.asynccontextmanager
async def unstarted(**kw: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A producer never started (its metadata set by the test), closed at the end."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **kw)
    try:
        yield producer
    finally:
        await producer.stop()


async def test_the_remembered_partition_is_the_producers_own_choice() -> None:
    # The producer's own partitioning (aiokafka's DefaultPartitioner through
    # AIOKafkaProducer._partition) is the reference: tables are co-partitioned by key bytes.
    async with unstarted() as producer:
        _check_against_the_producer(producer)


def _check_against_the_producer(producer: AIOKafkaProducer) -> None:
    counts = {"t1": 1, "t3": 3, "t8": 8, "t12": 12, "t32": 32}
    cluster = producer.client.cluster
    cluster.partitions_for_topic = lambda t: set(range(counts[t]))  # type: ignore[method-assign]
    cluster.available_partitions_for_topic = cluster.partitions_for_topic  # type: ignore[method-assign]
    pub = Publisher(Settings(), producer)
    for topic in counts:
        for key in _random_keys(600):
            expected = producer._partition(topic, None, key, None, key, None)
            assert pub._partition(producer, topic, key) == expected  # computed
            assert pub._partition(producer, topic, key) == expected  # remembered
    assert pub._partition(producer, "t8", None) is None  # no key: the producer's random pick


async def test_the_partition_cache_is_bounded_and_stays_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipeline.bus.PARTITION_CACHE_SIZE", 50)
    async with unstarted() as producer:
        producer.client.cluster.partitions_for_topic = lambda t: set(range(8))  # type: ignore[method-assign]
        pub = Publisher(Settings(), producer)
        for key in _random_keys(400):
            expected = DefaultPartitioner()(key, list(range(8)), [])
            assert pub._partition(producer, "t", key) == expected
            assert len(pub._partitions) <= 50


async def test_no_partition_is_chosen_without_metadata_or_with_another_partitioner() -> None:
    async with unstarted() as producer, unstarted(partitioner=lambda k, a, v: a[-1]) as other:
        pub = Publisher(Settings(), producer)
        assert pub._partition(producer, "unknown-topic", b"k") is None  # the producer waits
        other.client.cluster.partitions_for_topic = lambda t: {0, 1}  # type: ignore[method-assign]
        assert pub._partition(other, "t", b"k") is None
