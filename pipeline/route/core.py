"""The route stage's pure core: one classified message → one routing decision.

``route_message`` decides, without any I/O:

1. **Duplicate** (``similarity.duplicate_of``) → outcome ``duplicate``; the message is
   appended to the open case (``message_appended``); no new sub-requests, no reply.
2. **Follow-up on a known case** (``open_case`` given, or ``similarity.recontact_of``) →
   ``cases.apply_customer_message``: a survey answer, an appended message, or — when the case
   is resolved or the customer says it did not help — a reopen routed to a human.
3. **Auto-reply**: one intent and a KB match whose ``auto_reply`` fires → the answer is sent,
   the case is opened and closed at once (outcome ``auto_resolved``).
4. **Routing**: the workflow's rules, per intent (see ``pipeline.domain.workflow``), become
   sub-requests: internal (``tasks.<department>``), external (e-mail to the named store's
   director or a fixed address) and broadcast (one per group member); the customer gets an
   acknowledgement (or the incident notice). Outcome ``routed``.

Incidents: when ``similarity.incident_id`` is set and an incident policy covers the
category, the report that opened the incident (``incident_new``) emits the group broadcast
under the incident's own case (``derive_id("case", incident_id)``), with ids derived from the
incident and the recipient (a replay yields the same ids; the sink sends them once), whatever
route makes of the message itself: a new case, a follow-up, a duplicate or a KB answer
(``_opening``; those open no case of their own and link none). Every new-case
report of the incident is linked to it (``incident_linked``) and sends nothing of its own to
a recipient the broadcast reaches (``_cover``): its case keeps that sub-request, without
deadlines, so the incident's resolution closes it. A later reporter gets the incident notice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import Settings
from pipeline.domain.cases import (
    CaseState,
    SubRequestState,
    Transition,
    apply_customer_message,
    case_ref,
    created_event,
    event,
    fill,
    incident_link,
    new_sub_request,
    reply,
)
from pipeline.domain.delays import flag_alerts
from pipeline.domain.workflow import (
    AutoReplyAction,
    BroadcastAction,
    EscalateAction,
    ExternalAction,
    IncidentPolicy,
    InternalAction,
    SetPriorityAction,
    SlaAction,
    TriageAction,
    Workflow,
)
from pipeline.events import (
    CaseEvent,
    CaseEventType,
    ClassifiedMessage,
    Entity,
    IncidentLink,
    Intent,
    Outcome,
    OutcomeKind,
    Priority,
    Reply,
    ReplyKind,
    SubRequest,
    TaskNotice,
    derive_id,
)
from pipeline.route.kb import KbMatch
from pipeline.route.rules import RuleTrace, match_rules
from pipeline.route.sla import raise_level

__all__ = [
    "STAGE",
    "IncidentOpening",
    "IntentTrace",
    "RouteDecision",
    "RouteTrace",
    "incident_opening",
    "route_message",
]

STAGE = "route"
Kind = Literal["internal", "external", "broadcast"]


class IntentTrace(BaseModel):
    """How one intent was routed."""

    model_config = ConfigDict(frozen=True)

    intent: str
    category: str
    confidence: float
    text: str
    rules: list[RuleTrace] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list, description="kind:department[:recipient]")
    notes: list[str] = Field(default_factory=list)


class RouteTrace(BaseModel):
    """Why the decision is what it is (printed by ``pipeline rules explain``)."""

    model_config = ConfigDict(frozen=True)

    path: Literal["duplicate", "follow_up", "auto_reply", "routed"]
    intents: list[IntentTrace] = Field(default_factory=list)
    priority_before: str
    priority_after: str
    notes: list[str] = Field(default_factory=list)


class RouteDecision(BaseModel):
    """Everything the route agent emits for one classified message."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    case: CaseState | None = None
    sub_requests: list[SubRequest] = Field(default_factory=list)
    replies: list[Reply] = Field(default_factory=list)
    case_events: list[CaseEvent] = Field(default_factory=list)
    quality_events: list[CaseEvent] = Field(default_factory=list)
    incident_case: CaseState | None = Field(
        default=None,
        description="The incident's own case, tracking one sub-request per broadcast recipient.",
    )
    incident_sub_requests: list[SubRequest] = Field(
        default_factory=list, description="Incident broadcast, under the incident's own case."
    )
    notices: list[TaskNotice] = Field(
        default_factory=list, description="For the holders of the case's open sub-requests."
    )
    incident_link: IncidentLink | None = Field(
        default=None,
        description="A report's case joining its incident, for the incident case's keeper.",
    )
    trace: RouteTrace


