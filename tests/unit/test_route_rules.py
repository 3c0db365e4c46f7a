"""Rule semantics: per intent, file order, stop (first match) vs all matches, triage, whys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipeline.domain.workflow import Workflow, parse_workflow
from pipeline.events import Channel, Entity
from pipeline.route.core import route_message
from pipeline.route.rules import match_rules

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit

HEAD = """\
version: 1
departments:
  triage: {kind: internal}
  a: {kind: internal}
  b: {kind: internal}
  c: {kind: internal}
templates:
  ru: {acknowledgement: "ack {departments}", resolution: "{items}", incident_notice: n,
       survey_csat: s, survey_nps: s, triage: t}
  en: {acknowledgement: "ack {departments}", resolution: "{items}", incident_notice: n,
       survey_csat: s, survey_nps: s, triage: t}
rules:
"""


def wf(rules: str) -> Workflow:
    return parse_workflow(HEAD + rules)


TEXT = "Where is my order? Also I want a refund."


def two_intents(kit: RouteKit, **kw: object):  # type: ignore[no-untyped-def]
    return kit.message(
        TEXT,
        [
            kit.intent(TEXT, "Where is my order?", "track_order", "ORDER"),
            kit.intent(TEXT, "Also I want a refund.", "get_refund", "REFUNDS"),
        ],
        language="en",
        **kw,  # type: ignore[arg-type]
    )


def depts(  # type: ignore[no-untyped-def]
    kit: RouteKit, rules: str, msg=None, now: datetime | None = None
) -> list[tuple[str, str]]:
    d = route_message(msg or two_intents(kit), wf(rules), now=now or kit.now)
    return [(s.intent, s.department) for s in d.sub_requests]


def test_first_match_wins_by_default(kit: RouteKit) -> None:
    rules = """\
  - {name: r1, when: {category: ORDER}, then: [{type: internal, department: a}]}
  - {name: r2, when: {category: ORDER}, then: [{type: internal, department: b}]}
  - {name: r3, then: [{type: internal, department: c}]}
"""
    assert depts(kit, rules) == [("track_order", "a"), ("get_refund", "c")]


def test_file_order_decides(kit: RouteKit) -> None:
    rules = """\
  - {name: r2, when: {category: ORDER}, then: [{type: internal, department: b}]}
  - {name: r1, when: {category: ORDER}, then: [{type: internal, department: a}]}
"""
    assert depts(kit, rules)[0] == ("track_order", "b")


def test_stop_false_collects_all_matches_until_a_stopping_rule(kit: RouteKit) -> None:
    rules = """\
  - {name: r1, when: {category: ORDER}, then: [{type: internal, department: a}], stop: false}
  - {name: r2, when: {category: ORDER}, then: [{type: internal, department: b}]}
  - {name: r3, when: {category: ORDER}, then: [{type: internal, department: c}]}
"""
    assert depts(kit, rules)[:2] == [("track_order", "a"), ("track_order", "b")]
    assert ("track_order", "c") not in depts(kit, rules)


def test_unmatched_intent_goes_to_triage_and_same_target_is_deduplicated(kit: RouteKit) -> None:
    rules = """\
  - {name: r1, when: {category: ORDER}, then: [{type: internal, department: a}], stop: false}
  - {name: r1b, when: {intent: track_order}, then: [{type: internal, department: a}]}
"""
    assert depts(kit, rules) == [("track_order", "a"), ("get_refund", "triage")]
    d = route_message(two_intents(kit), wf(rules), now=kit.now)
    refund = d.trace.intents[1]
    assert "no rule matched → triage" in refund.notes


def test_trace_says_why_per_condition(kit: RouteKit) -> None:
    msg = two_intents(kit, entities=[Entity(kind="order", value="5521")], tags=["angry"])
    w = wf("""\
  - name: r
    when: {category: [ORDER], entities: [{kind: order, values: ["5521"]}], tags_any: [angry],
           channel: [telegram], language: [en], tier: [standard], min_score: 10}
    then: [{type: internal, department: a}]
