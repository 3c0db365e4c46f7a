"""route_message and the case lifecycle: the seed scenario as pure transitions, and the rest."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from pipeline.domain.cases import (
    CaseState,
    apply_customer_message,
    apply_customer_reply,
    apply_task_update,
    fill,
    incident_resolved,
    incident_updates,
    link_member,
    merge_snapshot,
)
from pipeline.errors import InvalidInput
from pipeline.events import (
    CaseEventType,
    Channel,
    Entity,
    OutcomeKind,
    ReplyKind,
    Similarity,
    Span,
    SubRequestKind,
    TaskStatus,
    TaskUpdate,
    derive_id,
)
from pipeline.metrics import Metrics
from pipeline.route.core import RouteDecision, route_message
from pipeline.route.kb import KbMatch

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit
    from tests.plugins.tables import StoredTable

MakeTable = Callable[..., "StoredTable"]
Unreadable = Callable[[Metrics, str], float]


def update(  # type: ignore[no-untyped-def]
    kit: RouteKit,
    case: CaseState,
    sub_id: str,
    uid: str,
    text: str,
    source: str = "department",
):
    return TaskUpdate(
        update_id=uid,
        sub_request_id=sub_id,
        case_id=case.case_id,
        status=TaskStatus.resolved,
        resolution=text,
        author="x",
        source=source,
        at=kit.now + timedelta(hours=2),  # type: ignore[arg-type]
    )


def test_seed_scenario_end_to_end_in_russian(kit: RouteKit) -> None:
    wf = kit.workflow
    msg = kit.seed_message()
    d = route_message(msg, wf, now=kit.now)

    # one message → one case with two sub-requests: external to the director, internal loyalty
    assert d.outcome.outcome is OutcomeKind.routed
    assert d.outcome.case_id == derive_id("case", msg.message_id)
    kinds = {(s.kind, s.department, s.recipient) for s in d.sub_requests}
    assert kinds == {
        (SubRequestKind.external, "store-directors", "director.spb-sadovaya@example.com"),
        (SubRequestKind.internal, "loyalty-it", None),
    }
    director = next(s for s in d.sub_requests if s.kind is SubRequestKind.external)
    loyalty = next(s for s in d.sub_requests if s.kind is SubRequestKind.internal)
    # internal carries what the department needs: span, entities, customer, priority, SLA
    assert loyalty.text == "А ещё на кассе не списались бонусы с карты лояльности."
    assert loyalty.full_text == kit.seed_text and loyalty.entities and loyalty.customer is not None
    assert "Анна" in loyalty.customer_summary and loyalty.sla_due_at is not None
    assert director.text.startswith("В магазине на Садовой, 12") and director.reply_token
    assert director.sub_request_id == derive_id(
        "sr", msg.message_id, "product_quality", "director.spb-sadovaya@example.com", ""
    )
    # acknowledgement in Russian, in the customer's channel
    [ack] = d.replies
    assert ack.kind is ReplyKind.acknowledgement and ack.channel is Channel.telegram
    assert ack.reply_to == {"chat_id": "42"} and "Анна" in ack.text and "лояльности" in ack.text
    types = [e.type for e in d.case_events]
    assert types == [CaseEventType.opened] + [CaseEventType.sub_request_created] * 2

    # the state survives the Faust table (JSON)
    case = CaseState.model_validate_json(d.case.model_dump_json())  # type: ignore[union-attr]
    assert case == d.case

    # loyalty IT answers inside the system: not everything is done yet → no answer
    t1 = apply_task_update(
        case,
        update(
            kit, case, loyalty.sub_request_id, "u1", "Бонусы начислены на карту, проверьте баланс."
        ),
        wf,
        now=kit.now + timedelta(hours=2),
    )
    assert t1.replies == [] and t1.state.status == "open"
    # the director answers by e-mail → one combined answer, then the survey (NPS)
    t2 = apply_task_update(
        t1.state,
        update(
            kit,
            case,
            director.sub_request_id,
            "mail-1",
            "Просроченный товар снят с полки и заменён.",
            "email",
        ),
        wf,
        now=kit.now + timedelta(hours=3),
    )
    assert t2.state.status == "resolved"
    answer, survey = t2.replies
    assert answer.kind is ReplyKind.resolution and answer.channel is Channel.telegram
    assert answer.language == "ru" and answer.text.startswith("Здравствуйте, Анна!")
    assert "снят с полки" in answer.text and "Бонусы начислены" in answer.text
    assert survey.kind is ReplyKind.survey and "от 0 до 10" in survey.text
    assert [e.type for e in t2.case_events] == [
        CaseEventType.task_updated,
        CaseEventType.sub_request_resolved,
        CaseEventType.resolved,
        CaseEventType.survey_sent,
    ]
    # the customer answers the survey: a detractor → flagged for the quality topic
    reply_msg = kit.message(
        "Ну, на 4", [kit.intent("Ну, на 4", "Ну, на 4", "unknown", "UNKNOWN")], key="survey"
    )
    d3 = route_message(reply_msg, wf, now=kit.now + timedelta(hours=4), open_case=t2.state)
    assert d3.case is not None and d3.case.survey is not None
    assert (d3.case.survey.score, d3.case.survey.nps_class) == (4, "detractor")
    assert d3.sub_requests == [] and d3.case.status == "resolved"
    [ev] = d3.quality_events
    assert ev.type is CaseEventType.survey_answered and ev.detail["flag"] == "quality"


def test_english_seed_and_promoter(kit: RouteKit) -> None:
    wf = kit.workflow
    text = "The yoghurt at Sadovaya 12 was expired. Also my bonus points were not added."
    msg = kit.message(
        text,
        [
            kit.intent(
                text, "The yoghurt at Sadovaya 12 was expired.", "product_quality", "STORE_QUALITY"
            ),
            kit.intent(text, "Also my bonus points were not added.", "loyalty_points", "LOYALTY"),
        ],
        entities=[Entity(kind="store", value="SPB-012", span=Span(start=15, end=26))],
        language="en",
        name="John",
    )
    d = route_message(msg, wf, now=kit.now)
    assert d.replies[0].text.startswith("Hello, John! We have received")
    assert "Store director, Loyalty programme IT" in d.replies[0].text
    # The customer writes English; the store's director is written to in the staff language
    # the workflow sets for that party; the loyalty team sees the customer's language.
    langs = {s.kind: s.language for s in d.sub_requests}
    assert langs == {SubRequestKind.external: "ru", SubRequestKind.internal: "en"}
    case = d.case
    assert case is not None
    for n, sub in enumerate(d.sub_requests):
        case = apply_task_update(
            case, update(kit, case, sub.sub_request_id, f"u{n}", f"done {n}"), wf, now=kit.now
        ).state
    assert case.status == "resolved" and case.survey is not None and case.survey.kind == "nps"
    answer = kit.message(
        "10!", [kit.intent("10!", "10!", "unknown", "UNKNOWN")], language="en", key="a"
    )
    t = apply_customer_message(case, answer.inbound, wf, now=kit.now)
    assert t.state.survey and t.state.survey.nps_class == "promoter" and t.quality_events == []
    assert t.replies[0].text == "Thank you for your rating!"


def test_task_updates_are_idempotent_and_checked(kit: RouteKit) -> None:
    wf = kit.workflow
    d = route_message(kit.seed_message(), wf, now=kit.now)
    case = d.case
    assert case is not None
    sub = d.sub_requests[0]
    u = update(kit, case, sub.sub_request_id, "same", "готово")
    t1 = apply_task_update(case, u, wf, now=kit.now)
    t2 = apply_task_update(t1.state, u, wf, now=kit.now)
    assert t1.case_events and t2.case_events == [] and t2.replies == []
    assert t2.state == t1.state
    with pytest.raises(InvalidInput, match="no sub-request"):
        apply_task_update(case, update(kit, case, "sr_nope", "x", "y"), wf, now=kit.now)


def test_replay_derives_the_same_ids(kit: RouteKit) -> None:
    wf = kit.workflow
    a = route_message(kit.seed_message(), wf, now=kit.now)
    b = route_message(kit.seed_message(), wf, now=kit.now + timedelta(minutes=5))
    assert [s.sub_request_id for s in a.sub_requests] == [s.sub_request_id for s in b.sub_requests]
    assert [r.reply_id for r in a.replies] == [r.reply_id for r in b.replies]
    assert [e.event_id for e in a.case_events] == [e.event_id for e in b.case_events]


def test_store_not_named_goes_to_store_ops(kit: RouteKit) -> None:
    text = "Продают несвежие огурцы!"
    msg = kit.message(text, [kit.intent(text, text, "product_quality", "STORE_QUALITY")])
    d = route_message(msg, kit.workflow, now=kit.now)
    assert [(s.kind, s.department) for s in d.sub_requests] == [
        (SubRequestKind.internal, "store-ops")
    ]


def test_duplicate_appends_and_creates_nothing(kit: RouteKit) -> None:
    wf = kit.workflow
    first = route_message(kit.seed_message(), wf, now=kit.now)
    dup = kit.seed_message(
        key="2",
        similarity=Similarity(
            duplicate_of=first.outcome.message_id,
            duplicate_reason="same_text",
            case_id=first.outcome.case_id,
        ),
    )
    d = route_message(dup, wf, now=kit.now, open_case=first.case)
    assert d.outcome.outcome is OutcomeKind.duplicate and d.sub_requests == [] and d.replies == []
    assert [e.type for e in d.case_events] == [CaseEventType.message_appended]
    assert d.case is not None and dup.message_id in d.case.message_ids
    # without the case at hand the event still names the case
    d2 = route_message(dup, wf, now=kit.now)
    assert d2.case_events[0].case_id == first.outcome.case_id


def _kb(auto: bool) -> KbMatch:
    return KbMatch(
        article_id="recover-password",
        intents=["recover_password"],
        confidence=0.97,
        threshold=0.9,
        auto_reply=auto,
        language="ru",
        answer="Нажмите «Забыли пароль?» на странице входа.",
        link="https://example.com/kb/recover-password",
        reason="confident",
    )


def test_kb_auto_reply_single_intent_only(kit: RouteKit) -> None:
    wf = kit.workflow
    text = "Забыла пароль от личного кабинета"
    msg = kit.message(text, [kit.intent(text, text, "recover_password", "ACCOUNT")])
    d = route_message(msg, wf, now=kit.now, kb_match=_kb(True))
    assert d.outcome.outcome is OutcomeKind.auto_resolved and d.sub_requests == []
    [r] = d.replies
    assert r.kind is ReplyKind.auto_reply and r.article_id == "recover-password" and r.link
    assert d.case is not None and d.case.status == "resolved"
    assert (
        route_message(msg, wf, now=kit.now, kb_match=_kb(False)).outcome.outcome
        is OutcomeKind.routed
    )
    two = kit.seed_message()
    d2 = route_message(two, wf, now=kit.now, kb_match=_kb(True))
    assert d2.outcome.outcome is OutcomeKind.routed and len(d2.sub_requests) == 2
    assert any("would auto-reply" in n for n in d2.trace.notes)


def test_reopen_on_customer_reply_routes_to_a_human(kit: RouteKit) -> None:
    wf = kit.workflow
    d = route_message(kit.seed_message(), wf, now=kit.now)
    case = d.case
    assert case is not None
    for n, sub in enumerate(d.sub_requests):
        case = apply_task_update(
            case, update(kit, case, sub.sub_request_id, f"u{n}", "ok"), wf, now=kit.now
        ).state
    assert case.status == "resolved"
    back = kit.message(
        "Бонусы так и не пришли, не помогло",
        [
            kit.intent(
                "Бонусы так и не пришли, не помогло",
                "Бонусы так и не пришли, не помогло",
                "loyalty_points",
                "LOYALTY",
            )
        ],
        key="back",
    )
    d2 = route_message(back, wf, now=kit.now + timedelta(days=1), open_case=case)
    assert d2.case is not None and d2.case.status == "reopened" and d2.case.round == 1
    [sub] = d2.sub_requests
    assert (sub.kind, sub.department) == (SubRequestKind.internal, "triage")
    assert sub.text == back.inbound.text
    assert CaseEventType.reopened in [e.type for e in d2.case_events]
    assert d2.replies[0].kind is ReplyKind.acknowledgement
    # the reopened case resolves again with a new answer id
    again = apply_task_update(
        d2.case,
        update(kit, d2.case, sub.sub_request_id, "u9", "Начислили."),
        wf,
        now=kit.now + timedelta(days=1),
    )
    assert again.state.status == "resolved"
    assert again.replies[0].text.endswith("• Начислили.\nСпасибо, что сообщили нам.")
    assert "• ok" not in again.replies[0].text
    assert again.replies[0].reply_id not in {r.reply_id for r in d.replies}


def test_follow_up_on_open_case_only_appends_unless_not_helped(kit: RouteKit) -> None:
    wf = kit.workflow
    d = route_message(kit.seed_message(), wf, now=kit.now)
    assert d.case is not None
    more = kit.message(
        "И чек прилагаю",
        [kit.intent("И чек прилагаю", "И чек прилагаю", "unknown", "UNKNOWN")],
        key="more",
    )
    t = apply_customer_reply(d.case, more.inbound, wf, now=kit.now)
    assert t.sub_requests == [] and t.state.status == "open"
    assert [e.type for e in t.case_events] == [CaseEventType.message_appended]
    assert apply_customer_reply(t.state, more.inbound, wf, now=kit.now).case_events == []
    not_helped = "Ваш ответ не помог"
    angry = kit.message(
        not_helped, [kit.intent(not_helped, not_helped, "unknown", "UNKNOWN")], key="angry"
    )
    t2 = apply_customer_reply(t.state, angry.inbound, wf, now=kit.now)
    assert [s.department for s in t2.sub_requests] == ["triage"] and t2.state.status == "open"


def test_broadcast_creates_one_tracked_sub_request_per_recipient(kit: RouteKit) -> None:
    wf = kit.workflow
    extra = wf.model_copy(
        update={
            "rules": [
                *wf.rules[:0],
                wf.rules[0].model_validate(
                    {
                        "name": "freshness-broadcast",
                        "when": {"tags_any": ["food_safety"]},
                        "then": [
                            {
                                "type": "broadcast",
                                "group": "store_directors",
                                "template": "check_freshness",
                            }
                        ],
                    }
                ),
            ]
        }
    )
    text = "Везде просрочка!"
    msg = kit.message(
        text, [kit.intent(text, text, "product_quality", "STORE_QUALITY")], tags=["food_safety"]
    )
    d = route_message(msg, extra, now=kit.now)
    recipients = [s.recipient for s in d.sub_requests]
    assert len(recipients) == 6 == len(set(recipients))
    assert all(s.kind is SubRequestKind.broadcast for s in d.sub_requests)
    assert len({s.sub_request_id for s in d.sub_requests}) == 6
    assert "проверьте сроки годности" in d.sub_requests[0].text
    case = d.case
    assert case is not None
    for n, s in enumerate(d.sub_requests[:5]):
        done = update(kit, case, s.sub_request_id, f"b{n}", "проверено")
        case = apply_task_update(case, done, wf, now=kit.now).state
        assert case.status == "open"  # tracked per recipient: waits for every director
    last = d.sub_requests[5]
    done = update(kit, case, last.sub_request_id, "b5", "проверено")
    t = apply_task_update(case, done, wf, now=kit.now)
    assert t.state.status == "resolved"


def test_case_events_go_as_one_record_per_case_in_order(kit: RouteKit) -> None:
    from pipeline.route.agents import by_case

    sim = Similarity(incident_id="inc_1")
    opener = route_message(
        kit.seed_message(similarity=sim, key="9"), kit.workflow, now=kit.now, incident_new=True
    )
    assert opener.case is not None
    own = opener.case.case_id
    records = by_case(opener.case_events)
    # the report's own case and the incident's case: one record each
    assert [r.case_id for r in records] == [own, derive_id("case", "inc_1")]
    assert [e for r in records for e in r.events] == sorted(
        opener.case_events, key=lambda e: e.case_id != own
    )
    assert all(e.case_id == r.case_id for r in records for e in r.events)


def test_incident_broadcast_once_and_no_own_mail_to_a_recipient_it_reaches(kit: RouteKit) -> None:
    wf = kit.workflow
    director = "director.spb-sadovaya@example.com"
    sim = Similarity(incident_id="inc_1")
    first = route_message(
        kit.seed_message(similarity=sim, key="9"), wf, now=kit.now, incident_new=True
    )
    assert first.replies[0].kind is ReplyKind.acknowledgement
    subs = first.incident_sub_requests
    assert len(subs) == 6 and {s.case_id for s in subs} == {derive_id("case", "inc_1")}
    assert director in {s.recipient for s in subs} and "SPB-012" in subs[0].text
    assert first.incident_case is not None
    later = route_message(kit.seed_message(similarity=sim), wf, now=kit.now)
    assert later.replies[0].kind is ReplyKind.incident_notice
    assert "уже знаем" in later.replies[0].text
    assert later.incident_sub_requests == [] and later.incident_case is None  # sent once
    assert CaseEventType.incident_linked in [e.type for e in later.case_events]
    for d in (first, later):
        # The broadcast reaches the store's director: no e-mail of the report's own; the
        # loyalty request of the same message still goes to its department.
        assert [s.department for s in d.sub_requests] == ["loyalty-it"]
        assert d.case is not None and d.outcome.outcome is OutcomeKind.routed
        [own] = [s for s in d.case.sub_requests if s.recipient == director]
        assert own.status == "open" and own.due_at is None and own.first_response_due_at is None
    without = route_message(kit.seed_message(key="8"), wf, now=kit.now)
    assert director in {s.recipient for s in without.sub_requests}  # no incident: e-mailed


def _opened_alike(d: RouteDecision, fresh: RouteDecision, director: str) -> None:
    """``d`` opens the incident as ``fresh`` (an opener with a case of its own) does."""
    inc = d.incident_case
    assert inc is not None and fresh.incident_case is not None
    assert inc.case_id == fresh.incident_case.case_id == derive_id("case", "inc_1")
    assert inc.incident_bucket == "QUALITY|store:SPB-012"
    subs = d.incident_sub_requests
    assert [s.sub_request_id for s in subs] == [
        s.sub_request_id for s in fresh.incident_sub_requests
    ]
    assert len(subs) == 6 and director in {s.recipient for s in subs}
    assert [s.sub_request_id for s in inc.sub_requests] == [s.sub_request_id for s in subs]
    assert [e.type for e in d.case_events if e.case_id == inc.case_id] == [
        CaseEventType.incident_detected
    ]


def test_an_incident_opener_that_opens_no_case_of_its_own_still_opens_the_incident(
    kit: RouteKit,
) -> None:
    """The report that reached the threshold opens the incident whatever route makes of the
    message itself: a follow-up on the customer's open case (same category or store), a
    duplicate, a KB answer. Before, only a new case did: the store's directors heard nothing
    and every later report was told "known problem" and linked to a case that never came."""
    wf = kit.workflow
    director = "director.spb-sadovaya@example.com"
    sim = Similarity(incident_id="inc_1", incident_bucket="QUALITY|store:SPB-012")
    later = kit.now + timedelta(minutes=5)
    fresh = route_message(
        kit.seed_message(similarity=sim, key="9"), wf, now=later, incident_new=True
    )
    earlier = route_message(kit.seed_message(key="1"), wf, now=kit.now).case
    assert earlier is not None
    opener = kit.seed_message(similarity=sim, key="9")
    follow_up = route_message(opener, wf, now=later, open_case=earlier, incident_new=True)
    assert follow_up.trace.path == "follow_up"
    assert follow_up.case is not None and follow_up.case.case_id == earlier.case_id
    _opened_alike(follow_up, fresh, director)
    dup_sim = sim.model_copy(update={"duplicate_of": "msg_x", "case_id": earlier.case_id})
    dup = kit.seed_message(similarity=dup_sim, key="9")
    duplicate = route_message(dup, wf, now=later, open_case=earlier, incident_new=True)
    assert duplicate.trace.path == "duplicate"
    _opened_alike(duplicate, fresh, director)
    text = "В магазине на Садовой, 12 продают несвежие огурцы."
    store_at = text.index("Садовой, 12")
    single = kit.message(
        text,
        [kit.intent(text, text, "product_quality", "STORE_QUALITY")],
        entities=[
            Entity(kind="store", value="SPB-012", span=Span(start=store_at, end=store_at + 11))
        ],
        similarity=sim,
        key="9",
    )
    answered = route_message(single, wf, now=later, kb_match=_kb(True), incident_new=True)
    assert answered.trace.path == "auto_reply"
    _opened_alike(answered, fresh, director)
    # a later report continuing its own case opens nothing: the broadcast went out once
    report = kit.seed_message(similarity=sim, key="10")
    continuing = route_message(report, wf, now=later, open_case=earlier)
    assert continuing.incident_case is None and continuing.incident_sub_requests == []


def test_a_resolved_incidents_case_tells_its_buckets_detector(kit: RouteKit) -> None:
    wf = kit.workflow
    bucket = "QUALITY|store:SPB-012"
    sim = Similarity(incident_id="inc_1", incident_bucket=bucket)
    first = route_message(
        kit.seed_message(similarity=sim, key="9"), wf, now=kit.now, incident_new=True
    )
    inc = first.incident_case
    assert inc is not None and inc.incident_bucket == bucket
    assert first.case is not None and incident_resolved(first.case, kit.now) is None  # a report
    assert incident_resolved(inc, kit.now) is None  # not resolved yet
    for n, sub in enumerate(inc.sub_requests):  # every director answers the broadcast
        inc = apply_task_update(
            inc, update(kit, inc, sub.sub_request_id, f"b{n}", "Заменили"), wf, now=kit.now
        ).state
    told = incident_resolved(inc, kit.now)
    assert told is not None and (told.bucket, told.incident_id) == (bucket, "inc_1")
    assert incident_resolved(inc, kit.now) == told  # the same id when sent again


def test_incident_resolution_reaches_every_linked_case_by_its_link(kit: RouteKit) -> None:
    wf = kit.workflow
    director = "director.spb-sadovaya@example.com"
    sim = Similarity(incident_id="inc_1")
    first = route_message(
        kit.seed_message(similarity=sim, key="9"), wf, now=kit.now, incident_new=True
    )
    later = route_message(kit.seed_message(similarity=sim), wf, now=kit.now)
    inc = first.incident_case
    assert inc is not None and first.case is not None and later.case is not None
    links = [d.incident_link for d in (first, later)]
    assert route_message(kit.seed_message(key="8"), wf, now=kit.now).incident_link is None
    for d, link in zip((first, later), links, strict=True):
        assert d.case is not None and link is not None
        assert link.case_id == inc.case_id and link.member_case_id == d.case.case_id
        # The store-quality request the broadcast covers; the loyalty one is not the incident's.
        [own] = [s for s in d.case.sub_requests if s.recipient == director]
        assert link.sub_request_ids == [own.sub_request_id]
    assert links[0] is not None and links[1] is not None
    inc, early = link_member(inc, links[0], kit.now)
    inc, again = link_member(inc, links[0], kit.now)  # a replayed link changes nothing
    assert early == again == [] and list(inc.incident_members) == [first.case.case_id]
    assert incident_updates(inc, kit.now) == []  # not resolved yet
    for n, sub in enumerate(inc.sub_requests):  # every director answers the broadcast
        inc = apply_task_update(
            inc, update(kit, inc, sub.sub_request_id, f"b{n}", "Заменили"), wf, now=kit.now
        ).state
    assert inc.status == "resolved"
    [told_first] = incident_updates(inc, kit.now)
    # Linked after the resolution: answered at once, with the same ids as a replay would get.
    inc, [told_later] = link_member(inc, links[1], kit.now)
    assert incident_updates(inc, kit.now, member=later.case.case_id) == [told_later]
    for d, told in ((first, told_first), (later, told_later)):
        assert d.case is not None and told.case_id == d.case.case_id
        assert told.resolution is not None and "Заменили" in told.resolution
        state = apply_task_update(d.case, told, wf, now=kit.now).state
        assert apply_task_update(state, told, wf, now=kit.now).state == state  # idempotent
        [loyalty] = [s for s in state.sub_requests if s.status == "open"]
        assert loyalty.department == "loyalty-it"  # the rest of the message still waits
        answered = update(kit, state, loyalty.sub_request_id, "l", "Начислили")
        done = apply_task_update(state, answered, wf, now=kit.now)
        [answer] = [r for r in done.replies if r.kind is ReplyKind.resolution]  # one answer
        assert "Заменили" in answer.text and "Начислили" in answer.text


def test_merge_keeps_what_the_keeper_did_while_route_looked_at_an_old_state(kit: RouteKit) -> None:
    wf = kit.workflow
    d = route_message(kit.seed_message(), wf, now=kit.now)
    assert d.case is not None
    first, second = d.case.sub_requests
    more = kit.message(
        "Есть новости?",
        [kit.intent("Есть новости?", "Есть новости?", "unknown", "UNKNOWN")],
        key="more",
    )
    # Route appends the follow-up to the case as it saw it (both sub-requests open) ...
    routed = apply_customer_reply(d.case, more.inbound, wf, now=kit.now).state
    # ... while the keeper had already applied the first department's answer.
    kept = apply_task_update(
        d.case, update(kit, d.case, first.sub_request_id, "u1", "Готово"), wf, now=kit.now
    ).state
    merged = merge_snapshot(kept, routed)
    assert merged.sub(first.sub_request_id).status == "resolved"  # type: ignore[union-attr]
    assert merged.sub(second.sub_request_id).status == "open"  # type: ignore[union-attr]
    assert merged.seen_update_ids == ["u1"]
    assert more.message_id in merged.message_ids and merged.status == "open"

    # The keeper resolved the whole case meanwhile: the resolution stands.
    done = apply_task_update(
        kept, update(kit, kept, second.sub_request_id, "u2", "Сняли"), wf, now=kit.now
    ).state
    assert done.status == "resolved"
    merged = merge_snapshot(done, routed)
    assert merged.status == "resolved" and merged.resolved_at == done.resolved_at
    assert merged.survey == done.survey and more.message_id in merged.message_ids
    assert merge_snapshot(done, done) == done


def test_merge_keeps_new_work_that_route_opened(kit: RouteKit) -> None:
    wf = kit.workflow
    d = route_message(kit.seed_message(), wf, now=kit.now)
    assert d.case is not None
    first, second = d.case.sub_requests
    not_helped = "Ваш ответ не помог"
    angry = kit.message(
        not_helped, [kit.intent(not_helped, not_helped, "unknown", "UNKNOWN")], key="angry"
    )
    routed = apply_customer_reply(d.case, angry.inbound, wf, now=kit.now).state  # + triage
    kept = d.case
    for n, sub in enumerate((first, second)):
        kept = apply_task_update(
            kept, update(kit, kept, sub.sub_request_id, f"u{n}", "ok"), wf, now=kit.now
        ).state
    assert kept.status == "resolved"
    merged = merge_snapshot(kept, routed)
    assert [s.status for s in merged.sub_requests] == ["resolved", "resolved", "open"]
    assert merged.status == "open"  # the triage sub-request is still to be done


def test_broadcast_language_follows_the_group_then_the_default(kit: RouteKit) -> None:
    wf = kit.workflow
    sim = Similarity(incident_id="inc_2")
    ru = route_message(
        kit.seed_message(similarity=sim), wf, now=kit.now, incident_new=True
    ).incident_sub_requests
    assert {s.language for s in ru} == {"ru"}
    group = wf.groups["store_directors"].model_copy(update={"language": "en"})
    en_wf = wf.model_copy(update={"groups": {**wf.groups, "store_directors": group}})
    en = route_message(
        kit.seed_message(similarity=sim), en_wf, now=kit.now, incident_new=True
    ).incident_sub_requests
    assert {s.language for s in en} == {"en"}
    assert en[0].text != ru[0].text and en[0].text == fill(
        en_wf.custom_template("check_freshness", "en"), category="STORE_QUALITY", store="SPB-012"
    )


def test_a_party_language_without_templates_is_refused(kit: RouteKit) -> None:
    from pipeline.domain.workflow import parse_workflow
    from pipeline.errors import ConfigError

    bad = kit.minimal.replace(
        "templates:", "groups:\n  g: {members: [a@example.com], language: de}\ntemplates:"
    )
    with pytest.raises(ConfigError, match=r"groups\.g\.language: no templates for 'de'"):
        parse_workflow(bad)


def open_and_resolved(kit: RouteKit) -> tuple[CaseState, CaseState]:
    """The seed message's case, open, and the same case once every sub-request was resolved."""
    wf = kit.workflow
    d = route_message(kit.seed_message(), wf, now=kit.now)
    assert d.case is not None
    open_case = d.case
    done = open_case
    for n, sub in enumerate(open_case.sub_requests):
        done = apply_task_update(
            done, update(kit, done, sub.sub_request_id, f"u{n}", "ok"), wf, now=kit.now
        ).state
    assert done.status == "resolved" and done.resolved_at is not None
    return open_case, done


