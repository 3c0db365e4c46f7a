"""Classify stage agent: inbound → dedup, classify (in batches) → route, in the same step.

Thin shell: decode, call the pure cores (``dedup``, ``core.Classifier``), send, count. State
lives in Faust tables keyed by customer id (co-partitioned with the inbound topic). Each
classified message goes to ``classifications`` (the record of what was decided) and is
handed to the route agent of the same worker (``Handoff``: the composition wires it; the
stages do not import each other), which routes it before this batch is acknowledged: one
hop, not a ``classified`` record produced and read back (issue 16).

A message of an incident category goes to ``incident-signals`` keyed by its bucket instead
(``incidents.signal_for``): the detector that owns the bucket decides it and forwards it to
``classified``, which the route agent reads (``incident_agent``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from pipeline.classify import dedup, incident_agent, incidents
from pipeline.classify.core import Classifier
from pipeline.context import AckBehind, Context, Held
from pipeline.domain.workflow import Workflow
from pipeline.events import (
    ClassifiedMessage,
    InboundMessage,
    Similarity,
    derive_id,
    utcnow,
)
from pipeline.live_workflow import LiveWorkflow
from pipeline.metrics import Metrics
from pipeline.stage import RawRecord, decode_record, read_stored, sweep_table, take_batches

log = logging.getLogger(__name__)

STAGE = "classify"
#: Each customer's dedup entries and recent contacts (``dedup.CustomerDedupState`` JSON).
DEDUP_TABLE = "dedup"
CONTACT_WINDOW_S = 30 * 24 * 3600
SWEEP_INTERVAL_S = 600.0
MAX_CONTACTS = 20


#: Classified messages with their inbound records (for the dead-letter path).
Handed = list[tuple[RawRecord, ClassifiedMessage]]
#: Routes classified messages in this worker (the route agent's ``handle_classified``); returns
#: the table records to write once the outputs are acknowledged (``context.Held``).
Handoff = Callable[[Handed], Awaitable[list[Held]]]


def case_id_for(message_id: str) -> str:
    """The case a new message opens (route derives the same id)."""
    return derive_id("case", message_id)


class ClassifyAgent:
    """The classify agent: dedup and contact counts, the classifier, send.

    Single writer of its tables (keyed by customer, co-partitioned with ``inbound``); the
    classifier is rebuilt when the workflow's tag rules, stores or weights change.
    """

    def __init__(self, ctx: Context, live: LiveWorkflow, route: Handoff) -> None:
        self.ctx = ctx
        self.live = live
        self.route = route
        self.dedup_table = ctx.table(DEDUP_TABLE)
        self.dedup_cfg = dedup.DedupConfig(window_s=ctx.settings.dedup_window_s)
        wf = live.current
        # Load (or train) the model now, before the worker starts, not in the event loop.
        self.classifier = Classifier.from_settings(
            ctx.settings, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
        )
        # The slow path's encoder reads its weights on first use (~1.2 s): read them now too,
        # or the first unsure text stalls every agent of the worker (bench p99 at 50 msg/s).
        encoder = self.classifier.model.encoder
        if encoder is not None:
            encoder.encode(["warm-up"])
        log.info("classifier %s ready", self.classifier.version)
        live.on_change(self.rebuild)

    def rebuild(self, wf: Workflow) -> None:
        """Tag rules, stores and priority weights follow the workflow; the model stays loaded."""
        self.classifier = Classifier(
            self.classifier.model, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
        )
        log.info("classify took the new tag rules, stores and weights")

    async def run(self, stream: Any) -> None:
        """The agent loop: batches of raw records, classified, then routed (``route``); a
        batch is acknowledged once its outputs are durable, while the next one is processed."""
        s = self.ctx.settings
        self.ctx.own_outputs(fresh=True)
        acks = AckBehind(self.ctx, stream)
        try:
            async for events in take_batches(
                stream, s.classify_batch_size, s.classify_batch_within_s, acks=False
            ):
                records = [RawRecord.from_event(e) for e in events]
                handed: Handed = []
                async with self.ctx.guard_batch(
                    STAGE, records, lambda r: decode_record(InboundMessage, r)
                ):
                    with self.ctx.metrics.stage_seconds.labels(stage=STAGE).time():
                        handed = await self.process(records)
                held = await self.route(handed) if handed else []  # its own guards
                await acks.done(events, held)
            await acks.finish()
        finally:
            acks.abandon()

    async def process(self, records: Sequence[RawRecord]) -> Handed:
        """Decode, dedup, classify and send one batch; returns what goes to ``route``."""
        self.ctx.metrics.batch_size.labels(stage=STAGE).observe(len(records))
        good: list[tuple[RawRecord, InboundMessage]] = []
        for record in records:
            async with self.ctx.guard(STAGE, record):
                good.append((record, decode_record(InboundMessage, record)))
        if not good:
            return []
        now = utcnow()
        decisions, recent = self.remember([m for _, m in good], now)
        sims = [_similarity(m, d) for (_, m), d in zip(good, decisions, strict=True)]
        classified = await self.classify(good, now, recent, sims)
        policies = self.live.current.incidents
        handed: Handed = []
        for (record, msg), out in zip(good, classified, strict=True):
            if out is None:
                continue
            async with self.ctx.guard(STAGE, record, msg):
                signals = incidents.signals_for(out, policies)
                if not signals:
                    await self.ctx.send("classifications", msg.customer_id, out)
                    handed.append((record, out))
                for signal in signals:  # its first bucket's detector decides (incident_agent)
                    await self.ctx.send("incident-signals", signal.bucket, signal)
                self.ctx.metrics.messages.labels(stage=STAGE, outcome="classified").inc()
        return handed

    def remember(
        self, msgs: Sequence[InboundMessage], now: datetime
    ) -> tuple[list[dedup.DedupDecision], dict[str, int]]:
        """Dedup decisions, and each customer's recent contacts (before this message)."""
        decisions: list[dedup.DedupDecision] = []
        recent: dict[str, int] = {}
        for msg, fp in zip(msgs, dedup.fingerprints(msgs), strict=True):
            key = msg.customer_id
            st = readable_state(key, self.dedup_table.get(key), self.ctx.metrics)
            d = dedup.check_duplicate(st, msg, now, self.dedup_cfg, fp)
            decisions.append(d)
            case = d.case_id if d.is_duplicate else case_id_for(msg.message_id)
            st, recent[key] = dedup.remember_and_count(
                st,
                msg,
                case,
                now,
                self.dedup_cfg,
                fp,
                window_s=CONTACT_WINDOW_S,
                cap=MAX_CONTACTS,
                counts=not d.is_duplicate,
            )
            self.dedup_table[key] = st.model_dump_json()
        return decisions, recent

    async def classify(
        self,
        good: list[tuple[RawRecord, InboundMessage]],
        now: datetime,
        recent: dict[str, int],
        sims: list[Similarity],
    ) -> list[ClassifiedMessage | None]:
        """The batch classified, each with its dedup decision (``sims``); if the batch fails,
        one by one (a failure: None, rejected)."""
        msgs = [m for _, m in good]
        clf = self.classifier
        try:
            return list(clf.classify_batch(msgs, now=now, recent_contacts=recent, similarity=sims))
        except Exception:  # retried one by one below, where the error policy applies
            log.exception("batch classification failed; retrying one by one")
        out: list[ClassifiedMessage | None] = []
        for (record, msg), sim in zip(good, sims, strict=True):
            out.append(None)
            async with self.ctx.guard(STAGE, record, msg):
                [out[-1]] = clf.classify_batch(
                    [msg], now=now, recent_contacts=recent, similarity=[sim]
                )
        return out

    async def sweep(self) -> None:
        """Forget idle keys (keeps memory bounded: per-customer state expires on access)."""
        removed = await sweep_tables(self.dedup_table, self.dedup_cfg, utcnow(), self.ctx.metrics)
        if removed:
            log.info("state sweep removed %d idle keys", removed)


