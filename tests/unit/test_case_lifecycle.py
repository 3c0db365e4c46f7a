"""The case lifecycle as a contact-center lead expects it (issue 17): pure transitions."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import TYPE_CHECKING

import pytest

from pipeline.config import DEFAULT_CONFIG_DIR, Settings
from pipeline.domain.cases import (
    FINAL_ANSWER,
    CaseState,
    Transition,
    apply_customer_message,
    apply_task_update,
    case_flags,
    case_ref,
)
from pipeline.domain.conversation import mentions_case_ref
from pipeline.domain.delays import breach_update, escalation_request, flag_alerts, sla_reminder
from pipeline.domain.threads import match_thread
from pipeline.domain.workflow import Workflow
from pipeline.events import (
    ClassifiedMessage,
    InboundMessage,
    Intent,
    Priority,
    PriorityComponent,
    ReplyKind,
    SubRequest,
    SubRequestKind,
    TaskStatus,
    TaskUpdate,
)
from pipeline.notify.compose import compose_external
from pipeline.route.core import route_message
from pipeline.route.sla import check_sla

if TYPE_CHECKING:
    from tests.plugins.route import RouteKit

SETTINGS = Settings(reply_domain="example.com")


def _body(msg: EmailMessage) -> str:
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_director_mail_states_the_customers_language_and_asks_for_it(lc: Lifecycle) -> None:
    d = route_message(lc.kit.seed_message(language="en"), lc.wf, now=lc.now, settings=SETTINGS)
    (external,) = [s for s in d.sub_requests if s.kind is SubRequestKind.external]
    assert external.language == "ru"  # the store directors' own language
    assert external.customer_language == "en"
    body = _body(compose_external(external, SETTINGS))
    assert "Язык клиента: английский" in body
    assert "Пожалуйста, ответьте на этом языке" in body


def test_vip_and_legal_threat_flags_reach_every_sub_request(lc: Lifecycle) -> None:
    d = route_message(lc.kit.seed_message(tier="vip"), lc.wf, now=lc.now, settings=SETTINGS)
    assert d.case is not None and case_flags(d.case) == ["vip"]
    assert all(s.flags == ["vip"] for s in d.sub_requests) and len(d.sub_requests) == 4
    assert sorted(s.purpose for s in d.sub_requests) == ["alert", "alert", "request", "request"]
    legal = d.case.model_copy(
        update={
            "priority": Priority(
                score=80,
                level="P1",
                components=[PriorityComponent(name="legal_threat", points=30, reason="суд")],
            )
        }
    )
    assert case_flags(legal) == ["vip", "legal_threat"]
    (external,) = [
        s for s in d.sub_requests if s.kind is SubRequestKind.external and s.purpose == "request"
    ]
    assert "Внимание: VIP-клиент" in _body(compose_external(external, SETTINGS))


# ---------------------------------------------------------------- rejections, final answers


#: Both departments of the seed case done: loyalty IT and the store director.
SEED_DONE = {"loyalty-it": "Бонусы начислены вручную.", "store-directors": "Огурцы заменили."}


def _by_dept(subs: list[SubRequest]) -> dict[str, SubRequest]:
    return {s.department: s for s in subs}


@dataclass(frozen=True)
class Lifecycle:
    """The route kit's builders, plus the transitions these tests chain."""

    kit: RouteKit

    @property
    def now(self) -> datetime:
        return self.kit.now

    @property
    def later(self) -> datetime:
        return self.kit.now + timedelta(hours=2)

    @property
    def wf(self) -> Workflow:
        return self.kit.workflow

    def routed(
        self, wf: Workflow | None = None, **kw: object
    ) -> tuple[CaseState, list[SubRequest]]:
        msg = self.kit.seed_message(**kw)
        d = route_message(msg, wf or self.wf, now=self.now, settings=SETTINGS)
        assert d.case is not None
        return d.case, d.sub_requests

    def answer(
        self, case: CaseState, sub_id: str, text: str, status: TaskStatus = TaskStatus.resolved
    ) -> TaskUpdate:
        return TaskUpdate(
            update_id=f"upd-{sub_id}-{status.value}",
            sub_request_id=sub_id,
            case_id=case.case_id,
            status=status,
            resolution=text,
            at=self.now + timedelta(hours=1),
        )

    def apply_all(
        self, case: CaseState, answers: list[TaskUpdate], wf: Workflow | None = None
    ) -> tuple[CaseState, list[Transition]]:
        out = []
        for upd in answers:
            tr = apply_task_update(case, upd, wf or self.wf, now=self.later, settings=SETTINGS)
            out.append(tr)
            case = tr.state
        return case, out

    def answered(
        self,
        answers: Mapping[str, str],
        *,
        rejected: Collection[str] = (),
        wf: Workflow | None = None,
        **kw: object,
    ) -> tuple[CaseState, list[Transition]]:
        """The seed case (routed with ``kw``) after each department in ``answers`` answered
        its sub-request with that text, in that order: a rejection for those in ``rejected``,
        else a resolution."""
        case, subs = self.routed(wf, **kw)
        dept = _by_dept(subs)
        updates = [
            self.answer(
                case,
                dept[name].sub_request_id,
                text,
                TaskStatus.rejected if name in rejected else TaskStatus.resolved,
            )
            for name, text in answers.items()
        ]
        return self.apply_all(case, updates, wf)

    def resolved_with_survey(self) -> CaseState:
        case, _ = self.answered(SEED_DONE)
        assert case.survey is not None and case.survey.kind == "nps"
        return case

    def customer(
        self, text: str, key: str, case: CaseState, language: str = "ru"
    ) -> InboundMessage:
        msg = self.kit.message(text, [], key=key, language=language, customer=case.customer_id)
        return msg.inbound

    def classified(
        self, text: str, key: str, case: CaseState, *intents: Intent, **kw: object
    ) -> ClassifiedMessage:
        return self.kit.message(
            text,
            list(intents) or [self.kit.intent(text, text, "unknown", "UNKNOWN", 0.2)],
            key=key,
            customer=case.customer_id,
            **kw,
        )


