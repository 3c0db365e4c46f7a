"""SLA: deadlines with business hours, warnings, breaches and escalation.

Pure functions with an injected ``now``. Deadlines (working time inside business hours) are
computed by ``pipeline.domain.deadlines`` when a sub-request is created.

``check_sla(state, workflow, now)`` looks at every open, tracked sub-request of a case and
emits, each at most once per sub-request and deadline (first response, resolution):

* ``sla_warning`` once ``warn_before`` of the allowed time is left, with an ``sla_reminder``
  TaskNotice to the holder;
* ``sla_breached`` at the deadline, followed by the policy's escalation steps:
  ``raise_priority`` (one level up), ``reroute`` (a new internal sub-request to another
  department; the late one is marked ``rerouted``, once), ``notify_supervisor`` (an
  escalation e-mail of its own, ``domain.delays.escalation_request``);
* at a breach the customer is told once per case and SLA policy (``domain.delays``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pipeline.config import Settings
from pipeline.domain.cases import (
    TERMINAL,
    CaseState,
    SubRequestState,
    Transition,
    event,
    new_sub_request,
)
from pipeline.domain.delays import breach_update, escalation_request, sla_reminder
from pipeline.domain.workflow import LEVELS, EscalationStep, SlaPolicy, Workflow
from pipeline.events import CaseEvent, CaseEventType, Priority, Reply, SubRequest, TaskNotice

__all__ = ["check_sla", "next_check_at", "raise_level"]

DeadlineKind = Literal["first_response", "resolution"]


def raise_level(priority: Priority) -> Priority:
    """One level more urgent (P1 stays P1); the score rises to the level's floor."""
    i = LEVELS.index(priority.level)
    if i == 0:
        return priority
    floors = {"P1": 85.0, "P2": 60.0, "P3": 35.0}
    new = LEVELS[i - 1]
    return priority.model_copy(
        update={"level": new, "score": max(priority.score, floors.get(new, priority.score))}
    )


def check_sla(
    state: CaseState, workflow: Workflow, now: datetime, *, settings: Settings | None = None
) -> Transition:
    """Warnings, breaches and escalations due at ``now`` (each emitted once).

    ``settings`` only serves the reply address of a supervisor e-mail (notify stage).
    """
    check = _Check(state, workflow, now, settings, state.priority)
    subs = [check.sub_request(sr) if _tracked(sr) else sr for sr in state.sub_requests]
    if not check.events:
        return Transition(state=state)
    new_state = state.model_copy(
        update={
            "sub_requests": subs + check.created_states,
            "priority": check.priority,
            "updated_at": now,
        }
    )
    created_events = [
        _event(
            new_state,
            CaseEventType.sub_request_created,
            s.sub_request_id,
            "created",
            now,
            {"kind": s.kind.value, "department": s.department, "recipient": s.recipient},
        )
        for s in check.new_subs
    ]
    replies: list[Reply] = []
    for policy_name in dict.fromkeys(check.breached_policies):
        # the customer hears of the delay once per case and policy, in their channel
        new_state, told, told_events = breach_update(new_state, workflow, policy_name, now)
        replies += told
        created_events += told_events
    return Transition(
        state=new_state,
        case_events=check.events + created_events,
        sub_requests=check.new_subs,
        replies=replies,
        notices=check.notices,
    )


def next_check_at(state: CaseState, workflow: Workflow) -> datetime | None:
    """The earliest time ``check_sla`` has something to emit for ``state``: the first warning
    or deadline of its tracked sub-requests not emitted yet (None: nothing until the case
    changes). A check before then returns the state unchanged, so the SLA timer skips the
    case until that time (``route.agents.CaseKeeper.check_sla``)."""
    times: list[datetime] = []
    for sr in state.sub_requests:
        if not _tracked(sr):
            continue
        policy = workflow.sla_policy_for(sr.department, sr.sla_policy)
        for kind, due in _deadlines(sr):
            if kind not in sr.warned:
                times.append(_warn_at(sr, due, policy))
            if kind not in sr.breached:
                times.append(due)
    return min(times, default=None)


def _tracked(sr: SubRequestState) -> bool:
    """A sub-request the SLA check looks at: blocking and not closed."""
    return sr.blocking and sr.status not in TERMINAL


def _deadlines(sr: SubRequestState) -> list[tuple[DeadlineKind, datetime]]:
    """A tracked sub-request's deadlines: the first response until it is answered, and the
    resolution."""
    first = sr.first_response_due_at if sr.responded_at is None else None
    found: list[tuple[DeadlineKind, datetime | None]] = [
        ("first_response", first),
        ("resolution", sr.due_at),
    ]
    return [(kind, due) for kind, due in found if due is not None]


def _warn_at(sr: SubRequestState, due: datetime, policy: SlaPolicy | None) -> datetime:
    """When the warning of a deadline is due: ``warn_before`` of the allowed time left."""
    return due - (due - sr.created_at) * (policy.warn_before if policy else 0.2)