@dataclass
class _Target:
    kind: Kind
    department: str
    recipient: str | None = None
    text: str | None = None
    language: str | None = None


@dataclass
class _Plan:
    intent: Intent
    targets: list[_Target] = field(default_factory=list)
    sla: str | None = None
    auto_reply: str | None = None
    trace_notes: list[str] = field(default_factory=list)
    rules: list[RuleTrace] = field(default_factory=list)


def _outcome(
    msg: ClassifiedMessage,
    kind: OutcomeKind,
    now: datetime,
    *,
    case_id: str | None,
    departments: list[str],
    reason: str,
) -> Outcome:
    return Outcome(
        message_id=msg.message_id,
        customer_id=msg.customer_id,
        outcome=kind,
        case_id=case_id,
        departments=departments,
        reason=reason,
        stage=STAGE,
        received_at=msg.inbound.received_at,
        decided_at=now,
    )


def _new_case(
    msg: ClassifiedMessage, workflow: Workflow, now: datetime, priority: Priority, **fields: Any
) -> CaseState:
    """The message's new case, built once with what the caller decided (``fields``: more
    of its fields) rather than copied per decision."""
    inbound = msg.inbound
    lang = inbound.language if inbound.language in workflow.templates else workflow.default_language
    return CaseState(
        case_id=derive_id("case", msg.message_id),
        customer_id=msg.customer_id,
        customer=inbound.profile,
        channel=inbound.channel,
        reply_to=dict(inbound.reply_to),
        language=lang,
        first_message_id=msg.message_id,
        message_ids=[msg.message_id],
        full_text=inbound.text,
        entities=list(msg.entities),
        categories=list(dict.fromkeys(i.category for i in msg.intents)),
        priority=priority,
        incident_id=msg.similarity.incident_id,
        opened_at=now,
        updated_at=now,
        **fields,
    )


def _stores_for(msg: ClassifiedMessage, intent: Intent) -> list[Entity]:
    """Store entities inside the intent's span, else every store entity of the message."""
    stores = [e for e in msg.entities if e.kind == "store"]
    inside = [
        e
        for e in stores
        if e.span is not None and intent.span.start <= e.span.start < max(intent.span.end, 1)
    ]
    return inside or stores


def _plan_intent(
    msg: ClassifiedMessage, intent: Intent, workflow: Workflow, now: datetime, explain: bool
) -> tuple[_Plan, Priority | None, int]:
    """Targets of one intent; a priority override and the number of escalations."""
    rules, traces = match_rules(workflow, msg, intent, now=now, explain=explain)
    plan = _Plan(intent=intent, rules=traces)
    override: Priority | None = None
    escalations = 0
    for rule in rules:
        for act in rule.then:
            if isinstance(act, InternalAction):
                plan.targets.append(_Target("internal", act.department))
            elif isinstance(act, TriageAction):
                plan.targets.append(_Target("internal", workflow.triage_department))
            elif isinstance(act, ExternalAction):
                plan.targets += _external_targets(msg, intent, act, workflow, plan.trace_notes)
            elif isinstance(act, BroadcastAction):
                group = workflow.groups[act.group]
                dep = group.department or workflow.triage_department
                text = None
                lang = workflow.party_language(dep, act.group)
                if act.template:
                    lang = lang or workflow.default_language
                    text = fill(
                        workflow.custom_template(act.template, lang),
                        category=intent.category,
                        store=", ".join(e.value for e in _stores_for(msg, intent)) or "-",
                    )
                for member in workflow.group_members(act.group):
                    plan.targets.append(_Target("broadcast", dep, member, text, lang))
            elif isinstance(act, SetPriorityAction):
                override = msg.priority.model_copy(update={"level": act.level})
            elif isinstance(act, SlaAction):
                plan.sla = act.policy
            elif isinstance(act, AutoReplyAction):
                plan.auto_reply = act.template
            elif isinstance(act, EscalateAction):
                escalations += 1
                if act.department:
                    plan.targets.append(_Target("internal", act.department))
    if not rules:
        plan.trace_notes.append(f"no rule matched → {workflow.triage_department}")
    if not plan.targets and plan.auto_reply is None:
        if rules:
            plan.trace_notes.append(f"rules created no sub-request → {workflow.triage_department}")
        plan.targets.append(_Target("internal", workflow.triage_department))
    # one sub-request per (intent, target)
    seen: set[tuple[str, str, str | None]] = set()
    unique: list[_Target] = []
    for t in plan.targets:
        k = (t.kind, t.department, t.recipient)
        if k not in seen:
            seen.add(k)
            unique.append(t)
    plan.targets = unique
    return plan, override, escalations


