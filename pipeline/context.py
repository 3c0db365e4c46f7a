"""``Context``: the seam between the agents of every stage and the Faust app.

A stage's ``install(ctx, ...)`` gets one: settings, metrics, the app (to declare agents, tables,
timers), the shared output producer (``send``/``flush``) and the dead-letter path. Stages
import this module and the domain, never ``pipeline.app`` (which imports the stages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import AppT

from pipeline.bus import Publisher
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
        table: Any = self.app.Table(
            name,
            key_type=str,
            value_type=str,
            partitions=self.settings.partitions,
            default=None,
            use_partitioner=True,
        )
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
        app lends (``lend_producer``).
        """
        fut = await self.output_publisher().enqueue(self.full_topic(name), key, encode(event))
        self.own_outputs().append(fut)

    async def set_durably(self, table: Any, key: str, value: str) -> None:
        """``table[key] = value`` (a ``table()``), returning once the broker acknowledged it.

        Faust queues a table's changelog record in its producer buffer, sent later (under
        load, seconds later): a worker killed meanwhile had done what the value records (a
        reply the platform accepted), and the key's next owner restores the value before it
        (issue 11: the reply sent again). Here the value is set in memory and its changelog
        record (raw key, so the key's partition, and the table's value encoding) goes
        through a producer of its own (acks=all, ``marks``) and is awaited; not through Faust
        as well. The two paths do not keep each other's order: write a key through one only.
        """
        topic = table.changelog_topic
        data, _ = topic.prepare_value(value, table.value_serializer)
        table.data[key] = value  # the store itself: no changelog record from Faust
        await self.mark_publisher().send_raw(topic.get_topic_name(), key, data)

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

    async def flush(self) -> None:
        """Wait until every queued output is acknowledged; raise if any was not.

        Agents call this before they take the next record, so a source record is
        acknowledged (and its offset committed) only after its outputs are durable.
        """
        outputs = self.own_outputs()
        pending = outputs[:]
        outputs.clear()
        if not pending:
            return
        # Bounded by produce_timeout_s, whoever owns the producer (Faust's, lent by the
        # worker, waits for acks as long as 20 minutes).
        done, late = await asyncio.wait(pending, timeout=self.settings.produce_timeout_s)
        errors: list[BaseException | str] = [e for f in done if (e := _failure(f)) is not None]
        errors += [f"no ack within {self.settings.produce_timeout_s:g} s"] * len(late)
        if errors:
            # /healthz answers 503 at once (not after the stall timer) until outputs flow again.
            self.status["broker"] = f"{len(errors)} output records not acknowledged"
            raise BrokerUnavailable(f"{len(errors)} output records not acknowledged: {errors[0]!r}")
        if self.publisher is not None and self.publisher.lost is not None:
            self.status["broker"] = self.publisher.lost
            self.publisher.check()
        self.status.pop("broker", None)

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