@dataclass
class _Check:
    """One SLA check of a case: what it emits so far (the priority may rise step by step)."""

    state: CaseState
    workflow: Workflow
    now: datetime
    settings: Settings | None
    priority: Priority
    events: list[CaseEvent] = field(default_factory=list)
    new_subs: list[SubRequest] = field(default_factory=list)
    created_states: list[SubRequestState] = field(default_factory=list)
    notices: list[TaskNotice] = field(default_factory=list)
    breached_policies: list[str | None] = field(default_factory=list)

    def sub_request(self, sr: SubRequestState) -> SubRequestState:
        """Check both deadlines of one tracked sub-request; its new record."""
        policy = self.workflow.sla_policy_for(sr.department, sr.sla_policy)
        for kind, due in _deadlines(sr):
            sr = self.deadline(sr, kind, due, policy)
        return sr

    def deadline(
        self, sr: SubRequestState, kind: DeadlineKind, due: datetime, policy: SlaPolicy | None
    ) -> SubRequestState:
        """``sla_warning`` once ``warn_before`` of the time is left; ``sla_breached`` at the
        deadline, then the policy's escalation steps."""
        now = self.now
        warn_at = _warn_at(sr, due, policy)
        detail = {"deadline": kind, "due_at": due.isoformat(), "department": sr.department}
        if now >= warn_at and kind not in sr.warned and now < due:
            self.emit(sr, CaseEventType.sla_warning, kind, detail)
            sr = sr.model_copy(update={"warned": [*sr.warned, kind]})
            reminder = sla_reminder(self.state, sr, kind, due, now)
            if reminder is not None:  # the holder hears it on its task topic
                self.notices.append(reminder)
        if now >= due and kind not in sr.breached:
            self.emit(sr, CaseEventType.sla_breached, kind, detail)
            sr = sr.model_copy(
                update={"breached": [*sr.breached, kind], "warned": sorted({*sr.warned, kind})}
            )
            self.breached_policies.append(sr.sla_policy)
            for step_no, step in enumerate(policy.escalation if policy else []):
                sr = self.escalate(sr, step, f"{kind}:{step_no}", kind, due)
        return sr

    def escalate(
        self,
        sr: SubRequestState,
        step: EscalationStep,
        key: str,
        kind: DeadlineKind,
        due: datetime,
    ) -> SubRequestState:
        """One escalation step: raise the priority, reroute, or e-mail the supervisor."""
        if step.type == "raise_priority":
            before = self.priority.level
            self.priority = raise_level(self.priority)
            step_detail = {"step": "raise_priority", "from": before, "to": self.priority.level}
            self.emit(sr, CaseEventType.escalated, key, step_detail)
        elif (
            step.type == "reroute"
            and step.department not in (None, sr.department)
            and sr.status != "rerouted"  # both deadlines may pass in one check
        ):
            sub = self.new_sub(
                sr,
                kind="internal",
                department=step.department or sr.department,
                recipient=None,
                text=sr.text,
                key=f"reroute:{sr.sub_request_id}",
                sla_policy=sr.sla_policy,
            )
            sr = sr.model_copy(update={"status": "rerouted"})
            detail = {"step": "reroute", "to": step.department, "new_sub_request_id": sub}
            self.emit(sr, CaseEventType.escalated, key, detail)
        elif step.type == "notify_supervisor":
            address = step.address or _supervisor(self.workflow, sr.department)
            if address is None:
                return sr
            mail, mail_state = escalation_request(
                self.state,
                self.workflow,
                sr,
                kind=kind,
                due=due,
                address=address,
                priority=self.priority,
                now=self.now,
                settings=self.settings,
            )
            self.new_subs.append(mail)
            self.created_states.append(mail_state)
            sub = mail.sub_request_id
            detail = {"step": "notify_supervisor", "recipient": address, "new_sub_request_id": sub}
            self.emit(sr, CaseEventType.escalated, key, detail)
        return sr

    def new_sub(
        self,
        sr: SubRequestState,
        *,
        kind: Literal["internal", "external"],
        department: str,
        recipient: str | None,
        text: str,
        key: str,
        sla_policy: str | None,
        blocking: bool = True,
    ) -> str:
        """A sub-request created by an escalation step; returns its id."""
        sub, sub_state = new_sub_request(
            self.state,
            self.workflow,
            now=self.now,
            kind=kind,
            department=department,
            recipient=recipient,
            intent=sr.intent,
            category=sr.category,
            text=text,
            key=key,
            priority=self.priority,
            blocking=blocking,
            sla_policy=sla_policy,
            settings=self.settings,
        )
        self.new_subs.append(sub)
        self.created_states.append(sub_state)
        return sub.sub_request_id

    def emit(
        self, sr: SubRequestState, type_: CaseEventType, key: str, detail: Mapping[str, object]
    ) -> None:
        self.events.append(_event(self.state, type_, sr.sub_request_id, key, self.now, detail))


def _supervisor(workflow: Workflow, department: str) -> str | None:
    dep = workflow.departments.get(department)
    return dep.supervisor if dep is not None else None


def _event(
    state: CaseState,
    type_: CaseEventType,
    sub_request_id: str,
    key: str,
    now: datetime,
    detail: Mapping[str, object],
) -> CaseEvent:
    # derive_id joins its parts with \x1f, so this keeps the ids of (sub_request_id, key)
    return event(
        state,
        type_,
        now,
        key=f"{sub_request_id}\x1f{key}",
        sub_request_id=sub_request_id,
        detail=dict(detail),
    )
