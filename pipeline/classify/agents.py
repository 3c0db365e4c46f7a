"""Classify stage agent: inbound → dedup, classify (in batches), incidents → classified.

Thin shell: decode, call the pure cores (``dedup``, ``core.Classifier``, ``incidents``),
send, count. State lives in Faust tables keyed by customer id (co-partitioned with the
inbound topic); the incident windows are keyed by bucket (see the note in ``_incidents``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipeline.classify import dedup, incidents
from pipeline.classify.core import Classifier
from pipeline.context import Context
from pipeline.domain.workflow import Workflow
from pipeline.events import (
    ClassifiedMessage,
    InboundMessage,
    Similarity,
    derive_id,
    utcnow,
)
from pipeline.live_workflow import LiveWorkflow
from pipeline.stage import RawRecord, decode_record, sweep_table

log = logging.getLogger(__name__)

STAGE = "classify"
CONTACT_WINDOW_S = 30 * 24 * 3600
SWEEP_INTERVAL_S = 600.0
#: An open incident with no new report for this long is forgotten by the detector.
INCIDENT_TTL_S = 24 * 3600.0
MAX_CONTACTS = 20


def case_id_for(message_id: str) -> str:
    """The case a new message opens (route derives the same id)."""
    return derive_id("case", message_id)


class ClassifyAgent:
    """The classify agent: dedup and contact counts, the classifier, incidents, send.

    Single writer of its tables (keyed by customer, co-partitioned with ``inbound``); the
    classifier is rebuilt when the workflow's tag rules, stores or weights change.
    """

    def __init__(self, ctx: Context, live: LiveWorkflow) -> None:
        self.ctx = ctx
        self.live = live
        self.dedup_table = ctx.table("dedup")
        self.contacts_table = ctx.table("contacts")
        self.incident_table = ctx.table("incidents")
        self.dedup_cfg = dedup.DedupConfig(window_s=ctx.settings.dedup_window_s)
        wf = live.current
        # Load (or train) the model now, before the worker starts, not in the event loop.
        self.classifier = Classifier.from_settings(
            ctx.settings, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
        )
        log.info("classifier %s ready", self.classifier.version)
        live.on_change(self.rebuild)

    def rebuild(self, wf: Workflow) -> None:
        """Tag rules, stores and priority weights follow the workflow; the model stays loaded."""
        self.classifier = Classifier(
            self.classifier.model, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
        )
        log.info("classify took the new tag rules, stores and weights")

    async def run(self, stream: Any) -> None:
        """The agent loop: batches of raw records; outputs durable before the acknowledgement."""
        s = self.ctx.settings
        async for events in stream.take_events(s.classify_batch_size, s.classify_batch_within_s):
            records = [RawRecord.from_event(e) for e in events]
            async with self.ctx.guard_batch(
                STAGE, records, lambda r: decode_record(InboundMessage, r)
            ):
                with self.ctx.metrics.stage_seconds.labels(stage=STAGE).time():
                    await self.process(records)
            await self.ctx.flush()

    async def process(self, records: Sequence[RawRecord]) -> None:
        """Decode, dedup, classify and send one batch."""
        self.ctx.metrics.batch_size.labels(stage=STAGE).observe(len(records))
        good: list[tuple[RawRecord, InboundMessage]] = []
        for record in records:
            async with self.ctx.guard(STAGE, record):
                good.append((record, decode_record(InboundMessage, record)))
        if not good:
            return
        now = utcnow()
        decisions, recent = self.remember([m for _, m in good], now)
        classified = await self.classify(good, now, recent)
        policies = self.live.current.incidents
        for (record, msg), d, cm in zip(good, decisions, classified, strict=True):
            if cm is None:
                continue
            async with self.ctx.guard(STAGE, record, msg):
                out = _with_similarity(cm, d, self.incident_table, policies)
                await self.ctx.send("classified", msg.customer_id, out)
                self.ctx.metrics.messages.labels(stage=STAGE, outcome="classified").inc()

    def remember(
        self, msgs: Sequence[InboundMessage], now: datetime
    ) -> tuple[list[dedup.DedupDecision], dict[str, int]]:
        """Dedup decisions, and each customer's recent contacts (before this message)."""
        now_s = now.timestamp()
        decisions: list[dedup.DedupDecision] = []
        recent: dict[str, int] = {}
        for msg in msgs:
            key = msg.customer_id
            raw_state = self.dedup_table.get(key)
            st = (
                dedup.CustomerDedupState.model_validate_json(raw_state)
                if raw_state
                else dedup.CustomerDedupState()
            )
            fp = dedup.fingerprint(msg)
            d = dedup.check_duplicate(st, msg, now, self.dedup_cfg, fp)
            decisions.append(d)
            case = d.case_id if d.is_duplicate else case_id_for(msg.message_id)
            self.dedup_table[key] = dedup.remember(
                st, msg, case, now, self.dedup_cfg, fp
            ).model_dump_json()
            raw_c = self.contacts_table.get(key)
            times = [
                t
                for t in (list(map(float, raw_c.split(","))) if raw_c else [])
                if now_s - t < CONTACT_WINDOW_S
            ]
            recent[msg.customer_id] = len(times)
            if not d.is_duplicate:
                times = ([*times, now_s])[-MAX_CONTACTS:]
            self.contacts_table[key] = ",".join(repr(t) for t in times)
        return decisions, recent

    async def classify(
        self,
        good: list[tuple[RawRecord, InboundMessage]],
        now: datetime,
        recent: dict[str, int],
    ) -> list[ClassifiedMessage | None]:
        """The batch classified; if the batch fails, one by one (a failure: None, rejected)."""
        msgs = [m for _, m in good]
        try:
            return list(self.classifier.classify_batch(msgs, now=now, recent_contacts=recent))
        except Exception:  # retried one by one below, where the error policy applies
            log.exception("batch classification failed; retrying one by one")
        out: list[ClassifiedMessage | None] = []
        for record, msg in good:
            out.append(None)
            async with self.ctx.guard(STAGE, record, msg):
                [out[-1]] = self.classifier.classify_batch([msg], now=now, recent_contacts=recent)
        return out

    async def sweep(self) -> None:
        """Forget idle keys (keeps memory bounded: per-customer state expires on access)."""
        removed = await sweep_tables(
            self.dedup_table, self.contacts_table, self.incident_table, self.dedup_cfg, utcnow()
        )
        if removed:
            log.info("state sweep removed %d idle keys", removed)


