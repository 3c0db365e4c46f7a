"""The one Faust app. Stages install their agents on it (``pipeline.<stage>.agents.install``).

What is tuned here because the framework's defaults are wrong for us:
- Faust hard-codes the consumer's ``fetch_max_wait_ms`` at 1500 ms, which on the embedded
  broker adds over a second per hop (DESIGN.md §4): ``settings.fetch_max_wait_ms`` replaces it.
- Every topic is declared with raw bytes serializers, so decoding happens in our code and a
  bad record reaches the DLQ instead of being skipped by Faust's ``on_decode_error``.
- Outputs go through one plain aiokafka producer (``Context.send``/``flush``), cheaper per
  record than Faust's send path; agents flush before taking the next record or batch.
- Faust's recovery cleared the agents' queues after fetching had resumed, losing records
  that arrived while a worker started: ``pipeline.recovery`` reorders it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT

from pipeline.bus import Publisher
from pipeline.codec import encode
from pipeline.config import Settings
from pipeline.errors import BrokerUnavailable
from pipeline.events import DeadLetter, Event, InboundMessage, Outcome, OutcomeKind, utcnow
from pipeline.metrics import Metrics
from pipeline.recovery import RouterTableManager

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer: AIOKafkaConsumer = super()._create_worker_consumer(transport)
        wait_ms = int(getattr(self.app, "fetch_max_wait_ms", 100))
        # aiokafka reads this attribute when it builds its Fetcher in start().
        consumer._fetch_max_wait_ms = wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class RouterApp(faust.App):
    """faust.App whose Kafka consumer honours ``fetch_max_wait_ms``."""

    fetch_max_wait_ms: int = 100

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


@dataclass
class Context:
    """What every stage's agents share: settings, metrics and the app."""

    settings: Settings
    metrics: Metrics
    app: AppT
    topics: dict[str, Any] = field(default_factory=dict)
    publisher: Publisher | None = None
    pending: list[asyncio.Future[Any]] = field(default_factory=list)
    #: What stages report about themselves on ``/healthz`` (e.g. the workflow in force).
    status: dict[str, Any] = field(default_factory=dict)

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
        be written from batched (``take_events``) processing, which has no current event.
        """
        return self.app.Table(
            name,
            key_type=str,
            value_type=str,
            partitions=self.settings.partitions,
            default=None,
            use_partitioner=True,
        )

    def full_topic(self, name: str) -> str:
        """Topic name with the prefix (names that already carry it are kept)."""
        return name if name.startswith(self.settings.topic_prefix) else self.settings.topic(name)

    async def send(self, name: str, key: str | None, event: Event) -> None:
        """Queue an event (JSON bytes) for a topic; ``flush`` waits for the broker's acks.

        Outputs go through a plain aiokafka producer (acks=all, linger 0): Faust's send path
        cost ~0.11 ms per record against ~0.03 ms, and a message produces a dozen records.
        """
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        fut = await self.publisher.enqueue(self.full_topic(name), key, encode(event))
        self.pending.append(fut)

    async def flush(self) -> None:
        """Wait until every queued output is acknowledged; raise if any was not.

        Agents call this before they take the next record, so a source record is
        acknowledged (and its offset committed) only after its outputs are durable.
        """
        pending, self.pending = self.pending, []
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise BrokerUnavailable(f"{len(errors)} output records not acknowledged: {errors[0]!r}")

    async def reject(
        self, stage: str, record: Any, msg: InboundMessage, exc: BaseException
    ) -> None:
        """A decoded message that failed: DLQ record plus its one ``rejected`` Outcome."""
        from pipeline.stage import dead_letter_for

        log.error("%s failed for %s at %s: %r", stage, msg.message_id, record.where, exc)
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
        from pipeline.errors import DecodeError
        from pipeline.stage import dead_letter_for

        log.error("%s batch failed; rejecting its %d records: %r", stage, len(records), exc)
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


def create_app(settings: Settings, metrics: Metrics | None = None) -> Context:
    """Build the Faust app for these settings and install every stage's agents on it."""
    if not settings.kafka_bootstrap_servers:
        from pipeline.errors import BrokerError

        raise BrokerError("create_app needs KAFKA_BOOTSTRAP_SERVERS (or pipeline.broker)")
    servers = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(","))
    data_dir = settings.data_dir / "worker" / settings.app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    app = RouterApp(
        settings.app_id,
        broker=servers,
        store="memory://",
        datadir=str(data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        producer_linger_ms=0,  # Tansu: linger > 0 broke table recovery (DESIGN.md §4)
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_request_timeout=settings.request_timeout_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        recovery_consistency_check=False,
        table_cleanup_interval=30.0,
        autodiscover=False,
        TableManager=RouterTableManager,  # closes a race that lost records (recovery.py)
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    ctx = Context(settings=settings, metrics=metrics or Metrics(), app=app)
    _install_web(ctx)
    from pipeline import lag
    from pipeline.classify import agents as classify_agents
    from pipeline.notify import agents as notify_agents
    from pipeline.route import agents as route_agents
    from pipeline import live_workflow as route_live

    async def close_publisher(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        if ctx.publisher is not None:
            await ctx.publisher.close()

    app.on_before_shutdown.connect(cast(Any, close_publisher))
    live = route_live.install(ctx)
    classify_agents.install(ctx, live)
    route_agents.install(ctx, live)
    notify_agents.install(ctx)
    lag.install(ctx)
    return ctx


def _install_web(ctx: Context) -> None:
    app = ctx.app

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(ctx.metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        assigned: set[TP] = set(app.consumer.assignment()) if app.consumer else set()
        stalled = "stalled" in ctx.status
        return web.json(
            {
                "status": "stalled" if stalled else "ok",
                "app": ctx.settings.app_id,
                "assigned_partitions": len(assigned),
                **ctx.status,
            },
            status=503 if stalled else 200,
        )
