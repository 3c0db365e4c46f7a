"""Case state and its pure transitions.

A case is opened by a customer's message and tracks its sub-requests until every one is
resolved; then the customer gets ONE combined answer in the channel they wrote from,
followed by a survey when the case's category has a survey policy. ``CaseState`` is a
pydantic model that round-trips through JSON (the worker keeps it in a Faust table keyed
by case id). Every transition returns a ``Transition``: the new state plus the case events,
replies and sub-requests to emit; ids are deterministic so a replay emits the same ids.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.config import Settings
from pipeline.domain.conversation import is_small_talk
from pipeline.domain.deadlines import deadlines
from pipeline.domain.surveys import SurveyKind, is_negative, nps_class, read_answer
from pipeline.domain.text import detect_language, is_not_helped
from pipeline.domain.tokens import reply_address, scrub_tokens
from pipeline.domain.workflow import Workflow
from pipeline.errors import InvalidInput
from pipeline.events import (
    CaseEvent,
    CaseEventType,
    Channel,
    CustomerProfile,
    Entity,
    InboundMessage,
    IncidentLink,
    IncidentResolved,
    Priority,
    Reply,
    ReplyKind,
    SubRequest,
    SubRequestKind,
    TaskNotice,
    TaskStatus,
    TaskUpdate,
    derive_id,
)

__all__ = [
    "CaseState",
    "SubRequestState",
    "SurveyState",
    "Transition",
    "apply_customer_message",
    "apply_customer_reply",
    "apply_small_talk",
    "apply_survey_answer",
    "apply_task_update",
    "case_flags",
    "case_ref",
    "customer_notices",
    "customer_summary",
    "fill",
    "incident_link",
    "incident_resolved",
    "incident_updates",
    "link_member",
    "merge_snapshot",
    "new_sub_request",
    "survey_pending",
]

log = logging.getLogger(__name__)

CaseStatus = Literal["open", "resolved", "reopened"]
SubStatus = Literal[
    "open", "acknowledged", "in_progress", "resolved", "rejected", "rerouted", "superseded"
]
#: ``superseded``: closed unanswered because another holder answered the same request
#: (the original recipient after a reroute).
TERMINAL: frozenset[str] = frozenset({"resolved", "rejected", "rerouted", "superseded"})
#: Intent of the sub-request asking a human for the final answer (languages mixed, review).
FINAL_ANSWER = "final_answer"


class _State(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SubRequestState(_State):
    """What the case remembers about one of its sub-requests."""

    sub_request_id: str
    kind: SubRequestKind
    department: str
    recipient: str | None = None
    intent: str
    category: str
    text: str
    status: SubStatus = "open"
    resolution: str | None = None
    blocking: bool = Field(
        default=True, description="False for notifications: the case does not wait for them."
    )
    sla_policy: str | None = None
    round: int = Field(default=0, description="Case round (reopen count) it was created in.")
    created_at: AwareDatetime
    updated_at: AwareDatetime | None = None
    responded_at: AwareDatetime | None = None
    first_response_due_at: AwareDatetime | None = None
    due_at: AwareDatetime | None = Field(default=None, description="Resolution deadline.")
    warned: list[str] = Field(default_factory=list, description="Deadlines warned about.")
    breached: list[str] = Field(default_factory=list, description="Deadlines breached.")


class SurveyState(_State):
    """The survey of a case: sent, then (maybe) answered."""

    kind: SurveyKind
    reply_id: str
    sent_at: AwareDatetime
    answered: bool = False
    score: int | None = None
    nps_class: Literal["promoter", "passive", "detractor"] | None = None
    negative: bool = False
    answer_message_id: str | None = None
    asked_again: bool = Field(default=False, description="An unclear score was asked again.")


class CaseState(_State):
    """One customer case (JSON round-trips; keyed by case_id)."""

    case_id: str
    customer_id: str
    customer: CustomerProfile | None = None
    channel: Channel
    reply_to: dict[str, str] = Field(default_factory=dict)
    language: str = "ru"
    status: CaseStatus = "open"
    round: int = Field(default=0, description="Incremented on every reopen.")
    first_message_id: str
    message_ids: list[str] = Field(default_factory=list, description="History, oldest first.")
    full_text: str = ""
    entities: list[Entity] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    priority: Priority
    sub_requests: list[SubRequestState] = Field(default_factory=list)
    seen_update_ids: list[str] = Field(default_factory=list)
    survey: SurveyState | None = None
    incident_id: str | None = None
    incident_bucket: str | None = Field(
        default=None,
        description="An incident's own case: the bucket whose detector is told of its "
        "resolution (IncidentResolved).",
    )
    incident_members: dict[str, list[str]] = Field(
        default_factory=dict,
        description="An incident's own case: each linked report's case id → the sub-requests "
        "its resolution closes (IncidentLink).",
    )
    breach_updates: list[str] = Field(
        default_factory=list, description="SLA policies the customer was told a delay about."
    )
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    resolved_at: AwareDatetime | None = None

    def sub(self, sub_request_id: str) -> SubRequestState | None:
        """Sub-request state by id."""
        for s in self.sub_requests:
            if s.sub_request_id == sub_request_id:
                return s
        return None


class Transition(BaseModel):
    """Result of a transition: new state and what to emit."""

    model_config = ConfigDict(frozen=True)

    state: CaseState
    case_events: list[CaseEvent] = Field(default_factory=list)
    replies: list[Reply] = Field(default_factory=list)
    sub_requests: list[SubRequest] = Field(default_factory=list)
    quality_events: list[CaseEvent] = Field(
        default_factory=list, description="Negative survey answers for the quality topic."
    )
    notices: list[TaskNotice] = Field(
        default_factory=list, description="For the holders of open sub-requests (task topics)."
    )


# ---------------------------------------------------------------- helpers


class _Safe(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, **values: str) -> str:
    """str.format with unknown placeholders left as they are (an admin typo never crashes)."""
    try:
        return template.format_map(_Safe(values))
    except (ValueError, IndexError):
        log.warning("template cannot be formatted: %r", template)
        return template


def case_ref(case_id: str) -> str:
    """Short reference a customer can quote."""
    return case_id.rsplit("_", 1)[-1][:8].upper()


def _name(state: CaseState) -> str:
    return f", {state.customer.name}" if state.customer and state.customer.name else ""


def case_flags(state: CaseState) -> list[str]:
    """What every holder of the case must know: a VIP customer, a legal or regulator threat."""
    flags = []
    if state.customer is not None and state.customer.tier == "vip":
        flags.append("vip")
    if any(c.name == "legal_threat" for c in state.priority.components):
        flags.append("legal_threat")
    return flags


def customer_summary(state: CaseState) -> str:
    """Short history summary a department reads instead of asking the customer again."""
    p = state.customer
    parts = [p.name or state.customer_id if p else state.customer_id]
    if p is not None:
        parts.append(f"tier {p.tier}")
        if p.segment:
            parts.append(f"segment {p.segment}")
        if p.home_store:
            parts.append(f"home store {p.home_store}")
    parts.append(f"channel {state.channel.value}")
    parts.append(f"language {state.language}")
    parts.append(f"{len(state.message_ids)} message(s) in this case")
    if state.round:
        parts.append(f"reopened {state.round} time(s)")
    done = [s for s in state.sub_requests if s.status == "resolved"]
    if done:
        parts.append("resolved so far: " + "; ".join(f"{s.department}" for s in done))
    return "; ".join(parts)


def event(
    state: CaseState,
    type_: CaseEventType,
    now: datetime,
    *,
    key: str,
    message_id: str | None = None,
    sub_request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> CaseEvent:
    """A case event with a deterministic id."""
    return CaseEvent(
        event_id=derive_id("ce", state.case_id, type_.value, key),
        case_id=state.case_id,
        type=type_,
        message_id=message_id,
        sub_request_id=sub_request_id,
        detail=detail or {},
        at=now,
    )


def reply(
    state: CaseState,
    kind: ReplyKind,
    text: str,
    now: datetime,
    *,
    key: str,
    message_id: str | None = None,
    article_id: str | None = None,
    link: str | None = None,
) -> Reply:
    """A reply to the customer in the case's channel, with a deterministic id."""
    return Reply(
        reply_id=derive_id("reply", state.case_id, kind.value, key),
        case_id=state.case_id,
        message_id=message_id or (state.message_ids or [state.first_message_id])[-1],
        customer_id=state.customer_id,
        channel=state.channel,
        reply_to=dict(state.reply_to),
        language=state.language,
        kind=kind,
        text=text,
        article_id=article_id,
        link=link,
        created_at=now,
    )


