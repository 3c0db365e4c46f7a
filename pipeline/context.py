"""``Context``: the seam between the agents of every stage and the Faust app.

A stage's ``install(ctx, ...)`` gets one: settings, metrics, the app (to declare agents, tables,
timers), the shared output producer (``send``/``flush``) and the dead-letter path. Stages
import this module and the domain, never ``pipeline.app`` (which imports the stages).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.tables.table import Table
from faust.types import TP, AppT

from pipeline.bus import Batches, Publisher, partition_for, settle
from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.errors import BrokerUnavailable, DecodeError
from pipeline.events import DeadLetter, Event, InboundMessage, Outcome, OutcomeKind, utcnow
from pipeline.metrics import Metrics
from pipeline.stage import Action, ErrorPolicy, RawRecord, dead_letter_for

log = logging.getLogger(__name__)

#: The outputs the current task queued and its ``flush`` waits for. Per task, not per
#: Context: every agent shares the Context, and one agent's flush taking another's futures
#: let that one acknowledge its batch before its outputs were durable. Tasks an agent starts
#: (notify's concurrent deliveries) inherit the list when the agent called ``own_outputs``.
_OUTPUTS: ContextVar[list[asyncio.Future[Any]] | None] = ContextVar("outputs", default=None)


def _failure(fut: asyncio.Future[Any]) -> BaseException | None:
    return asyncio.CancelledError() if fut.cancelled() else fut.exception()


async def _wait_all(futures: list[asyncio.Future[Any]], timeout_s: float) -> int:
    """Wait until every future is done or ``timeout_s`` passed; return how many are not done.

    From the last queued to the first, waiting only for one not done yet: the broker
    acknowledges a partition's records in order, a produce request's records at once, so
    after the last few most are done and cost no callback (``asyncio.wait`` on all of them
    put a callback on each: ~1 µs per output record). Bounded whoever owns the producer
    (Faust's, lent by the worker, waits for acks as long as 20 minutes).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for fut in reversed(futures):
        if not fut.done():
            await asyncio.wait((fut,), timeout=max(deadline - loop.time(), 0.0))
    return sum(not f.done() for f in futures)


def _log_unawaited(fut: asyncio.Future[Any]) -> None:
    # A changelog record no agent flush waits for (a timer's sweep): say if it failed.
    if (exc := _failure(fut)) is not None:
        log.error("a table changelog record was not acknowledged: %r", exc)


class DirectTable(Table[str, Any]):
    """Faust's table whose changelog records go through ``Context.write_changelog``.

    Faust sends them through its own send path (~0.11 ms per record: a buffer, a task, its
    sensors); here each is handed to the outputs' producer directly, with the same key (raw),
    value encoding and partition (the producer's partitioner on the key's bytes, as Faust's
    ``use_partitioner``), and the current agent's ``flush`` waits for its ack as for an output.
    """

    write: Callable[[str, str, bytes | None], None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Each key's partition (``own_keys``), for the keys the table held at its last call.
        self._partition_of: dict[str, int] = {}
        #: While True, a write's changelog record waits (its key in ``_held``) for
        #: ``take_held``; see ``Held``.
        self.holding = False
        self._held: dict[str, None] = {}
        #: The ``Held`` taken and neither written nor dropped yet, oldest first.
        self.pending_held: list[Held] = []

    def take_held(self) -> Held:
        """Stop holding: the keys written since, each with its value now (None: deleted), to
        be written by ``Held.write`` once the outputs those values record are acknowledged."""
        held, self._held = self._held, {}
        self.holding = False
        values = {key: self.data.get(key) for key in held}
        after = self.pending_held[-1].done if self.pending_held else None
        taken = Held(self, values, after)
        self.pending_held.append(taken)
        return taken

    def write_values(self, values: dict[str, Any]) -> None:
        """The changelog records of ``values`` (None: a tombstone), in order."""
        for key, value in values.items():
            self._record(key, value)

    def _record(self, key: str, value: Any) -> None:
        """One changelog record: ``value`` in the table's value encoding, None a tombstone."""
        topic = self.changelog_topic
        data = None if value is None else topic.prepare_value(value, self.value_serializer)[0]
        self.write(topic.get_topic_name(), key, data)

    def own_keys(self) -> list[str]:
        """The keys of the partitions this worker is assigned (active): the ones a timer that
        walks the table may act on (the SLA check, the retention sweeps, ``stage.own_keys``).

        Faust's memory store keeps more in the same dict: the standby copies of the other
        workers' partitions (their changelog records, applied a thousand at a time, so they
        lag; a rebalance's end forgets them, ``on_recovery_completed``, and they come again).
        Acting on those, a worker checked another worker's cases from a stale copy, emitted
        their SLA events again and wrote its copy to the owner's changelog
        (``tests/integration/test_timers_own_partitions.py``). A key's partition is the
        producer's choice for its bytes (``bus.partition_for``), as for every changelog record
        (``use_partitioner``); it is remembered per key.
        """
        topic = self.changelog_topic.get_topic_name()
        mine = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        return [key for key, part in self._partitions().items() if part in mine]

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """After a rebalance Faust's memory store forgets the keys it restored of partitions
        no longer this worker's; this forgets the ones the worker wrote there too (here only:
        nothing is deleted from the changelog). Kept, they would be stale copies of another
        worker's state, never freed, and, should the partition come back after its new owner
        deleted a key and compaction dropped the tombstone, that key would come back too."""
        await super().on_recovery_completed(active_tps, standby_tps)
        topic = self.changelog_topic.get_topic_name()
        mine = {tp.partition for tp in active_tps if tp.topic == topic}
        gone = [key for key, part in self._partitions().items() if part not in mine]
        for key in gone:
            del self.data[key]
        count = self.partitions or 1
        self._held = {k: None for k in self._held if partition_for(k.encode(), count) in mine}
        for held in self.pending_held:  # their records must not reach another's partition
            held.values = {
                k: v for k, v in held.values.items() if partition_for(k.encode(), count) in mine
            }
        if gone:
            log.info("%s: forgot %d keys of partitions assigned elsewhere", self.name, len(gone))

    def _partitions(self) -> dict[str, int]:
        """Each key's partition (``bus.partition_for``), remembered for the keys held now."""
        known, count = self._partition_of, self.partitions or 1
        now: dict[str, int] = {}
        for key in list(self.data.keys()):
            part = known.get(key)
            now[key] = part if part is not None else partition_for(key.encode(), count)
        self._partition_of = now
        return now

    def on_key_set(self, key: str, value: Any) -> None:
        if self.holding:
            self._held[key] = None
        else:
            self._record(key, value)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: str) -> None:
        if self.holding:
            self._held[key] = None
        else:
            self._record(key, None)
        self._sensor_on_del(self, key)


class Held:
    """A table's changelog records held back (``DirectTable.holding``) until the outputs the
    values record are acknowledged.

    A stored state says what was sent: a warning emitted, an update applied, a follow-up
    appended to its case. Durable before its outputs (the changelog's partition up and an
    output's down; a worker killed between the two), it would never send them: the replayed
    input finds its effect already there and does nothing. Written after them, a crash in
    between leaves the old state, and the replay sends the outputs again under the same ids
    (invariant 3). The values are the keys' as the writer's batch left them; a table's ``Held``
    are written in the order they were taken (a key's records keep its values' order), each
    once its writer's outputs are acknowledged (``Context.flush_states``).
    """

    def __init__(
        self, table: DirectTable, values: dict[str, Any], after: asyncio.Future[None] | None
    ) -> None:
        self.table = table
        self.values = values
        self.after = after
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def write(self) -> None:
        """Write the records, once the ``Held`` taken before are written or dropped."""
        try:
            if self.after is not None:
                await asyncio.shield(self.after)
            if not self.done.done():
                self.table.write_values(self.values)
        finally:
            self.drop()

    def drop(self) -> None:
        """Not written (its outputs failed: the worker stops and reads the inputs again);
        the ``Held`` taken after it may go."""
        if not self.done.done():
            self.done.set_result(None)
        if self in self.table.pending_held:
            self.table.pending_held.remove(self)


@dataclass
class Context:
    """What every stage's agents share: settings, metrics and the app."""

    settings: Settings
    metrics: Metrics
    app: AppT
    topics: dict[str, Any] = field(default_factory=dict)
    publisher: Publisher | None = None
    #: What stages report about themselves on ``/healthz`` (e.g. the workflow in force).
    status: dict[str, Any] = field(default_factory=dict)
    #: Skip / dead-letter / stop per failure kind, for every stage (``guard``).
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)
    #: The started producer the outputs go through, lent by the app (the worker's Faust
    #: producer: changelogs and outputs share produce requests); None: a producer of its own.
    lend_producer: Callable[[], AIOKafkaProducer] | None = None
    #: The publisher of ``set_durably``'s records, with a producer of its own: aiokafka keeps
    #: one produce request in flight per broker, so on the shared producer a delivered mark
    #: waited for the request before it — longer for a worker killed after the platform
    #: accepted a reply, whose key's next owner then sends it again (issue 11).
    marks: Publisher | None = None
    #: Tables' changelog records not yet handed to the producer, in the order written.
    changelogs: deque[tuple[str, str, bytes | None, asyncio.Future[Any]]] = field(
        default_factory=deque
    )
    draining: asyncio.Task[None] | None = None
    #: Outputs and changelog records not handed to the producer yet, one batch per topic
    #: partition (``send``, ``write_changelog``; ``submit_outputs``).
    batches: Batches | None = None
    #: The tables ``table()`` made (their held records: ``drain_changelogs``).
    tables: list[DirectTable] = field(default_factory=list)

    def topic(self, name: str) -> Any:
        """The Faust topic for a logical name (raw bytes in and out)."""
        full = self.full_topic(name)
        if full not in self.topics:
            self.topics[full] = self.app.topic(
                full,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.settings.partitions,
            )
        return self.topics[full]

    def table(self, name: str) -> Any:
        """A Faust table of JSON text values keyed by str.

        ``use_partitioner``: changelog writes are partitioned by key hash, like the records
        of the stream (same default partitioner), so the table stays co-partitioned and can
        be written from batched (``stage.take_batches``) processing, which has no current event.
        That holds only when the changelog key has the stream key's bytes: Faust would
        JSON-encode a str key (``"c42"`` with its quotes hashes elsewhere than ``c42``), so
        a worker taking over a stream partition restored the marks of other customers and
        missed its own — replies sent twice and cases decided again after a rebalance
        (issue 11). Keys are written raw (UTF-8), as ``bus.Publisher`` writes the streams'.
        """
        table: Any = DirectTable(
            self.app,
            name=name,
            key_type=str,
            value_type=str,
            partitions=self.settings.partitions,
            default=None,
            use_partitioner=True,
            beacon=self.app.tables.beacon,
        )
        table.write = self.write_changelog
        self.app.tables.add(table)
        self.tables.append(table)
        hooks = getattr(self.app, "before_flush", None)  # a RouterApp's producer flush
        if hooks is not None and self.drain_changelogs not in hooks:
            hooks.append(self.drain_changelogs)
        # Faust derives the key serializer from key_type (JSON for str) and makes the changelog
        # topic (which decodes the restored records) as it registers the table: both again.
        table.key_serializer = "raw"
        table.changelog_topic = table._new_changelog_topic()
        return table

    def full_topic(self, name: str) -> str:
        """Topic name with the prefix (names that already carry it are kept)."""
        return name if name.startswith(self.settings.topic_prefix) else self.settings.topic(name)

    async def send(self, name: str, key: str | None, event: Event) -> None:
        """Queue an event (JSON bytes) for a topic; ``flush`` waits for the broker's acks.

        Outputs go through aiokafka directly (acks=all), not Faust's send path (~0.11 ms per
        record against ~0.03 ms, and a message produces a dozen records), on the producer the
        app lends (``lend_producer``), in a batch per topic partition (``bus.Batches``).
        """
        topic, value, outputs = self.full_topic(name), encode(event), self.own_outputs()
        batches = self.output_batches()
        if batches is None:  # a test's stand-in publisher
            outputs.append(await self.output_publisher().enqueue(topic, key, value))
            return
        if batches.add(topic, key, value, outputs) is None:
            await batches.ready(topic)
            if batches.add(topic, key, value, outputs) is None:  # too large: refused here
                outputs.append(await self.output_publisher().enqueue(topic, key, value))

    async def set_durably(self, table: Any, key: str, value: str) -> None:
        """``table[key] = value`` (a ``table()``), returning once the broker acknowledged it.

        A plain write's changelog record (``DirectTable``) is acknowledged by the agent's
        ``flush`` at the end of its batch (through Faust, it was queued in Faust's buffer and
        sent seconds later under load): a worker killed meanwhile had done what the value
        records (a reply the platform accepted), and the key's next owner restores the value
        before it (issue 11: the reply sent again). Here the value is set in memory and its
        changelog record (raw key, so the key's partition, and the table's value encoding)
        goes through a producer of its own (acks=all, ``marks``) and is awaited; not through
        the outputs' path as well. The two paths do not keep each other's order: write a
        key through one only.
        """
        topic = table.changelog_topic
        data, _ = topic.prepare_value(value, table.value_serializer)
        table.data[key] = value  # the store itself: no changelog record from DirectTable
        await self.mark_publisher().send_raw(topic.get_topic_name(), key, data)

    def write_changelog(self, topic: str, key: str, value: bytes | None) -> None:
        """Queue a table's changelog record (``DirectTable``); the current agent's ``flush``
        waits for its ack. Table writes are synchronous, the producer's send is not: a
        task hands the queued records over in order (``drain_changelogs``)."""
        outputs = _OUTPUTS.get()
        # Once a record waits in ``changelogs`` the ones after it wait there too: ``_drain``
        # hands the batches over before them, so each key's records keep their order.
        queued = self.changelogs or self.draining is not None
        batches = None if queued else self.output_batches()
        if batches is not None and batches.add(topic, key, value, outputs) is not None:
            return
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.changelogs.append((topic, key, value, done))
        if self.draining is None:
            self.draining = asyncio.ensure_future(self._drain())
        if outputs is not None:
            outputs.append(done)
        else:
            done.add_done_callback(_log_unawaited)

    async def _drain(self) -> None:
        try:
            while self.changelogs:
                topic, key, value, done = self.changelogs.popleft()
                try:
                    ack = await self._changelog_ack(topic, key, value)
                except Exception as exc:  # noqa: BLE001 — the record's flush raises it
                    done.set_exception(exc)
                    continue
                ack.add_done_callback(functools.partial(settle, done))
            await self.submit_outputs()
        finally:
            self.draining = None

    async def _changelog_ack(
        self, topic: str, key: str, value: bytes | None
    ) -> asyncio.Future[Any]:
        """Queue a changelog record ``write_changelog`` could not batch at once."""
        batches = self.output_batches()
        if batches is None:  # a test's stand-in publisher
            return await self.output_publisher().enqueue(topic, key, value)
        await batches.ready(topic)
        ack = batches.add(topic, key, value, [])  # its own ``done`` is what a flush waits for
        if ack is None:  # too large: refused
            return await self.output_publisher().enqueue(topic, key, value)
        return ack

    async def drain_changelogs(self) -> None:
        """Return once every queued output and changelog record is in the producer (Faust's
        producer flush, before a commit or at a revocation, runs this first). Records held
        for their outputs' acks (``Held``) are waited for (at most the produce timeout): at
        a revocation they too must reach the broker before the partition's next owner."""
        for table in self.tables:
            for held in list(table.pending_held):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(held.done), self.settings.produce_timeout_s
                    )
        await self.submit_outputs()
        while self.draining is not None:
            await asyncio.shield(self.draining)

    def output_batches(self) -> Batches | None:
        """The open batches of the output publisher, made on first use; None for a test's
        stand-in publisher or producer (its ``enqueue`` or ``send`` takes each record)."""
        if self.batches is None:
            publisher = self.output_publisher()
            if not isinstance(publisher, Publisher) or not publisher.batchable():
                return None
            self.batches = Batches(publisher)
        return self.batches

    async def submit_outputs(self) -> None:
        """Hand every batched output and changelog record to the producer (``flush`` does
        this first; their acknowledgements are what it waits for)."""
        if self.batches is not None:
            await self.batches.submit()

    def mark_publisher(self) -> Publisher:
        """The publisher of ``set_durably``, made on first use: never the lent producer."""
        if self.marks is None:
            self.marks = Publisher(self.settings)
        return self.marks

    def output_publisher(self) -> Publisher:
        """The publisher of the outputs, made on first use (with the lent producer, if any)."""
        if self.publisher is None:
            lent = self.lend_producer() if self.lend_producer is not None else None
            self.publisher = Publisher(self.settings, lent)
        return self.publisher

    @staticmethod
    def own_outputs(fresh: bool = False) -> list[asyncio.Future[Any]]:
        """The current task's queued outputs, made on first use (``fresh``: made now).

        Every agent loop starts with ``own_outputs(fresh=True)``: a task inherits its
        creator's list, which must not be another agent's; tasks the agent then starts
        (notify's concurrent deliveries) share its list, so its ``flush`` waits for them.
        """
        outputs = None if fresh else _OUTPUTS.get()
        if outputs is None:
            outputs = []
            _OUTPUTS.set(outputs)
        return outputs

    async def take_outputs(self) -> list[asyncio.Future[Any]]:
        """The current task's queued outputs, handed to the producer and over to the caller
        (its list is empty after)."""
        await self.submit_outputs()
        outputs = self.own_outputs()
        pending = outputs[:]
        outputs.clear()
        return pending

    async def flush(self, pending: list[asyncio.Future[Any]] | None = None) -> None:
        """Wait until every queued output (or ``pending``, from ``take_outputs``) is
        acknowledged; raise if any was not.

        Agents call this before they take the next record (or ``AckBehind`` before it
        acknowledges a batch), so a source record is acknowledged (and its offset
        committed) only after its outputs are durable.
        """
        if pending is None:
            pending = await self.take_outputs()
        if not pending:
            return
        late = await _wait_all(pending, self.settings.produce_timeout_s)
        errors: list[BaseException | str] = [
            e for f in pending if f.done() and (e := _failure(f)) is not None
        ]
        errors += [f"no ack within {self.settings.produce_timeout_s:g} s"] * late
        if errors:
            # /healthz answers 503 at once (not after the stall timer) until outputs flow again.
            self.status["broker"] = f"{len(errors)} output records not acknowledged"
            raise BrokerUnavailable(f"{len(errors)} output records not acknowledged: {errors[0]!r}")
        if self.publisher is not None and self.publisher.lost is not None:
            self.status["broker"] = self.publisher.lost
            self.publisher.check()
        self.status.pop("broker", None)

    async def flush_states(
        self, held: list[Held], pending: list[asyncio.Future[Any]] | None = None
    ) -> None:
        """``flush`` (the outputs, or ``pending``), then write the held changelog records
        (``Held``) and wait for their acks; none is written when the outputs failed."""
        try:
            await self.flush(pending)
            for h in held:
                await h.write()
        finally:
            for h in held:
                h.drop()
        await self.flush()

    @contextlib.asynccontextmanager
    async def guard(
        self, stage: str, record: RawRecord, message: InboundMessage | None = None
    ) -> AsyncIterator[None]:
        """Process one record under the error policy (``message``: its decoded message).

        A failure is dead-lettered (with the message's ``rejected`` Outcome when known),
        skipped or re-raised, as ``errors`` decides; either way the stream goes on.
        """
        try:
            yield
        except Exception as exc:  # noqa: BLE001 — the policy decides; ``stop`` re-raises
            await self.failed(stage, record, exc, message)

    @contextlib.asynccontextmanager
    async def guard_batch(
        self,
        stage: str,
        records: list[RawRecord],
        inbound_of: Callable[[RawRecord], InboundMessage],
    ) -> AsyncIterator[None]:
        """The last line of defence around a batch: every record still ends somewhere."""
        try:
            yield
        except Exception as exc:
            action = self.errors.decide(exc)
            if action is Action.stop:
                raise
            log.error("%s batch of %d failed: %r", stage, len(records), exc, exc_info=exc)
            if action is Action.dead_letter:
                await self.reject_all(stage, records, exc, inbound_of)

    async def failed(
        self,
        stage: str,
        record: RawRecord,
        exc: Exception,
        message: InboundMessage | None = None,
    ) -> None:
        """Apply the error policy to one failed record."""
        action = self.errors.decide(exc)
        if action is Action.stop:
            raise exc
        if action is Action.skip:
            log.warning("%s skipped %s: %r", stage, record.where, exc)
            self.metrics.messages.labels(stage=stage, outcome="skipped").inc()
        elif message is not None:
            await self.reject(stage, record, message, exc)
        else:
            log.error("%s failed at %s: %r", stage, record.where, exc, exc_info=exc)
            self.metrics.messages.labels(stage=stage, outcome="dead_letter").inc()
            await self.dead_letter(dead_letter_for(stage, record, exc))

    async def reject(
        self, stage: str, record: Any, msg: InboundMessage, exc: BaseException
    ) -> None:
        """A decoded message that failed: DLQ record plus its one ``rejected`` Outcome."""
        log.error(
            "%s failed for %s at %s: %r", stage, msg.message_id, record.where, exc, exc_info=exc
        )
        self.metrics.messages.labels(stage=stage, outcome="rejected").inc()
        await self.dead_letter(dead_letter_for(stage, record, exc, msg.message_id))
        await self.send(
            "outcomes",
            msg.message_id,
            Outcome(
                message_id=msg.message_id,
                customer_id=msg.customer_id,
                outcome=OutcomeKind.rejected,
                reason=f"{type(exc).__name__}: {exc}"[:500],
                stage=stage,
                received_at=msg.received_at,
                decided_at=utcnow(),
            ),
        )

    async def reject_all(
        self,
        stage: str,
        records: list[Any],
        exc: BaseException,
        inbound_of: Callable[[Any], InboundMessage],
    ) -> None:
        """A whole batch failed: each record still ends in the DLQ (and an Outcome if known)."""
        for record in records:
            try:
                msg = inbound_of(record)
            except DecodeError:
                await self.dead_letter(dead_letter_for(stage, record, exc))
                continue
            await self.reject(stage, record, msg, exc)

    async def dead_letter(self, dl: DeadLetter) -> None:
        """Send a DeadLetter to the DLQ topic and count it."""
        log.error(
            "dead letter from %s at %s[%s]@%s: %s: %s",
            dl.stage,
            dl.topic,
            dl.partition,
            dl.offset,
            dl.error_type,
            dl.error,
        )
        self.metrics.dead_letters.labels(stage=dl.stage).inc()
        await self.send("dlq", dl.key, dl)