@pytest.fixture
def lc(kit: RouteKit) -> Lifecycle:
    """Builders and chained transitions for the lifecycle tests."""
    return Lifecycle(kit)


def test_a_rejection_says_what_could_not_be_done_why_and_what_next_without_a_survey(
    lc: Lifecycle,
) -> None:
    case, trs = lc.answered(
        {
            "loyalty-it": "Бонусы за акционный товар не начисляются.",
            "store-directors": "Огурцы заменили.",
        },
        rejected={"loyalty-it", "store-directors"},
    )
    (answer,) = trs[-1].replies
    assert answer.kind is ReplyKind.resolution
    assert "не смогли сделать то, о чём вы просили" in answer.text
    assert (
        "• ИТ программы лояльности: не получилось. Причина: Бонусы за акционный товар"
        in answer.text
    )
    assert "Что дальше" in answer.text and "Спасибо, что сообщили" not in answer.text
    assert case.status == "resolved" and case.survey is None


def test_a_partial_outcome_has_its_own_wording_and_no_survey(lc: Lifecycle) -> None:
    case, trs = lc.answered(
        {
            "loyalty-it": "promotional items earn no points.",
            "store-directors": "We replaced the cucumbers.",
        },
        rejected={"loyalty-it"},
        language="en",
    )
    (answer,) = trs[-1].replies
    assert "we could not do this. Reason: promotional items earn no points." in answer.text
    assert "• We replaced the cucumbers." in answer.text and "What happens next" in answer.text
    assert case.survey is None


def test_every_request_done_is_answered_and_surveyed(lc: Lifecycle) -> None:
    _, trs = lc.answered(SEED_DONE)
    kinds = [r.kind for r in trs[-1].replies]
    assert kinds == [ReplyKind.resolution, ReplyKind.survey]
    assert "Спасибо, что сообщили нам" in trs[-1].replies[0].text