def new_sub_request(
    state: CaseState,
    workflow: Workflow,
    *,
    now: datetime,
    kind: Literal["internal", "external", "broadcast"],
    department: str,
    recipient: str | None,
    intent: str,
    category: str,
    text: str,
    key: str,
    priority: Priority | None = None,
    sla_policy: str | None = None,
    blocking: bool = True,
    message_id: str | None = None,
    settings: Settings | None = None,
    language: str | None = None,
) -> tuple[SubRequest, SubRequestState]:
    """Build a sub-request of the case with deadlines, and the case's record of it.

    ``language``: of the text to the recipient; default the external party's configured
    language, else the customer's.

    The id is derived from the message id, the intent and the target (``key`` adds what
    distinguishes re-routes and notifications), so a replay derives the same id.
    """
    msg_id = message_id or state.first_message_id
    target = recipient or department
    sr_id = derive_id("sr", msg_id, intent, target, key)
    prio = priority or state.priority
    dep = workflow.departments.get(department)
    policy = workflow.sla_policy_for(department, sla_policy) if blocking else None
    first_due, due = deadlines(policy, prio.level, dep.hours if dep else None, now)
    token = sr_id
    if kind != "internal" and settings is not None:
        token = reply_address(sr_id, state.case_id, settings)
    sub = SubRequest(
        sub_request_id=sr_id,
        case_id=state.case_id,
        message_id=msg_id,
        customer_id=state.customer_id,
        kind=SubRequestKind(kind),
        department=department,
        recipient=recipient,
        intent=intent,
        category=category,
        text=text,
        full_text=state.full_text,
        entities=list(state.entities),
        priority=prio,
        customer=state.customer,
        customer_summary=customer_summary(state),
        language=language or workflow.party_language(department) or state.language,
        customer_language=state.language,
        flags=case_flags(state),
        timezone=dep.hours.timezone if dep is not None and dep.hours is not None else None,
        reply_token=token if kind != "internal" else None,
        sla_due_at=due,
        created_at=now,
    )
    record = SubRequestState(
        sub_request_id=sr_id,
        kind=SubRequestKind(kind),
        department=department,
        recipient=recipient,
        intent=intent,
        category=category,
        text=text,
        blocking=blocking,
        sla_policy=policy_name(workflow, department, sla_policy) if blocking else None,
        round=state.round,
        created_at=now,
        first_response_due_at=first_due,
        due_at=due,
    )
    return sub, record