def _external_targets(
    msg: ClassifiedMessage,
    intent: Intent,
    act: ExternalAction,
    workflow: Workflow,
    notes: list[str],
) -> list[_Target]:
    if act.address:
        return [_Target("external", act.department, act.address)]
    out: list[_Target] = []
    for ent in _stores_for(msg, intent):
        store = workflow.store(ent.value)
        if store is None or not store.director_email:
            notes.append(f"store {ent.value!r} has no director e-mail in the directory")
            continue
        notes.append(f"store {store.code} ({store.address}) → director {store.director_email}")
        out.append(_Target("external", act.department, store.director_email))
    if not out:
        fallback = act.fallback_department or workflow.triage_department
        notes.append(f"no store director could be resolved → internal {fallback}")
        out.append(_Target("internal", fallback))
    return out


def _merge_priority(base: Priority, overrides: list[Priority], escalations: int) -> Priority:
    prio = base
    if overrides:
        prio = min(overrides, key=lambda p: p.level)  # "P1" < "P2": the most urgent wins
    for _ in range(escalations):
        prio = raise_level(prio)
    return prio


def route_message(
    msg: ClassifiedMessage,
    workflow: Workflow,
    *,
    now: datetime,
    kb_match: KbMatch | None = None,
    open_case: CaseState | None = None,
    settings: Settings | None = None,
    incident_new: bool = False,
    explain: bool = True,
) -> RouteDecision:
    """Decide what happens to one classified message (pure; ``now`` injected).

    ``open_case`` is the customer's case this message belongs to (the agent looks it up
    from ``similarity.case_id`` / ``recontact_of``); ``settings`` only serves reply
    addresses of external sub-requests (``pipeline.domain.tokens``). ``explain=False``: the
    trace leaves out each rule's conditions (``IntentTrace.rules`` empty; the route agent sends
    no trace); the decision is the same.

    Phases: 1. a duplicate joins its case; 2. a follow-up goes to its open case; 3. a KB
    article answers a single request; 4. the rules plan each intent (targets, priority);
    5. the plans become sub-requests and template replies; 6. an incident links the case;
    7. the customer's answer and the Outcome.
    """
    sim = msg.similarity
    if sim.duplicate_of is not None:  # 1.
        return _opening(_duplicate(msg, now, open_case), msg, workflow, now, settings, incident_new)
    if open_case is not None:  # 2.
        tr = apply_customer_message(open_case, msg.inbound, workflow, now=now, settings=settings)
        decision = _follow_up(msg, now, open_case, tr)
        return _opening(decision, msg, workflow, now, settings, incident_new)
    notes: list[str] = []
    if sim.recontact_of is not None:
        notes.append(f"recontact of case {sim.recontact_of}, but the case was not supplied")
    answer_from = _kb_answer(msg, kb_match, notes)  # 3.
    if answer_from is not None:
        decision = _auto_reply(msg, workflow, now, answer_from)
        return _opening(decision, msg, workflow, now, settings, incident_new)
    plans, priority = _plan_all(msg, workflow, now, explain)  # 4.
    case = _new_case(msg, workflow, now, priority)
    events = _opening_events(msg, case, now)
    built = _build(plans, msg, case, workflow, now, settings)  # 5.
    built, cover_notes = _cover(built, msg, workflow)  # the incident broadcast reaches them
    notes += cover_notes
    case = case.model_copy(update={"sub_requests": built.records})
    events.extend(created_event(case, sub, now) for sub in built.subs)
    # a VIP or a legal threat: the supervisors of the departments involved are alerted
    case, alerts, alert_events = flag_alerts(case, workflow, built.subs, now=now, settings=settings)
    events += alert_events
    incident_subs: list[SubRequest] = []
    incident_case: CaseState | None = None
    if sim.incident_id is not None:  # 6.
        incident_subs, inc_events, inc_notes, incident_case = _incident(
            msg, workflow, case, now, settings, incident_new
        )
        events, notes = events + inc_events, notes + inc_notes
    case, replies, outcome = _answer(msg, case, workflow, now, built, len(plans), incident_new)
    if not built.records:  # 7. (resolved by the templates alone)
        events.append(_auto_resolved_event(msg, case, now))
    return RouteDecision(
        outcome=outcome,
        case=case,
        sub_requests=built.subs + alerts,
        replies=replies,
        case_events=events,
        incident_sub_requests=incident_subs,
        incident_case=incident_case,
        incident_link=_link(msg, workflow, case, now),
        trace=RouteTrace(
            path="routed",
            intents=built.traces,
            priority_before=msg.priority.level,
            priority_after=priority.level,
            notes=notes,
        ),
    )


