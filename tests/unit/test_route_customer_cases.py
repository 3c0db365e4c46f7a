"""CustomerCases, the route agent's table of each customer's recent cases: it writes the
bytes the former per-case dump wrote (one pydantic-core call now), and a value the table got
from anywhere else (a restore, a replay, the sweep) is what the next message sees."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.codec import decode, encode
from pipeline.config import Settings
from pipeline.domain.cases import CaseState, SurveyState
from pipeline.events import CaseSnapshot, ClassifiedMessage
from pipeline.route.agents import (
    MAX_CASES_PER_CUSTOMER,
    CustomerCases,
    _case_json,
    _snapshot,
    _TypedSnapshot,
    find_case,
)
from pipeline.route.core import RouteDecision, route_message

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit

SETTINGS = Settings()


def reference_store(table: dict[str, str], state: CaseState, known: list[CaseState]) -> None:
    """What ``CustomerCases.store`` wrote before it kept parsed cases: every case re-dumped."""
    cases = [c for c in known if c.case_id != state.case_id]
    cases.append(state)
    cases.sort(key=lambda c: c.updated_at)
    table[state.customer_id] = orjson.dumps(
        [c.model_dump(mode="json") for c in cases[-MAX_CASES_PER_CUSTOMER:]]
    ).decode()


def reference_of(table: dict[str, str], customer_id: str) -> list[CaseState]:
    raw = table.get(customer_id)
    return [CaseState.model_validate(c) for c in orjson.loads(raw)] if raw else []


def decide(
    kit: RouteKit, cases: CustomerCases, cm: ClassifiedMessage, now: datetime
) -> RouteDecision:
    """The route agent's steps for one message (RouteAgent.route without the sends)."""
    known = cases.of(cm.customer_id)
    open_case, _ = find_case(cm, known, SETTINGS)
    decision = route_message(cm, kit.workflow, now=now, open_case=open_case, settings=SETTINGS)
    if decision.case is not None:
        cases.store(decision.case, known)
    return decision


def messages(kit: RouteKit, customer: str = "cust-1", round_: int = 0) -> list[ClassifiedMessage]:
    texts = [
        ("Где мой заказ 5521?", "track_order", "ORDER"),
        ("Не помогло, заказ так и не пришёл", "track_order", "ORDER"),
        ("Не могу оплатить заказ картой", "payment_issue", "PAYMENT"),
        ("Хочу вернуть деньги за чайник", "get_refund", "REFUNDS"),
    ]
    return [
        kit.message(
            text,
            # later rounds: topics of their own, so new cases (more than the table keeps)
            [kit.intent(text, text, label, cat if round_ == 0 else f"{cat}_{round_}")],
            customer=customer,
            key=f"{customer}-{round_}-{n}",
        )
        for n, (text, label, cat) in enumerate(texts)
    ]


def dumped(d: RouteDecision) -> dict[str, Any]:
    return d.model_dump(mode="json")


def test_the_table_and_the_decisions_are_as_with_the_per_case_dump(kit: RouteKit) -> None:
    cases = CustomerCases({})
    reference: dict[str, str] = {}
    # more messages than the table keeps per customer: the oldest cases fall out
    msgs = [m for r in range(4) for c in ("a", "b") for m in messages(kit, c, r)]
    for n, cm in enumerate(msgs):
        now = kit.now + timedelta(minutes=n)
        known = reference_of(reference, cm.customer_id)
        open_case, _ = find_case(cm, known, SETTINGS)
        expected = route_message(cm, kit.workflow, now=now, open_case=open_case, settings=SETTINGS)
        if expected.case is not None:
            reference_store(reference, expected.case, known)
        assert dumped(decide(kit, cases, cm, now)) == dumped(expected)
        assert cases.table == reference
    assert len(orjson.loads(reference["a"])) == MAX_CASES_PER_CUSTOMER