def policy_name(workflow: Workflow, department: str, name: str | None) -> str | None:
    """Name of the SLA policy that applies (explicit, department's, default)."""
    if name and name in workflow.sla_policies:
        return name
    for pname, policy in workflow.sla_policies.items():
        if department in policy.departments:
            return pname
    return workflow.default_sla


def created_event(state: CaseState, sub: SubRequest, now: datetime) -> CaseEvent:
    """The ``sub_request_created`` event of one sub-request."""
    return event(
        state,
        CaseEventType.sub_request_created,
        now,
        key=sub.sub_request_id,
        message_id=sub.message_id,
        sub_request_id=sub.sub_request_id,
        detail={
            "kind": sub.kind.value,
            "department": sub.department,
            "recipient": sub.recipient,
            "intent": sub.intent,
            "sla_due_at": sub.sla_due_at.isoformat() if sub.sla_due_at else None,
        },
    )


# ---------------------------------------------------------------- transitions


def apply_task_update(
    state: CaseState,
    update: TaskUpdate,
    workflow: Workflow,
    *,
    now: datetime,
    settings: Settings | None = None,
) -> Transition:
    """A department's or external party's update. Idempotent on ``update_id``.

    When every tracked sub-request is closed, the customer gets one combined answer (the
    language's ``resolution`` template listing each resolution), the case is resolved, and
    a survey question follows when a survey policy covers the case's categories.
    Raises InvalidInput for an update about a sub-request the case does not have.
    """
    if update.update_id in state.seen_update_ids:
        return Transition(state=state)
    if update.case_id != state.case_id:
        raise InvalidInput(
            f"update for case {update.case_id} applied to {state.case_id}", field="case_id"
        )
    sub = state.sub(update.sub_request_id)
    if sub is None:
        raise InvalidInput(
            f"case {state.case_id} has no sub-request {update.sub_request_id}",
            field="sub_request_id",
        )
    status: SubStatus = update.status.value
    if sub.status in ("resolved", "rejected") and status in ("resolved", "rejected"):
        # A second answer to a closed sub-request (the external party used both the e-mail
        # and the answer page): recorded on the trail, not applied — the first one stands.
        st = state.model_copy(
            update={"seen_update_ids": [*state.seen_update_ids, update.update_id]}
        )
        late = event(
            st,
            CaseEventType.task_updated,
            now,
            key=update.update_id,
            sub_request_id=sub.sub_request_id,
            detail={
                "status": status,
                "author": update.author,
                "source": update.source,
                "ignored": f"already {sub.status}",
                "update_id": update.update_id,
                "resolution": update.resolution,
            },
        )
        return Transition(state=st, case_events=[late])
    new_sub = sub.model_copy(
        update={
            "status": sub.status if sub.status == "rerouted" and status != "resolved" else status,
            "resolution": update.resolution if update.resolution else sub.resolution,
            "updated_at": update.at,
            "responded_at": sub.responded_at or update.at,
        }
    )
    subs = [new_sub if s.sub_request_id == sub.sub_request_id else s for s in state.sub_requests]
    st = state.model_copy(
        update={
            "sub_requests": subs,
            "seen_update_ids": [*state.seen_update_ids, update.update_id],
            "updated_at": now,
        }
    )
    events = [
        event(
            st,
            CaseEventType.task_updated,
            now,
            key=update.update_id,
            sub_request_id=sub.sub_request_id,
            detail={"status": status, "author": update.author, "source": update.source},
        )
    ]
    if update.status in (TaskStatus.resolved, TaskStatus.rejected):
        events.append(
            event(
                st,
                CaseEventType.sub_request_resolved,
                now,
                key=f"{sub.sub_request_id}:{st.round}:{update.update_id}",
                sub_request_id=sub.sub_request_id,
                detail={"status": status, "resolution": update.resolution},
            )
        )
    notices: list[TaskNotice] = []
    if sub.status == "rerouted" and new_sub.status == "resolved":
        # The original holder answered after all: its answer counts, the copy is closed.
        st, closed, notices = _supersede_copies(st, sub, now)
        events += closed
    replies: list[Reply] = []
    asks: list[SubRequest] = []
    tracked = [s for s in st.sub_requests if s.blocking]
    if st.status != "resolved" and tracked and all(s.status in TERMINAL for s in tracked):
        st, more_events, replies, asks = _resolve(st, workflow, now, settings)
        events += more_events
    return Transition(
        state=st, case_events=events, replies=replies, sub_requests=asks, notices=notices
    )