def test_review_rejections_sends_the_final_answer_to_a_human_first(lc: Lifecycle) -> None:
    wf = lc.wf.model_copy(update={"review_rejections": "customer-care"})
    case, trs = lc.answered(
        {"loyalty-it": "Не начисляются.", "store-directors": "Огурцы заменили."},
        rejected={"loyalty-it"},
        wf=wf,
    )
    assert trs[-1].replies == [] and case.status != "resolved"
    (review,) = trs[-1].sub_requests
    assert review.department == "customer-care" and review.intent == FINAL_ANSWER
    assert "Не начисляются." in review.text
    final = "Огурцы заменили; бонусы за акционный товар по правилам программы не начисляются."
    case, trs = lc.apply_all(case, [lc.answer(case, review.sub_request_id, final)], wf)
    (answer,) = trs[-1].replies
    assert final in answer.text and "Что дальше" in answer.text
    assert "Не начисляются." not in answer.text
    assert case.status == "resolved" and case.survey is None


def test_an_answer_in_another_language_goes_to_a_human_not_a_mixed_reply(lc: Lifecycle) -> None:
    case, trs = lc.answered(
        {
            "loyalty-it": "Points have been added manually.",
            "store-directors": "Огурцы заменили, выкладку проверили.",
        },
        language="en",
    )
    assert trs[-1].replies == []
    (ask,) = trs[-1].sub_requests
    assert ask.department == "triage" and ask.intent == FINAL_ANSWER and "'en'" in ask.text
    final = "We replaced the cucumbers and added your points manually."
    case, trs = lc.apply_all(case, [lc.answer(case, ask.sub_request_id, final)])
    answer = trs[-1].replies[0]
    assert final in answer.text and "Огурцы" not in answer.text and answer.language == "en"


def test_a_late_answer_after_a_reroute_closes_the_copy_and_reaches_the_customer(
    lc: Lifecycle,
) -> None:
    case, subs = lc.routed()
    dept = _by_dept(subs)
    director = dept["store-directors"]
    late = lc.now + timedelta(days=30)
    tr = check_sla(case, lc.wf, late, settings=SETTINGS)
    copies = [s for s in tr.sub_requests if s.department == "store-ops"]
    assert len({s.sub_request_id for s in copies}) == 1, "rerouted to store-ops"
    case = tr.state
    assert case.sub(director.sub_request_id).status == "rerouted"  # type: ignore[union-attr]
    case, trs = lc.apply_all(
        case,
        [
            lc.answer(case, dept["loyalty-it"].sub_request_id, "Бонусы начислены."),
            lc.answer(case, director.sub_request_id, "Огурцы заменили, извините за задержку."),
        ],
    )
    assert case.sub(copies[0].sub_request_id).status == "superseded"  # type: ignore[union-attr]
    assert {(n.type, n.department) for n in trs[-1].notices} == {("closed", "store-ops")}
    answer = trs[-1].replies[0]
    assert "Огурцы заменили, извините за задержку." in answer.text and case.status == "resolved"


# ---------------------------------------------------------------- surveys, small talk, follow-ups


def test_unclear_score_is_asked_again_once_then_a_clear_one_counts(lc: Lifecycle) -> None:
    case = lc.resolved_with_survey()
    wf = lc.wf
    tr = apply_customer_message(
        case, lc.customer("пять", "s1", case), wf, now=lc.later, settings=SETTINGS
    )
    (again,) = tr.replies
    assert "от 0 до 10" in again.text and tr.state.survey and not tr.state.survey.answered
    assert tr.sub_requests == [] and tr.state.status == "resolved"
    tr2 = apply_customer_message(
        tr.state, lc.customer("five", "s2", case), wf, now=lc.later, settings=SETTINGS
    )
    assert tr2.replies == [] and tr2.sub_requests == []  # asked once only
    tr3 = apply_customer_message(
        tr2.state, lc.customer("десять", "s3", case), wf, now=lc.later, settings=SETTINGS
    )
    assert tr3.state.survey and tr3.state.survey.score == 10
    assert tr3.state.survey.nps_class == "promoter" and tr3.quality_events == []


