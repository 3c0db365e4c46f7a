"""A running worker + ingest pair on the real broker, and the ways tests talk to it.

Fixtures return the functions (factories, as in quix-streams' ``tests/conftest.py``): HTTP in
(``post_json``, ``get_text``, ``telegram``), departments and directors answering
(``resolve_internal``, ``reply_by_mail``), a customer's case from its first message to every
answer (``cases``), starting a stack of one's own (``running_stack``, ``add_worker``) and
watching what reached the outbox (``deliveries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import smtplib
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.mime.text import MIMEText
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import bus
from pipeline.broker import EmbeddedBroker, free_port
from pipeline.config import DEFAULT_CONFIG_DIR, Settings
from pipeline.events import (
    Outcome,
    Reply,
    SubRequest,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.outbox import Outbox, OutboxItem
from pipeline.runtime import Children, child_env, children, departments, own_stack, wait_http
from pipeline.topics import task_topic
from tests.plugins.inbound import telegram_update
from tests.plugins.topics import Records
from tests.plugins.waiting import Batch, Patience, collect_until_quiet, poll, poll_sync

PostJson = Callable[..., tuple[int, Any]]
GetText = Callable[[str], tuple[int, str]]
GetJson = Callable[[str], tuple[int, Any]]
ProbeJson = Callable[[str], tuple[int, Any] | None]
ProbeUntil = Callable[..., Any]
StackSettings = Callable[[Settings, str], Settings]
RunningStack = Callable[..., contextlib.AbstractContextManager[tuple[Settings, Children]]]
AddWorker = Callable[[Settings, Children, Outbox], int]
Telegram = Callable[[Settings, int, int, str], tuple[int, Any]]
ResolveInternal = Callable[..., Any]
ReplyByMail = Callable[[Settings, str, str, str], None]


def _post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON; returns (status, parsed body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


def _get_text(url: str) -> tuple[int, str]:
    """GET a URL; returns (status, body text)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()


def _get_json(url: str) -> tuple[int, Any]:
    """GET a JSON endpoint; returns (status, parsed body), error statuses too (a 503 probe)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _probe_json(url: str) -> tuple[int, Any] | None:
    """``_get_json``, or None while nothing listens there (a process starting or ending)."""
    try:
        return _get_json(url)
    except OSError:
        return None


def _probe_until(
    url: str, status: int, *, timeout_s: float, what: str, interval_s: float = 0.2
) -> Any:
    """Probe ``url`` (``_probe_json``) until it answers ``status``: its parsed body."""

    def answered() -> tuple[int, Any] | None:
        got = _probe_json(url)
        return got if got is not None and got[0] == status else None

    return poll_sync(answered, timeout_s=timeout_s, what=what, interval_s=interval_s)[1]


def _stack_settings(base: Settings, prefix: str) -> Settings:
    """``base`` with topics (created here), a consumer group and ports of its own, and the
    short group timeouts of the tests."""
    s = own_stack(base, prefix, lag_interval_s=1.0)
    asyncio.run(bus.ensure_topics(s, departments=departments(s)))
    return s


def _add_worker(stack: Settings, group: Children, outbox: Outbox) -> int:
    """Start one more worker in the stack's consumer group; its web port, once it answers."""
    port = free_port()
    name = f"worker-{sum(1 for n, _ in group.procs if n.startswith('worker')) + 1}"
    group.start(name, ["worker", "--web-port", str(port)], child_env(stack, **outbox.env()))
    # A failure bound (model loading on a loaded machine), not a timing check.
    wait_http(f"http://{stack.web_host}:{port}/healthz", 600, group)
    return port


@contextlib.contextmanager
def _running_stack(
    base: Settings, outbox: Outbox, prefix: str, **env: str
) -> Iterator[tuple[Settings, Children]]:
    """A worker + ingest pair on fresh topics (``env``: more for their environment), stopped
    when the ``with`` block ends."""
    s = _stack_settings(base, prefix)
    with children() as group:
        more = child_env(s, **outbox.env(), **env)
        group.start("worker", ["worker"], more)
        group.start("ingest", ["ingest"], more)
        wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 60, group)
        # A failure bound, not a timing check: the first worker of a session may have to train
        # the default model (minutes on a loaded machine) before it answers.
        wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 600, group)
        yield s, group