def _supersede_copies(
    state: CaseState, original: SubRequestState, now: datetime
) -> tuple[CaseState, list[CaseEvent], list[TaskNotice]]:
    """Close the open sub-requests an SLA reroute made of ``original`` (it was answered)."""
    copies = {
        s.sub_request_id
        for s in state.sub_requests
        if s.status not in TERMINAL
        and s.sub_request_id
        == derive_id(
            "sr",
            state.first_message_id,
            original.intent,
            s.department,
            f"reroute:{original.sub_request_id}",
        )
    }
    if not copies:
        return state, [], []
    subs = [
        s.model_copy(update={"status": "superseded", "updated_at": now})
        if s.sub_request_id in copies
        else s
        for s in state.sub_requests
    ]
    st = state.model_copy(update={"sub_requests": subs})
    events: list[CaseEvent] = []
    notices: list[TaskNotice] = []
    for s in subs:
        if s.sub_request_id not in copies:
            continue
        events.append(
            event(
                st,
                CaseEventType.task_updated,
                now,
                key=f"superseded:{s.sub_request_id}",
                sub_request_id=s.sub_request_id,
                detail={"status": "superseded", "answered_by": original.sub_request_id},
            )
        )
        notices.append(
            TaskNotice(
                notice_id=derive_id("notice", s.sub_request_id, "closed"),
                type="closed",
                case_id=st.case_id,
                sub_request_id=s.sub_request_id,
                department=s.department,
                text=f"Answered by {original.department} ({original.sub_request_id}): "
                "no action needed.",
                at=now,
            )
        )
    return st, events, notices


