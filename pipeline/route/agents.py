"""Route stage agents: classified → decisions; task updates → case transitions; SLA timer.

Two agents, each the single writer of its table:

- ``route`` routes what the classify agent of the same worker hands it
  (``RouteAgent.handle_classified``) and consumes ``classified`` (the incident detector's
  messages) and ``case-status`` (all keyed by customer). Its table
  ``customer-cases`` holds each customer's recent cases, so a follow-up (survey answer,
  "не помогло", a recontact on the same topic) finds its case without a lookup. It calls
  ``core.route_message`` and sends what the decision holds: sub-requests to
  ``tasks.<department>`` or ``external``, replies, case events, the one Outcome, and the
  case's new state to ``case-state``.
- ``cases`` consumes ``case-state`` and ``task-updates`` (both keyed by case). Its table
  ``cases`` holds CaseState; task updates go through ``cases.apply_task_update``; every new
  state goes back to ``case-status`` for the route agent. A timer runs ``sla.check_sla``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, TypeAdapter

from pipeline import bus
from pipeline.codec import decode
from pipeline.config import Settings
from pipeline.context import Context, DirectTable, Held
from pipeline.domain.cases import (
    CaseState,
    Transition,
    apply_task_update,
    incident_resolved,
    incident_updates,
    link_member,
    merge_snapshot,
)
from pipeline.domain.text import is_not_helped
from pipeline.domain.threads import match_thread
from pipeline.domain.workflow import Workflow
from pipeline.errors import DecodeError, InvalidInput
from pipeline.events import (
    CaseCommand,
    CaseEvent,
    CaseEvents,
    CaseSnapshot,
    ClassifiedMessage,
    IncidentLink,
    KbArticle,
    SubRequest,
    SubRequestKind,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.live_workflow import LiveWorkflow
from pipeline.metrics import Metrics
from pipeline.route import sla
from pipeline.route.commands import apply_case_command
from pipeline.route.core import RouteDecision, incident_opening, route_message
from pipeline.route.kb import KbIndex, KbMatch
from pipeline.stage import (
    SWEEP_CHUNK,
    RawRecord,
    decode_record,
    own_keys,
    read_stored,
    sweep_table,
    take_batches,
)
from pipeline.topics import task_topic

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

STAGE = "route"
CASES_STAGE = "cases"
#: The tables: route's (by customer), the case keeper's (by case), and the keeper's records
#: that overtook their case's creation (by case).
CUSTOMER_CASES_TABLE = "customer-cases"
CASES_TABLE = "cases"
PENDING_TABLE = "pending-updates"
MAX_CASES_PER_CUSTOMER = 10
SLA_INTERVAL_S = 30.0
CASE_SWEEP_INTERVAL_S = 600.0
MAX_PENDING_UPDATES = 20
#: Links held for an incident's case not created yet: one per report of a wave.
MAX_PENDING_LINKS = 2000


class Runtime:
    """The stage's live configuration: the workflow (file or config topic) and the KB index."""

    def __init__(self, ctx: Context, live: LiveWorkflow) -> None:
        self.ctx = ctx
        self.live = live
        self.kb = KbIndex.from_dir(ctx.settings.kb_dir)

    @property
    def workflow(self) -> Workflow:
        """The workflow in force now."""
        return self.live.current


def find_case(
    cm: ClassifiedMessage, cases: list[CaseState], settings: Settings
) -> tuple[CaseState | None, bool]:
    """The customer's case this message continues, and whether it is a recontact."""
    found = match_thread(
        cm,
        cases,
        window=timedelta(hours=settings.thread_window_hours),
        survey_expiry=timedelta(hours=settings.survey_expiry_hours),
        not_helped=is_not_helped,
    )
    return found.case, found.recontact


async def emit_sub_requests(ctx: Context, subs: list[SubRequest], wf: Workflow) -> None:
    """Internal ones to their department's task topic, the others to e-mail (external)."""
    for sub in subs:
        dept = wf.departments.get(sub.department)
        if sub.kind == SubRequestKind.internal and dept is not None and dept.kind == "internal":
            topic = task_topic(ctx.settings, dept.topic or sub.department)
        else:
            topic = ctx.settings.topic("external")
        ctx.metrics.sub_requests.labels(kind=sub.kind.value, department=sub.department).inc()
        await ctx.send(topic, sub.case_id, sub)


