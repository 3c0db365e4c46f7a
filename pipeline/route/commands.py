"""Supervisor commands on a case (from the operator console): reassign or add a sub-request.

Pure, like every case transition: ``apply_case_command`` returns the new state and what to
emit. Idempotent on ``command_id`` (kept with the seen update ids), so a replayed command
changes nothing. Only internal departments take work this way: an external party is asked
by the workflow's own rules (its address comes from the message's store).
"""

from __future__ import annotations

from datetime import datetime

from pipeline.config import Settings
from pipeline.domain.cases import (
    TERMINAL,
    CaseState,
    Transition,
    created_event,
    event,
    new_sub_request,
)
from pipeline.domain.workflow import Workflow
from pipeline.errors import InvalidInput
from pipeline.events import CaseCommand, CaseEventType

__all__ = ["apply_case_command"]


def apply_case_command(
    state: CaseState,
    command: CaseCommand,
    workflow: Workflow,
    *,
    now: datetime,
    settings: Settings | None = None,
) -> Transition:
    """Apply a supervisor's command; raises InvalidInput for one that cannot apply."""
    if command.command_id in state.seen_update_ids:
        return Transition(state=state)
    if state.status == "resolved":
        raise InvalidInput(f"case {state.case_id} is resolved", field="case_id")
    dep = workflow.departments.get(command.department)
    if dep is None or dep.kind != "internal":
        raise InvalidInput(
            f"{command.department!r} is not an internal department", field="department"
        )
    old = state.sub(command.sub_request_id) if command.sub_request_id else None
    if command.action == "reassign":
        if old is None:
            raise InvalidInput(
                f"case {state.case_id} has no sub-request {command.sub_request_id}",
                field="sub_request_id",
            )
        if old.status in TERMINAL or old.department == command.department:
            # Nothing to move: remember the command so a replay is quiet too.
            st = state.model_copy(
                update={"seen_update_ids": [*state.seen_update_ids, command.command_id]}
            )
            return Transition(state=st)
    text = command.text or (old.text if old else state.full_text)
    sub, record = new_sub_request(
        state,
        workflow,
        now=now,
        kind="internal",
        department=command.department,
        recipient=None,
        intent=old.intent if old else "supervisor",
        category=old.category if old else (state.categories or ["UNKNOWN"])[0],
        text=text,
        key=f"command:{command.command_id}",
        sla_policy=old.sla_policy if old else None,
        settings=settings,
    )
    subs = [
        s.model_copy(update={"status": "rerouted", "updated_at": now})
        if old is not None and s.sub_request_id == old.sub_request_id
        else s
        for s in state.sub_requests
    ]
    st = state.model_copy(
        update={
            "sub_requests": [*subs, record],
            "seen_update_ids": [*state.seen_update_ids, command.command_id],
            "updated_at": now,
        }
    )
    escalated = event(
        st,
        CaseEventType.escalated,
        now,
        key=command.command_id,
        sub_request_id=old.sub_request_id if old else sub.sub_request_id,
        detail={
            "step": command.action,
            "to": command.department,
            "new_sub_request_id": sub.sub_request_id,
            "author": command.author,
        },
    )
    return Transition(
        state=st, case_events=[escalated, created_event(st, sub, now)], sub_requests=[sub]
    )