def _resolve(
    state: CaseState, workflow: Workflow, now: datetime, settings: Settings | None = None
) -> tuple[CaseState, list[CaseEvent], list[Reply], list[SubRequest]]:
    """Every tracked sub-request is closed: answer the customer, or first ask a human.

    A human writes the final answer (a ``final_answer`` sub-request) when an answer is in
    another language than the customer's (no mixed automatic reply), or when something
    was rejected and the workflow has ``review_rejections``. The wording follows the
    outcome: ``resolution``, ``partial`` (some done, some not) or ``rejection``; the survey
    is only asked when every request was done.
    """
    t = workflow.templates_for(state.language)
    done = [
        s
        for s in state.sub_requests
        # a reopened case answers with what was done in this round only
        if s.blocking
        and s.round == state.round
        and s.status in ("resolved", "rejected")
        and s.intent != FINAL_ANSWER
    ]
    final = next(
        (
            s
            for s in state.sub_requests
            if s.intent == FINAL_ANSWER and s.round == state.round and s.resolution
        ),
        None,
    )
    rejected = [s for s in done if s.status == "rejected"]
    if final is None:
        why = _needs_human(state, done, workflow)
        if why is not None:
            return _ask_human(state, workflow, now, why, done, settings)
    # whatever a holder wrote, a reply token never reaches the customer
    domain = settings.reply_domain if settings is not None else None
    if final is not None:
        items = [fill(t.resolution_item, resolution=scrub_tokens(final.resolution or "", domain))]
    else:
        items = [
            fill(
                t.rejection_item if s.status == "rejected" else t.resolution_item,
                resolution=scrub_tokens(s.resolution or "", domain) or "—",
                department=workflow.title(s.department, state.language),
                intent=s.intent,
            )
            for s in done
            if s.resolution or s.status == "rejected"
        ]
    if rejected and len(rejected) == len(done):
        template, outcome = t.rejection or t.resolution, "rejected"
    elif rejected:
        template, outcome = t.partial or t.resolution, "partial"
    else:
        template, outcome = t.resolution, "resolved"
    text = fill(
        template, name=_name(state), case_ref=case_ref(state.case_id), items="\n".join(items)
    )
    st = state.model_copy(update={"status": "resolved", "resolved_at": now})
    answer = reply(st, ReplyKind.resolution, text, now, key=f"round{st.round}")
    events = [
        event(
            st,
            CaseEventType.resolved,
            now,
            key=f"round{st.round}",
            detail={"reply_id": answer.reply_id, "items": len(items), "outcome": outcome},
        )
    ]
    replies = [answer]
    policy = workflow.survey_for(st.categories)
    if policy is not None and not rejected:
        question = t.survey_csat if policy.kind == "csat" else t.survey_nps
        survey = reply(st, ReplyKind.survey, question, now, key=f"round{st.round}")
        st = st.model_copy(
            update={"survey": SurveyState(kind=policy.kind, reply_id=survey.reply_id, sent_at=now)}
        )
        replies.append(survey)
        events.append(
            event(
                st,
                CaseEventType.survey_sent,
                now,
                key=f"round{st.round}",
                detail={"kind": policy.kind, "reply_id": survey.reply_id},
            )
        )
    return st, events, replies, []


#: An answer counts as written in another language only when the detector is this sure.
_FOREIGN_CONFIDENCE = 0.6


def _needs_human(
    state: CaseState, done: Sequence[SubRequestState], workflow: Workflow
) -> str | None:
    """Why a human must write the final answer ("language", "review"), or None."""
    for s in done:
        if s.resolution:
            lang, confidence = detect_language(s.resolution)
            if (
                lang in ("ru", "en")
                and lang != state.language
                and confidence >= _FOREIGN_CONFIDENCE
            ):
                return "language"
    if workflow.review_rejections and any(s.status == "rejected" for s in done):
        return "review"
    return None


def _ask_human(
    state: CaseState,
    workflow: Workflow,
    now: datetime,
    why: str,
    done: Sequence[SubRequestState],
    settings: Settings | None,
) -> tuple[CaseState, list[CaseEvent], list[Reply], list[SubRequest]]:
    """A ``final_answer`` sub-request: the case stays open until a human answers it."""
    department = (
        workflow.review_rejections
        if why == "review" and workflow.review_rejections
        else workflow.triage_department
    )
    lines = [
        f"Write the final answer to the customer in '{state.language}' "
        + (
            "(an answer below is in another language)."
            if why == "language"
            else "(a request was rejected: review the wording and what happens next)."
        ),
        *(f"- {s.department} [{s.status}]: {s.resolution or '—'}" for s in done),
    ]
    sub, record = new_sub_request(
        state,
        workflow,
        now=now,
        kind="internal",
        department=department,
        recipient=None,
        intent=FINAL_ANSWER,
        category=state.categories[0] if state.categories else "UNKNOWN",
        text="\n".join(lines),
        key=f"final:{state.round}",
        settings=settings,
    )
    st = state.model_copy(update={"sub_requests": [*state.sub_requests, record]})
    created = created_event(st, sub, now)
    created = created.model_copy(update={"detail": {**created.detail, "why": why}})
    return st, [created], [], [sub]


