"""The case lifecycle on the real stack (issue 17): clean external answers, threads,
rejections, surveys, and delays on a copy of the workflow with minute-long SLAs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.config import Settings
from pipeline.events import CaseEvent, Outcome, SubRequest, TaskNotice
from pipeline.outbox import Outbox
from pipeline.topics import task_topic

if TYPE_CHECKING:
    from tests.plugins.stack import Cases, Deliveries, ReplyByMail, ResolveInternal, RunningStack
    from tests.plugins.topics import Records

pytestmark = pytest.mark.integration

SEED = (
    "Добрый день! В магазине на Садовой, 12 продают несвежие огурцы, а ещё на кассе не "
    "списались бонусы с карты лояльности."
)
LOYALTY = "На кассе не списались бонусы с карты лояльности, чек 4471."


def _to(chat: int) -> Any:
    return lambda i: i.channel == "telegram" and i.to == str(chat)


async def test_director_reply_reaches_the_customer_as_its_first_paragraph_only(
    stack: Settings,
    cases: Cases,
    deliveries: Deliveries,
    resolve_internal: ResolveInternal,
    reply_by_mail: ReplyByMail,
) -> None:
    case = await cases.open(stack, SEED)
    chat = case.chat
    internal, external = case.sub("loyalty-it"), case.sub("store-directors")
    assert internal.kind.value == "internal" and external.kind.value == "external"
    assert external.recipient
    mail = await deliveries.first(
        lambda i: i.channel == "email" and external.sub_request_id in (i.subject or ""),
        "the director's e-mail",
    )
    assert mail.reply_to and "Язык клиента: русский" in mail.text
    token = mail.reply_to.split("+", 1)[1].split("@", 1)[0]
    await resolve_internal(stack, internal, "Бонусы начислены вручную.")
    first = "Огурцы сняли с продажи и заменили, выкладку проверили."
    reply_by_mail(
        stack,
        external.recipient,
        mail.reply_to,
        f"{first}\n\nИван Петров\nДиректор магазина на Садовой, 12\n+7 (812) 555-01-23\n\n"
        f"сб, 5 дек. 2026 г. в 16:20, Служба заботы <\n{mail.reply_to}>:\n\n"
        + "\n".join(f"> {line}" for line in mail.text.splitlines()),
    )
    combined = await deliveries.first(
        lambda i: _to(chat)(i) and first in i.text, "the combined answer"
    )
    assert f"• {first}\n" in combined.text
    for leak in (token, "reply+", "Петров", "555-01-23", "Служба заботы", "16:20", ">"):
        assert leak not in combined.text, leak


async def test_a_follow_up_on_an_open_case_adds_to_it(
    stack: Settings, records: Records, cases: Cases
) -> None:
    case = await cases.open(stack, SEED)
    first = case.outcome
    for n, text in (
        (2, "Ну что там с моими бонусами?"),
        (3, "Бонусы так и не списались, когда ответите?"),
    ):
        follow = await cases.message(stack, case.chat, n, text)
        assert follow.case_id == first.case_id, (text, follow)
    loyalty = task_topic(stack, "loyalty-it")
    notices = await records.settled(
        stack, loyalty, TaskNotice, lambda t: t.case_id == first.case_id, 2
    )
    assert [t.type for t in notices] == ["customer_message", "customer_message"]
    assert "бонусами" in notices[0].text
    tasks = await records.settled(
        stack, loyalty, SubRequest, lambda s: s.customer_id == first.customer_id, 1
    )
    assert len(tasks) == 1, "no second task for the same request"
    outcomes = await records.settled(
        stack,
        stack.topic("outcomes"),
        Outcome,
        lambda o: o.customer_id == first.customer_id,
        3,
    )
    assert {o.case_id for o in outcomes} == {first.case_id}, "no new case"


async def test_a_rejection_says_so_and_asks_no_survey(
    stack: Settings, cases: Cases, deliveries: Deliveries
) -> None:
    case = await cases.open(stack, SEED)
    chat = case.chat
    await cases.answer_all(
        stack,
        case,
        resolved={"store-directors": "Огурцы заменили."},
        rejected={"loyalty-it": "бонусы за акционные товары не начисляются."},
    )
    answer = await deliveries.first(
        lambda i: _to(chat)(i) and "Причина" in i.text, "the partial answer"
    )
    assert "• Огурцы заменили." in answer.text
    assert "• ИТ программы лояльности: не получилось. Причина: бонусы за акционные" in answer.text
    assert "Что дальше" in answer.text and "Спасибо, что сообщили" not in answer.text
    sent = await deliveries.settled(_to(chat), 2)  # acknowledgement + the answer, no survey
    assert not any("0 до 10" in i.text for i in sent), [i.text for i in sent]
    assert len(sent) == 2


async def test_thanks_after_a_survey_opens_nothing(
    stack: Settings, records: Records, cases: Cases, deliveries: Deliveries
) -> None:
    case = await cases.open(stack, SEED)
    chat = case.chat
    await cases.answer_all(
        stack, case, resolved={"loyalty-it": "Готово.", "store-directors": "Заменили."}
    )
    await deliveries.first(lambda i: _to(chat)(i) and "0 до 10" in i.text, "the survey")
    thanks = await cases.message(stack, chat, 2, "Спасибо, всё отлично!")
    later = await cases.message(stack, chat, 3, "Спасибо!")
    assert thanks.case_id == later.case_id == case.case_id
    ids = {thanks.message_id, later.message_id}
    for topic in (task_topic(stack, "triage"), stack.topic("external")):
        made = await records.settled(stack, topic, SubRequest, lambda s: s.message_id in ids, 0)
        assert made == [], "thanks open no task"
    events = await records.settled(
        stack,
        stack.topic("case-events"),
        CaseEvent,
        lambda e: e.message_id in ids and e.type.value in ("opened", "reopened"),
        0,
    )
    assert events == []
    acks = await deliveries.settled(lambda i: _to(chat)(i) and "Рады были помочь" in i.text, 2)
    assert len(acks) == 2


# ---------------------------------------------------------------- delays (minute-long SLAs)


@pytest.fixture(scope="module")
def sla_stack(
    broker_settings: Settings,
    fast_sla_rules: Path,
    outbox: Outbox,
    running_stack: RunningStack,
) -> Iterator[Settings]:
    """A worker + ingest pair running a workflow whose SLAs are a minute long."""
    base = broker_settings.model_copy(update={"rules_path": fast_sla_rules})
    with running_stack(base, outbox, "sla") as (settings, _):
        yield settings


async def test_delays_are_told_and_a_late_answer_after_a_reroute_reaches_the_customer(
    sla_stack: Settings,
    records: Records,
    cases: Cases,
    deliveries: Deliveries,
    resolve_internal: ResolveInternal,
) -> None:
    s = sla_stack
    case = await cases.open(s, LOYALTY)
    chat, outcome = case.chat, case.outcome
    assert outcome.departments == ["loyalty-it"]
    loyalty = task_topic(s, "loyalty-it")
    task = case.sub("loyalty-it")
    reminder = await records.first(
        s, loyalty, TaskNotice, lambda t: t.case_id == outcome.case_id and t.type == "sla_reminder"
    )
    assert reminder.sub_request_id == task.sub_request_id and reminder.due_at is not None
    # the breach: the customer is told, the supervisor gets an escalation mail, triage a copy
    update = await deliveries.first(
        lambda i: _to(chat)(i) and "дольше, чем мы обещали" in i.text, "the breach update"
    )
    assert "№" in update.text
    escalation = await deliveries.first(
        lambda i: (
            i.channel == "email"
            and f"[{outcome.case_id}/" in (i.subject or "")
            and "loyalty-lead@example.com" in i.to
        ),
        "the supervisor's escalation mail",
    )
    assert "Просрочен" in (escalation.subject or "") and "Europe/Moscow" in escalation.text
    assert "SLA breach" not in escalation.text and "UTC" not in escalation.text
    copy = await records.first(
        s,
        task_topic(s, "triage"),
        SubRequest,
        lambda x: x.case_id == outcome.case_id,
    )
    # a later breach (the copy's, the resolution deadline) does not tell the customer again
    await records.wait_for(
        s,
        s.topic("case-events"),
        CaseEvent,
        lambda e: e.case_id == outcome.case_id and e.type.value == "sla_breached",
        2,
        timeout_s=240,
    )
    updates = await deliveries.settled(
        lambda i: _to(chat)(i) and "дольше, чем мы обещали" in i.text, 1
    )
    assert len(updates) == 1, "one update per case and policy"
    # loyalty IT answers after all: the customer gets it, the rerouted copy is closed
    await resolve_internal(s, task, "Бонусы начислены вручную, извините за задержку.")
    answer = await deliveries.first(
        lambda i: _to(chat)(i) and "извините за задержку" in i.text, "the late answer"
    )
    assert "Бонусы начислены вручную" in answer.text
    closed = await records.first(
        s,
        task_topic(s, "triage"),
        TaskNotice,
        lambda t: t.sub_request_id == copy.sub_request_id and t.type == "closed",
    )
    assert closed.case_id == outcome.case_id