def _telegram(stack: Settings, chat: int, msg_id: int, text: str) -> tuple[int, Any]:
    """Post a Telegram Bot API Update to the ingest webhook."""
    update = telegram_update(chat, msg_id, text, int(time.time()), "Тест", chat * 1000 + msg_id)
    return _post_json(f"http://{stack.ingest_host}:{stack.ingest_port}/webhooks/telegram", update)


async def _resolve_internal(
    stack: Settings, sub: SubRequest, resolution: str, status: TaskStatus = TaskStatus.resolved
) -> None:
    """The department answers its sub-request in the system (a TaskUpdate; ``status``
    rejected: ``resolution`` is the reason)."""
    pub = bus.Publisher(stack)
    try:
        await pub.send(
            stack.topic("task-updates"),
            sub.case_id,
            TaskUpdate(
                update_id=f"upd-{sub.sub_request_id}"
                + ("" if status is TaskStatus.resolved else f"-{status.value}"),
                sub_request_id=sub.sub_request_id,
                case_id=sub.case_id,
                status=status,
                resolution=resolution,
                at=utcnow(),
            ),
        )
    finally:
        await pub.close()


def _reply_by_mail(stack: Settings, sender: str, to: str, text: str) -> None:
    """An external party answers the e-mail it got (to its reply+TOKEN address)."""
    answer = MIMEText(text, "plain", "utf-8")
    answer["From"] = sender
    answer["To"] = to
    answer["Subject"] = "Re: обращение"
    answer["Message-ID"] = make_msgid(domain="example.com")
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, timeout=30) as smtp:
        smtp.send_message(answer)


@dataclass(frozen=True)
class OpenCase:
    """A customer's first message on a Telegram chat, its Outcome and its sub-requests."""

    chat: int
    outcome: Outcome
    subs: list[SubRequest]

    @property
    def case_id(self) -> str:
        assert self.outcome.case_id, self.outcome
        return self.outcome.case_id

    def sub(self, department: str) -> SubRequest:
        """The case's sub-request for ``department``."""
        (sub,) = [s for s in self.subs if s.department == department]
        return sub


@dataclass(frozen=True)
class Cases:
    """A customer writes on Telegram and the departments answer: on the real stack."""

    records: Records

    async def message(self, stack: Settings, chat: int, n: int, text: str) -> Outcome:
        """Message ``n`` of ``chat``, once routed: its Outcome."""
        status, _ = _telegram(stack, chat, n, text)
        assert status == 200
        mid = derive_id("msg", "telegram", f"{chat}:{n}")
        return await self.records.first(
            stack, stack.topic("outcomes"), Outcome, lambda o: o.message_id == mid
        )

    async def open(self, stack: Settings, text: str) -> OpenCase:
        """A new customer's first message and the sub-requests it made, one for every
        department of its Outcome (read from their task topics and ``external``)."""
        chat = 9_000_000 + int(uuid.uuid4().int % 900_000)
        outcome = await self.message(stack, chat, 1, text)
        case_id = outcome.case_id
        assert case_id, outcome
        internal = set(departments(stack))

        def of(dept: str) -> Callable[[SubRequest], bool]:
            return lambda s: s.case_id == case_id and s.department == dept

        subs = [
            await self.records.first(
                stack,
                task_topic(stack, dept) if dept in internal else stack.topic("external"),
                SubRequest,
                of(dept),
            )
            for dept in outcome.departments
        ]
        return OpenCase(chat, outcome, subs)

    async def answer_all(
        self,
        stack: Settings,
        case: OpenCase,
        resolved: Mapping[str, str],
        rejected: Mapping[str, str] | None = None,
    ) -> None:
        """Every sub-request of the case answered in the system (TaskUpdates): with the text
        for its department in ``resolved``, or rejected with the reason in ``rejected``."""
        rejected = rejected or {}
        assert {s.department for s in case.subs} == {*resolved, *rejected}, case.subs
        for sub in case.subs:
            if sub.department in rejected:
                await _resolve_internal(stack, sub, rejected[sub.department], TaskStatus.rejected)
            else:
                await _resolve_internal(stack, sub, resolved[sub.department])

    async def answer_once(self, stack: Settings, subs: Iterable[SubRequest], text: str) -> None:
        """Each sub-request in ``subs`` resolved with ``text`` once (its id counted once: a
        replayed record repeats it), e.g. every director's copy of an incident's broadcast."""
        for sub in {s.sub_request_id: s for s in subs}.values():
            await _resolve_internal(stack, sub, text)

    async def resolve_incident(
        self, stack: Settings, broadcast: Iterable[SubRequest], text: str, reporters: set[str]
    ) -> list[Reply]:
        """Every director answers the incident's broadcast with ``text`` (``answer_once``);
        asserts that each of the ``reporters``' messages (the opener and the linked reports)
        gets exactly one resolution reply carrying it, counted once the topic is quiet."""
        await self.answer_once(stack, broadcast, text)
        closed = await self.records.settled(
            stack,
            stack.topic("replies"),
            Reply,
            lambda r: r.message_id in reporters and r.kind.value == "resolution",
            len(reporters),
        )
        told = Counter(r.message_id for r in closed)
        assert told == Counter(reporters), f"each reporter told once: {told}"
        assert all(text in r.text for r in closed), [r.text for r in closed]
        return closed


