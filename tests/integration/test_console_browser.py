"""The operator console in headless Chromium, on the real broker, worker and ingest (issue 14).

The worked example end to end: the case appears in the list (live, without a reload), the
loyalty-IT agent answers in the console, the store director answers on the signed page linked
from the e-mail, the customer gets one combined answer, the director's later e-mail reply is
recorded but not applied, and the survey answer shows. Also: a department member cannot open
another department's sub-request but sees on its own when the customer wrote again, and hostile
customer text renders inert.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.broker import free_port
from pipeline.config import Settings
from pipeline.console.follower import follow
from pipeline.console.server import console_env
from pipeline.console.store import Store
from pipeline.domain.workflow import load_workflow
from pipeline.events import CaseEvent, Outcome, derive_id
from pipeline.outbox import Outbox, OutboxItem
from pipeline.runtime import child_env, children, wait_http

if TYPE_CHECKING:
    from tests.plugins.browser import Browser
    from tests.plugins.stack import (
        Cases,
        Deliveries,
        PostJson,
        ReplyByMail,
        RunningStack,
        Telegram,
    )
    from tests.plugins.topics import Records
    from tests.plugins.waiting import WaitUntil

pytestmark = pytest.mark.integration

SEED = (
    "Добрый день! В магазине на Садовой, 12 продают несвежие огурцы, а ещё на кассе не "
    "списались бонусы с карты лояльности."
)


@pytest.fixture(scope="module")
def console(
    broker_settings: Settings, outbox: Outbox, running_stack: RunningStack
) -> Iterator[tuple[Settings, str]]:
    """A worker + ingest pair whose e-mails link to a console, and that console."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The usual data dir: its trained-model cache spares this stack a second training.
    base = broker_settings.model_copy(
        update={"console_port": port, "data_dir": Settings().data_dir}
    )
    extra = console_env(base, url)  # for the stack too: its e-mails carry the link
    with running_stack(base, outbox, "console", **extra) as (s, _), children() as web:
        web.start("console", ["console"], child_env(s, **extra))
        wait_http(f"{url}/healthz", 60, web)
        yield s, url


def login(browser: Browser, url: str, name: str, password: str) -> None:
    browser.get(f"{url}/login")
    browser.forget_cookies()  # the previous user's session goes
    browser.get(f"{url}/login")
    browser.type("#name", name)
    browser.type("#password", password)
    browser.click("#login")
    browser.wait_for("#whoami", contains=name, timeout_s=30)