def install(ctx: Context, live: LiveWorkflow) -> ClassifyAgent:
    """Register the classify agent, its tables and its sweep timer on the app."""
    agent = ClassifyAgent(ctx, live)
    ctx.app.agent(ctx.topic("inbound"), name="classify")(agent.run)
    ctx.app.timer(SWEEP_INTERVAL_S)(agent.sweep)
    return agent


async def sweep_tables(
    dedup_table: Any,
    contacts_table: Any,
    incident_table: Any,
    dedup_cfg: dedup.DedupConfig,
    now: datetime,
) -> int:
    """Delete idle keys (no live dedup entry, contact or incident report); returns how many."""
    now_s = now.timestamp()

    def dedup_kept(_: str, raw: str) -> str | None:
        state = dedup.expire(dedup.CustomerDedupState.model_validate_json(raw), now, dedup_cfg)
        return raw if state.entries else None

    def contacts_kept(_: str, raw: str) -> str | None:
        idle = all(now_s - float(t) >= CONTACT_WINDOW_S for t in raw.split(",") if t)
        return None if idle else raw

    def incident_kept(_: str, raw: str) -> str | None:
        window = incidents.IncidentWindow.model_validate_json(raw)
        last = max((r.at for r in window.reports), default=0.0)
        stale = now_s - last >= INCIDENT_TTL_S
        return None if incidents.is_idle(window, now) or stale else raw

    removed = await sweep_table(dedup_table, dedup_kept)
    removed += await sweep_table(contacts_table, contacts_kept)
    return removed + await sweep_table(incident_table, incident_kept)


def _with_similarity(
    cm: ClassifiedMessage,
    d: dedup.DedupDecision,
    incident_table: Any,
    policies: Sequence[Any],
) -> ClassifiedMessage:
    case_id = d.case_id if d.is_duplicate else case_id_for(cm.message_id)
    decision = None
    if not d.is_duplicate:
        decision = _incidents(cm, incident_table, policies, case_id)
    sim = Similarity(
        duplicate_of=d.duplicate_of,
        duplicate_reason=d.reason,
        case_id=case_id,
        incident_id=decision.incident_id if decision else None,
        incident_new=bool(decision and decision.is_new),
    )
    return cm.model_copy(update={"similarity": sim})


def _incidents(
    cm: ClassifiedMessage, table: Any, policies: Sequence[Any], case_id: str | None
) -> incidents.IncidentDecision | None:
    """Observe the message in the buckets of categories that have an incident policy.

    Incident windows span customers, so their key is not the stream's key: this is
    correct with one worker; several workers would need a repartition by bucket first.
    """
    now = cm.inbound.received_at
    found: incidents.IncidentDecision | None = None
    for key, similarity_required in incidents.bucket_keys(cm):
        category = key.split("|", 1)[0]
        policy = next((p for p in policies if category in p.categories), None)
        if policy is None:
            continue
        cfg = incidents.IncidentConfig(
            threshold=policy.threshold, window_s=policy.window_minutes * 60
        )
        raw = table.get(key)
        window = incidents.IncidentWindow.model_validate_json(raw) if raw else None
        window, decision = incidents.observe(
            window, key, cm, now, cfg, similarity_required=similarity_required, case_id=case_id
        )
        table[key] = window.model_dump_json()
        if decision.incident_id and found is None:
            found = decision
    return found