@dataclass(frozen=True)
class Deliveries:
    """What reached the outbox (the local stand-in for the platforms and the mail relay)."""

    outbox: Outbox
    patience: Patience

    async def first(self, match: Callable[[OutboxItem], bool], what: str) -> OutboxItem:
        """The first delivery matching ``match``; AssertionError naming ``what`` if none comes."""
        return await poll(
            lambda: next((i for i in self.outbox.snapshot() if match(i)), None),
            timeout_s=self.patience.timeout_s,
            what=f"delivery of {what}",
        )

    async def settled(
        self, match: Callable[[OutboxItem], bool], enough: int, settle_s: float | None = None
    ) -> list[OutboxItem]:
        """EVERY matching delivery, once there are ``enough`` and no new one came for a while."""
        taken = 0

        async def fetch() -> Batch[OutboxItem]:
            nonlocal taken
            await asyncio.sleep(self.patience.poll_s)
            items = self.outbox.snapshot()
            new, taken = items[taken:], len(items)
            return Batch([i for i in new if match(i)])

        return await collect_until_quiet(
            fetch,
            enough=lambda seen: len(seen) >= enough,
            settle_s=self.patience.settle_s if settle_s is None else settle_s,
            timeout_s=self.patience.timeout_s,
        )


@pytest.fixture(scope="session")
def post_json() -> PostJson:
    """``post_json(url, payload, headers=None) -> (status, parsed body)``."""
    return _post_json


@pytest.fixture(scope="session")
def get_text() -> GetText:
    """``get_text(url) -> (status, body text)``."""
    return _get_text


@pytest.fixture(scope="session")
def get_json() -> GetJson:
    """``get_json(url) -> (status, parsed body)``, for a 503 as well (health probes)."""
    return _get_json


@pytest.fixture(scope="session")
def probe_json() -> ProbeJson:
    """``probe_json(url) -> (status, parsed body)``, or None while nothing listens there:
    a health probe of a process that is starting or ending."""
    return _probe_json


@pytest.fixture(scope="session")
def probe_until() -> ProbeUntil:
    """``probe_until(url, status, timeout_s=, what=, interval_s=0.2) -> parsed body``: a
    health probe polled until it answers ``status`` (None while nothing listens counts as
    not yet); AssertionError naming ``what`` after ``timeout_s``."""
    return _probe_until


@pytest.fixture(scope="session")
def add_worker() -> AddWorker:
    """``add_worker(stack, children, outbox) -> web port``: one more worker in the group."""
    return _add_worker


