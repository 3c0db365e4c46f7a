"""The operator console's pure parts: logins, sessions, signed links, case commands, the
read model, and the pages (aiohttp test client; hostile customer text stays inert)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.console.auth import (
    DEMO_USERS,
    LoginThrottle,
    csrf_token,
    hash_password,
    load_users,
    new_session,
    read_session,
    session_cookie,
    users_json,
    verify_password,
)
from pipeline.console.store import CaseFilter, Store
from pipeline.console.web import CONSOLE, Console, build_app, mask_pii, visible
from pipeline.domain.cases import CaseState, SubRequestState, apply_task_update
from pipeline.domain.links import parse_responder_token, responder_token, responder_url
from pipeline.domain.workflow import load_workflow
from pipeline.errors import ConfigError, InvalidInput
from pipeline.events import (
    CaseCommand,
    CaseEvent,
    CaseEvents,
    CaseEventType,
    CaseSnapshot,
    Channel,
    CustomerProfile,
    Priority,
    SubRequestKind,
    TaskNotice,
    TaskStatus,
    TaskUpdate,
)
from pipeline.route.commands import apply_case_command

if TYPE_CHECKING:
    from tests.plugins.events import MakeSubRequest

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
HOSTILE_NAME = "Eve <img src=x onerror=alert(1)> \u202egnp.exe"
HOSTILE_TEXT = '<script>alert("x")</script> бонусы <b onmouseover="alert(2)">не списались</b>'


def settings(**kw: Any) -> Settings:
    return Settings(**{"reply_token_secret": SecretStr("test-secret"), **kw})


def case_state(**kw: Any) -> CaseState:
    subs = [
        SubRequestState(
            sub_request_id="sr_loyalty",
            kind=SubRequestKind.internal,
            department="loyalty-it",
            intent="loyalty_bonus",
            category="LOYALTY",
            text="не списались бонусы, карта 4111 1111 1111 1111",
            created_at=T0,
            due_at=T0 + timedelta(hours=4),
        ),
        SubRequestState(
            sub_request_id="sr_store",
            kind=SubRequestKind.external,
            department="store-directors",
            recipient="director.s12@example.com",
            intent="product_quality",
            category="QUALITY",
            text="несвежие огурцы",
            created_at=T0,
        ),
    ]
    base: dict[str, Any] = {
        "case_id": "case_1",
        "customer_id": "cust_1",
        "customer": CustomerProfile(customer_id="cust_1", name=HOSTILE_NAME),
        "channel": Channel.telegram,
        "language": "ru",
        "first_message_id": "msg_1",
        "message_ids": ["msg_1"],
        "full_text": HOSTILE_TEXT + " Огурцы несвежие",
        "categories": ["LOYALTY", "QUALITY"],
        "priority": Priority(score=40, level="P3"),
        "sub_requests": subs,
        "opened_at": T0,
        "updated_at": T0,
    }
    base.update(kw)
    return CaseState(**base)


def snapshot(state: CaseState, by: str = "cases") -> bytes:
    snap = CaseSnapshot(
        case_id=state.case_id,
        customer_id=state.customer_id,
        state=state.model_dump(mode="json"),
        by="cases" if by == "cases" else "route",
        at=state.updated_at,
    )
    return snap.model_dump_json().encode()


# ---------------------------------------------------------------- auth


def test_scrypt_passwords_verify_only_the_right_one() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret ", stored)
    assert not verify_password("s3cret", "plain-text")
    assert hash_password("s3cret") != stored, "salted"


def test_session_cookie_is_signed_and_expires() -> None:
    s = settings(console_session_hours=1)
    secret = b"k" * 32
    session = new_session("anna", T0, s)
    cookie = session_cookie(session, secret)
    assert read_session(cookie, secret, T0) == session
    assert read_session(cookie, b"x" * 32, T0) is None, "another key"
    _, mac = cookie.split(".")
    forged = orjson.dumps({"s": session.sid, "u": "boss", "e": session.expires_at})

    assert read_session(base64.urlsafe_b64encode(forged).decode() + "." + mac, secret, T0) is None
    assert read_session(cookie, secret, T0 + timedelta(hours=2)) is None, "expired"
    other = new_session("anna", T0, s)
    assert csrf_token(session, secret) != csrf_token(other, secret)


def test_users_from_json_and_agents_need_a_department() -> None:
    users = load_users(settings(console_users=users_json(DEMO_USERS)))
    assert users["supervisor"].role == "supervisor"
    assert users["loyalty"].department == "loyalty-it"
    assert users["loyalty"].sees("loyalty-it") and not users["loyalty"].sees("logistics")
    assert users["supervisor"].sees("logistics")
    bad = '[{"name": "x", "password": "scrypt$1$1$1$a$b", "role": "agent"}]'
    with pytest.raises(ConfigError):
        load_users(settings(console_users=bad))


# ---------------------------------------------------------------- signed links


def test_responder_link_round_trip_tamper_and_expiry() -> None:
    s = settings(console_public_url="http://console.test/", console_link_ttl_days=2)
    token = responder_token("sr_store", "case_1", T0, s)
    link = parse_responder_token(token, s, now=T0 + timedelta(days=1))
    assert link is not None and (link.case_id, link.sub_request_id) == ("case_1", "sr_store")
    assert parse_responder_token(token, s, now=T0 + timedelta(days=3)) is None, "expired"
    other = settings(reply_token_secret=SecretStr("other"))
    assert parse_responder_token(token, other, now=T0) is None, "other key"
    body, mac = token.split(".")
    assert parse_responder_token(body[:-2] + "AA." + mac, s, now=T0) is None
    assert responder_url("sr_store", "case_1", T0, s) == f"http://console.test/respond/{token}"
    assert responder_url("sr_store", "case_1", T0, settings()) is None, "no console URL"


def test_external_mail_carries_the_answer_page_link(make_sub_request: MakeSubRequest) -> None:
    from pipeline.notify.compose import compose_external

    s = settings(console_public_url="http://console.test")
    sub = make_sub_request(created_at=T0)
    body = compose_external(sub, s).get_content()
    url = re.search(r"http://console\.test/respond/(\S+)", body)
    assert url, body
    assert parse_responder_token(url.group(1), s, now=T0) is not None
    assert "respond/" not in compose_external(sub, settings()).get_content()


# ---------------------------------------------------------------- case transitions


def test_second_answer_to_a_closed_sub_request_is_recorded_not_applied() -> None:
    wf = load_workflow(Settings().rules_path)
    state = case_state()

    def answer(uid: str, text: str, source: Any) -> TaskUpdate:
        return TaskUpdate(
            update_id=uid,
            sub_request_id="sr_store",
            case_id="case_1",
            status=TaskStatus.resolved,
            resolution=text,
            source=source,
            at=T0,
        )

    first = apply_task_update(state, answer("u1", "Огурцы заменили", "email"), wf, now=T0)
    second = apply_task_update(first.state, answer("u2", "Другой текст", "console"), wf, now=T0)
    sub = second.state.sub("sr_store")
    assert sub is not None and sub.resolution == "Огурцы заменили"
    assert [e.type for e in second.case_events] == [CaseEventType.task_updated]
    assert second.case_events[0].detail["ignored"] == "already resolved"
    assert second.case_events[0].detail["update_id"] == "u2"
    assert not second.replies
    assert "u2" in second.state.seen_update_ids


def command(action: Any, **kw: Any) -> CaseCommand:
    base: dict[str, Any] = {
        "command_id": f"cmd_{action}",
        "case_id": "case_1",
        "action": action,
        "department": "logistics",
        "author": "anna",
        "at": T0,
    }
    base.update(kw)
    return CaseCommand(**base)


def test_reassign_moves_the_work_and_a_replay_changes_nothing() -> None:
    wf = load_workflow(Settings().rules_path)
    tr = apply_case_command(
        case_state(), command("reassign", sub_request_id="sr_loyalty"), wf, now=T0
    )
    old = tr.state.sub("sr_loyalty")
    assert old is not None and old.status == "rerouted"
    (new,) = tr.sub_requests
    assert new.department == "logistics" and new.kind == SubRequestKind.internal
    assert tr.state.sub(new.sub_request_id) is not None
    assert {e.type for e in tr.case_events} == {
        CaseEventType.escalated,
        CaseEventType.sub_request_created,
    }
    again = apply_case_command(
        tr.state, command("reassign", sub_request_id="sr_loyalty"), wf, now=T0
    )
    assert again.state == tr.state and not again.sub_requests


def test_add_opens_a_second_department_and_bad_commands_are_refused() -> None:
    wf = load_workflow(Settings().rules_path)
    tr = apply_case_command(case_state(), command("add", text="проверить доставку"), wf, now=T0)
    (new,) = tr.sub_requests
    assert new.text == "проверить доставку" and len(tr.state.sub_requests) == 3
    with pytest.raises(InvalidInput):
        apply_case_command(case_state(), command("add", department="nowhere"), wf, now=T0)
    with pytest.raises(InvalidInput):
        apply_case_command(case_state(), command("reassign", sub_request_id="sr_x"), wf, now=T0)
    resolved = case_state(status="resolved", resolved_at=T0)
    with pytest.raises(InvalidInput):
        apply_case_command(resolved, command("add"), wf, now=T0)


# ---------------------------------------------------------------- read model


def test_store_projects_snapshots_and_filters() -> None:
    store = Store()
    state = case_state()
    assert store.apply("case-state", snapshot(state, "route"))
    warned = state.sub_requests[0].model_copy(update={"warned": ["resolution"]})
    later = state.model_copy(
        update={
            "sub_requests": [warned, state.sub_requests[1]],
            "updated_at": T0 + timedelta(minutes=5),
        }
    )
    store.apply("case-status", snapshot(later))
    store.apply("case-state", snapshot(state, "route"))  # an older view arriving late
    row = store.case("case_1")
    assert row is not None and row["sla"] == "at_risk", "the newer snapshot stands"
    assert [r["case_id"] for r in store.cases(CaseFilter(sla="at_risk"))] == ["case_1"]
    assert store.cases(CaseFilter(sla="breached")) == []
    assert len(store.cases(CaseFilter(q="ОГУРЦЫ"))) == 1, "Cyrillic search folds case"
    assert store.cases(CaseFilter(q="помидоры")) == []
    assert len(store.cases(CaseFilter(department="loyalty-it", status="open"))) == 1
    assert store.cases(CaseFilter(), department="logistics") == []
    assert store.case_visible("case_1", "loyalty-it")
    assert not store.case_visible("case_1", "logistics")
    assert [s["sub_request_id"] for s in store.queue("loyalty-it")] == ["sr_loyalty"]
    assert store.queue("store-directors") == [], "external work is not a queue"
    assert not store.apply("replies", b"{not json"), "a bad record is skipped"


def test_store_is_idempotent_per_event_id() -> None:
    store = Store()
    ev = CaseEvent(
        event_id="ce_1", case_id="case_1", type=CaseEventType.sla_breached, at=T0,
        detail={"department": "loyalty-it", "deadline": "resolution", "due_at": T0.isoformat()},
    )  # fmt: skip
    for _ in range(2):
        store.apply("case-events", ev.model_dump_json().encode())
        store.apply("quality", ev.model_dump_json().encode())
    assert len(store.timeline("case_1")) == 1
    assert len(store.quality()) == 1
    assert len(store.sla_events("loyalty-it")) == 1 and store.sla_events("logistics") == []


def test_store_reads_a_transition_s_events_from_one_record() -> None:
    store = Store()
    opened = CaseEvent(event_id="ce_o", case_id="case_1", type=CaseEventType.opened, at=T0)
    created = opened.model_copy(
        update={"event_id": "ce_c", "type": CaseEventType.sub_request_created}
    )
    batch = CaseEvents(case_id="case_1", events=[opened, created])
    for _ in range(2):  # a replayed batch adds nothing
        assert store.apply("case-events", batch.model_dump_json().encode())
    assert [e.type for e in store.timeline("case_1")] == [
        CaseEventType.opened,
        CaseEventType.sub_request_created,
    ]


def notice(kind: Any = "customer_message", text: str = "Ну что там с бонусами?") -> bytes:
    """A TaskNotice for the holder of ``sr_loyalty`` (issue 17), as it is on the task topic."""
    return TaskNotice(
        notice_id=f"notice_{kind}", type=kind, case_id="case_1", sub_request_id="sr_loyalty",
        department="loyalty-it", text=text, message_id="msg_2", at=T0 + timedelta(minutes=7),
    ).model_dump_json().encode()  # fmt: skip


def test_store_reads_both_kinds_of_task_records(make_sub_request: MakeSubRequest) -> None:
    store = Store()
    store.apply("case-state", snapshot(case_state()))
    sub = make_sub_request(
        sub_request_id="sr_loyalty", case_id="case_1", kind=SubRequestKind.internal,
        department="loyalty-it", recipient=None, created_at=T0,
    )  # fmt: skip
    assert store.apply("tasks.loyalty-it", notice()), "a notice is not a bad SubRequest"
    assert store.apply("tasks.loyalty-it", sub.model_dump_json().encode())
    assert store.apply("tasks.loyalty-it", notice())  # replayed: still one
    assert store.apply("tasks.loyalty-it", notice("sla_reminder", "срок скоро"))
    assert [(n.type, n.text) for n in store.notices("sr_loyalty")] == [
        ("customer_message", "Ну что там с бонусами?"),
        ("sla_reminder", "срок скоро"),
    ]
    (row,) = store.queue("loyalty-it")
    assert row["customer_messages"] == 1, "the queue counts the customer's new messages"
    assert row["score"] == sub.priority.score, "the SubRequest itself was projected"
    assert not store.apply("tasks.loyalty-it", b'{"notice_id": "n"}'), "a bad notice is skipped"


def test_visible_marks_bidi_controls_and_mask_hides_card_numbers() -> None:
    assert visible("a\u202eb\u2066c") == "a[U+202E]b[U+2066]c"
    masked = mask_pii("карта 4111 1111 1111 1111, тел. +7 916 123-45-67")
    assert "1111 1111" not in masked and "916" not in masked


# ---------------------------------------------------------------- pages


@pytest.fixture
async def client(tmp_path: Any) -> AsyncIterator[TestClient[Any, Any]]:
    s = settings(console_users=users_json(DEMO_USERS), console_public_url="http://c.test")
    store = Store(tmp_path / "console.sqlite")
    store.apply("case-state", snapshot(case_state()))
    console = Console(
        settings=s,
        store=store,
        users=load_users(s),
        departments=["logistics", "loyalty-it"],
    )
    async with TestClient(TestServer(build_app(console))) as c:
        yield c
    store.close()


async def csrf_of(client: TestClient[Any, Any], path: str) -> str:
    page = await (await client.get(path)).text()
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def login(client: TestClient[Any, Any], name: str, password: str) -> None:
    token = await csrf_of(client, "/login")
    resp = await client.post(
        "/login", data={"csrf": token, "name": name, "password": password}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()


async def test_pages_need_login_and_carry_security_headers(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/cases", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    resp = await client.get("/login")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_post_without_csrf_token_is_refused(client: TestClient[Any, Any]) -> None:
    await client.get("/login")
    resp = await client.post("/login", data={"name": "supervisor", "password": "demo-supervisor"})
    assert resp.status == 403
    token = await csrf_of(client, "/login")
    resp = await client.post("/login", data={"csrf": token, "name": "supervisor", "password": "x"})
    assert resp.status == 401


async def test_hostile_customer_text_is_escaped(client: TestClient[Any, Any]) -> None:
    await login(client, "supervisor", "demo-supervisor")
    for path in ("/cases", "/cases/case_1", "/sub/sr_loyalty"):
        page = await (await client.get(path)).text()
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "<b onmouseover" not in page, path
        assert "\u202e" not in page, path
    page = await (await client.get("/cases/case_1")).text()
    assert "&lt;img src=x onerror=alert(1)&gt; [U+202E]gnp.exe" in page
    page = await (await client.get("/sub/sr_loyalty")).text()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


async def test_the_customer_writing_again_shows_on_the_case_and_task_pages(
    client: TestClient[Any, Any],
) -> None:
    await login(client, "loyalty", "demo-loyalty")
    page = await (await client.get("/sub/sr_loyalty")).text()
    assert "wrote again" not in page
    console = client.app[CONSOLE]
    console.store.apply("tasks.loyalty-it", notice(text=f"Ну что там? {HOSTILE_TEXT}"))
    for path in ("/sub/sr_loyalty", "/cases/case_1"):
        page = await (await client.get(path)).text()
        assert 'the customer wrote again: <q dir="auto">Ну что там? &lt;script&gt;' in page, path
        assert "<script>alert" not in page, path
    page = await (await client.get("/queue")).text()
    assert "+1 new from the customer" in page


async def test_an_agent_sees_only_their_department(client: TestClient[Any, Any]) -> None:
    await login(client, "logistics", "demo-logistics")
    assert (await client.get("/sub/sr_loyalty")).status == 403
    assert (await client.get("/cases/case_1")).status == 403
    assert "case_1" not in await (await client.get("/cases")).text()
    await login(client, "loyalty", "demo-loyalty")
    assert (await client.get("/sub/sr_loyalty")).status == 200
    assert (await client.get("/sub/sr_store")).status == 403
    page = await (await client.get("/queue?department=logistics")).text()
    assert "sr_loyalty" in page, "an agent's queue is always their own department"


async def test_only_a_supervisor_gives_case_commands(client: TestClient[Any, Any]) -> None:
    await login(client, "loyalty", "demo-loyalty")
    token = await csrf_of(client, "/sub/sr_loyalty")
    resp = await client.post(
        "/cases/case_1/command", data={"csrf": token, "action": "add", "department": "logistics"}
    )
    assert resp.status == 403


async def test_responder_page_needs_a_genuine_link(client: TestClient[Any, Any]) -> None:
    s = client.app[CONSOLE].settings
    assert (await client.get("/respond/forged.token")).status == 403
    token = responder_token("sr_loyalty", "case_1", datetime.now(UTC), s)
    page = await (await client.get(f"/respond/{token}")).text()
    assert "не списались бонусы" in page and "4111 1111" not in page, "card masked"
    assert 'name="csrf"' in page
    wrong_case = responder_token("sr_loyalty", "case_2", datetime.now(UTC), s)
    assert (await client.get(f"/respond/{wrong_case}")).status == 404


async def test_logout_ends_the_session(client: TestClient[Any, Any]) -> None:
    await login(client, "supervisor", "demo-supervisor")
    token = await csrf_of(client, "/cases")
    resp = await client.post("/logout", data={"csrf": token}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/cases", allow_redirects=False)).status == 302


def test_login_throttle_refuses_a_name_after_repeated_failures() -> None:
    throttle = LoginThrottle(limit=3, window=timedelta(minutes=15))
    for _ in range(3):
        assert not throttle.blocked("anna", T0)
        throttle.failed("anna", T0)
    assert throttle.blocked("anna", T0 + timedelta(minutes=1))
    assert not throttle.blocked("ivan", T0), "other names are not affected"
    assert not throttle.blocked("anna", T0 + timedelta(minutes=16)), "the window passes"


async def test_too_many_wrong_passwords_lock_the_name(client: TestClient[Any, Any]) -> None:
    for _ in range(5):
        token = await csrf_of(client, "/login")
        resp = await client.post(
            "/login", data={"csrf": token, "name": "supervisor", "password": "guess"}
        )
        assert resp.status == 401
    token = await csrf_of(client, "/login")
    resp = await client.post(
        "/login", data={"csrf": token, "name": "supervisor", "password": "demo-supervisor"}
    )
    assert resp.status == 429, "even the right password waits out the lock"


async def test_agents_do_not_answer_for_an_external_party(client: TestClient[Any, Any]) -> None:
    await login(client, "supervisor", "demo-supervisor")
    token = await csrf_of(client, "/sub/sr_store")
    resp = await client.post(
        "/sub/sr_store", data={"csrf": token, "action": "resolve", "text": "done"}
    )
    assert resp.status == 400


# ---------------------------------------------------------------- rule playground (real CLI)


async def playground(client: TestClient[Any, Any], **form: str) -> tuple[int, str]:
    """POST the playground form as a supervisor, with the running workflow unless given."""
    await login(client, "supervisor", "demo-supervisor")
    rules = client.app[CONSOLE].settings.rules_path
    data = {"csrf": await csrf_of(client, "/playground"), "tier": "standard",
            "workflow": rules.read_text(encoding="utf-8"), **form}  # fmt: skip
    resp = await client.post("/playground", data=data)
    return resp.status, await resp.text()


async def test_playground_says_when_the_explain_command_fails(
    client: TestClient[Any, Any],
) -> None:
    # A channel the CLI does not know: the real `pipeline rules explain` exits 2 (argparse).
    status, page = await playground(client, text="бонусы не списались", channel="pigeon")
    assert status == 200
    assert '<pre id="pg-check" class="ok">ok:' in page, "the workflow itself is fine"
    explained = re.search(r'<pre id="pg-explain" class="error">([^<]*)</pre>', page)
    assert explained, page
    first, rest = explained.group(1).split("\n", 1)
    assert first == "pipeline rules explain failed (exit code 2):"
    assert "invalid choice: &#39;pigeon&#39;" in rest


async def test_playground_says_when_the_command_cannot_start(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-python"))
    status, page = await playground(client, text="бонусы", channel="telegram")
    assert status == 200, "an error on the page, not a 500"
    checked = re.search(r'<pre id="pg-check" class="error">([^<]*)</pre>', page)
    assert checked, page
    assert checked.group(1).startswith("pipeline rules check could not be started: ")
    assert "no-python" in checked.group(1)
    assert 'id="pg-explain"' not in page


async def test_playground_says_when_the_command_does_not_finish(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time at all: the real command is started, waited for 0 s and killed.
    monkeypatch.setattr("pipeline.console.web.EXPLAIN_TIMEOUT_S", 0.0)
    status, page = await playground(client, text="бонусы", channel="telegram")
    assert status == 200
    assert '<pre id="pg-check" class="error">pipeline rules check did not finish within 0 s' in page
    assert 'id="pg-explain"' not in page
