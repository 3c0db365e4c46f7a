"""Incident detector agent: ``incident-signals`` (keyed by bucket) → ``classified`` (by customer;
route's input) and ``classifications`` (the record of every classified message).

Incident windows span customers, so they cannot live beside the per-customer tables of the
classify agent: with several workers each would see part of a bucket's reporters. Classify
sends every message of an incident category keyed by its bucket (``incidents.signal_for``);
the window table is co-partitioned with that topic, so the worker that owns a bucket's
partition is the one writer of its window, whatever the number of workers. The step is the
pure ``incidents.decide``; this class decodes, calls it, stores the window and forwards the
message to route (docs/ARCHITECTURE.md, Incidents). The same topic brings ``IncidentResolved``
from the case keeper when an incident's case is resolved: ``incidents.resolve`` closes the
bucket's window, so later reports are no longer linked to an incident that is over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipeline.classify import incidents
from pipeline.context import Context
from pipeline.events import InboundMessage, IncidentResolved, IncidentSignal, utcnow
from pipeline.metrics import Metrics
from pipeline.stage import RawRecord, decode_record, sweep_table, take_batches

log = logging.getLogger(__name__)

STAGE = "incidents"
#: The bucket windows (keyed by bucket, co-partitioned with ``incident-signals``).
TABLE = "incident-windows"
SWEEP_INTERVAL_S = 600.0
#: An open incident with no new report for this long is forgotten by the detector.
INCIDENT_TTL_S = 24 * 3600.0


def _inbound_of(record: RawRecord) -> InboundMessage:
    return decode_record(IncidentSignal, record).message.inbound


class IncidentAgent:
    """Single writer of the bucket windows: decides new / linked / none per message."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.table = ctx.table(TABLE)

    async def run(self, stream: Any) -> None:
        """Batches as in classify; outputs durable before the acknowledgement."""
        s = self.ctx.settings
        self.ctx.own_outputs(fresh=True)
        async for events in take_batches(stream, s.classify_batch_size, s.classify_batch_within_s):
            records = [RawRecord.from_event(e) for e in events]
            async with self.ctx.guard_batch(STAGE, records, _inbound_of):
                await self.process(records)
            await self.ctx.flush()

    async def process(self, records: Sequence[RawRecord]) -> None:
        """Decide each signal in order (one bucket's signals share a partition)."""
        for record in records:
            if record.value is not None and b'"resolution_id"' in record.value:  # the keeper's
                async with self.ctx.guard(STAGE, record):
                    self.resolve(decode_record(IncidentResolved, record))
                continue
            signal: IncidentSignal | None = None
            async with self.ctx.guard(STAGE, record):
                signal = decode_record(IncidentSignal, record)
            if signal is None:
                continue
            async with self.ctx.guard(STAGE, record, signal.message.inbound):
                await self.decide(signal)

    async def decide(self, signal: IncidentSignal) -> None:
        """One step of the bucket's window; the message goes on to route."""
        raw = self.table.get(signal.bucket)
        window = incidents.IncidentWindow.model_validate_json(raw) if raw else None
        window, msg = incidents.decide(window, signal)
        if window is not None:
            self.table[signal.bucket] = window.model_dump_json()
        if signal.count_only:  # its first bucket's detector forwards it
            self.ctx.metrics.messages.labels(stage=STAGE, outcome="counted").inc()
            return
        # the record of the decision, and route's input (keyed by customer: its partition)
        await self.ctx.send("classifications", msg.customer_id, msg)
        await self.ctx.send("classified", msg.customer_id, msg)
        sim = msg.similarity
        outcome = "opened" if sim.incident_new else ("linked" if sim.incident_id else "none")
        self.ctx.metrics.messages.labels(stage=STAGE, outcome=outcome).inc()

    def resolve(self, resolved: IncidentResolved) -> None:
        """The incident's case was resolved: its bucket's window closes it (if still open)."""
        raw = self.table.get(resolved.bucket)
        window = incidents.IncidentWindow.model_validate_json(raw) if raw else None
        closed = incidents.resolve(window, resolved)
        if closed is not None and closed != window:
            self.table[resolved.bucket] = closed.model_dump_json()
            log.info(
                "incident %s resolved: bucket %s closed", resolved.incident_id, resolved.bucket
            )

    async def sweep(self) -> None:
        """Forget idle windows (no open incident and no live report, or stale)."""
        removed = await sweep_windows(self.table, utcnow(), self.ctx.metrics)
        if removed:
            log.info("incident sweep removed %d idle buckets", removed)


async def sweep_windows(table: Any, now: datetime, metrics: Metrics | None = None) -> int:
    """Delete idle or stale bucket windows (and unreadable ones: ``stage.sweep_table``);
    returns how many."""
    now_s = now.timestamp()

    def kept(_: str, raw: str) -> str | None:
        window = incidents.IncidentWindow.model_validate_json(raw)
        last = max((r.at for r in window.reports), default=0.0)
        stale = now_s - last >= INCIDENT_TTL_S
        return None if incidents.is_idle(window, now) or stale else raw

    return await sweep_table(table, kept, metrics)


def install(ctx: Context) -> IncidentAgent:
    """Register the detector agent, its table and its sweep timer on the app."""
    agent = IncidentAgent(ctx)
    ctx.app.agent(ctx.topic("incident-signals"), name=STAGE)(agent.run)
    ctx.app.timer(SWEEP_INTERVAL_S)(agent.sweep)
    return agent
