"""SLA with a fake clock: business hours, warning then breach (each once), escalation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from pipeline.domain.cases import CaseState, apply_task_update
from pipeline.domain.deadlines import add_business_time
from pipeline.domain.workflow import BusinessHours, parse_workflow
from pipeline.events import CaseEventType, SubRequestKind, TaskStatus, TaskUpdate
from pipeline.route.core import route_message
from pipeline.route.sla import check_sla, next_check_at

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit

MSK = BusinessHours(
    timezone="Europe/Moscow",
    days={
        "mon": "09:00-18:00",
        "tue": "09:00-18:00",
        "wed": "09:00-18:00",
        "thu": "09:00-18:00",
        "fri": "09:00-18:00",
    },
)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)  # type: ignore[misc]


def test_business_time_inside_one_day() -> None:
    # Tue 10:00 MSK + 2 h → 12:00 MSK
    assert add_business_time(utc(2026, 3, 3, 7), 120, MSK) == utc(2026, 3, 3, 9)


def test_business_time_skips_night_and_weekend() -> None:
    # Fri 17:00 MSK + 3 h → 1 h on Friday, 2 h from Monday 09:00 → Mon 11:00 MSK
    assert add_business_time(utc(2026, 3, 6, 14), 180, MSK) == utc(2026, 3, 9, 8)
    # Saturday night → counting starts Monday 09:00
    assert add_business_time(utc(2026, 3, 7, 20), 30, MSK) == utc(2026, 3, 9, 6, 30)
    # before opening → from opening
    assert add_business_time(utc(2026, 3, 3, 3), 60, MSK) == utc(2026, 3, 3, 7)


def test_wall_clock_without_hours() -> None:
    assert add_business_time(utc(2026, 3, 7, 20), 30, None) == utc(2026, 3, 7, 20, 30)


WF = parse_workflow("""\
version: 1
departments:
  triage: {kind: internal}
  it: {kind: internal, supervisor: boss@example.com,
       hours: {timezone: Europe/Moscow, days: {mon: "09:00-18:00", tue: "09:00-18:00",
               wed: "09:00-18:00", thu: "09:00-18:00", fri: "09:00-18:00"}}}
  backup: {kind: internal}
templates:
  ru: {acknowledgement: a, resolution: "{items}", incident_notice: n, survey_csat: s,
       survey_nps: s, triage: t}
rules:
  - {name: it, then: [{type: internal, department: it}]}
sla_policies:
  std:
    first_response: {P3: 1h}
    resolution: {P3: 4h}
    warn_before: 0.25
    escalation: [{type: raise_priority}, {type: reroute, department: backup},
                 {type: notify_supervisor}]