def test_an_expired_survey_is_not_scored(lc: Lifecycle) -> None:
    case = lc.resolved_with_survey()
    week = lc.later + timedelta(days=7)
    tr = apply_customer_message(
        case, lc.customer("3", "e1", case), lc.wf, now=week, settings=SETTINGS
    )
    assert tr.state.survey and not tr.state.survey.answered and tr.quality_events == []
    assert tr.sub_requests == [] and tr.replies == [] and tr.state.status == "resolved"


@pytest.mark.parametrize("text", ["Спасибо, всё отлично!", "Спасибо!", "Thanks a lot!", "👍"])
def test_thanks_after_a_survey_is_acknowledged_and_opens_nothing(lc: Lifecycle, text: str) -> None:
    case = lc.resolved_with_survey()
    tr = apply_customer_message(
        case, lc.customer(text, "t1", case), lc.wf, now=lc.later, settings=SETTINGS
    )
    assert tr.sub_requests == [] and tr.state.status == "resolved" and tr.state.round == case.round
    assert [r.kind for r in tr.replies] == [ReplyKind.acknowledgement]
    assert "Рады были помочь" in tr.replies[0].text


def test_a_follow_up_on_an_open_case_reaches_the_holders_and_makes_no_task(lc: Lifecycle) -> None:
    case, subs = lc.routed()
    msg = lc.customer("Ну что там с моими бонусами?", "f1", case)
    tr = apply_customer_message(case, msg, lc.wf, now=lc.later, settings=SETTINGS)
    assert tr.sub_requests == [] and tr.replies == []
    assert msg.message_id in tr.state.message_ids
    (notice,) = tr.notices  # the director is external: only loyalty IT reads a task topic
    assert notice.type == "customer_message" and notice.department == "loyalty-it"
    assert (
        notice.text == msg.text
        and notice.sub_request_id == _by_dept(subs)["loyalty-it"].sub_request_id
    )


# ---------------------------------------------------------------- workflow defaults


def test_vip_and_legal_threats_get_the_urgent_sla_explicitly(lc: Lifecycle) -> None:
    wf = lc.wf
    rules = {r.name: r for r in wf.rules}
    for name in ("vip-first", "legal-threat"):
        assert any(getattr(a, "policy", None) == "urgent" for a in rules[name].then), name
    case, subs = lc.routed(tier="vip")
    policies = {
        s.department: case.sub(s.sub_request_id).sla_policy  # type: ignore[union-attr]
        for s in subs
        if s.purpose == "request"
    }
    assert policies == {"loyalty-it": "urgent", "store-directors": "urgent"}
    legal = route_message(
        lc.kit.seed_message(tags=["legal_threat"]), wf, now=lc.now, settings=SETTINGS
    )
    assert legal.case is not None
    assert {s.sla_policy for s in legal.case.sub_requests if s.blocking} == {"urgent"}


def test_hours_without_days_mean_weekdays_nine_to_six_as_documented(lc: Lifecycle) -> None:
    wf = lc.wf
    hours = wf.departments["loyalty-it"].hours
    assert hours is not None and hours.days == dict.fromkeys(
        ("mon", "tue", "wed", "thu", "fri"), "09:00-18:00"
    )
    text = (DEFAULT_CONFIG_DIR / "workflow.yaml").read_text(encoding="utf-8")
    assert "WITHOUT `days` means Monday–Friday 09:00–18:00" in text
    saturday = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)  # 16:00 in Moscow
    d = route_message(lc.kit.seed_message(), wf, now=saturday, settings=SETTINGS)
    assert d.case is not None
    (loyalty,) = [s for s in d.case.sub_requests if s.department == "loyalty-it"]
    # P3 on the standard policy: 4 working hours to the first response → Monday 13:00 Moscow
    assert loyalty.first_response_due_at == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


# ---------------------------------------------------------------- threads