""")
    applied, traces = match_rules(w, msg, msg.intents[0], now=kit.now)
    assert [r.name for r in applied] == ["r"]
    whys = {c.condition: (c.ok, c.why) for c in traces[0].conditions}
    assert whys["category"] == (True, "category 'ORDER' in ['ORDER']")
    assert whys["entity:order"] == (True, "entity order in ['5521'] found: ['5521']")
    assert whys["tags_any"] == (True, "tags ['angry'] present")
    assert whys["min_score"] == (True, "score 30 >= 10")
    applied, traces = match_rules(w, msg, msg.intents[1], now=kit.now)
    assert applied == [] and not traces[0].matched
    assert ("category", False) in [(c.condition, c.ok) for c in traces[0].conditions]


def test_conditions_can_fail(kit: RouteKit) -> None:
    msg = two_intents(kit, channel=Channel.email, tier="vip", level="P1", score=90)
    for cond in (
        "channel: [telegram]",
        "language: [ru]",
        "tier: [standard]",
        "priority: [P4]",
        "entities: [{kind: store}]",
        "tags_all: [x]",
        "segment: [b2b]",
    ):
        rules = f"  - {{name: r, when: {{{cond}}}, then: [{{type: internal, department: a}}]}}\n"
        assert depts(kit, rules, msg)[0] == ("track_order", "triage"), cond
    rules = (
        "  - {name: r, when: {entities: [{kind: store, present: false}], tags_none: [x]}, "
        "then: [{type: internal, department: a}]}\n"
    )
    assert depts(kit, rules, msg)[0] == ("track_order", "a")


def test_time_of_day_and_weekday_in_zone(kit: RouteKit) -> None:
    rules = """\
  - name: night
    when: {time: "20:00-23:59", timezone: Europe/Moscow}
    then: [{type: internal, department: b}]
  - name: weekend
    when: {weekdays: [sat, sun], timezone: Europe/Moscow}
    then: [{type: internal, department: c}]
  - {name: day, then: [{type: internal, department: a}]}
"""
    tuesday_evening = datetime(2026, 3, 3, 18, 30, tzinfo=UTC)  # 21:30 Moscow
    saturday_noon = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    assert depts(kit, rules, now=kit.now)[0][1] == "a"
    assert depts(kit, rules, now=tuesday_evening)[0][1] == "b"
    assert depts(kit, rules, now=saturday_noon)[0][1] == "c"


def test_set_priority_and_escalate_apply_once_per_message(kit: RouteKit) -> None:
    rules = """\
  - {name: vip, when: {tier: [vip]}, then: [{type: set_priority, level: P2}], stop: false}
  - {name: esc, when: {tags_any: [legal_threat]}, then: [{type: escalate}], stop: false}
  - {name: all, then: [{type: internal, department: a}]}
"""
    d = route_message(two_intents(kit, tier="vip", tags=["legal_threat"]), wf(rules), now=kit.now)
    assert d.trace.priority_before == "P3"
    assert d.trace.priority_after == "P1"  # set to P2, escalated once (not once per intent)
    assert {s.priority.level for s in d.sub_requests} == {"P1"}
    assert [e.type.value for e in d.case_events].count("escalated") == 1


EVERY_CONDITION = """\
  - name: all-kinds
    when: {category: [ORDER], entities: [{kind: order, values: ["5521"]}], tags_any: [angry],
           tags_all: [angry], tags_none: [spam], channel: [telegram], language: [en],
           tier: [standard], priority: [P3], min_score: 10,
           weekdays: [mon, tue], time: "09:00-18:00", timezone: Europe/Moscow}
    then: [{type: internal, department: a}]
  - {name: store, when: {entities: [{kind: store, present: false}]}, stop: false,
     then: [{type: internal, department: b}]}
  - {name: vip, when: {tier: [vip], min_score: 50}, then: [{type: internal, department: c}]}
  - {name: refund, when: {intent: [get_refund]}, then: [{type: internal, department: c}]}
  - {name: b2b, when: {segment: [b2b]}, then: [{type: internal, department: a}]}
"""


def test_matching_without_the_trace_applies_the_same_rules(kit: RouteKit) -> None:
    from pipeline.route.rules import check_conditions, conditions_hold

    w = wf(EVERY_CONDITION)
    order = Entity(kind="order", value="5521")
    variants: list[dict[str, object]] = [
        {},
        {"entities": [order], "tags": ["angry"]},
        {"entities": [order], "tags": ["angry", "spam"]},
        {"entities": [order, Entity(kind="store", value="SPB-012")], "tags": ["Angry"]},
        {"tier": "vip", "score": 80, "level": "P1", "channel": Channel.email},
    ]
    times = [kit.now, datetime(2026, 3, 3, 16, 0, tzinfo=UTC), datetime(2026, 3, 7, 9, tzinfo=UTC)]
    held: set[str] = set()
    for kw in variants:
        msg = two_intents(kit, **kw)
        for now in times:
            for intent in msg.intents:
                for rule in w.rules:
                    traced = all(r.ok for r in check_conditions(rule.when, msg, intent, now))
                    assert conditions_hold(rule.when, msg, intent, now) == traced
                    if traced:
                        held.add(rule.name)
                applied, traces = match_rules(w, msg, intent, now=now, explain=False)
                assert traces == []
                assert applied == match_rules(w, msg, intent, now=now)[0]
            quiet = route_message(msg, w, now=now, explain=False)
            full = route_message(msg, w, now=now)
            assert quiet.model_dump(exclude={"trace"}) == full.model_dump(exclude={"trace"})
            assert all(not it.rules for it in quiet.trace.intents)
    assert held == {"all-kinds", "store", "vip", "refund"}  # each held somewhere, b2b never