def test_a_restored_value_is_read_from_the_table(kit: RouteKit) -> None:
    cases = CustomerCases({})
    m1, m2, m3, _ = messages(kit)
    t1, t2, t3 = (kit.now + timedelta(minutes=n) for n in (1, 2, 3))
    decide(kit, cases, m1, t1)
    after_m1 = cases.table["cust-1"]
    first = decide(kit, cases, m2, t2)
    decide(kit, cases, m3, t3)
    assert cases.table["cust-1"] != after_m1
    # a restart or a rebalance restores the changelog of before m2; m2 and m3 come again
    cases.table["cust-1"] = orjson.dumps(orjson.loads(after_m1)).decode()  # not the same str
    assert [c.model_dump() for c in cases.of("cust-1")] == [
        c.model_dump() for c in reference_of(cases.table, "cust-1")
    ]
    assert dumped(decide(kit, cases, m2, t2)) == dumped(first)


def test_a_value_written_elsewhere_then_stored_keeps_the_tables_cases(kit: RouteKit) -> None:
    cases = CustomerCases({})
    m1, m2, m3, m4 = messages(kit)
    decide(kit, cases, m1, kit.now)
    decide(kit, cases, m2, kit.now + timedelta(minutes=1))
    known = cases.of("cust-1")
    # the sweep (or a snapshot from the keeper) rewrites the value between of() and store()
    other = route_message(m3, kit.workflow, now=kit.now + timedelta(minutes=2))
    assert other.case is not None
    cases.table["cust-1"] = orjson.dumps([other.case.model_dump(mode="json")]).decode()
    assert [c.case_id for c in cases.of("cust-1")] == [other.case.case_id]
    new = route_message(m4, kit.workflow, now=kit.now + timedelta(minutes=3))
    assert new.case is not None
    cases.store(new.case)  # as for a snapshot: the table's cases, not the ones seen before
    assert [c.case_id for c in cases.of("cust-1")] == [other.case.case_id, new.case.case_id]
    assert known and not {c.case_id for c in known} & {c.case_id for c in cases.of("cust-1")}
    reference: dict[str, str] = {}
    reference_store(reference, new.case, [other.case])
    assert cases.table == reference


def test_a_deleted_value_has_no_cases(kit: RouteKit) -> None:
    cases = CustomerCases({})
    a, b = messages(kit, "a")[0], messages(kit, "b")[0]
    decide(kit, cases, a, kit.now)
    decide(kit, cases, b, kit.now)
    assert [c.customer_id for c in cases.of("a")] == ["a"]
    del cases.table["a"]
    assert cases.of("a") == []
    cases.table["b"] = ""  # a tombstone as the table holds it
    assert cases.of("b") == []


def test_a_snapshot_is_the_record_its_dumped_state_made(kit: RouteKit) -> None:
    """The snapshot sent carries the CaseState itself; its bytes are those of a CaseSnapshot
    of ``state.model_dump(mode="json")``, which other readers and older records decode; read
    back typed, it is the case the dict gave; the keeper's table value is orjson's dump."""
    cases = CustomerCases({})
    states = []
    for n, cm in enumerate([kit.seed_message(), *messages(kit)]):
        case = decide(kit, cases, cm, kit.now + timedelta(minutes=n)).case
        assert case is not None
        states.append(case)
    surveyed = SurveyState(kind="nps", reply_id="r1", sent_at=kit.now, answered=True, score=9)
    states.append(states[-1].model_copy(update={"survey": surveyed, "resolved_at": kit.now}))
    assert any(s.sub_requests for s in states) and any(s.entities for s in states)
    for state in states:
        for by in ("route", "cases"):
            snap = _snapshot(state, by)
            dumped_state = state.model_dump(mode="json")
            reference = CaseSnapshot(
                case_id=state.case_id,
                customer_id=state.customer_id,
                state=dumped_state,
                by=by,
                at=snap.at,
            )
            assert encode(snap) == encode(reference)
            assert decode(CaseSnapshot, encode(snap)).state == dumped_state
            typed = decode(_TypedSnapshot, encode(reference))
            assert typed.state == CaseState.model_validate(dumped_state) == state
        assert _case_json(state) == orjson.dumps(state.model_dump(mode="json")).decode()