def _kb_answer(
    msg: ClassifiedMessage, kb_match: KbMatch | None, notes: list[str]
) -> KbMatch | None:
    """The KB match that auto-replies (one request only); otherwise a note says why not."""
    if kb_match is not None and kb_match.auto_reply and kb_match.answer:
        if len(msg.intents) == 1:
            return kb_match
        notes.append(
            f"KB article {kb_match.article_id} would auto-reply, but the message has "
            f"{len(msg.intents)} requests: routing all of them"
        )
    elif kb_match is not None:
        notes.append(f"KB: {kb_match.reason or 'no auto-reply'}")
    elif msg.similarity.auto_reply:
        notes.append("similarity says auto-reply but no KB match was supplied: routing")
    return None


def _plan_all(
    msg: ClassifiedMessage, workflow: Workflow, now: datetime, explain: bool
) -> tuple[list[_Plan], Priority]:
    """The rules' plan for each intent, and the message's priority after their overrides."""
    plans: list[_Plan] = []
    overrides: list[Priority] = []
    escalations = 0
    for intent in msg.intents:
        plan, override, esc = _plan_intent(msg, intent, workflow, now, explain)
        plans.append(plan)
        if override is not None:
            overrides.append(override)
        escalations = max(escalations, esc)  # message-level: not once per intent
    return plans, _merge_priority(msg.priority, overrides, escalations)


def _opened_event(
    msg: ClassifiedMessage, case: CaseState, now: datetime, **detail: Any
) -> CaseEvent:
    """The case's ``opened`` event (channel, language, and what the caller adds)."""
    return event(
        case,
        CaseEventType.opened,
        now,
        key="opened",
        message_id=msg.message_id,
        detail={"channel": case.channel.value, "language": case.language, **detail},
    )


def _opening_events(msg: ClassifiedMessage, case: CaseState, now: datetime) -> list[CaseEvent]:
    """``opened``, and ``escalated`` when the rules changed the priority level."""
    level = msg.priority.level
    events = [
        _opened_event(msg, case, now, categories=case.categories, priority=case.priority.level)
    ]
    if case.priority.level != level:
        events.append(
            event(
                case,
                CaseEventType.escalated,
                now,
                key="rules",
                message_id=msg.message_id,
                detail={"from": level, "to": case.priority.level, "by": "rules"},
            )
        )
    return events