async def test_worked_example_through_the_console(
    console: tuple[Settings, str],
    browser: Browser,
    telegram: Telegram,
    cases: Cases,
    records: Records,
    deliveries: Deliveries,
    reply_by_mail: ReplyByMail,
) -> None:
    s, url = console
    login(browser, url, "supervisor", "demo-supervisor")
    browser.get(f"{url}/cases")
    case = await cases.open(s, SEED)
    chat, case_id = case.chat, case.case_id
    assert set(case.outcome.departments) == {"store-directors", "loyalty-it"}
    # The open list page shows the new case by itself (live updates, no reload).
    browser.wait_for(f'tr[data-case="{case_id}"]', contains="loyalty-it")
    browser.screenshot("cases-list")
    internal, external = case.sub("loyalty-it"), case.sub("store-directors")

    # The loyalty-IT agent answers in the console.
    login(browser, url, "loyalty", "demo-loyalty")
    browser.get(f"{url}/queue")
    browser.wait_for("#queue", contains=internal.sub_request_id)
    browser.click(f'a[href="/sub/{internal.sub_request_id}"]')
    browser.type("#answer-text", "Бонусы начислены вручную.")
    browser.click("#btn-resolve")
    browser.wait_for("#sent", contains="resolved", timeout_s=30)
    browser.wait_for("#sub-status", contains="resolved")

    # The director answers on the page linked from the e-mail (no account).
    mail = await deliveries.first(
        lambda i: i.channel == "email" and external.sub_request_id in (i.subject or ""),
        "the director's e-mail",
    )
    link = re.search(r"(http://127\.0\.0\.1:\d+/respond/\S+)", mail.text)
    assert link, mail.text
    assert mail.reply_to and mail.reply_to.startswith("reply+"), "e-mail reply still offered"
    browser.get(link.group(1))
    assert "огурцы" in browser.text("#question")
    browser.type("#answer", "Огурцы заменили, выкладку проверили.")
    browser.click("#send-answer")
    browser.wait_for("#thanks", contains="recorded", timeout_s=30)

    def to_customer(marker: str) -> Any:
        return lambda i: i.channel == "telegram" and i.to == str(chat) and marker in i.text

    combined = await deliveries.first(to_customer("Огурцы заменили"), "the combined answer")
    assert "Бонусы начислены вручную" in combined.text, "one answer combines both"

    # The director also replies by e-mail: recorded on the trail, not applied twice.
    reply_by_mail(s, external.recipient or "", mail.reply_to, "Ещё раз: огурцы заменили.")
    ignored = await records.first(
        s,
        s.topic("case-events"),
        CaseEvent,
        lambda e: e.case_id == case_id and bool(e.detail.get("ignored")),
    )
    assert ignored.detail["source"] == "email"
    answers: list[OutboxItem] = await deliveries.settled(to_customer("Огурцы заменили"), 1)
    assert len(answers) == 1, "the customer got exactly one combined answer"

    # The customer answers the survey; the supervisor sees it all on the case page.
    await deliveries.first(to_customer("0 до 10"), "the survey")
    status, _ = telegram(s, chat, 2, "3")
    assert status == 200
    login(browser, url, "supervisor", "demo-supervisor")
    browser.open_until(f"{url}/cases/{case_id}", "#case-status")
    browser.wait_for("#survey", contains="answered 3")
    assert browser.text("#case-status") == "resolved"
    replies = browser.text("main")
    assert "Бонусы начислены вручную" in replies and "delivered" in replies
    assert "already resolved" in browser.text("#timeline")
    assert "recorded, not applied" in browser.text("#subs"), "the late e-mail answer is marked"
    browser.screenshot("case-page")
    browser.get(f"{url}/quality")
    browser.wait_for("#quality", contains=case_id)


async def test_department_member_cannot_open_another_departments_sub_request(
    console: tuple[Settings, str],
    browser: Browser,
    telegram: Telegram,
    cases: Cases,
    records: Records,
) -> None:
    s, url = console
    case = await cases.open(s, SEED)
    chat, internal = case.chat, case.sub("loyalty-it")
    login(browser, url, "loyalty", "demo-loyalty")
    browser.open_until(f"{url}/sub/{internal.sub_request_id}", "#sub-status")
    # The customer writes again: the holder's open task page shows it, with the text (a
    # TaskNotice on the task topic, issue 17), by itself.
    status, _ = telegram(s, chat, 2, "Ну что там с моими бонусами?")
    assert status == 200
    told = browser.wait_for("#notices", contains="Ну что там с моими бонусами?")
    assert "the customer wrote again" in told, told
    browser.get(f"{url}/cases/{internal.case_id}")
    assert browser.find_all("#case-status"), "an agent opens the cases of their department"
    login(browser, url, "logistics", "demo-logistics")
    browser.get(f"{url}/sub/{internal.sub_request_id}")
    assert "belongs to another department" in browser.text("body")
    assert not browser.find_all("#btn-resolve")
    browser.get(f"{url}/cases/{internal.case_id}")
    assert "belongs to another department" in browser.text("body")
    browser.get(f"{url}/cases")
    assert internal.case_id not in browser.text("main")

    # A supervisor adds a sub-request for logistics: the route stage applies the command
    # and the work reaches the logistics queue (and that agent may now open the case).
    login(browser, url, "supervisor", "demo-supervisor")
    browser.open_until(f"{url}/cases/{internal.case_id}", "#command")
    browser.run("document.querySelector('#command [name=department]').value = 'logistics'")
    browser.type("#command [name=text]", "Проверить, не задержана ли доставка карты")
    browser.click("#command button")
    browser.wait_for(".notice", contains="add", timeout_s=30)
    login(browser, url, "logistics", "demo-logistics")
    browser.open_until(f"{url}/queue", ".queue-row")
    assert "не задержана ли доставка" in browser.text("#queue")
    browser.get(f"{url}/cases/{internal.case_id}")
    assert browser.find_all("#case-status"), "logistics now has work in this case"
    added = await records.first(
        s,
        s.topic("case-events"),
        CaseEvent,
        lambda e: e.case_id == internal.case_id and e.type.value == "escalated",
    )
    assert added.detail["author"] == "supervisor" and added.detail["to"] == "logistics"