def install(ctx: Context, live: LiveWorkflow, route: Handoff) -> ClassifyAgent:
    """Register the classify agent, its tables and its sweep timer on the app, and the
    incident detector it feeds; ``route``: the route agent's hand-off in this worker."""
    agent = ClassifyAgent(ctx, live, route)
    ctx.app.agent(ctx.topic("inbound"), name="classify")(agent.run)
    ctx.app.timer(SWEEP_INTERVAL_S)(agent.sweep)
    incident_agent.install(ctx)
    return agent


async def sweep_tables(
    dedup_table: Any, dedup_cfg: dedup.DedupConfig, now: datetime, metrics: Metrics | None = None
) -> int:
    """Delete idle keys (no live dedup entry or contact; an unreadable value); returns how
    many."""
    now_s = now.timestamp()

    def dedup_kept(_: str, raw: str) -> str | None:
        state = dedup.CustomerDedupState.model_validate_json(raw)  # unreadable: forgotten
        state = dedup.expire(state, now, dedup_cfg)
        contacted = any(now_s - t < CONTACT_WINDOW_S for t in state.contacts)
        return raw if state.entries or contacted else None

    return await sweep_table(dedup_table, dedup_kept, metrics)


def readable_state(
    customer_id: str, raw: str | None, metrics: Metrics | None = None
) -> dedup.CustomerDedupState:
    """The customer's dedup state from its table value; an unreadable one (a bug, or a format
    this version does not know) is logged and replaced by an empty state (``read_stored``): the
    customer's duplicates and contact counts start afresh, rather than the whole batch failing
    (every message of it rejected) and the retention sweep's timer crashing the worker."""
    state = None
    if raw:
        state = read_stored(
            dedup.CustomerDedupState.model_validate_json,
            raw,
            table=DEDUP_TABLE,
            key=customer_id,
            metrics=metrics,
            then="starting afresh",
        )
    return state if state is not None else dedup.CustomerDedupState()


def _similarity(msg: InboundMessage, d: dedup.DedupDecision) -> Similarity:
    """The dedup decision as the message carries it (the incident fields are the detector's)."""
    return Similarity(
        duplicate_of=d.duplicate_of,
        duplicate_reason=d.reason,
        case_id=d.case_id if d.is_duplicate else case_id_for(msg.message_id),
    )