WINDOW = timedelta(hours=72)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Ну что там с моими бонусами?", "follow_up"),
        ("Бонусы так и не списались, когда ответите?", "follow_up"),
        ("Спасибо!", "small_talk"),
        ("а можно побыстрее", "follow_up"),
    ],
)
def test_follow_ups_on_an_open_case_join_it(lc: Lifecycle, text: str, reason: str) -> None:
    case, _ = lc.routed()
    found = match_thread(lc.classified(text, "k", case), [case], window=WINDOW)
    assert found.case is case and found.reason == reason and not found.recontact


def test_the_same_request_and_the_case_number_join_the_case(lc: Lifecycle) -> None:
    case, _ = lc.routed()
    text = "Бонусы по карте не списались"
    loyalty = lc.kit.intent(text, text, "loyalty_points", "LOYALTY")
    assert match_thread(lc.classified(text, "k", case, loyalty), [case], window=WINDOW).reason == (
        "same_request"
    )
    ref = f"По обращению № {case_ref(case.case_id)}: есть новости о сроках доставки заказа"
    by_ref = lc.classified(ref, "r", case, lc.kit.intent(ref, ref, "delivery_period", "DELIVERY"))
    assert match_thread(by_ref, [case], window=WINDOW).reason == "case_ref"


def test_a_replay_does_not_continue_the_case_it_opened(lc: Lifecycle) -> None:
    # After a rebalance the table already holds the case this very message opened: without
    # the rule it matched that case as the "same request" and was routed again as a
    # follow-up (a second, conflicting Outcome and a second reply).
    cm = lc.kit.seed_message()
    settings = Settings(rules_path=DEFAULT_CONFIG_DIR / "workflow.yaml")
    first = route_message(cm, lc.kit.workflow, now=lc.kit.now, settings=settings)
    assert first.case is not None and first.case.first_message_id == cm.message_id
    assert match_thread(cm, [first.case], window=WINDOW).case is None
    again = route_message(cm, lc.kit.workflow, now=lc.kit.now, open_case=None, settings=settings)
    assert again.outcome.outcome == first.outcome.outcome
    assert again.outcome.case_id == first.outcome.case_id
    assert sorted(again.outcome.departments) == sorted(first.outcome.departments)
    # another message about the same request still joins it
    other = cm.model_copy(update={"message_id": "m-other"})
    assert match_thread(other, [first.case], window=WINDOW).reason == "same_request"


def test_a_new_request_opens_a_new_case_even_with_one_open(lc: Lifecycle) -> None:
    case, _ = lc.routed()
    text = "Хочу вернуть деньги за заказ 48213, товар не подошёл, оформите возврат пожалуйста"
    refund = lc.kit.intent(text, text, "get_refund", "REFUND")
    assert match_thread(lc.classified(text, "n", case, refund), [case], window=WINDOW).case is None


def test_after_resolution_thanks_join_a_new_request_does_not_and_the_window_ends(
    lc: Lifecycle,
) -> None:
    case = lc.resolved_with_survey()
    thanks = lc.classified("Спасибо, всё отлично!", "t", case)
    assert match_thread(thanks, [case], window=WINDOW).reason == "small_talk"
    why = "Почему отказали? Бонусы же положены"
    assert match_thread(lc.classified(why, "w", case), [case], window=WINDOW).recontact
    text = "Как изменить адрес доставки заказа?"
    other = lc.classified(
        text, "o", case, lc.kit.intent(text, text, "change_shipping_address", "SHIPPING")
    )
    assert match_thread(other, [case], window=WINDOW).case is None
    helped = lc.classified("Не помогло, бонусов так и нет", "h", case)
    found = match_thread(
        helped, [case], window=WINDOW, not_helped=lambda text, lang: "не помогло" in text.lower()
    )
    assert found.reason == "not_helped" and found.recontact
    inbound = thanks.inbound.model_copy(update={"received_at": lc.later + timedelta(days=4)})
    too_late = thanks.model_copy(update={"inbound": inbound})
    assert match_thread(too_late, [case], window=WINDOW).case is None


# ---------------------------------------------------------------- delays and flags