def by_case(events: list[CaseEvent]) -> list[CaseEvents]:
    """A transition's events as one ``CaseEvents`` per case (an incident's report also
    touches the incident's case), each in the transition's order."""
    groups: dict[str, list[CaseEvent]] = {}
    for ev in events:
        groups.setdefault(ev.case_id, []).append(ev)
    return [CaseEvents(case_id=case_id, events=evs) for case_id, evs in groups.items()]


async def emit_case_events(ctx: Context, events: list[CaseEvent]) -> None:
    """One record per case on ``case-events``: a transition's events travel together."""
    for ev in events:
        ctx.metrics.case_events.labels(type=ev.type.value).inc()
    for batch in by_case(events):
        await ctx.send("case-events", batch.case_id, batch)


async def emit_transition(ctx: Context, tr: Transition | RouteDecision, wf: Workflow) -> None:
    """Send the sub-requests, replies and case events of a decision or transition."""
    await emit_sub_requests(ctx, list(tr.sub_requests), wf)
    if isinstance(tr, RouteDecision):
        await emit_sub_requests(ctx, list(tr.incident_sub_requests), wf)
    for reply in tr.replies:
        await ctx.send("replies", reply.customer_id, reply)
    await emit_case_events(ctx, tr.case_events)
    for ev in tr.quality_events:
        await ctx.send("quality", ev.case_id, ev)
    for notice in tr.notices:  # to the holder, beside the sub-request on its task topic
        dept = wf.departments.get(notice.department)
        if dept is not None and dept.kind == "internal":
            await ctx.send(
                task_topic(ctx.settings, dept.topic or notice.department), notice.case_id, notice
            )


def is_news(snapshot: CaseState, stored: CaseState) -> bool:
    """Whether a route snapshot brings a message the stored case has not seen (not a replay)."""
    return not set(snapshot.message_ids) <= set(stored.message_ids)


def is_incident_case(state: CaseState) -> bool:
    """The case an incident's broadcast is tracked under (``derive_id("case", incident_id)``)."""
    return bool(state.incident_id) and state.case_id == derive_id("case", state.incident_id or "")


class _TypedSnapshot(CaseSnapshot):
    """A ``CaseSnapshot`` with its state typed as the ``CaseState`` it is; the same JSON either
    way (other readers decode the plain ``CaseSnapshot``). Sent, pydantic-core writes the case
    in the record's one pass: no ``model_dump`` dict, no validation of that dict, no untyped
    serialization of it. Read, the case is validated from the JSON directly, not through a
    tree of dicts; a state that is no ``CaseState`` fails the decoding (DecodeError), not the
    validation after it (dead-lettered either way)."""

    state: CaseState  # type: ignore[assignment]  # the same JSON as the dict it stands for


def _snapshot(state: CaseState, by: Literal["route", "cases"]) -> _TypedSnapshot:
    return _TypedSnapshot(
        case_id=state.case_id, customer_id=state.customer_id, state=state, by=by, at=utcnow()
    )


def _observe_survey(ctx: Context, events: list[CaseEvent]) -> None:
    for ev in events:
        if ev.type.value == "survey_answered" and isinstance(ev.detail.get("score"), int):
            kind = str(ev.detail.get("kind", "csat"))
            ctx.metrics.survey_score.labels(kind=kind).observe(ev.detail["score"])
            klass = ev.detail.get("nps_class")
            if klass:
                ctx.metrics.nps_answers.labels(klass=str(klass)).inc()