@dataclass
class AckBehind:
    """Acknowledges an agent's batches once their outputs are durable, while the agent goes
    on with the next batch (``stage.take_batches(..., acks=False)``).

    An agent that flushed after each batch sat idle for the broker's acks (~a produce
    request's round trip) before it took the next one; the classify step, which also routes,
    is most of a worker's CPU, so that idle time was the worker's (issue 16). Here at most
    one batch waits for its acks at a time and batches are acknowledged in order, so a
    source offset is still committed only after its outputs were acknowledged. A failed
    flush raises from the next ``done`` (or ``finish``), in the agent's loop, as ``flush``
    did; a batch not acknowledged when the agent stops is read again (at least once).
    """

    ctx: Context
    stream: Any
    waiting: asyncio.Future[None] | None = None
    #: The table records the waiting batch holds (written after its outputs' acks).
    waiting_held: list[Held] = field(default_factory=list)

    async def done(self, events: list[Any], held: list[Held] | None = None) -> None:
        """The agent is done with ``events``: acknowledge them once their outputs are, and
        then the table records ``held`` for them (``Held``)."""
        pending = await self.ctx.take_outputs()
        try:
            await self.finish()
        except BaseException:
            for h in held or ():
                h.drop()
            raise
        self.waiting_held = held or []
        self.waiting = asyncio.ensure_future(self._settle(pending, events, self.waiting_held))

    async def finish(self) -> None:
        """Wait for the batch still waiting for its acks, if any (raise if they failed)."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            await waiting

    def abandon(self) -> None:
        """The agent stops: a batch still waiting stays unacknowledged (read again)."""
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        for h in self.waiting_held:  # a task cancelled before it ran has no ``finally``
            h.drop()

    async def _settle(
        self, pending: list[asyncio.Future[Any]], events: list[Any], held: list[Held]
    ) -> None:
        # This task's own outputs list: the held records' acks, not the agent's next batch's.
        self.ctx.own_outputs(fresh=True)
        await self.ctx.flush_states(held, pending)
        for event in events:
            await self.stream.ack(event)