@dataclass
class _Built:
    """What the plans of a message become."""

    subs: list[SubRequest] = field(default_factory=list)
    records: list[SubRequestState] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    traces: list[IntentTrace] = field(default_factory=list)


def _build(
    plans: list[_Plan],
    msg: ClassifiedMessage,
    case: CaseState,
    workflow: Workflow,
    now: datetime,
    settings: Settings | None,
) -> _Built:
    """Sub-requests (one per intent and target) and template replies, with their traces."""
    built = _Built()
    for plan in plans:
        targets: list[str] = []
        for tgt in plan.targets:
            sub, rec = new_sub_request(
                case,
                workflow,
                now=now,
                kind=tgt.kind,
                department=tgt.department,
                recipient=tgt.recipient,
                intent=plan.intent.label,
                category=plan.intent.category,
                text=tgt.text or plan.intent.text,
                key="",
                priority=case.priority,
                sla_policy=plan.sla,
                settings=settings,
                language=tgt.language,
            )
            if any(s.sub_request_id == sub.sub_request_id for s in built.subs):
                continue  # the same intent label twice in one message, same target
            built.subs.append(sub)
            built.records.append(rec)
            targets.append(
                f"{tgt.kind}:{tgt.department}" + (f":{tgt.recipient}" if tgt.recipient else "")
            )
        if plan.auto_reply is not None:
            text = workflow.custom_template(plan.auto_reply, case.language)
            built.replies.append(
                reply(
                    case,
                    ReplyKind.auto_reply,
                    fill(text, name=_name(case), case_ref=case_ref(case.case_id)),
                    now,
                    key=f"template:{plan.intent.label}:{plan.auto_reply}",
                    message_id=msg.message_id,
                )
            )
            targets.append(f"auto_reply:{plan.auto_reply}")
        built.traces.append(
            IntentTrace(
                intent=plan.intent.label,
                category=plan.intent.category,
                confidence=plan.intent.confidence,
                text=plan.intent.text,
                rules=plan.rules,
                targets=targets,
                notes=plan.trace_notes,
            )
        )
    return built


def _answer(
    msg: ClassifiedMessage,
    case: CaseState,
    workflow: Workflow,
    now: datetime,
    built: _Built,
    requests: int,
    incident_new: bool,
) -> tuple[CaseState, list[Reply], Outcome]:
    """Phase 7: acknowledge a routed message, or resolve one every template answered."""
    if not built.records:  # every intent was answered by an auto-reply template
        case = case.model_copy(update={"status": "resolved", "resolved_at": now})
        reason = "answered by rule templates"
        outcome = _outcome(
            msg, OutcomeKind.auto_resolved, now, case_id=case.case_id, departments=[], reason=reason
        )
        return case, built.replies, outcome
    answer, depts = _acknowledge(msg, case, workflow, now, built.records, incident_new)
    reason = f"{len(built.records)} sub-request(s) for {requests} request(s)"
    outcome = _outcome(
        msg, OutcomeKind.routed, now, case_id=case.case_id, departments=depts, reason=reason
    )
    return case, [*built.replies, answer], outcome


def _acknowledge(
    msg: ClassifiedMessage,
    case: CaseState,
    workflow: Workflow,
    now: datetime,
    subs: Sequence[SubRequestState],
    incident_new: bool,
) -> tuple[Reply, list[str]]:
    """The customer's answer to a routed message, and the departments it went to."""
    t = workflow.templates_for(case.language)
    departments = list(dict.fromkeys(s.department for s in subs))
    if msg.similarity.incident_id is not None and not incident_new:
        text, kind_note, rkind = t.incident_notice, "incident_notice", ReplyKind.incident_notice
    elif set(departments) == {workflow.triage_department}:
        text, kind_note, rkind = t.triage, "triage", ReplyKind.acknowledgement
    else:
        text, kind_note, rkind = t.acknowledgement, "acknowledgement", ReplyKind.acknowledgement
    titles = [workflow.title(s.department, case.language) for s in subs]
    answer = reply(
        case,
        rkind,
        fill(
            text,
            name=_name(case),
            case_ref=case_ref(case.case_id),
            departments=", ".join(dict.fromkeys(titles)),
        ),
        now,
        key=kind_note,
        message_id=msg.message_id,
    )
    return answer, departments