def apply_customer_reply(
    state: CaseState,
    msg: InboundMessage,
    workflow: Workflow,
    *,
    now: datetime,
    settings: Settings | None = None,
) -> Transition:
    """A new customer message on this case.

    Resolved case, or "не помогло" / "did not help" → the case is reopened (resolved → reopened)
    and a human (the triage department) gets a sub-request with the new text; otherwise
    the message is appended to the case's history. A message seen before changes nothing.
    """
    if msg.message_id in state.message_ids:
        return Transition(state=state)
    st = state.model_copy(
        update={"message_ids": [*state.message_ids, msg.message_id], "updated_at": now}
    )
    events = [
        event(
            st,
            CaseEventType.message_appended,
            now,
            key=msg.message_id,
            message_id=msg.message_id,
            detail={"status": st.status},
        )
    ]
    not_helped = is_not_helped(msg.text, msg.language)
    if st.status != "resolved" and not not_helped:
        return Transition(state=st, case_events=events, notices=customer_notices(st, msg, now))
    if st.status == "resolved":
        st = st.model_copy(
            update={
                "status": "reopened",
                "round": st.round + 1,
                "resolved_at": None,
                "survey": None,
            }
        )
        events.append(
            event(
                st,
                CaseEventType.reopened,
                now,
                key=msg.message_id,
                message_id=msg.message_id,
                detail={"round": st.round, "not_helped": not_helped},
            )
        )
    triage = workflow.triage_department
    sub, record = new_sub_request(
        st,
        workflow,
        now=now,
        kind="internal",
        department=triage,
        recipient=None,
        intent="recontact",
        category=st.categories[0] if st.categories else "UNKNOWN",
        text=msg.text,
        key=f"reopen:{st.round}",
        message_id=msg.message_id,
        settings=settings,
    )
    st = st.model_copy(update={"sub_requests": [*st.sub_requests, record]})
    events.append(created_event(st, sub, now))
    t = workflow.templates_for(st.language)
    text = fill(t.reopened or t.triage, name=_name(st), case_ref=case_ref(st.case_id))
    ack = reply(
        st,
        ReplyKind.acknowledgement,
        text,
        now,
        key=f"reopen:{msg.message_id}",
        message_id=msg.message_id,
    )
    return Transition(state=st, case_events=events, replies=[ack], sub_requests=[sub])


def survey_pending(state: CaseState, now: datetime, expiry: timedelta | None) -> bool:
    """A survey question is waiting for its answer (and has not expired)."""
    survey = state.survey
    if survey is None or survey.answered:
        return False
    return expiry is None or now - survey.sent_at <= expiry


def apply_survey_answer(
    state: CaseState,
    text: str,
    message_id: str,
    *,
    now: datetime,
    workflow: Workflow | None = None,
    expiry: timedelta | None = None,
) -> Transition:
    """Link a survey answer to the case; a negative one is also a quality event.

    Returns the state unchanged when no survey is pending (or it expired: ``expiry``
    after the question) or the text is not an answer. An unclear score ("пять" to a 0–10
    question) asks the question again, once; the message joins the case either way.
    """
    survey = state.survey
    if survey is None or not survey_pending(state, now, expiry):
        return Transition(state=state)
    score = read_answer(text, survey.kind)
    if score is None:
        return Transition(state=state)
    if score == "unclear":
        return _ask_survey_again(state, survey, message_id, now, workflow)
    bucket = nps_class(score) if survey.kind == "nps" else None
    negative = is_negative(survey.kind, score)
    answered = survey.model_copy(
        update={
            "answered": True,
            "score": score,
            "nps_class": bucket,
            "negative": negative,
            "answer_message_id": message_id,
        }
    )
    ids = state.message_ids if message_id in state.message_ids else [*state.message_ids, message_id]
    st = state.model_copy(update={"survey": answered, "message_ids": ids, "updated_at": now})
    detail: dict[str, Any] = {
        "kind": survey.kind,
        "score": score,
        "nps_class": bucket,
        "negative": negative,
        "categories": list(state.categories),
    }
    if negative:
        detail["flag"] = "quality"
    ev = event(
        st,
        CaseEventType.survey_answered,
        now,
        key=f"round{st.round}",
        message_id=message_id,
        detail=detail,
    )
    replies: list[Reply] = []
    if workflow is not None:
        thanks = workflow.templates_for(st.language).survey_thanks
        if thanks:
            replies.append(
                reply(
                    st,
                    ReplyKind.acknowledgement,
                    thanks,
                    now,
                    key=f"survey-thanks:{st.round}",
                    message_id=message_id,
                )
            )
    return Transition(
        state=st, case_events=[ev], replies=replies, quality_events=[ev] if negative else []
    )


