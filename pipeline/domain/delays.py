"""Who hears about a delay or a flagged case, and how (pure, used by the SLA check and routing).

* At an SLA warning the holder of an internal sub-request gets an ``sla_reminder``
  TaskNotice on its task topic.
* At a breach the customer gets one short update in their channel (the language's
  ``breach_update`` template), once per case and SLA policy — a reroute's copy and the
  resolution deadline that follows do not repeat it.
* A supervisor's escalation is an e-mail of its own (``purpose="escalation"``): the missed
  deadline in the department's timezone, in the supervisor's language — not the
  customer-request template with system text.
* A VIP or a legal threat (``cases.case_flags``) alerts the supervisors of the departments
  the case went to (``purpose="alert"``), once per case.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pipeline.config import Settings
from pipeline.domain.cases import (
    CaseState,
    SubRequestState,
    case_flags,
    case_ref,
    created_event,
    event,
    fill,
    new_sub_request,
    reply,
)
from pipeline.domain.workflow import Workflow
from pipeline.events import (
    CaseEvent,
    CaseEventType,
    Priority,
    Reply,
    ReplyKind,
    SubRequest,
    SubRequestKind,
    TaskNotice,
    derive_id,
)

__all__ = ["breach_update", "escalation_request", "flag_alerts", "sla_reminder"]

Deadline = Literal["first_response", "resolution"]


def sla_reminder(
    state: CaseState, sub: SubRequestState, kind: Deadline, due: datetime, now: datetime
) -> TaskNotice | None:
    """The holder's reminder that a deadline is close (internal holders read task topics)."""
    if sub.kind != SubRequestKind.internal:
        return None
    what = "first response" if kind == "first_response" else "resolution"
    return TaskNotice(
        notice_id=derive_id("notice", sub.sub_request_id, "sla_reminder", kind),
        type="sla_reminder",
        case_id=state.case_id,
        sub_request_id=sub.sub_request_id,
        department=sub.department,
        text=f"The {what} deadline of this request is close: {sub.text}",
        due_at=due,
        at=now,
    )


def breach_update(
    state: CaseState, workflow: Workflow, policy: str | None, now: datetime
) -> tuple[CaseState, list[Reply], list[CaseEvent]]:
    """The customer's one update about a delay under ``policy`` (nothing the second time)."""
    key = policy or "-"
    text = workflow.templates_for(state.language).breach_update
    if not text or key in state.breach_updates:
        return state, [], []
    st = state.model_copy(update={"breach_updates": [*state.breach_updates, key]})
    name = f", {st.customer.name}" if st.customer and st.customer.name else ""
    update = reply(
        st,
        ReplyKind.acknowledgement,
        fill(text, name=name, case_ref=case_ref(st.case_id)),
        now,
        key=f"breach:{key}",
    )
    ev = event(
        st,
        CaseEventType.reply_sent,
        now,
        key=f"breach-update:{key}",
        detail={"reply_id": update.reply_id, "why": "sla_breached", "policy": key},
    )
    return st, [update], [ev]


def escalation_request(
    state: CaseState,
    workflow: Workflow,
    sub: SubRequestState,
    *,
    kind: Deadline,
    due: datetime,
    address: str,
    priority: Priority,
    now: datetime,
    settings: Settings | None,
) -> tuple[SubRequest, SubRequestState]:
    """The supervisor's escalation e-mail about ``sub`` (untracked: the case does not wait)."""
    made, record = _supervisor_mail(
        state,
        workflow,
        sub,
        address=address,
        key=f"supervisor:{kind}:{sub.sub_request_id}",
        priority=priority,
        now=now,
        settings=settings,
    )
    made = made.model_copy(
        update={"purpose": "escalation", "breached_deadline": kind, "sla_due_at": due}
    )
    return made, record


def _supervisor_mail(
    state: CaseState,
    workflow: Workflow,
    about: SubRequestState | SubRequest,
    *,
    address: str,
    key: str,
    priority: Priority,
    now: datetime,
    settings: Settings | None,
) -> tuple[SubRequest, SubRequestState]:
    """An untracked mail to a supervisor about one request, in the supervisor's language."""
    return new_sub_request(
        state,
        workflow,
        now=now,
        kind="external",
        department=about.department,
        recipient=address,
        intent=about.intent,
        category=about.category,
        text=about.text,
        key=key,
        priority=priority,
        blocking=False,
        sla_policy=None,
        settings=settings,
        language=workflow.party_language(about.department) or workflow.default_language,
    )


def flag_alerts(
    state: CaseState,
    workflow: Workflow,
    subs: Sequence[SubRequest],
    *,
    now: datetime,
    settings: Settings | None,
) -> tuple[CaseState, list[SubRequest], list[CaseEvent]]:
    """Alert mails to the supervisors of the departments a flagged case went to."""
    flags = case_flags(state)
    if not flags:
        return state, [], []
    made: list[SubRequest] = []
    records: list[SubRequestState] = []
    seen: set[str] = set()
    for sub in subs:
        dep = workflow.departments.get(sub.department)
        address = dep.supervisor if dep is not None else None
        if not address or address in seen:
            continue
        seen.add(address)
        alert, record = _supervisor_mail(
            state,
            workflow,
            sub,
            address=address,
            key="alert",
            priority=state.priority,
            now=now,
            settings=settings,
        )
        made.append(alert.model_copy(update={"purpose": "alert", "sla_due_at": sub.sla_due_at}))
        records.append(record)
    st = state.model_copy(update={"sub_requests": [*state.sub_requests, *records]})
    return st, made, [created_event(st, a, now) for a in made]