async def sweep_case_tables(
    cases_table: Any,
    customer_cases: Any,
    pending_table: Any,
    cutoff: datetime,
    metrics: Metrics | None = None,
) -> int:
    """Forget cases resolved before ``cutoff`` (and updates still waiting for a case that
    long); returns how many entries went. Open cases are never forgotten; a value the sweep
    cannot read at all is (logged and counted, ``stage.sweep_table``). The sweep reads only
    the fields it decides on, so a case of a format this version does not know otherwise
    (a newer release's field) is kept.

    Without it the memory-store tables and their compacted changelogs grow with every case
    ever opened (measured: ~10 KB of worker memory per message).
    """

    def case_kept(_: str, raw: str) -> str | None:
        return None if not raw or _Retained.model_validate_json(raw).gone(cutoff) else raw

    def customer_kept(_: str, raw: str) -> str | None:
        cases = _RETAINED_LIST.validate_json(raw) if raw else []
        kept = [i for i, c in enumerate(cases) if not c.gone(cutoff)]
        if not kept:
            return None
        if len(kept) == len(cases):
            return raw
        data = orjson.loads(raw)
        return orjson.dumps([data[i] for i in kept]).decode()

    def pending_kept(key: str, raw: str) -> str | None:
        held = _HELD_AT.validate_json(raw) if raw else []
        gone = key not in cases_table and all(_before(u.at, cutoff) for u in held)
        return None if gone else raw

    removed = await sweep_table(cases_table, case_kept, metrics)
    removed += await sweep_table(customer_cases, customer_kept, metrics)
    return removed + await sweep_table(pending_table, pending_kept, metrics)


class _Retained(BaseModel):
    """What the retention sweep reads of a stored case (the other fields are not checked)."""

    status: str
    resolved_at: AwareDatetime | None = None

    def gone(self, cutoff: datetime) -> bool:
        """Resolved before ``cutoff`` (a resolved case without a date counts as long ago)."""
        return self.status == "resolved" and _before(self.resolved_at, cutoff)


class _HeldAt(BaseModel):
    """What the retention sweep reads of a held update or link: when it was made."""

    at: AwareDatetime | None = None


_RETAINED_LIST = TypeAdapter(list[_Retained])
_HELD_AT = TypeAdapter(list[_HeldAt])


def _before(value: datetime | None, cutoff: datetime) -> bool:
    return value is None or value < cutoff


class CustomerCases:
    """The route agent's table: each customer's recent cases (JSON list), newest last."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def of(self, customer_id: str) -> list[CaseState]:
        """The customer's remembered cases."""
        raw = self.table.get(customer_id)
        return _CASES.validate_json(raw) if raw else []

    def store(self, state: CaseState, known: list[CaseState] | None = None) -> None:
        """Remember ``state`` among its customer's cases (``known``: already parsed)."""
        if known is None:
            known = self.of(state.customer_id)
        cases = [c for c in known if c.case_id != state.case_id]
        cases.append(state)
        cases.sort(key=lambda c: c.updated_at)
        # pydantic-core writes the bytes orjson wrote of the cases' model_dump, in one call
        self.table[state.customer_id] = _CASES.dump_json(cases[-MAX_CASES_PER_CUSTOMER:]).decode()


_CASES = TypeAdapter(list[CaseState])
#: The keeper's held records (``TaskUpdate``/``IncidentLink`` dumps), each read on its own.
_HELD = TypeAdapter(list[dict[str, Any]])


def _open_case(raw: str) -> CaseState | None:
    """The stored case if it is open; None if resolved (not validated: the SLA check skips
    it, and most stored cases are resolved ones the retention keeps)."""
    data = orjson.loads(raw)
    if isinstance(data, dict) and data.get("status") == "resolved":
        return None
    return CaseState.model_validate(data)


def _case_json(state: CaseState) -> str:
    """The case keeper's table value: pydantic-core writes the bytes orjson wrote of
    ``state.model_dump(mode="json")``, without the dict."""
    return state.__pydantic_serializer__.to_json(state).decode()