def _ask_survey_again(
    state: CaseState,
    survey: SurveyState,
    message_id: str,
    now: datetime,
    workflow: Workflow | None,
) -> Transition:
    ids = state.message_ids if message_id in state.message_ids else [*state.message_ids, message_id]
    st = state.model_copy(
        update={
            "survey": survey.model_copy(update={"asked_again": True}),
            "message_ids": ids,
            "updated_at": now,
        }
    )
    ev = event(
        st,
        CaseEventType.message_appended,
        now,
        key=message_id,
        message_id=message_id,
        detail={"survey": "unclear score", "asked_again": not survey.asked_again},
    )
    if survey.asked_again or workflow is None:
        return Transition(state=st, case_events=[ev])
    t = workflow.templates_for(st.language)
    retry = t.survey_retry_csat if survey.kind == "csat" else t.survey_retry_nps
    question = retry or (t.survey_csat if survey.kind == "csat" else t.survey_nps)
    again = reply(
        st, ReplyKind.survey, question, now, key=f"survey-again:{st.round}", message_id=message_id
    )
    return Transition(state=st, case_events=[ev], replies=[again])


def apply_small_talk(
    state: CaseState,
    msg: InboundMessage,
    workflow: Workflow,
    *,
    now: datetime,
    acknowledge: bool = True,
) -> Transition:
    """Thanks or "ок" on a case: kept in its history, acknowledged once it is resolved,
    never routed (no task, no reopen)."""
    st = state.model_copy(
        update={"message_ids": [*state.message_ids, msg.message_id], "updated_at": now}
    )
    ev = event(
        st,
        CaseEventType.message_appended,
        now,
        key=msg.message_id,
        message_id=msg.message_id,
        detail={"status": st.status, "small_talk": True},
    )
    text = workflow.templates_for(st.language).small_talk
    if st.status != "resolved" or not text or not acknowledge:
        return Transition(state=st, case_events=[ev])
    ack = reply(
        st,
        ReplyKind.acknowledgement,
        fill(text, name=_name(st), case_ref=case_ref(st.case_id)),
        now,
        key=f"small-talk:{msg.message_id}",
        message_id=msg.message_id,
    )
    return Transition(state=st, case_events=[ev], replies=[ack])


def apply_customer_message(
    state: CaseState,
    msg: InboundMessage,
    workflow: Workflow,
    *,
    now: datetime,
    settings: Settings | None = None,
) -> Transition:
    """Dispatch a customer message on an existing case: survey answer, small talk, follow-up.

    A survey answer is scored (or asked again when unclear); thanks and "ок" are
    acknowledged and never routed; anything else continues the case
    (``apply_customer_reply``).
    """
    if msg.message_id in state.message_ids:
        return Transition(state=state)
    expiry = timedelta(hours=settings.survey_expiry_hours) if settings is not None else None
    if survey_pending(state, now, expiry):
        t = apply_survey_answer(
            state, msg.text, msg.message_id, now=now, workflow=workflow, expiry=expiry
        )
        if t.state is not state:
            return t
    elif state.survey is not None and read_answer(msg.text, state.survey.kind) is not None:
        # a score for a survey already answered or expired: kept, not scored, not routed
        return apply_small_talk(state, msg, workflow, now=now, acknowledge=False)
    if is_small_talk(msg.text):
        return apply_small_talk(state, msg, workflow, now=now)
    return apply_customer_reply(state, msg, workflow, now=now, settings=settings)


def customer_notices(state: CaseState, msg: InboundMessage, now: datetime) -> list[TaskNotice]:
    """The customer's new message for the holder of every open internal sub-request."""
    return [
        TaskNotice(
            notice_id=derive_id("notice", s.sub_request_id, msg.message_id),
            type="customer_message",
            case_id=state.case_id,
            sub_request_id=s.sub_request_id,
            department=s.department,
            text=msg.text,
            message_id=msg.message_id,
            at=now,
        )
        for s in open_subs(state)
        if s.kind == SubRequestKind.internal
    ]


def incident_link(
    case: CaseState, categories: Collection[str], now: datetime
) -> IncidentLink | None:
    """The record joining a report's case to its incident (None: the case reports none).

    Names the case's sub-requests in the incident's ``categories``: the incident's
    resolution closes them, whichever worker holds the case.
    """
    if not case.incident_id:
        return None
    incident_case_id = derive_id("case", case.incident_id)
    if case.case_id == incident_case_id:
        return None
    return IncidentLink(
        link_id=derive_id("link", incident_case_id, case.case_id),
        case_id=incident_case_id,
        incident_id=case.incident_id,
        member_case_id=case.case_id,
        sub_request_ids=[s.sub_request_id for s in case.sub_requests if s.category in categories],
        at=now,
    )