def test_breach_update_is_sent_once_per_case_and_policy(lc: Lifecycle) -> None:
    case, _ = lc.routed()
    wf = lc.wf
    st, replies, events = breach_update(case, wf, "standard", lc.later)
    (update,) = replies
    assert "дольше, чем мы обещали" in update.text and case_ref(case.case_id) in update.text
    assert events and st.breach_updates == ["standard"]
    assert breach_update(st, wf, "standard", lc.later)[1] == []
    assert len(breach_update(st, wf, "stores", lc.later)[1]) == 1


def test_reminder_goes_to_internal_holders_only(lc: Lifecycle) -> None:
    case, subs = lc.routed()
    dept = _by_dept(subs)
    internal = case.sub(dept["loyalty-it"].sub_request_id)
    external = case.sub(dept["store-directors"].sub_request_id)
    assert internal is not None and external is not None
    notice = sla_reminder(case, internal, "resolution", lc.later, lc.now)
    assert notice is not None and notice.type == "sla_reminder" and notice.due_at == lc.later
    assert sla_reminder(case, external, "resolution", lc.later, lc.now) is None


def test_escalation_mail_has_its_own_template_language_and_local_time(lc: Lifecycle) -> None:
    case, subs = lc.routed()
    record = case.sub(_by_dept(subs)["loyalty-it"].sub_request_id)
    assert record is not None
    due = datetime(2026, 3, 3, 13, 30, tzinfo=UTC)
    mail, state = escalation_request(
        case,
        lc.wf,
        record,
        kind="first_response",
        due=due,
        address="loyalty-lead@example.com",
        priority=case.priority,
        now=lc.later,
        settings=SETTINGS,
    )
    assert mail.purpose == "escalation" and not state.blocking and mail.language == "ru"
    msg = compose_external(mail, SETTINGS)
    body = _body(msg)
    assert str(msg["Subject"]).endswith("Просрочен срок первого ответа: loyalty-it [P3]")
    assert "Срок истёк: 03.03.2026 16:30 (Europe/Moscow)" in body
    assert "SLA breach" not in body and "UTC" not in body


def test_flagged_cases_alert_the_supervisors_once_each(lc: Lifecycle) -> None:
    d = route_message(lc.kit.seed_message(tier="vip"), lc.wf, now=lc.now, settings=SETTINGS)
    assert d.case is not None
    st, alerts, events = flag_alerts(d.case, lc.wf, d.sub_requests, now=lc.now, settings=SETTINGS)
    assert {a.recipient for a in alerts} == {"loyalty-lead@example.com", "store-ops@example.com"}
    assert all(a.purpose == "alert" and a.flags == ["vip"] for a in alerts) and len(events) == 2
    assert all(not s.blocking for s in st.sub_requests[-2:])
    body = _body(compose_external(alerts[0], SETTINGS))
    assert "Обращение требует вашего внимания: VIP-клиент" in body
    plain, _ = lc.routed()
    assert flag_alerts(plain, lc.wf, [], now=lc.now, settings=SETTINGS)[1] == []


def test_no_reply_token_reaches_the_customer_whoever_pasted_it(lc: Lifecycle) -> None:
    token = "aeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcai"
    _, trs = lc.answered(
        {
            "loyalty-it": f"Начислили. Директору пишите на reply+{token}@example.com",
            "store-directors": "Огурцы заменили.",
        },
    )
    answer = trs[-1].replies[0].text
    assert "Начислили." in answer and token not in answer and "reply+" not in answer


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("По обращению № 1A2B3C4D: есть новости?", True),
        ("about case 1a2b3c4d please", True),  # the customer may type it in lower case
        ("order X1A2B3C4D9 is late", False),  # inside a longer token
        ("no reference here", False),
    ],
)
def test_a_case_reference_is_quoted_only_as_a_whole_token(text: str, quoted: bool) -> None:
    assert mentions_case_ref(text, "1A2B3C4D") is quoted
    assert not mentions_case_ref(text, ""), "no reference, nothing quoted"