class RouteAgent:
    """Classified messages → decisions: sub-requests, replies, case events, the message's one
    Outcome, and the case's new state to ``case-state``.

    They come from classify in the same worker (``handle_classified``, the classify agent's
    step) or from ``classified`` (the incident detector's, or a classify running elsewhere),
    which this agent reads with ``case-status``. Both paths route under one lock: the
    customer-cases table has one writer at a time, and a customer's case is read and stored
    by one message's routing before the next reads it.
    """

    def __init__(self, ctx: Context, rt: Runtime, cases: CustomerCases) -> None:
        self.ctx = ctx
        self.rt = rt
        self.cases = cases
        self.lock = asyncio.Lock()

    async def run(self, stream: Any) -> None:
        """Batches, as in classify: the KB lookup is vectorized per batch; order is kept."""
        s = self.ctx.settings
        self.ctx.own_outputs(fresh=True)
        async for events in take_batches(stream, s.classify_batch_size, s.classify_batch_within_s):
            records = [RawRecord.from_event(e) for e in events]
            async with (
                self.routing() as held,
                self.ctx.guard_batch(
                    STAGE, records, lambda r: decode_record(ClassifiedMessage, r).inbound
                ),
            ):
                await self.handle_batch(records)
            # outputs durable, then the cases they record, before the batch is acknowledged
            await self.ctx.flush_states(held)

    async def handle_classified(
        self, pairs: list[tuple[RawRecord, ClassifiedMessage]]
    ) -> list[Held]:
        """Route messages classify hands over (``classify.agents.Handoff``), in order; a
        failure dead-letters the message's inbound record with the route stage. Returns the
        customer-cases records to write once the outputs are acknowledged (``Held``)."""
        inbound = {id(record): cm.inbound for record, cm in pairs}
        records = [record for record, _ in pairs]
        async with (
            self.routing() as held,
            self.ctx.guard_batch(STAGE, records, lambda r: inbound[id(r)]),
        ):
            await self.route_decoded(pairs)
        return held

    @contextlib.asynccontextmanager
    async def routing(self) -> AsyncIterator[list[Held]]:
        """Under the lock, with the customer-cases records of what is routed inside held
        back (``Held``): on the way out the list yielded gets them, for the caller to write
        once the outputs are acknowledged (``Context.flush_states``). A case says which
        messages it has seen: stored before the follow-up's outputs (its case events, a
        reopened case's sub-request), the replayed follow-up would change nothing."""
        table = self.cases.table
        held: list[Held] = []
        async with self.lock:
            if not isinstance(table, DirectTable):
                yield held
                return
            table.holding = True
            try:
                yield held
            except BaseException:
                table.take_held().drop()
                raise
            held.append(table.take_held())

    async def handle_batch(self, records: list[RawRecord]) -> None:
        """Decode (bad records: DLQ), then ``route_decoded``."""
        status_topic = self.ctx.settings.topic("case-status")
        decoded: list[tuple[RawRecord, ClassifiedMessage | _TypedSnapshot]] = []
        for record in records:
            async with self.ctx.guard(STAGE, record):
                if record.topic == status_topic:
                    decoded.append((record, decode_record(_TypedSnapshot, record)))
                else:
                    decoded.append((record, decode_record(ClassifiedMessage, record)))
        await self.route_decoded(decoded)

    async def route_decoded(
        self, decoded: Sequence[tuple[RawRecord, ClassifiedMessage | _TypedSnapshot]]
    ) -> None:
        """One KB search for the batch, then each message routed (each snapshot stored), in
        order, each under the per-record guard."""
        hits = self.kb_hits([ev for _, ev in decoded])
        seconds = self.ctx.metrics.stage_seconds.labels(stage=STAGE)
        for i, (record, ev) in enumerate(decoded):
            with seconds.time():
                if isinstance(ev, _TypedSnapshot):
                    async with self.ctx.guard(STAGE, record):
                        self.cases.store(ev.state)
                else:
                    async with self.ctx.guard(STAGE, record, ev.inbound):
                        await self.route(ev, hits.get(i))

    def kb_hits(self, events: list[ClassifiedMessage | CaseSnapshot]) -> dict[int, KbMatch]:
        """One vectorized KB lookup for the messages it may answer (by position)."""
        singles = [
            (i, ev)
            for i, ev in enumerate(events)
            if isinstance(ev, ClassifiedMessage)
            and self.rt.kb.may_auto_reply([it.label for it in ev.intents])
        ]
        found = self.rt.kb.search_many(
            [ev.inbound.text for _, ev in singles],
            [ev.inbound.language for _, ev in singles],
            [[it.label for it in ev.intents] for _, ev in singles],
        )
        return {i: m for (i, _), m in zip(singles, found, strict=True)}

    async def route(self, cm: ClassifiedMessage, kb_hit: KbMatch | None) -> None:
        """Route one message and send everything its decision holds."""
        ctx = self.ctx
        try:
            cases = self.cases.of(cm.customer_id)
            open_case, recontact = find_case(cm, cases, ctx.settings)
            if recontact:
                ctx.metrics.recontacts.inc()
            decision = route_message(
                cm,
                self.rt.workflow,
                now=utcnow(),
                kb_match=kb_hit if open_case is None else None,
                open_case=open_case,
                settings=ctx.settings,
                incident_new=cm.similarity.incident_new,
                explain=False,  # no trace leaves the agent
            )
        except Exception:
            if cm.similarity.incident_new:
                await self.open_incident_alone(cm)
            raise  # the message itself: the error policy's (dead-lettered, rejected)
        await emit_transition(ctx, decision, self.rt.workflow)
        _observe_survey(ctx, decision.case_events)
        if decision.case is not None:
            self.cases.store(decision.case, cases)
            await ctx.send("case-state", decision.case.case_id, _snapshot(decision.case, "route"))
        inc = decision.incident_case
        if inc is not None and cm.similarity.incident_new:
            # Only the report that opened the incident creates its case (one writer).
            await ctx.send("case-state", inc.case_id, _snapshot(inc, "route"))
        link = decision.incident_link
        if link is not None:  # to the keeper of the incident's case, wherever that is
            await ctx.send("case-commands", link.case_id, link)
        out = decision.outcome
        await ctx.send("outcomes", out.message_id, out)
        ctx.metrics.messages.labels(stage=STAGE, outcome=out.outcome.value).inc()
        latency = (out.decided_at - cm.inbound.received_at).total_seconds()
        ctx.metrics.end_to_end.observe(max(latency, 0.0))

    async def open_incident_alone(self, cm: ClassifiedMessage) -> None:
        """Open the incident ``cm`` opened although routing ``cm`` failed: the later reports
        are linked to the incident's case and told it is a known problem, so without it the
        group would hear nothing and their links would wait for a case that never comes. A
        failure here is logged; the message's own failure is what the error policy sees."""
        ctx, wf = self.ctx, self.rt.workflow
        try:
            opening = incident_opening(cm, wf, now=utcnow(), settings=ctx.settings)
        except Exception:
            log.exception("incident of %s not opened either", cm.message_id)
            return
        if opening is None:
            return
        log.warning(
            "routing %s failed; the incident it opened goes out alone (%s)",
            cm.message_id,
            opening.case.case_id,
        )
        await emit_sub_requests(ctx, opening.sub_requests, wf)
        await emit_case_events(ctx, opening.case_events)
        await ctx.send("case-state", opening.case.case_id, _snapshot(opening.case, "route"))


