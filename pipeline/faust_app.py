"""``RouterApp``: the faust.App of the workers, with Faust's fetch wait made a setting and a
consumer that commits only what the agents acknowledged and hands each record over without
Faust's per-record race (``_Consumer._drain_messages``).

Faust hard-codes the consumer's ``fetch_max_wait_ms`` at 1500 ms, which on the embedded broker
adds over a second per hop (docs/ARCHITECTURE.md, Broker). Kept apart from ``pipeline.app``
(which imports every stage) so a bare baseline app (bench/pipeline_throughput.py) imports
only this.

**Commits (faust-streaming 0.15.3, pinned).** Faust's consumer computes the offset to commit
from the offsets the agents acknowledged, and three of its rules can commit past a record that
was never processed (docs/ARCHITECTURE.md, Recovery; issue 11's silent loss):

- a jump between the last offset it handed to the agents and the next fetched one is a *gap*
  that counts as acknowledged (``_add_gap``): meant for compaction and transaction markers,
  but a fetch position that got ahead of what was delivered (a seek racing a fetch at the end
  of a rebalance) makes it skip real records;
- with nothing committed yet (committed offset None or 0) any acknowledged run is committed,
  wherever it starts (``_new_offset`` tests ``if committed_offset:``);
- with a committed offset C, a run starting at C + 1 is committed although C is not
  acknowledged (``min(acked) - committed > 1``; the committed offset is the *next* to read).

``_Consumer`` commits the end of the unbroken run of acknowledged offsets that starts at the
committed offset, or where this assignment began reading the partition (``committable``), and
counts gaps only on compacted topics, and never below the highest offset the group is known
to have committed (``floor``: read at an assignment or committed here, kept across
rebalances), so a reading that answers lower or nothing does not make it commit lower.
A record it cannot account for holds the commit back:
the lag grows and the stall detector (``pipeline.lag``) makes it loud, instead of a silent
skip. And once an agent crashed, nothing more is committed (and ``runtime.run_worker`` stops
the worker, ``RouterApp.on_agent_crash``): Faust would commit what was
acknowledged on the task error (its ``take_events`` even acknowledged a dying loop's whole
batch in a ``finally``; the agents now batch with ``stage.take_batches``, which does not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)


def committable(acked: Iterable[int], start: int | None) -> tuple[int | None, list[int]]:
    """The offset to commit for a partition and the acknowledgements left for later.

    ``start`` is the first offset not yet committed (the committed offset, or where this
    assignment began reading); None: unknown, so nothing is committed. The offset is the end
    of the unbroken run of acknowledged offsets from ``start``; None when ``start`` itself is
    not acknowledged. Offsets below ``start`` are dropped (already committed).
    """
    pending = sorted({o for o in acked if start is None or o >= start})
    if start is None:
        return None, pending
    end = start
    for offset in pending:
        if offset != end:
            break
        end += 1
    if end == start:
        return None, pending
    return end, [o for o in pending if o >= end]


def raise_floor(floor: dict[TP, int], committed: Mapping[TP, int | None]) -> None:
    """Raise each partition's floor to its committed offset (None: nothing known)."""
    for tp, offset in committed.items():
        if offset is not None and offset > floor.get(tp, 0):
            floor[tp] = offset


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    #: Rebalance callbacks seen (thread side): a fetch that saw one returns nothing.
    rebalances: int = 0

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = super()._create_worker_consumer(transport)
        wait_ms = int(getattr(self.app, "fetch_max_wait_ms", 100))
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.rebalances += 1
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.rebalances += 1
        await super().on_partitions_assigned(assigned, generation_id)

    async def _fetch_records(
        self,
        consumer: AIOKafkaConsumer,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        """Faust's fetch, except one that a rebalance overtook gives its records back.

        Faust's fetcher task asks this thread for records and waits; at a rebalance Faust
        cancels that task, but the call here goes on: aiokafka waits for the new assignment,
        then hands over what it fetched for it and moves its position past it, possibly
        after the recovery sought the partitions. The result goes to a cancelled future:
        nobody reads those records, and the next fetch starts past them (a stream's commit
        is then held back at the first, a changelog's restore misses them). Here they are
        sought back, so the next fetch reads them again. Seen in a fault run (issue 11):
        changelog records of the new assignment handed over 130 ms after it, while the
        restore was reading.
        """
        seen = self.rebalances
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        if not records or self.rebalances == seen:
            return records
        return give_back(consumer, records)


def give_back(consumer: AIOKafkaConsumer, records: Mapping[Any, list[Any]]) -> dict[Any, Any]:
    """Seek each still-assigned partition back to the first of ``records``; returns {}."""
    assigned = consumer.assignment()
    for tp, batch in records.items():
        if batch and tp in assigned:
            consumer.seek(tp, batch[0].offset)
            log.warning(
                "a fetch overtaken by a rebalance: %d records of %s[%d] from offset %d given back",
                len(batch),
                tp.topic,
                tp.partition,
                batch[0].offset,
            )
    return {}


class _Consumer(faust_aiokafka.Consumer):
    """Faust's consumer that never commits past a record the agents did not acknowledge."""

    #: Why commits stopped for good (an agent crashed); None while they flow.
    held: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Where this assignment began reading a partition with nothing committed.
        self.read_from: dict[TP, int] = {}
        #: The start offset a held-back commit was last logged for, per partition.
        self._held_back: dict[TP, int | None] = {}
        #: The highest offset the group is known to have committed per partition (read at an
        #: assignment, or committed here), kept across rebalances: nothing is committed below
        #: it, even when a later reading answers lower or nothing (issue 11: a committed
        #: offset that went back made the lag check cry "broker lost records").
        self.floor: dict[TP, int] = {}

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek(self, partition: TP, offset: int) -> None:
        """Seek, and remember the offset as where reading this partition began."""
        await super().seek(partition, offset)
        self.read_from[partition] = offset

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Forget where revoked partitions began (Faust forgets its own offsets of them)."""
        for tp in revoked:
            self.read_from.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, which raise the floor of later commits."""
        await super().perform_seek()
        raise_floor(self.floor, self._committed_offset)

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        did_commit = await super()._commit_offsets(offsets, start_new_transaction)
        if did_commit:
            raise_floor(self.floor, {tp: self._committed_offset.get(tp) for tp in offsets})
        return bool(did_commit)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap.get(tp)
        if gaps:  # compacted topics only (see _add_gap): Faust's rule, kept
            top = max(acked)
            for interval in sorted(gaps.overlap(0, top), key=lambda i: i.begin):
                acked.extend(range(interval.begin, interval.end))
            gaps.chop(0, max(acked) + 1)
        committed = self._committed_offset[tp]
        start = committed if committed is not None else self.read_from.get(tp)
        floor = self.floor.get(tp)
        if start is not None and floor is not None and start < floor:
            start = floor  # the group committed up to here already: never commit below it
        offset, rest = committable(acked, start)
        self._acked_index[tp].difference_update(set(acked) - set(rest))
        acked[:] = rest
        if offset is None and rest and self._held_back.get(tp) != start:
            # Faust would have committed here (issue 11's silent loss): say so, once.
            self._held_back[tp] = start
            self.log.warning(
                "%s[%d]: offsets %d.. acknowledged but %s not: commit held back",
                tp.topic,
                tp.partition,
                rest[0],
                "where reading began is unknown" if start is None else f"offset {start}",
            )
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        compacted = cast(RouterApp, self.app).compacted_topics
        if tp.topic in compacted:
            await faust_aiokafka.Consumer._add_gap(self, tp, offset_from, offset_to)
            return
        # Offsets are contiguous on a topic that is not compacted (we write no transactions):
        # the fetch position ran ahead of what reached the agents, or (at a recovery) the
        # seek set Faust's read offset back below records it had already handed over. Not
        # counted as processed: if they were handed over they are acknowledged for real, if
        # not the commit stays behind them and the stall detector says so.
        self.log.warning(
            "fetched offset %d of %s[%d] after %d: offsets %d..%d not counted as processed",
            offset_to,
            tp.topic,
            tp.partition,
            offset_from - 1,
            offset_from,
            offset_to - 1,
        )

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's ``Consumer.getmany`` (faust-streaming 0.15.3): a fetch's records, round
        robin over the topics, while the flow is active and the generation unchanged.

        Faust reads each partition's end offset for its monitor (``track_tp_end_offset``)
        before every record, through the consumer thread's delegate: ~a fifth of its
        ``getmany`` in a worker applying standby copies (py-spy of
        ``bench/changelog_apply.py``). Here once per partition and fetch, after its records:
        the monitor keeps only the latest end offset anyway. Nothing of the pipeline reads it
        (its lag check asks the broker, ``pipeline.lag``).
        """
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()
            except Exception as exc:  # noqa: BLE001 — as Faust: logged, the next fetch goes on
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        app, to_message, buffered = self.app, self._to_message, self._buffered_partitions
        read: set[TP] = set()
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or app.consumer_generation_id != generation_id:
                break
            if active_partitions is None or tp in active_partitions or tp in buffered:
                read.add(tp)
                yield tp, to_message(tp, record)
        track = app.monitor.track_tp_end_offset  # not reached if the reader stopped early
        for tp in read:
            track(tp, self.highwater(tp))

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (faust-streaming 0.15.3, ``Consumer._drain_messages``), handing
        each record to the agents' queues directly.

        Faust hands each record over inside ``wait_first(callback(message),
        suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per record, ~24 µs of CPU
        against ~4 here on uvloop (``bench/consumer_handoff.py``), paid by every record a
        worker reads, the standby copies' changelog records included (issue 16). The race
        only matters while a record waits (a full queue, the flow suspended), and whatever
        stops the flow (a rebalance, a worker stopping: ``App._stop_consumer``) then stops
        the fetcher, which cancels this loop and with it that wait. A cancelled hand-over
        does not count its record as read (Faust's did); after a rebalance the recovery
        seeks every stream partition to its committed offset anyway (``RouterRecovery``).

        The loop still gives the event loop a turn after each record, as Faust's race did.
        Handed over in runs of 100 (Faust yields every 100 records besides), a fetch ran far
        ahead of busy agents, and the one-worker pipeline measured no cheaper and likely
        costlier per message (ARCHITECTURE.md, Throughput). A table's changelog record (a
        restore's, a standby copy's) is applied here by the recovery
        (``RouterRecovery.take_changelog``), not handed to the agents' conductor and Faust's
        changelog queue. Everything else is Faust's.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        recovery: Any = getattr(self.app.tables, "recovery", None)
        take_changelog = getattr(recovery, "take_changelog", None)  # RouterRecovery's
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(faust_consumer.CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)  # getmany may return at once, again and again
                if not self.should_stop:
                    async for tp, message in ait:
                        await asyncio.sleep(0)  # the agents run between records (see above)
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            if (
                                take_changelog is not None
                                and (tp in recovery.standby_tps or tp in recovery.active_tps)
                                and await take_changelog(tp, message)
                            ):
                                set_read_offset(tp, offset)
                                continue
                            # A jump past the last offset read (not from offset 0: Faust's rule).
                            if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await callback(message)
                            set_read_offset(tp, offset)
                    unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(faust_consumer.CONSUMER_FETCHING)

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        if self.held is not None:
            return {}
        return super()._filter_committable_offsets(tps)

    async def wait_empty(self) -> None:
        """Faust waits here (a stop, a rebalance) until every message taken is acknowledged.
        After an agent crashed, its messages never are and nothing is committed any more:
        waiting would only hold the worker's stop until the watchdog ends it."""
        if self.held is None:
            await super().wait_empty()

    async def on_task_error(self, exc: BaseException) -> None:
        """An agent crashed: commit nothing more (Faust would commit what it acknowledged),
        and tell the app (``RouterApp.on_agent_crash``: the worker stops)."""
        if self.held is None:
            self.held = f"an agent crashed: {exc!r}"
            self.log.error("%s; no offset is committed any more: restart this worker", self.held)
            hook = getattr(self.app, "on_agent_crash", None)
            if hook is not None:
                hook(self.held)


class _Producer(faust_aiokafka.Producer):
    """Faust's producer, following every table's changelog topic in its metadata.

    Once an aiokafka client was asked about any topic, it refreshes metadata only for the
    topics it was asked about; Faust's ``key_partition`` (each changelog write) reads that
    metadata without asking, so a table whose changelog this producer had not written yet
    failed with TypeError as soon as a send to another topic narrowed the set — the outputs
    through the lent producer did (b2dd511; a live-workflow test on a fresh clone).
    """

    async def on_start(self) -> None:
        await super().on_start()
        names = {t.changelog_topic.get_topic_name() for t in self.transport.app.tables.values()}
        client = self._ensure_producer().client
        if names - set(client._topics):
            await client.set_topics(set(client._topics) | names)

    async def flush(self) -> None:
        """Faust's flush (before a commit, at a revocation), after the app's ``before_flush``
        hooks: the tables' changelog records queued outside Faust (``Context``) reach this
        producer first, so the flush waits for their acks too."""
        for hook in getattr(self.transport.app, "before_flush", ()):
            await hook()
        await super().flush()


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class RouterApp(faust.App):
    """faust.App whose Kafka consumer honours ``fetch_max_wait_ms`` and commits only what
    the agents acknowledged."""

    fetch_max_wait_ms: int = 100
    #: Full names of the compacted topics (``pipeline.topics``): the only ones whose offsets
    #: may jump (see ``_Consumer._add_gap``).
    compacted_topics: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Awaited before every producer flush (``_Producer.flush``).
        self.before_flush: list[Callable[[], Awaitable[None]]] = []
        #: Called once when an agent crashed (its reason); the consumer then commits nothing
        #: more. ``runtime.run_worker`` stops the worker: mode's supervisor would restart the
        #: agent, which would go on without commits until a restart replayed all it did.
        self.on_agent_crash: Callable[[str], None] | None = None

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