def link_member(
    incident: CaseState, link: IncidentLink, now: datetime
) -> tuple[CaseState, list[TaskUpdate]]:
    """The incident's case remembers a member; one linked after the incident was resolved
    is answered at once (its updates; a replayed link yields the same update ids)."""
    known = incident.incident_members.get(link.member_case_id, [])
    subs = [*known, *(s for s in link.sub_request_ids if s not in known)]
    state = incident
    if subs != known:
        members = {**incident.incident_members, link.member_case_id: subs}
        state = incident.model_copy(update={"incident_members": members})
    return state, incident_updates(state, now, member=link.member_case_id)


def incident_updates(
    incident: CaseState, now: datetime, member: str | None = None
) -> list[TaskUpdate]:
    """A resolved incident's answer to its members (or to ``member`` only): one resolved
    TaskUpdate per linked sub-request, for the member's own case. Ids derive from the
    incident's case and the sub-request, so the member applies each once (replays, a link
    seen twice). Nothing while the incident is not resolved."""
    if incident.status != "resolved":
        return []
    # Each recipient's answer once: the directors often answer with the same words.
    said = dict.fromkeys(s.resolution for s in incident.sub_requests if s.resolution)
    resolution = "; ".join(said) or "resolved"
    return [
        TaskUpdate(
            update_id=derive_id("upd", incident.case_id, sub_id),
            sub_request_id=sub_id,
            case_id=case_id,
            status=TaskStatus.resolved,
            resolution=resolution,
            author="incident",
            source="system",
            at=now,
        )
        for case_id, subs in incident.incident_members.items()
        if member in (None, case_id)
        for sub_id in subs
    ]


def incident_resolved(incident: CaseState, now: datetime) -> IncidentResolved | None:
    """What the bucket's detector is told once the incident's case is resolved (the same id
    every time: a resolution sent again closes nothing new), or None while it is not."""
    if incident.status != "resolved" or not incident.incident_id or not incident.incident_bucket:
        return None
    return IncidentResolved(
        resolution_id=derive_id("res", incident.case_id),
        bucket=incident.incident_bucket,
        incident_id=incident.incident_id,
        at=incident.resolved_at or now,
    )


def open_subs(state: CaseState) -> Sequence[SubRequestState]:
    """Tracked sub-requests that are not closed yet."""
    return [s for s in state.sub_requests if s.blocking and s.status not in TERMINAL]


_PROGRESS: dict[str, int] = {"open": 0, "acknowledged": 1, "in_progress": 2}


def _progress(sub: SubRequestState) -> tuple[int, datetime]:
    floor = datetime.min.replace(tzinfo=sub.created_at.tzinfo)
    return _PROGRESS.get(sub.status, 3), sub.updated_at or floor


def merge_snapshot(stored: CaseState, incoming: CaseState) -> CaseState:
    """Route's new state of a case (it took a new message) merged into the keeper's state.

    Route computes ``incoming`` from its own view of the case, which lags behind the keeper's
    by the case-status records still in flight. Progress the keeper made meanwhile must
    survive: sub-requests keep their furthest state, seen updates and the message history
    are united, and a resolution (with its survey) of the same round stands unless route
    opened new work.
    """
    subs = {s.sub_request_id: s for s in incoming.sub_requests}
    for sub in stored.sub_requests:
        mine = subs.get(sub.sub_request_id)
        if mine is None or _progress(sub) > _progress(mine):
            subs[sub.sub_request_id] = sub
    order = list(dict.fromkeys([*(s.sub_request_id for s in stored.sub_requests), *subs]))
    merged = incoming.model_copy(
        update={
            "sub_requests": [subs[i] for i in order],
            "seen_update_ids": list(
                dict.fromkeys([*stored.seen_update_ids, *incoming.seen_update_ids])
            ),
            "message_ids": list(dict.fromkeys([*stored.message_ids, *incoming.message_ids])),
            "updated_at": max(stored.updated_at, incoming.updated_at),
        }
    )
    same_round = stored.round == incoming.round
    if (
        same_round
        and stored.survey is not None
        and (incoming.survey is None or (stored.survey.answered and not incoming.survey.answered))
    ):
        merged = merged.model_copy(update={"survey": stored.survey})
    if (
        same_round
        and stored.status == "resolved"
        and incoming.status != "resolved"
        and not open_subs(merged)
    ):
        merged = merged.model_copy(
            update={"status": stored.status, "resolved_at": stored.resolved_at}
        )
    return merged
