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
from pipeline.stage import RawRecord, decode_record, split_decoded

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


def install(ctx: Context, live: LiveWorkflow) -> None:
    """Register the classify agent and its tables on the app."""
    app = ctx.app
    s = ctx.settings
    dedup_table = ctx.table("dedup")
    contacts_table = ctx.table("contacts")
    incident_table = ctx.table("incidents")
    state: dict[str, Any] = {}
    dedup_cfg = dedup.DedupConfig(window_s=s.dedup_window_s)

    def classifier() -> Any:
        if "classifier" not in state:
            wf = live.current
            state["classifier"] = Classifier.from_settings(
                s, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
            )
        return state["classifier"]

    # Load (or train) the model now, before the worker starts, not in the event loop.
    log.info("classifier %s ready", classifier().version)

    def rebuild(wf: Workflow) -> None:
        # Tag rules, stores and priority weights follow the workflow; the model stays loaded.
        state["classifier"] = Classifier(
            state["classifier"].model, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
        )
        log.info("classify took the new tag rules, stores and weights")

    live.on_change(rebuild)

    async def process(records: Sequence[RawRecord]) -> None:
        ctx.metrics.batch_size.labels(stage=STAGE).observe(len(records))
        good, bad = split_decoded(InboundMessage, STAGE, list(records))
        for dl in bad:
            ctx.metrics.messages.labels(stage=STAGE, outcome="dead_letter").inc()
            await ctx.dead_letter(dl)
        if not good:
            return
        now = utcnow()
        now_s = now.timestamp()
        msgs = [m for _, m in good]
        decisions: list[dedup.DedupDecision] = []
        recent: dict[str, int] = {}
        for msg in msgs:
            key = msg.customer_id
            raw_state = dedup_table.get(key)
            st = (
                dedup.CustomerDedupState.model_validate_json(raw_state)
                if raw_state
                else dedup.CustomerDedupState()
            )
            fp = dedup.fingerprint(msg)
            d = dedup.check_duplicate(st, msg, now, dedup_cfg, fp)
            decisions.append(d)
            case = d.case_id if d.is_duplicate else case_id_for(msg.message_id)
            dedup_table[key] = dedup.remember(st, msg, case, now, dedup_cfg, fp).model_dump_json()
            raw_c = contacts_table.get(key)
            times = [
                t
                for t in (list(map(float, raw_c.split(","))) if raw_c else [])
                if now_s - t < CONTACT_WINDOW_S
            ]
            recent[msg.customer_id] = len(times)
            if not decisions[-1].is_duplicate:
                times = ([*times, now_s])[-MAX_CONTACTS:]
            contacts_table[key] = ",".join(repr(t) for t in times)
        classified: list[ClassifiedMessage | None] = []
        try:
            classified.extend(classifier().classify_batch(msgs, now=now, recent_contacts=recent))
        except Exception:
            log.exception("batch classification failed; retrying one by one")
            classified = []
            for record, msg in good:
                try:
                    classified.extend(
                        classifier().classify_batch([msg], now=now, recent_contacts=recent)
                    )
                except Exception as one_exc:  # noqa: BLE001 — the record goes to the DLQ
                    await _reject(ctx, record, msg, one_exc)
                    classified.append(None)
        for (record, msg), d, cm in zip(good, decisions, classified, strict=True):
            if cm is None:
                continue
            try:
                policies = live.current.incidents
                out = _with_similarity(ctx, cm, d, incident_table, policies)
                await ctx.send("classified", msg.customer_id, out)
                ctx.metrics.messages.labels(stage=STAGE, outcome="classified").inc()
            except Exception as exc:  # noqa: BLE001 — the record goes to the DLQ
                await _reject(ctx, record, msg, exc)

    async def classify_agent(stream: Any) -> None:
        async for events in stream.take_events(s.classify_batch_size, s.classify_batch_within_s):
            records = [RawRecord.from_event(e) for e in events]
            try:
                with ctx.metrics.stage_seconds.labels(stage=STAGE).time():
                    await process(records)
            except Exception as exc:  # last line of defence: nothing is lost
                log.exception("classify batch failed")
                await ctx.reject_all(
                    STAGE, records, exc, lambda r: decode_record(InboundMessage, r)
                )
            await ctx.flush()  # outputs durable before the batch is acknowledged

    app.agent(ctx.topic("inbound"), name="classify")(classify_agent)

    async def sweep() -> None:
        # Keeps memory bounded: per-customer state expires on access, idle keys only here.
        now = utcnow()
        removed = sweep_tables(dedup_table, contacts_table, incident_table, dedup_cfg, now)
        if removed:
            log.info("state sweep removed %d idle keys", removed)

    app.timer(SWEEP_INTERVAL_S)(sweep)


def sweep_tables(
    dedup_table: Any,
    contacts_table: Any,
    incident_table: Any,
    dedup_cfg: dedup.DedupConfig,
    now: datetime,
) -> int:
    """Delete idle keys (no live dedup entry, contact or incident report); returns how many."""
    removed = 0
    now_s = now.timestamp()
    for key, raw in list(dedup_table.items()):
        state = dedup.expire(dedup.CustomerDedupState.model_validate_json(raw), now, dedup_cfg)
        if not state.entries:
            del dedup_table[key]
            removed += 1
    for key, raw in list(contacts_table.items()):
        if all(now_s - float(t) >= CONTACT_WINDOW_S for t in raw.split(",") if t):
            del contacts_table[key]
            removed += 1
    for key, raw in list(incident_table.items()):
        window = incidents.IncidentWindow.model_validate_json(raw)
        last = max((r.at for r in window.reports), default=0.0)
        stale = now_s - last >= INCIDENT_TTL_S
        if incidents.is_idle(window, now) or stale:
            del incident_table[key]
            removed += 1
    return removed


def _with_similarity(
    ctx: Context,
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


async def _reject(ctx: Context, record: RawRecord, msg: InboundMessage, exc: BaseException) -> None:
    await ctx.reject(STAGE, record, msg, exc)