async def test_hostile_customer_text_renders_inert(
    console: tuple[Settings, str],
    browser: Browser,
    post_json: PostJson,
    records: Records,
) -> None:
    s, url = console
    chat = 8_300_000 + int(uuid.uuid4().int % 100_000)
    name = '<img src=x onerror="window.pwned=1">\u202eevil'
    text = (
        "<script>window.pwned=2</script> не списались бонусы с карты лояльности "
        '<b onmouseover="window.pwned=3">ok</b> \u202eтекст'
    )
    update = {
        "update_id": chat,
        "message": {
            "message_id": 1,
            "date": 1_760_000_000,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": False, "first_name": name},
            "text": text,
        },
    }
    status, _ = post_json(f"http://{s.ingest_host}:{s.ingest_port}/webhooks/telegram", update)
    assert status == 200
    mid = derive_id("msg", "telegram", f"{chat}:1")
    outcome = await records.first(s, s.topic("outcomes"), Outcome, lambda o: o.message_id == mid)
    login(browser, url, "supervisor", "demo-supervisor")
    browser.open_until(f"{url}/cases/{outcome.case_id}", "#case-status")
    shown = browser.wait_for(".customer-text", contains="<script>")
    assert "window.pwned=2" in shown, "the markup shows as text"
    assert browser.run("return window.pwned === undefined")
    assert browser.run("return document.querySelectorAll('main img, main script').length") == 0
    assert browser.run("return document.querySelectorAll('[onmouseover],[onerror]').length") == 0
    assert "\u202e" not in browser.source(), "bidi override shown as a visible mark"
    browser.get(f"{url}/cases?q=" + "бонусы")
    browser.wait_for(f'tr[data-case="{outcome.case_id}"]')
    assert browser.run("return window.pwned === undefined")


async def test_rule_playground_explains_and_shows_check_errors(
    console: tuple[Settings, str], browser: Browser
) -> None:
    _, url = console
    login(browser, url, "supervisor", "demo-supervisor")
    browser.get(f"{url}/playground")
    browser.type("#pg-text", "На кассе не списались бонусы с карты лояльности")
    browser.click("#pg-run")
    explained = browser.wait_for("#pg-explain", contains="loyalty-it", timeout_s=300)
    assert "tasks.loyalty-it" in explained
    workflow = browser.run("return document.querySelector('#pg-workflow').value")
    broken = str(workflow).replace("\ndepartments:", "\ndepartmentz:", 1)
    browser.run("document.querySelector('#pg-workflow').value = arguments[0]", broken)
    browser.click("#pg-run")
    check = browser.wait_for("#pg-check", contains="departmentz", timeout_s=300)
    assert re.search(r"workflow\.yaml:\d+: departmentz", check), check
    assert not browser.find_all("#pg-explain"), "an invalid workflow explains nothing"
    login(browser, url, "loyalty", "demo-loyalty")
    browser.get(f"{url}/playground")
    assert "supervisor" in browser.text("body"), "agents do not edit rules"


async def test_a_new_replica_rebuilds_its_read_model_from_the_topics(
    console: tuple[Settings, str], cases: Cases, wait_until: WaitUntil
) -> None:
    s, _ = console
    outcome = (await cases.open(s, SEED)).outcome
    mid = outcome.message_id
    store = Store()  # a replica started after the fact: everything comes from the topics
    ready = asyncio.Event()
    task = asyncio.create_task(
        follow(s, store, load_workflow(s.rules_path).task_departments(), ready)
    )
    try:
        case = await wait_until(
            lambda: store.case(outcome.case_id or ""), timeout_s=120, what="the case row"
        )
        assert case["channel"] == "telegram"
        subs = await wait_until(
            lambda: (
                len(store.case_subs(outcome.case_id or "")) == 2
                and store.case_subs(outcome.case_id or "")
            ),
            timeout_s=120,
            what="both sub-requests",
        )
        assert {x["department"] for x in subs} == {"loyalty-it", "store-directors"}
        assert store.messages([mid]), "the classified message with its explanation"
        await wait_until(ready.is_set, timeout_s=120, what="caught up")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()
