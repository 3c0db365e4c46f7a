"""Faust's table recovery with one race closed (faust-streaming 0.15.3, pinned).

At the end of a rebalance, Faust's ``Recovery.on_recovery_completed`` resumes the stream
partitions, seeks them to their committed offsets, and only then calls
``app.flow_control.resume()`` — which **clears every agent's queue**. Records fetched in
between were put in a queue and then thrown away, while the fetch position had already
moved past them, so this worker never processed them (nothing is committed past them
either, so only the next restart would). It bites a worker that restarts while records are
arriving: in our restart test a department's TaskUpdate vanished this way and the case
was never answered (the test hung in about one run of five on the embedded broker).

``RouterRecovery`` does the same steps in another order, all while the stream partitions are
still paused (Faust pauses every assigned partition when a rebalance starts): it clears the
queues *first*, so nothing fetched for the new assignment can be cleared; seeks every stream
partition to its committed offset, or to its first offset when nothing is committed (Faust
left those where their last fetch stopped); and only then resumes them. Faust resumes them
before its seek, while its flow already runs for the changelogs: the fetcher handed the
agents records that the seeks then fetched again, so every record that reached a topic while
a worker started was processed two or three times (issue 11, start-up replay). Records may
still be seen twice after a restart or a rebalance (those past the committed offset); every
stage is idempotent on replay (docs/ARCHITECTURE.md, Invariants, 3).

Recovery also reads each changelog **to its real end**. Faust stops restoring a table at the
end offset that ListOffsets reports, and Tansu under-reports it (the last batch's base offset +
1; docs/ARCHITECTURE.md, Broker): a worker taking over a partition lost the last marks its
previous owner wrote — the delivered-ids table among them, so replies were sent twice after a
rebalance. ``RouterRecovery`` writes a *fence* to every active changelog partition (a tombstone
for a key no table uses, acks=all) and restores up to the offset the broker gave the fence,
which is exact on any broker; every mark the old owner wrote before it lost the partition lies
before the fence.

The tables' changelog records (a restore's, and a standby copy's after it:
``PIPELINE_TABLE_STANDBY_REPLICAS``) are applied by ``take_changelog`` from the worker's fetch
loop, as Faust's loop would apply them but without its per-record queue and waits (issue 16).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any, NamedTuple, cast

import orjson
from faust.exceptions import KeyDecodeError, ValueDecodeError
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.utils.tracing import finish_span

__all__ = ["FENCE_KEY", "NotReady", "RouterRecovery", "RouterTableManager"]

#: Key of the fence records (raw UTF-8, as the tables' keys are, ``Context.table``): no
#: table uses it, and its tombstone value deletes nothing.
FENCE_KEY = b"\x00recovery-fence"


class _Change(NamedTuple):
    """A plain table's changelog record (``plain_records``), decoded as Faust's changelog
    channel decodes it, with what applying it reads: the key, the value, and the record."""

    key: str | None
    value: Any
    message: Any

    @classmethod
    def of(cls, message: Any) -> _Change:
        """The record's UTF-8 key and JSON value (None: a tombstone); Faust's decoding
        errors (the record is then left to Faust's path, which reports it)."""
        key, value = message.key, message.value
        try:
            key = None if key is None else key.decode()
        except (AttributeError, UnicodeDecodeError) as exc:
            raise KeyDecodeError(str(exc)) from exc
        try:
            value = None if value is None else orjson.loads(value)
        except (TypeError, ValueError) as exc:  # orjson's JSONDecodeError is a ValueError
            raise ValueDecodeError(str(exc)) from exc
        return cls(key, value, message)


def plain_records(table: Any, channel: Any) -> bool:
    """Whether ``table``'s changelog records are the tables' of ``Context.table``: str keys
    written raw, str values as JSON, no callback per record. Those ``_Change.of`` decodes
    (1.6 µs against Faust's 7.4 for a 1 KB value in-process: its codec registry, settings
    lookups and an ``Event``)."""
    schema = channel.schema
    return (
        (schema.key_type, schema.key_serializer) == (str, "raw")
        and (schema.value_type, schema.value_serializer) == (str, "json")
        and getattr(table, "_on_changelog_event", None) is None
    )


class RouterRecovery(Recovery):
    """``Recovery`` that clears the queues and seeks every stream partition before it resumes
    them, and restores every active changelog partition up to a fence it wrote."""

    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        fences = await self.write_fences(tps)
        # Records before the fence that Faust's highwater (the last offset ListOffsets gave)
        # would have left unread.
        short = {tp: offset - 1 - int(destination.get(tp, -1)) for tp, offset in fences.items()}
        missed = {tp: n for tp, n in short.items() if n > 0}
        for tp, offset in fences.items():
            # Faust's highwater is the last offset to read: the fence's own.
            destination[tp] = max(int(destination.get(tp, -1)), offset)
        if fences:
            self.log.info(
                "Changelogs fenced: restoring up to %s; the reported end was short on %d of %d "
                "partitions, by %d records",
                dict(sorted(fences.items())),
                len(missed),
                len(fences),
                sum(missed.values()),
            )

    async def write_fences(self, tps: set[TP]) -> dict[TP, int]:
        """Write a fence to each changelog partition; the offset the broker gave each one."""
        producer = cast(Any, self.app).producer
        metas = await asyncio.gather(
            *(
                producer.send_and_wait(tp.topic, FENCE_KEY, None, tp.partition, None, None)
                for tp in sorted(tps)
            )
        )
        return {tp: int(meta.offset) for tp, meta in zip(sorted(tps), metas, strict=True)}

    async def take_changelog(self, tp: TP, message: Any) -> bool:
        """Apply a table's changelog record here, as Faust's ``_slurp_changelogs`` applies it
        (the same offsets, buffers and signals), instead of handing it to the conductor, the
        changelog queue and that loop: an active partition's record while a restore is under
        way, or a standby copy's record after it. False (nothing done): Faust's path takes it
        (any other record, or one it cannot decode).

        That path costs every record the conductor's waits for flow control and producer
        backpressure (which concern the agents' streams, not a table), a queue put, and in
        that loop an ``asyncio.wait_for`` (a task and a timer) and two log lines formatted
        whether or not they are logged. A worker's CPU per record, fetch included
        (``bench/changelog_apply.py``): for a standby copy 51–69 µs that way, 29–31 µs this
        way; restored, 60–66 µs against 30–43 µs. With two workers they read about four
        standby records per message (issue 16); a restore reads every record of its
        partitions' changelogs. The tables of ``Context.table`` are decoded here
        (``_Change.of``), not by Faust's changelog channel, and a restore counts what every
        partition has left (``need_recovery``) only once the record's own partition has
        nothing left: in-process, this method's own CPU per standby record fell from ~11 µs
        to ~3 µs with both.
        """
        if self.in_recovery:
            if tp not in self.active_tps:
                return False
        elif tp not in self.standby_tps:
            return False
        table = self.tp_to_table.get(tp)
        channel = None if table is None else self.tables._channels.get(table)
        if table is None or channel is None:
            return False
        try:
            if plain_records(table, channel):
                event: Any = _Change.of(message)
            else:
                event = await channel.decode(message, propagate=True)
        except (KeyDecodeError, ValueDecodeError):
            return False  # Faust's path decodes it again and reports it its way
        try:
            if self.in_recovery:
                await self._restore(tp, table, event, message.offset)
            else:
                await self._apply(
                    tp, table, event, message.offset, self.standby_offsets, standby=True
                )
            self._standbys_maybe_ready()
        except Exception as exc:  # noqa: BLE001 — as Faust's loop: logged, the next goes on
            self.log.warning("Error in recovery %r (changelog record %s)", exc, message)
        return True

    async def _apply(
        self, tp: TP, table: Any, event: Any, offset: int, offsets: Any, *, standby: bool
    ) -> bool:
        """Faust's loop's steps for one record: buffered unless seen, the buffer applied
        when full (the table's standby or recovery buffer size); whether it was new."""
        size = self.buffer_sizes.get(tp)
        if size is None:
            size = table.standby_buffer_size if standby else table.recovery_buffer_size
            self.buffer_sizes[tp] = size
            if standby:
                self._standby_events_received_at[tp] = monotonic()
        seen = offsets.get(tp)
        if seen is not None and offset <= seen:
            return False
        offsets[tp] = offset
        buffer = self.buffers[table]
        buffer.append(event)
        await table.on_changelog_event(event)
        if len(buffer) >= size:
            table.apply_changelog_batch(buffer)
            buffer.clear()
            self._last_flush_at = monotonic()
        return True

    async def _restore(self, tp: TP, table: Any, event: Any, offset: int) -> None:
        """A restored record (``_apply``), Faust's timing of the restore, and its end once
        every active partition reached its highwater."""
        self._active_events_received_at[tp] = monotonic()
        if await self._apply(tp, table, event, offset, self.active_offsets, standby=False):
            now = monotonic()
            last, times = self._last_active_event_processed_at, self._processing_times
            if last is not None:
                times.append(now - last)
                if len(times) > self.num_samples_required_for_estimate:
                    times.popleft()
            self._last_active_event_processed_at = now
        if self.in_recovery and self._reached_end(tp) and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            if self._actives_span is not None:
                self._actives_span.set_tag("Actives-Ready", True)
            # A pulse, as Faust's loop makes it (it clears the event before its next record):
            # the recovery waiting now wakes, and the next rebalance's restore waits anew.
            self.signal_recovery_end.set()
            self.signal_recovery_end.clear()

    def _reached_end(self, tp: TP) -> bool:
        """Whether ``tp`` has nothing left to restore, as ``active_remaining`` counts it: only
        then can ``need_recovery`` (which counts every active partition) be False."""
        high, seen = self.active_highwaters.get(tp), self.active_offsets.get(tp)
        return high is None or seen is None or high - seen <= 0

    def _standbys_maybe_ready(self) -> None:
        ready = self._standbys_span is None and self.tables.standbys_ready
        if not ready and self.standbys_caught_up():
            if self._standbys_span is not None:
                finish_span(self._standbys_span)
                self._standbys_span = None
            self.tables.on_standbys_ready()

    def standbys_caught_up(self) -> bool:
        """Every standby partition read up to the end it had when the rebalance ended.

        Faust's loop sums ``standby_remaining()`` instead: that raises (and its loop logs a
        warning per record) while a partition with records has none read yet, and a partition
        read past that end makes up for one still behind."""
        offsets = self.standby_offsets
        return not any(
            end is not None and end >= 0 and (offsets.get(tp) is None or offsets[tp] < end)
            for tp, end in self.standby_highwaters.items()
        )

    async def seek_fresh(self, consumer: Any, streams: set[TP]) -> None:
        """Seek each stream partition with nothing committed to its first offset, or to the
        group's floor (``faust_app._Consumer.floor``) when it committed there before.

        Faust's ``perform_seek`` seeks only partitions with a committed offset above 0; one
        kept through a rebalance with nothing committed yet would go on from where its fetch
        stopped, past the records the queue clear dropped. Read from its first offset instead
        (duplicates are harmless, gaps are not); the consumer commits from there. A reading
        that answered nothing mid-rebalance does not send a partition back to its first
        offset when the group is known to have committed further.
        """
        committed = cast(Any, consumer)._committed_offset
        fresh = sorted(tp for tp in streams if not committed.get(tp))
        if not fresh:
            return
        firsts = await consumer.earliest_offsets(*fresh)
        floor = getattr(consumer, "floor", {})
        for tp in fresh:
            first, known = int(firsts.get(tp) or 0), int(floor.get(tp, 0))
            if known > first:
                self.log.warning(
                    "%s[%d]: committed offset read back empty, the group committed %d: read "
                    "from there, not from %d",
                    tp.topic,
                    tp.partition,
                    known,
                    first,
                )
            await consumer.seek(tp, max(first, known))

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Faust 0.15.3's ``on_recovery_completed``, with the queues cleared first and the
        stream partitions resumed only after every seek."""
        consumer = self.app.consumer
        app = cast(Any, self.app)
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s",
                app.consumer_generation_id,
                generation_id,
            )
            return
        # Clear the queues before any stream partition of the new assignment is fetched, not
        # after.
        app.flow_control.resume()
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            await self._wait(
                self.seek_fresh(consumer, streams), timeout=app.conf.broker_request_timeout
            )
        # Only now are the stream partitions fetched. Faust paused them at the assignment but
        # its flow already runs (the restore resumed it for the changelogs): resumed before
        # the seeks, the fetcher handed the agents records from where aiokafka stood while
        # ``perform_seek`` asked the broker for each committed offset, and the seeks then
        # fetched them again — every record that reached a topic while a worker started was
        # processed twice by classify and three times by route (issue 11, start-up replay).
        # A paused partition's prefetched records stay in aiokafka's buffer, which a seek
        # drops, so nothing from before a seek reaches the agents.
        consumer.resume_partitions(streams)
        consumer.resume_flow()
        self.completed.set()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class RouterTableManager(TableManager):
    """``TableManager`` that recovers with ``RouterRecovery``."""

    @property
    def recovery(self) -> Recovery:
        """Recovery service used by this table manager."""
        if self._recovery is None:
            self._recovery = RouterRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class NotReady:
    """How long a worker has been not ready (joining its group, restoring its tables), as its
    probes see it: the clock starts at the first probe that finds it busy and stops at the
    first that finds it ready. A worker stuck there answers ``/readyz`` 503, which only takes
    it out of a rollout; ``/healthz`` turns 503 too once this passes ``recovery_timeout_s``,
    so a supervisor restarts it."""

    def __init__(self) -> None:
        self.since: float | None = None

    def observe(self, busy: bool, now: float) -> float:
        """Seconds not ready so far (0 when ready)."""
        if not busy:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = now
        return now - self.since
