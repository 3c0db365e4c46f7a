"""The one Faust app. Stages install their agents on it (``pipeline.<stage>.agents.install``).

What is tuned here because the framework's defaults are wrong for us:
- Faust hard-codes the consumer's ``fetch_max_wait_ms`` at 1500 ms, which on the embedded
  broker adds over a second per hop: ``faust_app.RouterApp`` makes it a setting.
- Every topic is declared with raw bytes serializers, so decoding happens in our code and a
  bad record reaches the DLQ instead of being skipped by Faust's ``on_decode_error``.
- Outputs and the tables' changelog records go through aiokafka directly (``Context.send``,
  ``context.DirectTable``; ``flush``), cheaper per record than Faust's send path, on the app's
  own producer (lent), so they share produce requests; agents flush before taking the next
  record or batch. The producer
  lingers ``PIPELINE_PRODUCER_LINGER_MS`` to fill a request (docs/ARCHITECTURE.md, Broker), and
  batches up to ``bus.MAX_BATCH_BYTES`` per partition (Faust's 16 KiB made a batch's records
  wait for a request of their own whenever a partition's batch was full).
- Faust's recovery cleared the agents' queues after fetching had resumed, losing records
  that arrived while a worker started: ``pipeline.recovery`` reorders it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from faust.types import TP

from pipeline import bus, lag, live_workflow
from pipeline.classify.agents import install as install_classify
from pipeline.config import Settings
from pipeline.context import Context
from pipeline.errors import BrokerError
from pipeline.faust_app import RouterApp
from pipeline.metrics import Metrics
from pipeline.notify.agents import install as install_notify
from pipeline.recovery import NotReady, RouterTableManager
from pipeline.route.agents import install as install_route
from pipeline.topics import compacted_names

log = logging.getLogger(__name__)


def create_app(settings: Settings, metrics: Metrics | None = None) -> Context:
    """Build the Faust app for these settings and install every stage's agents on it."""
    if not settings.kafka_bootstrap_servers:
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
        producer_linger=settings.producer_linger_ms / 1000,  # ARCHITECTURE.md, Broker
        producer_acks=-1,
        producer_max_batch_size=bus.MAX_BATCH_BYTES,  # ARCHITECTURE.md, Broker
        broker_session_timeout=settings.session_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
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
        table_standby_replicas=settings.table_standby_replicas,
        autodiscover=False,
        TableManager=RouterTableManager,  # closes a race that lost records (recovery.py)
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.compacted_topics = frozenset(compacted_names(settings))
    ctx = Context(settings=settings, metrics=metrics or Metrics(), app=app)
    # One producer for the tables' changelogs and the outputs: a batch's records share produce
    # requests (two producers made ~3 requests per message; issue 16).
    ctx.lend_producer = lambda: cast(Any, app.producer)._ensure_producer()
    _install_web(ctx)

    async def close_publisher(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        for publisher in (ctx.publisher, ctx.marks):
            if publisher is not None:
                await publisher.close()

    app.on_before_shutdown.connect(cast(Any, close_publisher))
    live = live_workflow.install(ctx)
    router, _ = install_route(ctx, live)
    # classify routes each batch it classified in the same step (no ``classified`` hop)
    install_classify(ctx, live, route=router.handle_classified)
    install_notify(ctx)
    lag.install(ctx)
    return ctx


def _install_web(ctx: Context) -> None:
    app = ctx.app

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(ctx.metrics.render(), content_type="text/plain; version=0.0.4")

    not_ready = NotReady()

    def recovering() -> tuple[bool, bool, float]:
        """Busy (rebalancing or recovering), tables recovered, seconds busy so far."""
        # Ready once partitions are assigned and tables recovered from their changelogs: a
        # rolling update waits for this before it stops the next worker.
        recovered = cast(RouterTableManager, app.tables).recovery.completed.is_set()
        busy = bool(app.rebalancing or app.in_recovery) or not recovered
        return busy, recovered, not_ready.observe(busy, time.monotonic())

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        assigned: set[TP] = set(app.consumer.assignment()) if app.consumer else set()
        held = getattr(app.consumer, "held", None) if app.consumer else None
        if held:  # an agent crashed: the consumer commits nothing more (faust_app._Consumer)
            ctx.status["commits"] = held
        _, _, busy_s = recovering()
        if busy_s >= ctx.settings.recovery_timeout_s:  # stuck: only a restart gets it out
            ctx.status["recovery"] = f"not ready for {busy_s:.0f} s (joining or restoring)"
        else:
            ctx.status.pop("recovery", None)
        stalled = "stalled" in ctx.status or "commits" in ctx.status
        stuck = "recovery" in ctx.status
        # "broker": outputs not acknowledged or lost (Context.flush); "consumer": inputs gone
        # or unreachable (lag.py). Either is 503 within seconds, not after the stall timer.
        broken = "broker" in ctx.status or "consumer" in ctx.status
        status = "broker" if broken else "stalled" if stalled else "recovering" if stuck else "ok"
        return web.json(
            {
                "status": status,
                "app": ctx.settings.app_id,
                "assigned_partitions": len(assigned),
                **ctx.status,
            },
            status=503 if stalled or broken or stuck else 200,
        )

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        busy, recovered, _ = recovering()
        return web.json(
            {
                "status": "recovering" if busy else "ready",
                "rebalancing": bool(app.rebalancing),
                "in_recovery": bool(app.in_recovery),
                "recovered": recovered,
            },
            status=503 if busy else 200,
        )