def _auto_resolved_event(msg: ClassifiedMessage, case: CaseState, now: datetime) -> CaseEvent:
    return event(
        case,
        CaseEventType.auto_resolved,
        now,
        key="template",
        message_id=msg.message_id,
        detail={"by": "rule template"},
    )


def _name(case: CaseState) -> str:
    return f", {case.customer.name}" if case.customer and case.customer.name else ""


def _duplicate(msg: ClassifiedMessage, now: datetime, open_case: CaseState | None) -> RouteDecision:
    sim = msg.similarity
    case_id = open_case.case_id if open_case else sim.case_id
    events: list[CaseEvent] = []
    case = open_case
    if open_case is not None:
        if msg.message_id not in open_case.message_ids:
            case = open_case.model_copy(
                update={"message_ids": [*open_case.message_ids, msg.message_id], "updated_at": now}
            )
        events.append(
            event(
                open_case,
                CaseEventType.message_appended,
                now,
                key=msg.message_id,
                message_id=msg.message_id,
                detail={"duplicate_of": sim.duplicate_of, "reason": sim.duplicate_reason},
            )
        )
    elif case_id is not None:
        events.append(
            CaseEvent(
                event_id=derive_id(
                    "ce", case_id, CaseEventType.message_appended.value, msg.message_id
                ),
                case_id=case_id,
                type=CaseEventType.message_appended,
                message_id=msg.message_id,
                detail={"duplicate_of": sim.duplicate_of, "reason": sim.duplicate_reason},
                at=now,
            )
        )
    outcome = _outcome(
        msg,
        OutcomeKind.duplicate,
        now,
        case_id=case_id,
        departments=[],
        reason=f"duplicate of {sim.duplicate_of} ({sim.duplicate_reason or '?'})",
    )
    trace = RouteTrace(
        path="duplicate",
        priority_before=msg.priority.level,
        priority_after=msg.priority.level,
        notes=[f"duplicate of {sim.duplicate_of}: no new sub-requests"],
    )
    return RouteDecision(outcome=outcome, case=case, case_events=events, trace=trace)


def _follow_up(
    msg: ClassifiedMessage, now: datetime, open_case: CaseState, t: Transition
) -> RouteDecision:
    what = (
        "survey answer"
        if t.state.survey != open_case.survey
        else ("reopened, sent to a human" if t.sub_requests else "appended to the open case")
    )
    departments = list(dict.fromkeys(s.department for s in t.sub_requests)) or list(
        dict.fromkeys(s.department for s in open_case.sub_requests)
    )
    outcome = _outcome(
        msg,
        OutcomeKind.routed,
        now,
        case_id=open_case.case_id,
        departments=departments,
        reason=f"follow-up on case: {what}",
    )
    trace = RouteTrace(
        path="follow_up",
        priority_before=msg.priority.level,
        priority_after=t.state.priority.level,
        notes=[f"case {open_case.case_id} ({open_case.status}): {what}"],
    )
    return RouteDecision(
        outcome=outcome,
        case=t.state,
        sub_requests=t.sub_requests,
        replies=t.replies,
        case_events=t.case_events,
        quality_events=t.quality_events,
        notices=t.notices,
        trace=trace,
    )