def dump(c: CaseState) -> dict[str, object]:
    return c.model_dump(mode="json")


async def test_case_sweep_forgets_long_resolved_cases_only(kit: RouteKit) -> None:
    import orjson

    from pipeline.route.agents import sweep_case_tables

    open_case, done = open_and_resolved(kit)
    assert done.resolved_at is not None
    old = done.model_copy(update={"case_id": "case-old"})
    cases = {
        "case-old": orjson.dumps(dump(old)).decode(),
        open_case.case_id: orjson.dumps(dump(open_case)).decode(),
    }
    customer = {
        "cust-1": orjson.dumps([dump(old), dump(open_case)]).decode(),
        "cust-2": orjson.dumps([dump(old)]).decode(),
    }
    stale_update = {"at": (kit.now - timedelta(days=40)).isoformat()}
    pending = {"case-gone": orjson.dumps([stale_update]).decode(), open_case.case_id: ""}
    cutoff = done.resolved_at + timedelta(seconds=1)
    removed = await sweep_case_tables(cases, customer, pending, cutoff)
    assert set(cases) == {open_case.case_id}  # open cases are never forgotten
    assert set(customer) == {"cust-1"}
    assert [c["case_id"] for c in orjson.loads(customer["cust-1"])] == [open_case.case_id]
    assert set(pending) == {open_case.case_id}
    assert removed == 3
    # before the cutoff nothing resolved is touched
    cases2 = {"case-old": orjson.dumps(dump(old)).decode()}
    assert await sweep_case_tables(cases2, {}, {}, done.resolved_at) == 0 and cases2