@pytest.fixture(scope="session")
def fast_sla_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the default workflow whose SLAs are a minute long (first response 1 min,
    resolution 3 min, warnings at half the time, no business hours; the standard policy
    escalates to the supervisor, then reroutes to triage): ``rules_path`` of a stack."""
    wf = yaml.safe_load((DEFAULT_CONFIG_DIR / "workflow.yaml").read_text(encoding="utf-8"))
    minute = {level: "1m" for level in ("P1", "P2", "P3", "P4")}
    three = {level: "3m" for level in ("P1", "P2", "P3", "P4")}
    for policy in wf["sla_policies"].values():
        policy.update(first_response=minute, resolution=three, business_hours=False)
        policy["warn_before"] = 0.5
    wf["sla_policies"]["standard"]["escalation"] = [
        {"type": "notify_supervisor"},
        {"type": "reroute", "department": "triage"},
    ]
    out = tmp_path_factory.mktemp("sla") / "workflow-fast-sla.yaml"
    out.write_text(yaml.safe_dump(wf, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    """``stack_settings(base, prefix) -> settings`` on topics (created), a consumer group and
    ports of their own, for processes a test starts itself."""
    return _stack_settings


@pytest.fixture(scope="session")
def running_stack() -> RunningStack:
    """``with running_stack(base, outbox, prefix, **env) as (settings, children):`` a worker +
    ingest pair of one's own, stopped when the block ends."""
    return _running_stack


@pytest.fixture(scope="session")
def cases(records: Records) -> Cases:
    """``await cases.open(stack, text)``, ``cases.message(stack, chat, n, text)``,
    ``cases.answer_all(stack, case, resolved, rejected)``, ``cases.answer_once(stack, subs,
    text)``, ``cases.resolve_incident(stack, broadcast, text, reporters)``: a customer's case
    on the stack, sub-requests answered, an incident resolved and its reporters told."""
    return Cases(records)


@pytest.fixture(scope="session")
def telegram() -> Telegram:
    """``telegram(stack, chat, msg_id, text)`` posts a Bot API update to the ingest webhook."""
    return _telegram


@pytest.fixture(scope="session")
def resolve_internal() -> ResolveInternal:
    """``await resolve_internal(stack, sub, resolution, status=resolved)``: the department's
    TaskUpdate."""
    return _resolve_internal


@pytest.fixture(scope="session")
def reply_by_mail() -> ReplyByMail:
    """``reply_by_mail(stack, sender, to, text)``: an external party answers by e-mail."""
    return _reply_by_mail


@pytest.fixture(scope="session")
def outbox() -> Iterator[Outbox]:
    """Local stand-ins for the platform APIs and the mail relay (real HTTP and SMTP)."""
    box = Outbox().start()
    try:
        yield box
    finally:
        box.stop()


@dataclass(frozen=True)
class OwnBroker:
    """A test's own embedded Tansu (not the session's) and a stack's settings on it."""

    broker: EmbeddedBroker
    #: Topics, group and ports of their own (``own_stack``); processes ask the broker every
    #: second (``lag_interval_s``). The topics are not created.
    settings: Settings

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Its Tansu stopped (SIGSTOP) inside the block, resumed (SIGCONT) after: a broker that
        answers nothing for a while and then goes on with its data, as one behind a network
        partition or stuck in a long pause."""
        tansu = self.broker._proc
        assert tansu is not None
        tansu.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            tansu.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL its Tansu as the test's own act: not reported as the broker's death
        (``EmbeddedBroker.on_death``). ``broker.start()`` starts it again, on the same port
        and empty (Tansu keeps its data in memory)."""
        tansu, self.broker._proc = self.broker._proc, None
        assert tansu is not None
        tansu.kill()
        tansu.wait()


@pytest.fixture
def own_broker(broker_settings: Settings) -> Iterator[OwnBroker]:
    """A broker of the test's own, to kill and start again; stopped after the test."""
    broker = EmbeddedBroker().start()
    try:
        yield OwnBroker(
            broker,
            own_stack(
                broker_settings,
                "ob",
                kafka_bootstrap_servers=broker.bootstrap_servers,
                lag_interval_s=1.0,
            ),
        )
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def deliveries_of(patience: Patience) -> Callable[[Outbox], Deliveries]:
    """``deliveries_of(box)``: what a test's own outbox received (``first``, ``settled``)."""
    return lambda box: Deliveries(box, patience)


@pytest.fixture(scope="session")
def deliveries(outbox: Outbox, patience: Patience) -> Deliveries:
    """What the session stack delivered to the outbox (``first``, ``settled``)."""
    return Deliveries(outbox, patience)