def _auto_reply(
    msg: ClassifiedMessage, workflow: Workflow, now: datetime, kb: KbMatch
) -> RouteDecision:
    case = _new_case(msg, workflow, now, msg.priority, status="resolved", resolved_at=now)
    level = msg.priority.level
    answer = reply(
        case,
        ReplyKind.auto_reply,
        kb.answer or "",
        now,
        key="kb",
        message_id=msg.message_id,
        article_id=kb.article_id,
        link=kb.link,
    )
    events = [
        _opened_event(msg, case, now),
        event(
            case,
            CaseEventType.auto_resolved,
            now,
            key="kb",
            message_id=msg.message_id,
            detail={
                "article_id": kb.article_id,
                "confidence": kb.confidence,
                "reply_id": answer.reply_id,
            },
        ),
    ]
    outcome = _outcome(
        msg,
        OutcomeKind.auto_resolved,
        now,
        case_id=case.case_id,
        departments=[],
        reason=f"KB article {kb.article_id} (confidence {kb.confidence:.2f})",
    )
    intent = msg.intents[0]
    trace = RouteTrace(
        path="auto_reply",
        priority_before=level,
        priority_after=level,
        intents=[
            IntentTrace(
                intent=intent.label,
                category=intent.category,
                confidence=intent.confidence,
                text=intent.text,
                targets=[f"auto_reply:kb:{kb.article_id}"],
            )
        ],
        notes=[f"KB: {kb.reason}"] if kb.reason else [],
    )
    return RouteDecision(
        outcome=outcome, case=case, replies=[answer], case_events=events, trace=trace
    )


def _broadcast(
    workflow: Workflow,
    policy: IncidentPolicy,
    inc_case: CaseState,
    category: str,
    store_text: str,
    now: datetime,
    settings: Settings | None,
) -> tuple[list[SubRequest], list[SubRequestState]]:
    """One broadcast sub-request per member of the incident policy's group."""
    dep = workflow.groups[policy.group].department or workflow.triage_department
    lang = workflow.party_language(dep, policy.group) or workflow.default_language
    text = fill(
        workflow.custom_template(policy.template, lang), category=category, store=store_text
    )
    subs: list[SubRequest] = []
    sub_states: list[SubRequestState] = []
    for member in workflow.group_members(policy.group):
        sub, sub_state = new_sub_request(
            inc_case,
            workflow,
            now=now,
            kind="broadcast",
            department=dep,
            recipient=member,
            intent=f"incident:{policy.name}",
            category=category,
            text=text,
            key="incident",
            message_id=inc_case.first_message_id,
            settings=settings,
            language=lang,
        )
        subs.append(sub)
        sub_states.append(sub_state)
    return subs, sub_states


def _incident_policy(msg: ClassifiedMessage, workflow: Workflow) -> IncidentPolicy | None:
    """The incident policy that covers one of the message's categories."""
    categories = {i.category for i in msg.intents}
    return next((p for p in workflow.incidents if set(p.categories) & categories), None)


def _link(
    msg: ClassifiedMessage, workflow: Workflow, case: CaseState, now: datetime
) -> IncidentLink | None:
    """The case's link to its incident (its keeper closes the case with the incident)."""
    policy = _incident_policy(msg, workflow) if msg.similarity.incident_id else None
    return None if policy is None else incident_link(case, policy.categories, now)


def _cover(built: _Built, msg: ClassifiedMessage, workflow: Workflow) -> tuple[_Built, list[str]]:
    """A report of an incident sends nothing of its own to a recipient its broadcast reaches.

    The sub-request stays on the case, without deadlines (the broadcast's own sub-requests
    carry them), so the incident's resolution still closes it and the reporter is answered.
    """
    incident_id = msg.similarity.incident_id
    policy = _incident_policy(msg, workflow) if incident_id else None
    if policy is None:
        return built, []
    reached = set(workflow.group_members(policy.group))
    covered = {
        s.sub_request_id
        for s in built.subs
        if s.category in policy.categories and s.recipient in reached
    }
    if not covered:
        return built, []
    records = [
        r.model_copy(update={"first_response_due_at": None, "due_at": None})
        if r.sub_request_id in covered
        else r
        for r in built.records
    ]
    subs = [s for s in built.subs if s.sub_request_id not in covered]
    note = f"incident {incident_id}: {len(covered)} recipient(s) reached by its broadcast"
    return replace(built, subs=subs, records=records), [note]


@dataclass(frozen=True)
class IncidentOpening:
    """What opening an incident sends: its case, the broadcast, the case's events."""

    case: CaseState
    sub_requests: list[SubRequest]
    case_events: list[CaseEvent]
    notes: list[str]