async def test_case_sweep_forgets_unreadable_values_and_keeps_the_rest(
    kit: RouteKit, stored_table: MakeTable, unreadable: Unreadable
) -> None:
    """A value the sweep cannot read (not JSON, another shape, a bad date) is forgotten and
    counted beside cases kept and expired as usual; a case with a field this version does not
    know is kept (the sweep reads only status and resolved_at). Before, the first such value
    raised in the sweep's timer, which kills the worker."""
    import orjson

    from pipeline.route.agents import sweep_case_tables

    open_case, done = open_and_resolved(kit)
    assert done.resolved_at is not None
    old = done.model_copy(update={"case_id": "case-old"})
    newer = {**dump(open_case), "case_id": "case-newer", "a_newer_field": 1}

    def js(value: object) -> str:
        return orjson.dumps(value).decode()

    naive = {**dump(old), "case_id": "naive", "resolved_at": "2026-01-01T00:00:00"}
    cases = stored_table(
        "cases",
        {
            "not-json": '{"case_id": "x", "status": "op',
            "case-old": js(dump(old)),
            "a-list": "[1, 2]",
            open_case.case_id: js(dump(open_case)),
            "bad-date": js({"status": "resolved", "resolved_at": "yesterday"}),
            "naive": js(naive),
            "case-newer": js(newer),
            "no-status": "{}",
        },
    )
    customer = stored_table(
        "customer-cases",
        {
            "cust-spoiled": js(dump(open_case)),  # one case, not the list of them
            "cust-1": js([dump(old), dump(open_case)]),
            "cust-mixed": js([dump(open_case), "a case?"]),
        },
    )
    stale_update = {"at": (kit.now - timedelta(days=40)).isoformat()}
    pending = stored_table(
        "pending-updates",
        {
            "p-not-json": "[{",
            "case-gone": js([stale_update]),
            "p-bad-at": js([{"at": "soon"}]),
            "p-waiting": js([{"at": (done.resolved_at + timedelta(days=1)).isoformat()}]),
        },
    )
    metrics = Metrics()
    cutoff = done.resolved_at + timedelta(seconds=1)
    removed = await sweep_case_tables(cases, customer, pending, cutoff, metrics)
    assert set(cases) == {open_case.case_id, "case-newer"}
    assert set(customer) == {"cust-1"}
    assert [c["case_id"] for c in orjson.loads(customer["cust-1"])] == [open_case.case_id]
    assert set(pending) == {"p-waiting"}
    assert removed == 6 + 2 + 3
    assert [unreadable(metrics, t) for t in ("cases", "customer-cases", "pending-updates")] == [
        5,
        2,
        2,
    ]