class CaseKeeper:
    """``case-state`` + ``task-updates`` + ``case-commands`` → case transitions (single
    writer of ``cases``); every new state goes back to ``case-status`` for the route agent.
    Also runs the SLA check over the open cases."""

    def __init__(self, ctx: Context, rt: Runtime, cases_table: Any, pending_table: Any) -> None:
        self.ctx = ctx
        self.rt = rt
        self.table = cases_table
        self.pending = pending_table
        #: What the SLA check read of each own case (``_Due``), under the workflow ``_due_for``.
        self._due: dict[str, _Due] = {}
        self._due_for: Workflow | None = None
        #: One writer at a time (the agent's batch or the SLA check), see ``states_after``.
        self._writing = asyncio.Lock()

    async def run(self, stream: Any) -> None:
        """The agent loop: batches applied record by record in order, one ack wait per batch
        for the outputs, then one for the states (``states_after``) before the batch is
        acknowledged."""
        s = self.ctx.settings
        self.ctx.own_outputs(fresh=True)
        async for events in take_batches(stream, s.classify_batch_size, s.classify_batch_within_s):
            async with self.states_after():
                for event in events:
                    record = RawRecord.from_event(event)
                    async with self.ctx.guard(CASES_STAGE, record):
                        await self.apply(record)
                        self.ctx.metrics.messages.labels(stage=CASES_STAGE, outcome="applied").inc()

    @contextlib.asynccontextmanager
    async def states_after(self) -> AsyncIterator[None]:
        """Apply transitions inside; on the way out, wait until their outputs are acknowledged,
        and only then write the new states' changelog records and wait for those.

        A state says what was sent: a warning emitted, an update applied (``seen_update_ids``).
        Durable before its outputs (the changelog's partition up, an output's down; a worker
        killed between the two), it would never send them: after the restart the SLA check
        sees the warning as emitted and a replayed update as one the case has seen, so the
        customer's answer is lost. Outputs first, a crash in between leaves the old state: the
        replay or the next check sends them again under the same ids (invariant 3). The new
        states are in the table at once (``DirectTable.holding``); one writer at a time, so a
        state released is never one that another writer's unacknowledged outputs led to.
        """
        tables = [t for t in (self.table, self.pending) if isinstance(t, DirectTable)]
        async with self._writing:
            for table in tables:
                table.holding = True
            try:
                yield
            except BaseException:
                for table in tables:
                    table.take_held().drop()
                raise
            await self.ctx.flush_states([table.take_held() for table in tables])

    async def apply(self, record: RawRecord) -> None:
        """Dispatch by input topic."""
        s = self.ctx.settings
        if record.topic == s.topic("case-state"):
            await self.take_snapshot(decode_record(_TypedSnapshot, record))
        elif record.topic == s.topic("case-commands"):
            if record.value is not None and b'"link_id"' in record.value:  # route's link
                await self.take_link(decode_record(IncidentLink, record))
            else:  # a supervisor's reassign / add
                await self.take_command(decode_record(CaseCommand, record))
        else:
            await self.take_update(decode_record(TaskUpdate, record))

    def get(self, case_id: str) -> CaseState | None:
        """The stored case, if any."""
        raw = self.table.get(case_id)
        return CaseState.model_validate_json(raw) if raw else None

    async def take_snapshot(self, snap: _TypedSnapshot) -> None:
        """A case state written by route: store it, unless it is a replay of older news."""
        state = snap.state
        known = self.get(state.case_id)
        if known is not None:
            if not is_news(state, known):
                return  # a replayed snapshot must not undo later transitions
            merged = merge_snapshot(known, state)
            if merged != state:  # route's view lagged: give it the keeper's state back
                await self.ctx.send("case-status", merged.customer_id, _snapshot(merged, "cases"))
            state = merged
        self.table[state.case_id] = _case_json(state)
        if self.pending.get(state.case_id):
            # Updates and links that overtook the case's creation (other topics): apply now.
            waiting = self.held(state.case_id)
            self.pending[state.case_id] = ""
            for raw in waiting:
                await self.apply_held(state.case_id, raw)

    async def take_link(self, link: IncidentLink) -> None:
        """A report's case joins the incident whose case this keeper holds; answered at once
        when the incident is already resolved."""
        incident = self.get(link.case_id)
        if incident is None:
            # The incident's case comes from the opener's route, maybe after its reports' links.
            what = f"incident link {link.link_id}"
            self.hold(link.case_id, what, link.model_dump(mode="json"), MAX_PENDING_LINKS)
            return
        state, updates = link_member(incident, link, utcnow())
        if state != incident:
            self.table[state.case_id] = _case_json(state)
        await self.send_updates(updates)

    async def send_updates(self, updates: list[TaskUpdate]) -> None:
        """An incident's answer to its members, each to the keeper of the member's case."""
        for update in updates:
            await self.ctx.send("task-updates", update.case_id, update)

    def held(self, case_id: str) -> list[dict[str, Any]]:
        """The records held for a case not created yet; an unreadable value holds none (its
        records could not be applied anyway; dead-lettering the record that reads it would not
        bring them back)."""
        raw = self.pending.get(case_id)
        if not raw:
            return []
        dropped = "the records held for it are dropped"
        return self.read_pending(_HELD.validate_json, raw, case_id, dropped) or []

    async def apply_held(self, case_id: str, raw: dict[str, Any]) -> None:
        """Apply one held update or link; one this version cannot read is dropped, not the
        case's other held records."""
        model: type[IncidentLink] | type[TaskUpdate] = (
            IncidentLink if "link_id" in raw else TaskUpdate
        )
        record = self.read_pending(model.model_validate, raw, case_id, "that record is dropped")
        if isinstance(record, IncidentLink):
            await self.take_link(record)
        elif isinstance(record, TaskUpdate):
            await self.apply_update(record)

    def read_pending(self, parse: Callable[[R], T], raw: R, case_id: str, then: str) -> T | None:
        """``stage.read_stored`` for the held records of a case."""
        return read_stored(
            parse, raw, table=PENDING_TABLE, key=case_id, metrics=self.ctx.metrics, then=then
        )

    def hold(self, case_id: str, what: str, raw: dict[str, Any], limit: int) -> None:
        """Keep a record that overtook its case's creation (bounded) until the case comes."""
        held = self.held(case_id)
        if len(held) >= limit:
            raise DecodeError(f"{what} for unknown case {case_id}")
        held.append(raw)
        self.pending[case_id] = orjson.dumps(held).decode()
        log.warning("%s waits for case %s", what, case_id)

    async def take_command(self, command: CaseCommand) -> None:
        """A supervisor's command on an existing case."""
        state = self.get(command.case_id)
        if state is None:
            raise InvalidInput(f"command {command.command_id}: no case {command.case_id}")
        tr = apply_case_command(
            state, command, self.rt.workflow, now=utcnow(), settings=self.ctx.settings
        )
        await self.save(tr)

    async def take_update(self, update: TaskUpdate) -> None:
        """A department's update; held (bounded) when it overtook its case's creation."""
        if not self.table.get(update.case_id):
            what = f"task update {update.update_id}"
            self.hold(update.case_id, what, update.model_dump(mode="json"), MAX_PENDING_UPDATES)
            return
        await self.apply_update(update)

    async def apply_update(self, update: TaskUpdate) -> None:
        """Apply a task update to its (stored) case and save the transition."""
        state = CaseState.model_validate(orjson.loads(self.table[update.case_id]))
        await self.save(
            apply_task_update(
                state, update, self.rt.workflow, now=utcnow(), settings=self.ctx.settings
            )
        )

    async def save(self, tr: Transition) -> None:
        """Store the new state (synchronously), then send what the transition holds."""
        incident = is_incident_case(tr.state)
        if incident:
            # The incident's own case answers nobody itself: its reporters' cases do.
            tr = tr.model_copy(update={"replies": []})
        self.table[tr.state.case_id] = _case_json(tr.state)
        await emit_transition(self.ctx, tr, self.rt.workflow)
        if not incident:
            await self.ctx.send("case-status", tr.state.customer_id, _snapshot(tr.state, "cases"))
        else:  # the incident's resolution closes its reporters' cases, on every worker
            resolved = incident_resolved(tr.state, utcnow())
            if resolved is not None:
                # Its bucket's detector links no more reports to it. Sent first, so it is on
                # the broker no later than the answers its reporters are told.
                await self.ctx.send("incident-signals", resolved.bucket, resolved)
            await self.send_updates(incident_updates(tr.state, utcnow()))

    async def check_sla(self) -> None:
        """Timer: warnings, breaches and escalations due now, over every open case this
        worker owns (``stage.own_keys``: not the standby copies of other workers' cases).

        A case is checked once its next check time (``sla.next_check_at``) has come. That time
        is kept with the table value it was read from (``_Due``): a case is parsed again only
        when its value is another object (the keeper wrote it, a recovery restored it) or the
        workflow changed. Before, every check parsed every stored case, the resolved ones the
        retention keeps for 30 days included (``bench/sla_check.py``).
        """
        now = utcnow()
        wf = self.rt.workflow
        if wf is not self._due_for:  # other SLA policies: other times
            self._due, self._due_for = {}, wf
        known, seen = self._due, {}
        open_cases = 0
        async with self.states_after():
            for n, key in enumerate(own_keys(self.table)):
                if n % SWEEP_CHUNK == 0:
                    await asyncio.sleep(0)  # a long scan must not stall the loop (tail latency)
                raw = self.table.get(key)
                if not raw:
                    continue
                due = known.get(key)
                state = None
                if due is None or due.raw is not raw:
                    state = self.read_open(key, raw)
                    at = sla.next_check_at(state, wf) if state is not None else None
                    due = _Due(raw, state is not None, at)
                seen[key] = due
                open_cases += due.open
                if due.at is None or now < due.at:
                    continue
                if state is None:  # read at an earlier check: read it now
                    state = self.read_open(key, raw)
                    if state is None:
                        continue
                tr = sla.check_sla(state, wf, now, settings=self.ctx.settings)
                if tr.case_events or tr.sub_requests or tr.replies:
                    await self.save(tr)
        self._due = seen
        self.ctx.metrics.open_cases.set(open_cases)

    def read_open(self, key: str, raw: str) -> CaseState | None:
        """The stored case if it is open; None if resolved or unreadable (logged and counted
        when read: one case must not stop the others' check)."""
        return read_stored(
            _open_case,
            raw,
            table=CASES_TABLE,
            key=key,
            metrics=self.ctx.metrics,
            then="no SLA check for it until it changes",
        )