def incident_opening(
    msg: ClassifiedMessage, workflow: Workflow, *, now: datetime, settings: Settings | None
) -> IncidentOpening | None:
    """The opening of the incident ``msg`` opened (``incident_new``), built from the message
    alone: for a message that opens no case of its own, and for the route agent when routing
    the message itself failed. None: no incident policy covers it. The same case and ids as
    the opening of a message with a new case (they derive from the incident)."""
    if msg.similarity.incident_id is None:
        return None
    base = _new_case(msg, workflow, now, msg.priority)  # what the incident's case copies
    subs, events, notes, inc_case = _incident(msg, workflow, base, now, settings, True)
    if inc_case is None:
        return None
    own = [e for e in events if e.case_id == inc_case.case_id]  # not the unsent base's
    return IncidentOpening(inc_case, subs, own, notes)


def _opening(
    decision: RouteDecision,
    msg: ClassifiedMessage,
    workflow: Workflow,
    now: datetime,
    settings: Settings | None,
    incident_new: bool,
) -> RouteDecision:
    """A decision that opens no case of its own (a duplicate, a follow-up, a KB answer), with
    the incident's opening when this message opened it: the detector counted it as the report
    that reached the threshold, and every later report is linked to the incident's case and
    sends nothing of its own to a recipient the broadcast reaches. Without it the group heard
    nothing and the reports' links waited for a case that never came. The message's own case
    is not linked (a follow-up or a duplicate never is; an answered one is resolved)."""
    opening = incident_opening(msg, workflow, now=now, settings=settings) if incident_new else None
    if opening is None:
        return decision
    trace = decision.trace.model_copy(update={"notes": [*decision.trace.notes, *opening.notes]})
    return decision.model_copy(
        update={
            "incident_sub_requests": opening.sub_requests,
            "incident_case": opening.case,
            "case_events": [*decision.case_events, *opening.case_events],
            "trace": trace,
        }
    )


def _incident(
    msg: ClassifiedMessage,
    workflow: Workflow,
    case: CaseState,
    now: datetime,
    settings: Settings | None,
    incident_new: bool,
) -> tuple[list[SubRequest], list[CaseEvent], list[str], CaseState | None]:
    """The case's link to the incident; the report that opened it also emits the broadcast."""
    incident_id = msg.similarity.incident_id
    assert incident_id is not None
    categories = {i.category for i in msg.intents}
    events = [
        event(
            case,
            CaseEventType.incident_linked,
            now,
            key=incident_id,
            message_id=msg.message_id,
            detail={"incident_id": incident_id},
        )
    ]
    policy = _incident_policy(msg, workflow)
    if policy is None:
        note = f"incident {incident_id}: no incident policy for {sorted(categories)}"
        return [], events, [note], None
    if not incident_new:  # the broadcast went out once, with the report that opened it
        return [], events, [f"incident {incident_id}: linked (broadcast already sent)"], None
    category = next(c for c in policy.categories if c in categories)
    intent = next(i for i in msg.intents if i.category == category)
    stores = [e.value for e in _stores_for(msg, intent)] if "store" in policy.bucket_by else []
    store_text = ", ".join(stores) or "-"
    inc_case = case.model_copy(
        update={
            "case_id": derive_id("case", incident_id),
            "first_message_id": incident_id,
            "sub_requests": [],
            "message_ids": [incident_id],
            "incident_bucket": msg.similarity.incident_bucket,
        }
    )
    subs, sub_states = _broadcast(workflow, policy, inc_case, category, store_text, now, settings)
    inc_case = inc_case.model_copy(update={"sub_requests": sub_states})
    detail: dict[str, Any] = {
        "incident_id": incident_id,
        "policy": policy.name,
        "group": policy.group,
        "recipients": len(subs),
        "store": store_text,
    }
    events.append(
        CaseEvent(
            event_id=derive_id("ce", inc_case.case_id, CaseEventType.incident_detected.value),
            case_id=inc_case.case_id,
            type=CaseEventType.incident_detected,
            message_id=msg.message_id,
            detail=detail,
            at=now,
        )
    )
    note = f"incident {incident_id}: broadcast to {len(subs)} of {policy.group}"
    return subs, events, [note], inc_case
