"""The console's HTTP server (aiohttp): server-rendered pages, escaped by Jinja2's autoescape.

Security, in middlewares that every page goes through: a signed session cookie (HttpOnly,
SameSite=Strict), a CSRF token checked on every POST, login required everywhere except the
login page, the external responder's signed page and the static files, and headers with a
strict Content-Security-Policy (no inline script or style at all, so injected markup that
escaped escaping still could not run), no framing, no referrer (responder links carry
their token in the path).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import orjson
from aiohttp import web

from pipeline.bus import Publisher
from pipeline.config import Settings
from pipeline.console.auth import (
    LoginThrottle,
    Session,
    User,
    csrf_token,
    new_session,
    read_session,
    session_cookie,
    verify_password,
)
from pipeline.console.store import CaseFilter, Store
from pipeline.domain.links import parse_responder_token
from pipeline.domain.text import find_pii
from pipeline.events import CaseCommand, Channel, TaskStatus, TaskUpdate, derive_id, utcnow

__all__ = ["CONSOLE", "Console", "build_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "care_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = ("/login", "/respond/", "/static/", "/healthz")
ACTIONS = {"acknowledge": TaskStatus.acknowledged, "resolve": TaskStatus.resolved,
           "reject": TaskStatus.rejected}  # fmt: skip
EXPLAIN_TIMEOUT_S = 180.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Console:
    """What the pages need: settings, the read model, users, the producer, the workflow."""

    settings: Settings
    store: Store
    users: dict[str, User]
    departments: list[str]
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    publisher: Publisher | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    #: Why this replica is unhealthy: its broker stopped answering (``server.watch_broker``).
    broker: str | None = None

    def pub(self) -> Publisher:
        """The durable producer (started on first use)."""
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        return self.publisher


@dataclass(frozen=True)
class RequestState:
    """Who is asking: the session and its user (None before login)."""

    session: Session
    user: User | None


CONSOLE = web.AppKey("console", Console)
STATE = web.RequestKey("state", RequestState)
JINJA = web.AppKey("jinja", jinja2.Environment)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped; nothing is marked safe
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["visible"] = visible
    return env


def _when(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))


# Bidirectional controls and other invisible format characters: shown as visible marks so
# a name holding U+202E cannot reverse the text around it (Trojan Source).
_BIDI_CODES = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
_BIDI = {c: f"[U+{c:04X}]" for c in _BIDI_CODES}


def visible(value: Any) -> str:
    """Text with bidi-control characters made visible (escaping is the template's job)."""
    return "" if value is None else str(value).translate(_BIDI)


def mask_pii(text: str) -> str:
    """Text for an external party: card numbers, phones and e-mails replaced by a mark."""
    out, pos = [], 0
    for span in find_pii(text):
        if span.start < pos:
            continue
        out += [text[pos : span.start], f"[{span.kind}]"]
        pos = span.end
    return "".join([*out, text[pos:]])


def build_app(console: Console) -> web.Application:
    """The aiohttp application of the console."""
    app = web.Application(middlewares=[_headers, _session(console), _guard(console)])
    app[CONSOLE] = console
    app[JINJA] = _env()
    r = app.router
    r.add_get("/healthz", _healthz)
    r.add_get("/login", _login_form)
    r.add_post("/login", _login)
    r.add_post("/logout", _logout)
    r.add_get("/", _home)
    r.add_get("/cases", _cases)
    r.add_get("/cases/{case_id}", _case)
    r.add_post("/cases/{case_id}/command", _command)
    r.add_get("/queue", _queue)
    r.add_get("/sub/{sub_id}", _sub)
    r.add_post("/sub/{sub_id}", _sub_update)
    r.add_get("/quality", _quality)
    r.add_get("/playground", _playground)
    r.add_post("/playground", _playground)
    r.add_get("/respond/{token}", _respond)
    r.add_post("/respond/{token}", _respond)
    r.add_get("/version", _version)
    r.add_static("/static/", HERE / "static", append_version=False)
    return app


# ---------------------------------------------------------------- middlewares


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        resp = exc
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        resp.headers["Cache-Control"] = "no-store"
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


def _set_cookie(resp: web.StreamResponse, console: Console, session: Session) -> None:
    resp.set_cookie(
        COOKIE,
        session_cookie(session, console.secret),
        httponly=True,
        samesite="Strict",
        secure=console.settings.console_secure_cookies,
        path="/",
        max_age=int(console.settings.console_session_hours * 3600),
    )


def _session(console: Console) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        now = utcnow()
        session = read_session(request.cookies.get(COOKIE), console.secret, now)
        fresh = session is None
        if session is None:
            session = new_session("", now, console.settings)
        user = console.users.get(session.user) if session.user else None
        request[STATE] = RequestState(session, user)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if fresh and COOKIE not in exc.cookies:
                _set_cookie(exc, console, session)
            raise
        if fresh and COOKIE not in resp.cookies:
            _set_cookie(resp, console, session)
        return resp

    return middleware


def _guard(console: Console) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            form = await request.post()
            want = csrf_token(request[STATE].session, console.secret)
            if not secrets.compare_digest(str(form.get("csrf", "")), want):
                raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page")
        if request[STATE].user is None and not request.path.startswith(PUBLIC):
            raise web.HTTPFound("/login")
        return await handler(request)

    return middleware


# ---------------------------------------------------------------- helpers


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


async def _home(_: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/cases")


def _render(request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
    env = request.app[JINJA]
    console = _console(request)
    html = env.get_template(name).render(
        user=request[STATE].user,
        csrf=csrf_token(request[STATE].session, console.secret),
        version=console.store.version,
        **ctx,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _user(request: web.Request) -> User:
    """The logged-in user (the guard middleware lets no anonymous request reach a page)."""
    user = request[STATE].user
    if user is None:
        raise web.HTTPFound("/login")
    return user


def _scope(user: User) -> str | None:
    """The only department a user may see, None for a supervisor."""
    return None if user.role == "supervisor" else user.department


def _form_text(form: Any, name: str, limit: int = 10_000) -> str:
    return str(form.get(name, "")).strip()[:limit]


async def _publish(console: Console, topic: str, key: str, event: Any) -> None:
    await console.pub().send(console.settings.topic(topic), key, event)


# ---------------------------------------------------------------- pages


async def _healthz(request: web.Request) -> web.Response:
    # 503 while the broker is away (seconds, not never): the supervisor sees the outage.
    console = _console(request)
    doc = {
        "status": "broker" if console.broker else "ok",
        "ready": console.ready.is_set(),
        "version": console.store.version,
    }
    if console.broker:
        doc["broker"] = console.broker
    return web.json_response(doc, status=503 if console.broker else 200)


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": _console(request).store.version})


async def _login_form(request: web.Request) -> web.Response:
    return _render(request, "login.html", error="")


async def _login(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    form = await request.post()
    name = _form_text(form, "name", 100)
    now = utcnow()
    if console.throttle.blocked(name, now):
        return _render(
            request, "login.html", status=429, error="too many failed attempts; try again later"
        )
    user = console.users.get(name)
    password = str(form.get("password", ""))
    if user is None or not verify_password(password, user.password):
        console.throttle.failed(name, now)
        return _render(request, "login.html", status=401, error="wrong name or password")
    console.throttle.succeeded(name)
    resp = web.HTTPSeeOther("/queue" if user.role == "agent" else "/cases")
    _set_cookie(resp, console, new_session(user.name, utcnow(), console.settings))
    raise resp


async def _logout(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    resp = web.HTTPSeeOther("/login")
    _set_cookie(resp, console, new_session("", utcnow(), console.settings))
    raise resp


async def _cases(request: web.Request) -> web.Response:
    console = _console(request)
    user = _user(request)
    q = request.query
    f = CaseFilter(**{k: q.get(k, "")[:200] for k in CaseFilter.__dataclass_fields__})
    rows = console.store.cases(f, department=_scope(user))
    return _render(
        request,
        "cases.html",
        rows=rows,
        f=f,
        departments=console.departments,
        fragment=q.get("fragment") == "1",
    )


def _visible_case(request: web.Request, case_id: str) -> Any:
    console = _console(request)
    row = console.store.case(case_id)
    if row is None:
        raise web.HTTPNotFound(text="no such case (yet)")
    if not console.store.case_visible(case_id, _scope(_user(request))):
        raise web.HTTPForbidden(text="this case belongs to another department")
    return row


async def _case(request: web.Request) -> web.Response:
    console = _console(request)
    case_id = request.match_info["case_id"]
    row = _visible_case(request, case_id)
    state = orjson.loads(row["state"])
    subs = console.store.case_subs(case_id)
    replies = console.store.replies(case_id)
    return _render(
        request,
        "case.html",
        case=row,
        state=state,
        messages=console.store.messages(state.get("message_ids") or []),
        subs=subs,
        updates={s["sub_request_id"]: console.store.updates(s["sub_request_id"]) for s in subs},
        notices={s["sub_request_id"]: console.store.notices(s["sub_request_id"]) for s in subs},
        ignored=console.store.ignored_updates(case_id),
        sub_deliveries={
            s["sub_request_id"]: console.store.deliveries(s["sub_request_id"]) for s in subs
        },
        replies=replies,
        deliveries={r.reply_id: console.store.deliveries(r.reply_id) for r in replies},
        timeline=console.store.timeline(case_id),
        departments=console.departments,
        sent=request.query.get("sent", ""),
        fragment=request.query.get("fragment") == "1",
    )


async def _queue(request: web.Request) -> web.Response:
    console = _console(request)
    user = _user(request)
    dept = user.department if user.role == "agent" else request.query.get("department", "")
    if user.role == "agent":
        dept = user.department or ""
    dept = dept or (console.departments[0] if console.departments else "")
    return _render(
        request,
        "queue.html",
        department=dept,
        rows=console.store.queue(dept) if dept else [],
        departments=console.departments,
        fragment=request.query.get("fragment") == "1",
    )


def _visible_sub(request: web.Request) -> Any:
    console = _console(request)
    sub = console.store.sub(request.match_info["sub_id"])
    if sub is None:
        raise web.HTTPNotFound(text="no such sub-request (yet)")
    user = _user(request)
    if not user.sees(sub["department"]):
        raise web.HTTPForbidden(text="this sub-request belongs to another department")
    return sub


async def _sub(request: web.Request) -> web.Response:
    console = _console(request)
    sub = _visible_sub(request)
    return _render(
        request,
        "sub.html",
        sub=sub,
        case=console.store.case(sub["case_id"]),
        updates=console.store.updates(sub["sub_request_id"]),
        notices=console.store.notices(sub["sub_request_id"]),
        ignored=console.store.ignored_updates(sub["case_id"]),
        nonce=secrets.token_urlsafe(12),
        sent=request.query.get("sent", ""),
        fragment=request.query.get("fragment") == "1",
    )


async def _sub_update(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    sub = _visible_sub(request)
    user = _user(request)
    form = await request.post()
    status = ACTIONS.get(_form_text(form, "action", 20))
    text = _form_text(form, "text")
    if status is None:
        raise web.HTTPBadRequest(text="unknown action")
    if sub["kind"] != "internal":
        raise web.HTTPBadRequest(text="an external party answers by e-mail or its answer page")
    if status == TaskStatus.resolved and not text:
        raise web.HTTPBadRequest(text="an answer for the customer is required to resolve")
    nonce = _form_text(form, "nonce", 64) or secrets.token_urlsafe(12)
    update = TaskUpdate(
        # the form's nonce: a double submit is one update (the case keeper drops the repeat)
        update_id=derive_id("upd", "console", sub["sub_request_id"], status.value, nonce),
        sub_request_id=sub["sub_request_id"],
        case_id=sub["case_id"],
        status=status,
        resolution=text or None,
        author=user.name,
        source="console",
        at=utcnow(),
    )
    await _publish(console, "task-updates", update.case_id, update)
    raise web.HTTPSeeOther(f"/sub/{sub['sub_request_id']}?sent={status.value}")


async def _command(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    user = _user(request)
    if user.role != "supervisor":
        raise web.HTTPForbidden(text="only a supervisor can reassign or add sub-requests")
    case_id = request.match_info["case_id"]
    _visible_case(request, case_id)
    form = await request.post()
    action = _form_text(form, "action", 20)
    department = _form_text(form, "department", 100)
    if action not in ("reassign", "add") or department not in console.departments:
        raise web.HTTPBadRequest(text="choose reassign or add, and a department")
    sub_id = _form_text(form, "sub_request_id", 100) or None
    if action == "reassign" and (sub_id is None or console.store.sub(sub_id) is None):
        raise web.HTTPBadRequest(text="choose the sub-request to reassign")
    command = CaseCommand(
        command_id=derive_id("cmd", case_id, action, sub_id or "", department,
                             _form_text(form, "nonce", 64) or secrets.token_urlsafe(12)),
        case_id=case_id,
        action="reassign" if action == "reassign" else "add",
        sub_request_id=sub_id if action == "reassign" else None,
        department=department,
        text=_form_text(form, "text") or None,
        author=user.name,
        at=utcnow(),
    )  # fmt: skip
    await _publish(console, "case-commands", case_id, command)
    raise web.HTTPSeeOther(f"/cases/{case_id}?sent={action}")


async def _quality(request: web.Request) -> web.Response:
    console = _console(request)
    scope = _scope(_user(request))
    return _render(
        request,
        "quality.html",
        negative=console.store.quality(scope),
        sla=console.store.sla_events(scope),
    )


@dataclass(frozen=True)
class CliRun:
    """What a ``pipeline`` command run by the playground said, and whether it succeeded."""

    ok: bool
    output: str


async def _run_pipeline(*args: str) -> CliRun:
    """Run a ``pipeline`` CLI command (the playground shows exactly what the CLI says); a
    command that could not start, failed or hung says so in its first line."""
    command = "pipeline " + " ".join(args[:2])
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        log.error("playground: cannot start %s: %r", command, exc)
        return CliRun(False, f"{command} could not be started: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), EXPLAIN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("playground: %s killed after %.0f s", command, EXPLAIN_TIMEOUT_S)
        return CliRun(False, f"{command} did not finish within {EXPLAIN_TIMEOUT_S:.0f} s")
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        return CliRun(False, f"{command} failed (exit code {proc.returncode}):\n{text}")
    return CliRun(True, text)


async def _playground(request: web.Request) -> web.Response:
    console = _console(request)
    if _user(request).role != "supervisor":
        raise web.HTTPForbidden(text="the rule playground is for supervisors")
    running = Path(console.settings.rules_path).read_text(encoding="utf-8")
    ctx: dict[str, Any] = {
        "text": "",
        "channel": "telegram",
        "tier": "standard",
        "workflow": running,
        "check": None,
        "explain": None,
        "channels": [c.value for c in Channel],
    }
    if request.method == "POST":
        form = await request.post()
        ctx["text"] = _form_text(form, "text")
        ctx["channel"] = _form_text(form, "channel", 20) or "telegram"
        ctx["tier"] = _form_text(form, "tier", 20) or "standard"
        edited = str(form.get("workflow", "")).replace("\r\n", "\n")[:1_000_000]
        ctx["workflow"] = edited or running
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp) / "workflow.yaml"
            rules.write_text(ctx["workflow"], encoding="utf-8")
            check = await _run_pipeline("rules", "check", str(rules))
            ctx["check"] = CliRun(check.ok, check.output.replace(str(rules), "workflow.yaml"))
            if check.ok and ctx["text"]:
                ctx["explain"] = await _run_pipeline(
                    "rules", "explain", "--rules", str(rules), "--channel", ctx["channel"],
                    "--tier", ctx["tier"], "--", ctx["text"],
                )  # fmt: skip
    return _render(request, "playground.html", **ctx)


async def _respond(request: web.Request) -> web.Response:
    """The external party's answer page: no account, the signed link is the credential."""
    console = _console(request)
    link = parse_responder_token(request.match_info["token"], console.settings, now=utcnow())
    if link is None:
        return _render(request, "respond.html", status=403, link=None, sub=None, done=False)
    sub = console.store.sub(link.sub_request_id)
    if sub is None or sub["case_id"] != link.case_id:
        return _render(request, "respond.html", status=404, link=link, sub=None, done=False)
    done = False
    if request.method == "POST":
        form = await request.post()
        answer = _form_text(form, "answer")
        if answer:
            update = TaskUpdate(
                # one per sub-request: submitting the page twice is one answer
                update_id=derive_id("upd", "console-respond", link.sub_request_id),
                sub_request_id=link.sub_request_id,
                case_id=link.case_id,
                status=TaskStatus.resolved,
                resolution=answer,
                author=sub["recipient"],
                source="console",
                at=utcnow(),
            )
            await _publish(console, "task-updates", link.case_id, update)
            done = True
    return _render(
        request,
        "respond.html",
        link=link,
        sub=sub,
        question=mask_pii(sub["text"] or ""),
        answered=sub["status"] in ("resolved", "rejected"),
        done=done,
    )
