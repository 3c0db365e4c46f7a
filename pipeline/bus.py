"""Plain aiokafka access outside Faust: topic creation, a durable publisher, a reader.

Adapters answer 2xx only after the broker acknowledged the record (acks=all); a
produce that is not acknowledged within ``produce_timeout_s`` raises
``BrokerUnavailable`` so the adapter can answer 503 with Retry-After (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.errors import BrokerError, BrokerUnavailable
from pipeline.events import Event
from pipeline.topics import all_topic_names, compacted_names

log = logging.getLogger(__name__)

#: Keys whose partition ``Publisher`` remembers (a dict cleared when full).
PARTITION_CACHE_SIZE = 200_000

#: Bytes of one partition's batch in ``Publisher``'s producer and the worker's (``app.py``;
#: aiokafka's and Faust's default: 16 KiB). A record waits while its partition's batch is
#: full: a customer's delivered mark holds up to 500 ids (~16 KB), so with the default each
#: went alone, one produce request per mark and the others waiting for it (notify's CPU per
#: reply doubled, bench/notify_stage_cpu.py --history 500); the worker's classifications and
#: case snapshots (KBs each) filled a partition's batch within a classify batch the same way.
#: Under Kafka's default max.message.bytes (1 MB); no linger, so no wait.
MAX_BATCH_BYTES = 512 * 1024


def bootstrap(settings: Settings) -> str:
    """The broker address, or a clear error when none is configured or started."""
    if not settings.kafka_bootstrap_servers:
        raise BrokerError(
            "no broker: set KAFKA_BOOTSTRAP_SERVERS or start the embedded one (pipeline.broker)"
        )
    return settings.kafka_bootstrap_servers


async def start_client(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    timeout_s: float | None = None,
) -> None:
    """Start an aiokafka client; if the start fails, times out or is cancelled, stop it
    without leaving a connection open, and raise.

    aiokafka (0.14) holds its first (bootstrap) connection outside the client while it asks
    that broker for metadata, so a start cancelled there (by a timeout around it, or its task
    cancelled) leaves that connection open for good: ``stop`` does not know it. It was found
    by the garbage collector at the end of a test session, with its loop closed. So the
    start runs shielded and is let finish (the client's own request timeout bounds it, so a
    timeout here can take up to that long again) before the client is stopped.
    """
    starting = asyncio.ensure_future(start())
    try:
        await asyncio.wait_for(asyncio.shield(starting), timeout_s)
    except BaseException:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await starting
        await stop()
        raise


async def ensure_topics(
    settings: Settings, names: Iterable[str] | None = None, departments: Sequence[str] = ()
) -> list[str]:
    """Create the given topics (default: all fixed ones + department task topics)."""
    wanted = list(names) if names is not None else all_topic_names(settings, departments)
    compacted = compacted_names(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings))
    try:
        await start_client(admin.start, admin.close)
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=n,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if n in compacted else {},
            )
            for n in wanted
            if n not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"broker not reachable to create topics: {exc!r}") from exc
    finally:
        await admin.close()
    return wanted


class Publisher:
    """Durable producer: ``send`` returns only after acks=all, else BrokerUnavailable.

    An acknowledgement is not enough when the broker lost its data: a restarted in-memory
    broker, or a topic deleted and auto-created again, acknowledges a record into a topic
    nobody reads from there. The publisher notices — an offset at or below one it was given
    before in the same partition, or a topic whose partition count changed — and from then on
    refuses every send (``lost``): the adapter answers 503 and its /healthz fails until it is
    restarted against a broker whose state is known again.

    ``producer``: a started producer lent by its owner (the worker lends its Faust app's, so
    table changelogs and outputs share produce requests); used as is, never stopped here.
    """

    def __init__(self, settings: Settings, producer: AIOKafkaProducer | None = None) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = producer
        self._borrowed = producer is not None
        self._lock = asyncio.Lock()
        #: Why this publisher stopped trusting the broker; None while it does.
        self.lost: str | None = None
        self._last_offset: dict[tuple[str, int], int] = {}
        self._partition_count: dict[str, int] = {}
        #: (partition count, key bytes) -> partition, as aiokafka's DefaultPartitioner chose.
        self._partitions: dict[tuple[int, bytes], int] = {}

    def _note_ack(self, fut: asyncio.Future[Any]) -> None:
        # A done-callback: callbacks run in the order the broker's answers resolved the
        # futures, so offsets of one partition arrive in order (an awaiting task may not).
        if fut.cancelled() or fut.exception() is not None:
            return
        meta = fut.result()
        tp = (str(meta.topic), int(meta.partition))
        offset = int(meta.offset)
        last = self._last_offset.get(tp)
        self._last_offset[tp] = offset
        if last is not None and offset <= last:
            self._lose(
                f"{tp[0]}[{tp[1]}] acknowledged offset {offset} after {last}: the topic was "
                "deleted and created again, or the broker restarted without its data"
            )
        cluster = self._producer.client.cluster if self._producer is not None else None
        parts = cluster.partitions_for_topic(tp[0]) if cluster is not None else None
        if parts:
            first = self._partition_count.setdefault(tp[0], len(parts))
            if len(parts) != first:
                self._lose(
                    f"{tp[0]} has {len(parts)} partitions, had {first}: the topic was "
                    "deleted and created again"
                )

    def batchable(self) -> bool:
        """Whether ``Batches`` can queue this publisher's records: its producer is aiokafka's
        (made here, or lent) and not a test's stand-in."""
        return self._producer is None or isinstance(self._producer, AIOKafkaProducer)

    def check(self) -> None:
        """BrokerUnavailable if the broker has lost records it acknowledged to us."""
        if self.lost is not None:
            raise BrokerUnavailable(self.lost)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            log.error("broker lost acknowledged records: %s; not publishing until restart", why)
            self.lost = why

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:  # the per-record path: no lock once started
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=bootstrap(self._settings),
                    acks="all",
                    # Each send here is awaited before the caller goes on (an adapter's 2xx,
                    # a delivered mark before its key's next delivery): a linger would only
                    # add its wait (docs/ARCHITECTURE.md, Broker).
                    linger_ms=0,
                    max_batch_size=MAX_BATCH_BYTES,
                    request_timeout_ms=int(self._settings.produce_timeout_s * 1000),
                )
                try:
                    timeout_s = self._settings.produce_timeout_s
                    await start_client(producer.start, producer.stop, timeout_s)
                except (KafkaError, OSError, TimeoutError) as exc:
                    raise BrokerUnavailable(f"broker not reachable: {exc!r}") from exc
                self._producer = producer
            return self._producer

    async def send(self, topic: str, key: str | None, event: Event) -> None:
        """Publish one event and wait for the broker's acknowledgement."""
        await self.send_raw(topic, key, encode(event))

    async def send_raw(self, topic: str, key: str | None, value: bytes | None) -> None:
        """Publish raw bytes (tests inject malformed records with this)."""
        fut = await self.enqueue(topic, key, value)
        try:
            await asyncio.wait_for(fut, self._settings.produce_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker did not acknowledge the record: {exc!r}") from exc
        self.check()

    async def enqueue(
        self, topic: str, key: str | None, value: bytes | None
    ) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves when the broker acknowledged it
        (then ``check`` that the broker has not lost records meanwhile)."""
        self.check()
        producer = await self._ensure()
        raw_key = key.encode("utf-8") if key is not None else None
        try:
            fut: asyncio.Future[Any] = await producer.send(
                topic, value=value, key=raw_key, partition=self._partition(producer, topic, raw_key)
            )
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"broker refused the record: {exc!r}") from exc
        fut.add_done_callback(self._note_ack)
        return fut

    def _partition(self, producer: AIOKafkaProducer, topic: str, key: bytes | None) -> int | None:
        """The partition the producer's default partitioner gives ``key``, remembered per key
        (its pure-Python murmur2 took ~1.5 % of a worker's CPU); None: let the producer choose
        (no key, another partitioner, or the topic's metadata not known yet).

        Tables are co-partitioned with their topics by key bytes, so this must be exactly the
        partitioner's choice: for a key it depends only on the key and the list of partition
        ids, which Kafka numbers 0..n-1, so on the key and the partition count.
        """
        partitioner = getattr(producer, "_partitioner", None)  # aiokafka's private attribute
        if key is None or not isinstance(partitioner, DefaultPartitioner):
            return None
        parts = producer.client.cluster.partitions_for_topic(topic)
        if not parts:
            return None
        cached = (len(parts), key)
        partition = self._partitions.get(cached)
        if partition is None:
            if len(self._partitions) >= PARTITION_CACHE_SIZE:
                self._partitions.clear()
            partition = self._partitions[cached] = partition_for(key, len(parts))
        return partition

    async def close(self) -> None:
        """Flush and stop the producer (a lent one: its owner does)."""
        if self._producer is not None and not self._borrowed:
            await self._producer.stop()
        self._producer = None


@dataclass
class _Open:
    """Records of one topic partition not handed to the producer yet, in one batch."""

    topic: str
    partition: int
    builder: Any  # aiokafka's BatchBuilder
    #: Resolves as the batch's acknowledgement does.
    done: asyncio.Future[Any]
    #: The output lists (``context._OUTPUTS``) waiting for ``done``, by identity.
    owners: list[list[asyncio.Future[Any]]]
    #: A record no agent's flush waits for (a timer's table write): a failure is logged.
    unowned: bool = False


class Batches:
    """Records queued per topic partition in a producer batch of their own and handed to the
    producer a batch at a time, at the loop's next turn or when a flush asks (``submit``),
    with one acknowledgement per batch.

    ``AIOKafkaProducer.send`` costs ~15-20 µs per record (a metadata check, the accumulator,
    a future per record and the broker-loss callback on each); a message of the pipeline
    produces a dozen records, about a fifth of a worker's CPU (issue 16). Appending to a
    batch is a call into aiokafka's record builder, and the batch goes with
    ``send_batch``. Records of a topic partition keep the order they were added in: a full
    batch is queued behind the ones before it, and ``submit`` hands them over in that order,
    one submitter at a time.

    A publisher that batches sends every record this way (``ready`` when ``add`` cannot
    yet): the broker-loss check (``Publisher._note_ack``) needs the acknowledgements in the
    order the broker gave them, and a batch's resolves a loop turn after a single record's.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._open: dict[tuple[str, int], _Open] = {}
        self._queued: list[_Open] = []
        self._handing: asyncio.Future[None] | None = None

    def __bool__(self) -> bool:
        return bool(self._queued)

    def add(
        self,
        topic: str,
        key: str | None,
        value: bytes | None,
        outputs: list[asyncio.Future[Any]] | None,
    ) -> asyncio.Future[Any] | None:
        """Queue one record and return its batch's ``done``, which also joins ``outputs``
        (None: nobody waits for it, a failure is logged). None when it cannot be queued yet
        (no producer started, the topic's partitions not known: ``ready`` first) or at all
        (too large for a produce request: ``Publisher.enqueue`` refuses it)."""
        pub = self._publisher
        producer = pub._producer
        if producer is None:
            return None
        raw_key = key.encode("utf-8") if key is not None else None
        partition = pub._partition(producer, topic, raw_key) if raw_key is not None else None
        if partition is None:
            parts = producer.client.cluster.partitions_for_topic(topic)
            if raw_key is not None or not parts:
                return None
            partition = random.choice(sorted(parts))  # no key: any partition, as aiokafka's
        limit = getattr(producer, "_max_request_size", None)
        near = limit is not None and len(value or b"") > limit - 1024
        if near and DefaultRecordBatchBuilder.estimate_size_in_bytes(raw_key, value, []) > limit:
            return None
        slot = self._open.get((topic, partition))
        if slot is None or slot.builder.append(timestamp=None, key=raw_key, value=value) is None:
            slot = self._new(topic, partition, producer)
            slot.builder.append(timestamp=None, key=raw_key, value=value)
        owners = slot.owners
        if outputs is None:
            slot.unowned = True
        elif not (owners and owners[-1] is outputs) and not any(o is outputs for o in owners):
            owners.append(outputs)
            outputs.append(slot.done)
        return slot.done

    async def ready(self, topic: str) -> None:
        """Start the producer and learn the topic's partitions, so ``add`` can queue its
        records (BrokerUnavailable if the broker cannot be reached)."""
        producer = await self._publisher._ensure()
        try:
            await producer.partitions_for(topic)
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"no metadata for {topic}: {exc!r}") from exc

    def _new(self, topic: str, partition: int, producer: AIOKafkaProducer) -> _Open:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        slot = _Open(topic, partition, producer.create_batch(), done, [])
        self._open[(topic, partition)] = slot
        self._queued.append(slot)
        if self._handing is None or self._handing.done():
            # handed over at the loop's next turn unless a flush does first (``submit``): a
            # timer's table writes, a task that never flushes
            self._handing = asyncio.ensure_future(self._hand_over())
        return slot

    async def submit(self) -> None:
        """Return once every queued batch is in the producer (handed over in the order they
        were started); a batch the producer refuses fails its ``done`` (the flushes waiting
        for it raise).

        One task hands them over at a time, shielded: batches hold other agents' records, so
        an agent cancelled while it waits here (a rebalance, a stop) must not leave them
        unsent, which would fail the other agents' flushes too.
        """
        while True:  # until nothing is queued or being handed over
            handing = self._handing
            if handing is not None and not handing.done():
                await asyncio.shield(handing)
            elif self._queued:
                self._handing = asyncio.ensure_future(self._hand_over())
            else:
                return

    async def _hand_over(self) -> None:
        queued: list[_Open] = []
        try:
            while self._queued:
                queued, self._queued = self._queued, []
                self._open.clear()
                while queued:
                    await self._send(queued[0])
                    queued.pop(0)
        except BaseException as exc:  # a bug or a cancelled loop: no batch waits forever
            for slot in [*queued, *self._queued]:
                if not slot.done.done():
                    slot.done.set_exception(BrokerUnavailable(f"batch not handed over: {exc!r}"))
            self._queued, self._open = [], {}
            raise

    async def _send(self, slot: _Open) -> None:
        pub = self._publisher
        if slot.unowned:
            slot.done.add_done_callback(_log_unacknowledged)
        try:
            pub.check()
            producer = await pub._ensure()
            ack = await producer.send_batch(slot.builder, slot.topic, partition=slot.partition)
        except (KafkaError, OSError, BrokerError) as exc:
            if not slot.done.done():
                slot.done.set_exception(
                    BrokerUnavailable(f"broker refused a batch of {slot.topic}: {exc!r}")
                )
            return
        ack.add_done_callback(pub._note_ack)
        ack.add_done_callback(functools.partial(settle, slot.done))


def settle(done: asyncio.Future[Any], ack: asyncio.Future[Any]) -> None:
    """Resolve ``done`` as the producer's ``ack`` resolved."""
    if done.done():
        return
    if ack.cancelled():
        done.set_exception(asyncio.CancelledError())
    elif (exc := ack.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(ack.result())


def _log_unacknowledged(fut: asyncio.Future[Any]) -> None:
    # A batch holding records no agent's flush waits for (a timer's sweep): say if it failed.
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.error("a batch of records was not acknowledged: %r", exc)


async def publish(
    settings: Settings, topic: str, records: Iterable[tuple[str | None, Event]]
) -> int:
    """Send (key, event) records durably with a short-lived producer (the CLI's publish
    commands); returns how many were sent."""
    publisher = Publisher(settings)
    sent = 0
    try:
        for key, event in records:
            await publisher.send(topic, key, event)
            sent += 1
    finally:
        await publisher.close()
    return sent


@dataclass(frozen=True)
class Record:
    """A record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@asynccontextmanager
async def reader(settings: Settings, *topics: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer reading the given topics from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    try:
        await start_client(consumer.start, consumer.stop)
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"broker not reachable to read {topics}: {exc!r}") from exc
    try:
        parts: list[TopicPartition] = []
        for t in topics:
            for p in sorted(await _partitions(consumer, t)):
                parts.append(TopicPartition(t, p))
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        yield consumer
    finally:
        await consumer.stop()


def partition_for(key: bytes, count: int) -> int:
    """The partition the producer's default partitioner gives ``key`` on a topic of ``count``
    partitions (murmur2 of the key, as Kafka's Java client; ``Publisher._partition``)."""
    every = list(range(count))
    partition: int = _DEFAULT_PARTITIONER(key, every, every)
    return partition


_DEFAULT_PARTITIONER = DefaultPartitioner()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise BrokerError(f"topic {topic!r} has no partitions (does it exist?)")


async def read_all(
    settings: Settings, topics: Sequence[str], *, idle_s: float = 1.0, max_s: float = 30.0
) -> list[Record]:
    """Read every record of the topics until nothing new arrives for ``idle_s``."""
    out: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    async with reader(settings, *topics) as consumer:
        last = loop.time()
        while loop.time() < deadline and loop.time() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                for m in msgs:
                    out.append(
                        Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp)
                    )
                    last = loop.time()
    return out


async def follow(
    settings: Settings,
    topic: str,
    handle: Callable[[Record], None],
    *,
    retry_s: float = 5.0,
) -> None:
    """Call ``handle`` for every record of ``topic``, from the beginning, forever.

    For compacted configuration topics (KB articles, the workflow) that every worker reads
    in full, outside any consumer group. ``handle`` must not raise for a bad record and must
    be idempotent: after a broker error the topic is read again from the beginning.
    """
    while True:
        try:
            await _follow_once(settings, topic, handle)
        except (KafkaError, BrokerError, OSError) as exc:
            log.warning("following %s failed (%r); reading it again in %.0f s", topic, exc, retry_s)
            await asyncio.sleep(retry_s)


async def _follow_once(settings: Settings, topic: str, handle: Callable[[Record], None]) -> None:
    async with reader(settings, topic) as consumer:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    handle(Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp))