default_sla: std
""")


def acknowledged(case: CaseState, sub_request_id: str, at: datetime) -> CaseState:
    """``case`` once its department acknowledged the sub-request at ``at``."""
    ack = TaskUpdate(
        update_id=f"ack-{sub_request_id}-{at.isoformat()}",
        sub_request_id=sub_request_id,
        case_id=case.case_id,
        status=TaskStatus.acknowledged,
        at=at,
        source="department",
    )
    return apply_task_update(case, ack, WF, now=at).state


def test_warning_breach_and_escalation_each_once(kit: RouteKit) -> None:
    text = "Не работает вход"
    start = utc(2026, 3, 6, 13)  # Friday 16:00 MSK: 2 working hours left that day
    msg = kit.message(text, [kit.intent(text, text, "login", "ACCOUNT")])
    d = route_message(msg, WF, now=start)
    case = d.case
    assert case is not None
    [sub] = case.sub_requests
    assert sub.first_response_due_at == utc(2026, 3, 6, 14)
    assert sub.due_at == utc(2026, 3, 9, 8)  # 2 h Friday + 2 h from Monday 09:00 MSK

    clock = start + timedelta(minutes=30)
    assert check_sla(case, WF, clock).case_events == []  # nothing due yet

    # 45 min in: a quarter of the first-response time is left → one warning
    clock = start + timedelta(minutes=45)
    t = check_sla(case, WF, clock)
    assert [(e.type, e.detail["deadline"]) for e in t.case_events] == [
        (CaseEventType.sla_warning, "first_response")
    ]
    case = t.state
    assert check_sla(case, WF, clock + timedelta(minutes=5)).case_events == []

    # the department acknowledges: the first response is met, no breach for it
    case = acknowledged(case, sub.sub_request_id, clock)
    assert check_sla(case, WF, start + timedelta(hours=2)).case_events == []

    # Monday 08:00 MSK (05:00 UTC): 3 h of the 4 h elapsed in business time, wall-clock
    # warn point = due - 25 % of (due - created)
    warn_at = sub.due_at - (sub.due_at - sub.created_at) * 0.25  # type: ignore[operator]
    t = check_sla(case, WF, warn_at)
    assert [e.type for e in t.case_events] == [CaseEventType.sla_warning]
    case = t.state

    # at the deadline: breach, raise priority, re-route, notify the supervisor — once
    t = check_sla(case, WF, sub.due_at)  # type: ignore[arg-type]
    types = [e.type for e in t.case_events]
    assert types[0] is CaseEventType.sla_breached
    assert types.count(CaseEventType.escalated) == 3
    assert t.state.priority.level == "P2"
    rerouted, notice = t.sub_requests
    assert (rerouted.kind, rerouted.department) == (SubRequestKind.internal, "backup")
    assert (notice.kind, notice.recipient) == (SubRequestKind.external, "boss@example.com")
    assert notice.purpose == "escalation" and notice.breached_deadline == "resolution"
    assert notice.sla_due_at == sub.due_at  # the missed deadline, shown in local time
    states = {s.sub_request_id: s for s in t.state.sub_requests}
    assert states[sub.sub_request_id].status == "rerouted"
    assert states[notice.sub_request_id].blocking is False
    later = check_sla(t.state, WF, sub.due_at + timedelta(hours=1))  # type: ignore[operator]
    assert later.case_events == [] and later.sub_requests == []

    # the re-routed sub-request resolves the case; the notification does not block it
    done = TaskUpdate(
        update_id="done",
        sub_request_id=rerouted.sub_request_id,
        case_id=case.case_id,
        status=TaskStatus.resolved,
        resolution="Починили",
        at=clock,
        source="department",
    )
    final = apply_task_update(t.state, done, WF, now=clock)
    assert final.state.status == "resolved" and final.replies[0].text == "• Починили"


@pytest.mark.parametrize(
    ("answered", "expected"),
    [
        # no answer: the first response is warned about, then breached (and escalated: the
        # rerouted copy is P2 now, which this policy gives no deadline)
        (False, [("sla_warning", "first_response"), ("sla_breached", "first_response")]),
        # answered after the warning: the resolution deadline is next
        (
            True,
            [
                ("sla_warning", "first_response"),
                ("sla_warning", "resolution"),
                ("sla_breached", "resolution"),
            ],
        ),
    ],
)
def test_next_check_at_is_when_the_check_first_has_something_to_emit(
    kit: RouteKit, answered: bool, expected: list[tuple[str, str]]
) -> None:
    """The SLA timer skips a case until ``next_check_at``: walked through a case's SLA life, a
    check just before that time emits nothing and a check at it emits something; then nothing
    is left (None)."""
    text = "Не работает вход"
    msg = kit.message(text, [kit.intent(text, text, "login", "ACCOUNT")])
    case = route_message(msg, WF, now=utc(2026, 3, 6, 13)).case
    assert case is not None
    steps: list[tuple[str, str]] = []
    while (at := next_check_at(case, WF)) is not None:
        assert check_sla(case, WF, at - timedelta(microseconds=1)).case_events == []
        t = check_sla(case, WF, at)
        assert t.case_events, at
        first = t.case_events[0]
        steps.append((first.type.value, str(first.detail.get("deadline"))))
        case = t.state
        if answered and len(steps) == 1:
            [sub] = case.sub_requests
            case = acknowledged(case, sub.sub_request_id, at)
        assert len(steps) < 10
    assert steps == expected


@given(
    minutes=st.lists(st.integers(min_value=0, max_value=6 * 24 * 60), min_size=1, max_size=8),
    answered=st.integers(min_value=-1, max_value=8),
)
@hyp_settings(max_examples=60, deadline=None)
def test_no_check_before_next_check_at_has_anything_to_emit(
    kit: RouteKit, minutes: list[int], answered: int
) -> None:
    """At any time before ``next_check_at`` a check emits nothing, along a case's life checked
    at random times, the department answering at one of them (or never)."""
    text = "Не работает вход"
    start = utc(2026, 3, 6, 13)
    msg = kit.message(text, [kit.intent(text, text, "login", "ACCOUNT")])
    case = route_message(msg, WF, now=start).case
    assert case is not None
    for i, offset in enumerate(sorted(minutes)):
        now = start + timedelta(minutes=offset)
        if i == answered:
            case = acknowledged(case, case.sub_requests[0].sub_request_id, now)
        at = next_check_at(case, WF)
        t = check_sla(case, WF, now)
        if at is None or now < at:
            assert t.case_events == [] and t.state == case
        case = t.state
