"""SLA: deadlines with business hours, warnings, breaches and escalation.

Pure functions with an injected ``now``. Deadlines (working time inside business hours) are
computed by ``pipeline.domain.deadlines`` when a sub-request is created.

``check_sla(state, workflow, now)`` looks at every open, tracked sub-request of a case and
emits, each at most once per sub-request and deadline (first response, resolution):

* ``sla_warning`` once ``warn_before`` of the allowed time is left;
* ``sla_breached`` at the deadline, followed by the policy's escalation steps:
  ``raise_priority`` (one level up), ``reroute`` (a new internal sub-request to another
  department; the late one is marked ``rerouted``), ``notify_supervisor`` (an external,
  untracked sub-request to the supervisor's address).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pipeline.config import Settings
from pipeline.domain.cases import TERMINAL, CaseState, Transition, event, new_sub_request
from pipeline.domain.delays import breach_update, escalation_request, sla_reminder
from pipeline.domain.workflow import LEVELS, Workflow
from pipeline.events import CaseEvent, CaseEventType, Priority, TaskNotice

__all__ = ["check_sla", "raise_level"]

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
    events: list[CaseEvent] = []
    notices: list[TaskNotice] = []
    breached_policies: list[str | None] = []
    new_subs = []
    subs = list(state.sub_requests)
    priority = state.priority
    created_states = []
    for i, sr in enumerate(subs):
        if not sr.blocking or sr.status in TERMINAL:
            continue
        checks: list[tuple[DeadlineKind, datetime | None]] = [
            ("first_response", sr.first_response_due_at if sr.responded_at is None else None),
            ("resolution", sr.due_at),
        ]
        policy = workflow.sla_policy_for(sr.department, sr.sla_policy)
        warn_before = policy.warn_before if policy else 0.2
        for kind, due in checks:
            if due is None:
                continue
            warn_at = due - (due - sr.created_at) * warn_before
            detail = {"deadline": kind, "due_at": due.isoformat(), "department": sr.department}
            if now >= warn_at and kind not in sr.warned and now < due:
                events.append(
                    _event(state, CaseEventType.sla_warning, sr.sub_request_id, kind, now, detail)
                )
                sr = sr.model_copy(update={"warned": [*sr.warned, kind]})
                reminder = sla_reminder(state, sr, kind, due, now)
                if reminder is not None:  # the holder hears it on its task topic
                    notices.append(reminder)
            if now >= due and kind not in sr.breached:
                events.append(
                    _event(state, CaseEventType.sla_breached, sr.sub_request_id, kind, now, detail)
                )
                sr = sr.model_copy(
                    update={
                        "breached": [*sr.breached, kind],
                        "warned": sorted({*sr.warned, kind}),
                    }
                )
                breached_policies.append(sr.sla_policy)
                for step_no, step in enumerate(policy.escalation if policy else []):
                    key = f"{kind}:{step_no}"
                    if step.type == "raise_priority":
                        before = priority.level
                        priority = raise_level(priority)
                        events.append(
                            _event(
                                state,
                                CaseEventType.escalated,
                                sr.sub_request_id,
                                key,
                                now,
                                {"step": "raise_priority", "from": before, "to": priority.level},
                            )
                        )
                    elif (
                        step.type == "reroute"
                        and step.department not in (None, sr.department)
                        and sr.status != "rerouted"  # both deadlines may pass in one tick
                    ):
                        assert step.department is not None
                        sub, sub_state = new_sub_request(
                            state,
                            workflow,
                            now=now,
                            kind="internal",
                            department=step.department,
                            recipient=None,
                            intent=sr.intent,
                            category=sr.category,
                            text=sr.text,
                            key=f"reroute:{sr.sub_request_id}",
                            priority=priority,
                            sla_policy=sr.sla_policy,
                            settings=settings,
                        )
                        new_subs.append(sub)
                        created_states.append(sub_state)
                        sr = sr.model_copy(update={"status": "rerouted"})
                        events.append(
                            _event(
                                state,
                                CaseEventType.escalated,
                                sr.sub_request_id,
                                key,
                                now,
                                {
                                    "step": "reroute",
                                    "to": step.department,
                                    "new_sub_request_id": sub.sub_request_id,
                                },
                            )
                        )
                    elif step.type == "notify_supervisor":
                        address = step.address or _supervisor(workflow, sr.department)
                        if address is None:
                            continue
                        sub, sub_state = escalation_request(
                            state,
                            workflow,
                            sr,
                            kind=kind,
                            due=due,
                            address=address,
                            priority=priority,
                            now=now,
                            settings=settings,
                        )
                        new_subs.append(sub)
                        created_states.append(sub_state)
                        events.append(
                            _event(
                                state,
                                CaseEventType.escalated,
                                sr.sub_request_id,
                                key,
                                now,
                                {
                                    "step": "notify_supervisor",
                                    "recipient": address,
                                    "new_sub_request_id": sub.sub_request_id,
                                },
                            )
                        )
        subs[i] = sr
    if not events:
        return Transition(state=state)
    new_state = state.model_copy(
        update={"sub_requests": subs + created_states, "priority": priority, "updated_at": now}
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
        for s in new_subs
    ]
    replies = []
    for policy_name in dict.fromkeys(breached_policies):
        # the customer hears of the delay once per case and policy, in their channel
        new_state, told, told_events = breach_update(new_state, workflow, policy_name, now)
        replies += told
        created_events += told_events
    return Transition(
        state=new_state,
        case_events=events + created_events,
        sub_requests=new_subs,
        replies=replies,
        notices=notices,
    )


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