class _Due(NamedTuple):
    """A stored case as the SLA check last read it: the table value (the same object while
    the case is unchanged), whether the case is open, and when it next needs a check (None:
    not until it changes)."""

    raw: str
    open: bool
    at: datetime | None


def _raw_topic(ctx: Context, *names: str) -> Any:
    """One Faust channel over several raw-bytes topics (one agent reads them all)."""
    return ctx.app.topic(
        *(ctx.settings.topic(n) for n in names),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


def install(ctx: Context, live: LiveWorkflow) -> tuple[RouteAgent, CaseKeeper]:
    """Register the route and case agents, the SLA and retention timers and the KB follower."""
    app = ctx.app
    rt = Runtime(ctx, live)
    customer_cases = ctx.table(CUSTOMER_CASES_TABLE)
    cases_table = ctx.table(CASES_TABLE)
    pending_table = ctx.table(PENDING_TABLE)
    router = RouteAgent(ctx, rt, CustomerCases(customer_cases))
    keeper = CaseKeeper(ctx, rt, cases_table, pending_table)
    app.agent(_raw_topic(ctx, "classified", "case-status"), name="route")(router.run)
    app.agent(_raw_topic(ctx, "case-state", "task-updates", "case-commands"), name="cases")(
        keeper.run
    )

    async def case_sweep() -> None:
        cutoff = utcnow() - timedelta(days=ctx.settings.case_retention_days)
        # Not under the writers' locks (that stalled routing for the whole sweep): a record
        # a batch still holds (``Held``) may land after the sweep's, and bring a swept key
        # back on the changelog, not in memory; after a restart the next sweep forgets it.
        removed = await sweep_case_tables(
            cases_table, customer_cases, pending_table, cutoff, ctx.metrics
        )
        if removed:
            log.info("case sweep forgot %d entries resolved before %s", removed, cutoff)

    async def kb_follow() -> None:
        await follow_kb(ctx, rt)

    app.timer(SLA_INTERVAL_S)(keeper.check_sla)
    app.timer(CASE_SWEEP_INTERVAL_S)(case_sweep)
    app.task(kb_follow)
    return router, keeper


async def follow_kb(ctx: Context, rt: Runtime) -> None:
    """Keep the KB index in step with the compacted KB topic (every worker reads all of it)."""
    topic = ctx.settings.topic("kb")

    def take(record: bus.Record) -> None:
        if record.value is None:
            return
        try:
            article = decode(KbArticle, record.value)
        except DecodeError as exc:
            log.error("bad KB record at %s[%s]@%s: %s", topic, record.partition, record.offset, exc)
            return
        rt.kb.upsert(article)
        log.info("KB article %s updated from the topic", article.article_id)

    await bus.follow(ctx.settings, topic, take)
