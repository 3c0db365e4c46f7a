"""``pipeline demo``: broker + worker + ingest, real sample messages fed through every channel.

Each sample is sent the way its platform would send it: Telegram ``Update`` JSON to the
Telegram webhook, a Twilio form post to the SMS webhook, a MIME e-mail over SMTP, the generic
JSON format for web chat and web forms. Then every message's outcome is read back from the
outcomes topic (and rejects from the dead-letter topic) and a summary is printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.mime.text import MIMEText
from email.utils import make_msgid
from importlib import resources
from typing import Any

from pydantic import SecretStr

from pipeline import bus
from pipeline.broker import broker_for, free_port
from pipeline.codec import decode, decode_case_events
from pipeline.config import Settings
from pipeline.console.auth import DEMO_USERS
from pipeline.console.server import console_env
from pipeline.errors import DecodeError, PipelineError
from pipeline.events import (
    CaseEvent,
    DeadLetter,
    Outcome,
    SubRequest,
    TaskNotice,
    TaskStatus,
    TaskUpdate,
    derive_id,
    utcnow,
)
from pipeline.ingest.channels import twilio_signature
from pipeline.logs import setup_logging
from pipeline.outbox import Outbox, OutboxItem, describe
from pipeline.runtime import Children, child_env, children, departments, wait_http
from pipeline.topics import task_topic

log = logging.getLogger(__name__)


def load_samples() -> list[dict[str, Any]]:
    """The shipped sample messages."""
    text = (resources.files("pipeline") / "resources" / "samples" / "messages.jsonl").read_text(
        encoding="utf-8"
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Sent:
    """What happened when one sample was offered to the ingest adapter."""

    sample: dict[str, Any]
    channel_message_id: str
    message_id: str
    status: int
    detail: str


def _post(url: str, data: bytes, content_type: str | dict[str, str]) -> tuple[int, str]:
    headers = {"Content-Type": content_type} if isinstance(content_type, str) else content_type
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def send_sample(
    settings: Settings, sample: dict[str, Any], n: int, chat_id: int | None = None
) -> Sent:
    """Offer one sample to the ingest adapter in its channel's own format."""
    base = f"http://{settings.ingest_host}:{settings.ingest_port}"
    channel = sample["channel"]
    cust = sample["customer"]
    if channel == "telegram":
        uid = chat_id or 100000 + n
        cmid = f"{uid}:{n}"
        update = {
            "update_id": 900000 + n,
            "message": {
                "message_id": n,
                "date": int(time.time()),
                "chat": {"id": uid, "type": "private", "first_name": cust},
                "from": {"id": uid, "is_bot": False, "first_name": cust},
                "text": sample["text"],
            },
        }
        status, body = _post(
            f"{base}/webhooks/telegram", json.dumps(update).encode(), "application/json"
        )
        msg_id = derive_id("msg", "telegram", cmid)
    elif channel == "sms":
        sid = f"SM{derive_id('x', cust, str(n))[2:34]}"
        form = {
            "From": f"+1555{n:07d}",
            "To": "+15550000000",
            "Body": sample["text"],
            "MessageSid": sid,
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if settings.twilio_auth_token is not None:
            url = f"{settings.public_base_url.rstrip('/')}/webhooks/twilio"
            headers["X-Twilio-Signature"] = twilio_signature(
                settings.twilio_auth_token.get_secret_value(), url, form
            )
        status, body = _post(
            f"{base}/webhooks/twilio", urllib.parse.urlencode(form).encode(), headers
        )
        cmid, msg_id = sid, derive_id("msg", "sms", sid)
    elif channel == "email":
        mail = MIMEText(sample["text"], "plain", "utf-8")
        mail["From"] = f"{cust}@example.net"
        mail["To"] = settings.support_addresses[0]
        mail["Subject"] = "Обращение" if sample.get("language") == "ru" else "Support request"
        mail["Message-ID"] = cmid = make_msgid(idstring=f"demo{n}", domain="example.net")
        try:
            with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
                smtp.send_message(mail)
            status, body = 250, "accepted"
        except smtplib.SMTPException as exc:
            status, body = 500, repr(exc)
        msg_id = derive_id("msg", "email", cmid)
    else:
        cmid = f"demo-{n}"
        payload = {
            "channel": channel,
            "message_id": cmid,
            "customer": {"id": cust, "email": f"{cust}@example.net"},
            "text": sample["text"],
        }
        status, body = _post(f"{base}/ingest", json.dumps(payload).encode(), "application/json")
        msg_id = derive_id("msg", channel, cmid)
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and parsed.get("message_id"):
            msg_id = str(parsed["message_id"])
    except ValueError:
        pass
    return Sent(sample, cmid, msg_id, status, body[:200])


async def collect(
    settings: Settings, wanted: set[str], timeout_s: float
) -> tuple[dict[str, Outcome], list[DeadLetter]]:
    """Read outcomes until every wanted message id has one (or the timeout)."""
    outcomes: dict[str, Outcome] = {}
    dead: list[DeadLetter] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with bus.reader(settings, settings.topic("outcomes"), settings.topic("dlq")) as c:
        while loop.time() < deadline and not wanted <= outcomes.keys():
            batch = await c.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                for m in msgs:
                    try:
                        if tp.topic == settings.topic("outcomes"):
                            o = decode(Outcome, m.value)
                            outcomes.setdefault(o.message_id, o)
                        else:
                            dead.append(decode(DeadLetter, m.value))
                    except DecodeError:
                        continue
    return outcomes, dead


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def out(line: str = "", end: str = "\n") -> None:
    """Demo output for the person watching."""
    sys.stdout.write(line + end)
    sys.stdout.flush()


def run_demo(settings: Settings, *, serve: bool = True, timeout_s: float = 120.0) -> int:
    """Run the whole product end to end; returns 0 when every sample is accounted for."""
    ingest_port = _port(settings.ingest_port)
    settings = settings.model_copy(
        update={
            "web_port": _port(settings.web_port),
            "ingest_port": ingest_port,
            "smtp_port": _port(settings.smtp_port),
            "console_port": _port(settings.console_port),
            "public_base_url": f"http://127.0.0.1:{ingest_port}",
            "twilio_auth_token": settings.twilio_auth_token or SecretStr("demo-twilio-token"),
        }
    )
    # The terminal gets progress and results; the framework's, the broker's and the
    # children's logs go to one file, named first.
    log_path = settings.data_dir / "logs" / f"demo-{utcnow():%Y%m%d-%H%M%S}.log"
    setup_logging(settings.log_format, path=log_path)
    out(f"care-router demo; the logs of the broker, the workers and the framework: {log_path}")
    outbox = Outbox().start()
    try:
        with broker_for(settings, log_path) as s, children(log_path) as group:
            return _run(s, group, outbox, serve=serve, timeout_s=timeout_s)
    except PipelineError as exc:
        out()
        out(f"the demo stopped: {exc}")
        out(f"what happened before it is in {log_path}")
        return 1
    finally:
        outbox.stop()


def _run(s: Settings, group: Children, outbox: Outbox, *, serve: bool, timeout_s: float) -> int:
    out(f"broker: {s.kafka_bootstrap_servers}")
    asyncio.run(bus.ensure_topics(s, departments=departments(s)))
    env = child_env(
        s,
        PIPELINE_PUBLIC_BASE_URL=s.public_base_url,
        PIPELINE_TWILIO_AUTH_TOKEN=s.twilio_auth_token.get_secret_value()
        if s.twilio_auth_token
        else "",
        **outbox.env(),
    )
    console_url = f"http://{s.console_host}:{s.console_port}"
    env.update(console_env(s, console_url))
    out("starting the worker, ingest and console (a first run trains the classifier)... ", end="")
    started = time.monotonic()
    group.start("worker", ["worker"], env)
    group.start("ingest", ["ingest"], env)
    group.start("console", ["console"], env)
    wait_http(f"http://{s.ingest_host}:{s.ingest_port}/healthz", 60, group)
    wait_http(f"http://{s.web_host}:{s.web_port}/healthz", 600, group)  # a first run trains
    wait_http(f"{console_url}/healthz", 60, group)
    out(f"ready in {time.monotonic() - started:.0f} s")
    logins = ", ".join(f"{n} / {p}" for n, p, _, _ in DEMO_USERS)
    out(f"console: {console_url}/  (log in as {logins})")
    out(
        f"worker: http://{s.web_host}:{s.web_port}/metrics, /healthz;  "
        f"ingest: http://{s.ingest_host}:{s.ingest_port}, smtp :{s.smtp_port}"
    )
    out(
        f"outbox (stand-in for Telegram/Twilio/Chatwoot APIs and the mail relay): "
        f"{outbox.http_base}, smtp :{outbox.smtp_port}"
    )
    samples = load_samples()
    out(f"sending {len(samples)} sample messages the way their platforms send them... ", end="")
    sent = [send_sample(s, sample, n) for n, sample in enumerate(samples, 1)]
    accepted = {x.message_id for x in sent if x.status < 300}
    out(f"{len(accepted)} accepted; waiting for their outcomes... ", end="")
    outcomes, dead = asyncio.run(collect(s, accepted, timeout_s))
    out(f"{len(accepted & outcomes.keys())} in")
    counts: Counter[str] = Counter()
    out()
    out("outcomes:")
    for x in sent:
        text = x.sample["text"][:60].replace("\n", " ")
        if x.status >= 300:
            counts["dead_lettered"] += 1
            out(f"  [{x.sample['channel']:8}] REJECTED {x.status}  {text!r}  {x.detail[:80]}")
            continue
        o = outcomes.get(x.message_id)
        if o is None:
            counts["missing"] += 1
            out(f"  [{x.sample['channel']:8}] MISSING        {text!r}")
            continue
        counts[o.outcome.value] += 1
        where = ",".join(o.departments) or o.reason
        out(f"  [{x.sample['channel']:8}] {o.outcome.value:13} {where[:28]:28} {text!r}")
    ok = counts["missing"] == 0
    seed = next((x for x in sent if x.sample.get("source") == "seed"), None)
    if seed is not None and seed.message_id in outcomes:
        out()
        out("the worked example, followed to the end:")
        try:
            asyncio.run(follow_seed(s, outbox, seed, outcomes[seed.message_id]))
        except (TimeoutError, DecodeError, OSError, smtplib.SMTPException) as exc:
            out(f"  could not follow it to the end: {exc!r}")
    out()
    out(
        f"summary: {len(samples)} samples, "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        + f"; dead letters on the DLQ topic: {len(dead)}"
    )
    out("every sample accounted for" if ok else "SOME SAMPLES HAVE NO OUTCOME")
    if serve:
        out("serving; press Ctrl-C to stop")
        try:
            while True:
                group.check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            out("stopping")
    return 0 if ok else 1


async def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise TimeoutError(f"no {what} within {timeout_s:.0f}s")


async def follow_seed(s: Settings, outbox: Outbox, seed: Sent, outcome: Outcome) -> None:
    """Loyalty IT answers in the system, the director answers by e-mail, the customer is told."""
    out(f"  routed to: {', '.join(outcome.departments)} (case {outcome.case_id})")
    # By id, as every consumer of the task topics must read them: a record replayed after a
    # restart or at start-up repeats its sub-request id (README, "Deduplicate by id").
    by_id: dict[str, SubRequest] = {}
    topics = [task_topic(s, d) for d in departments(s)] + [s.topic("external")]
    for rec in await bus.read_all(s, topics, idle_s=1.0):
        try:
            sub = decode(SubRequest, rec.value)
        except DecodeError:
            continue
        if sub.message_id == seed.message_id:
            by_id.setdefault(sub.sub_request_id, sub)
    subs = list(by_id.values())
    await follow_up(s, seed, outcome)
    pub = bus.Publisher(s)
    try:
        for sub in subs:
            out(
                f"  sub-request {sub.kind.value:8} → {sub.recipient or sub.department}: "
                f"{sub.text[:70]!r}"
            )
            if sub.kind.value == "internal":
                update = TaskUpdate(
                    update_id=derive_id("upd", sub.sub_request_id, "demo"),
                    sub_request_id=sub.sub_request_id,
                    case_id=sub.case_id,
                    status=TaskStatus.resolved,
                    resolution="Бонусы за покупку начислены вручную, карта работает — "
                    "при следующей покупке баллы спишутся как обычно.",
                    author=f"{sub.department} (demo)",
                    at=utcnow(),
                )
                await pub.send(s.topic("task-updates"), sub.case_id, update)
                out(f"  {sub.department} answers in the system (TaskUpdate resolved)")
    finally:
        await pub.close()
    for sub in subs:
        if sub.kind.value != "external" or not sub.recipient:
            continue
        recipient = sub.recipient

        def director_mail(to: str = recipient) -> OutboxItem | None:
            return next(
                (
                    i
                    for i in outbox.snapshot()
                    if i.channel == "email" and to in i.to and i.reply_to
                ),
                None,
            )

        mail = await _wait(
            director_mail,
            f"e-mail to {recipient}",
        )
        # As Gmail writes it: a signature without "-- " and the quoted request below a
        # header carrying our reply+TOKEN address; the customer gets the first paragraph only.
        quoted = "\n".join(f"> {line}" for line in mail.text.splitlines())
        answer = MIMEText(
            "Добрый день! Проверили выкладку и сроки годности, несвежие огурцы сняты с "
            "продажи и заменены.\n\nИрина Соколова\nДиректор магазина на Садовой, 12\n"
            f"+7 (812) 555-01-23\n\nсб, 5 дек. 2026 г. в 16:20, Служба заботы <\n"
            f"{mail.reply_to}>:\n\n{quoted}\n",
            "plain",
            "utf-8",
        )
        answer["From"] = recipient
        answer["To"] = mail.reply_to
        answer["Subject"] = f"Re: {mail.subject}"
        answer["Message-ID"] = make_msgid(domain="example.com")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
            smtp.send_message(answer)
        out(f"  the director receives: {describe(mail)[:200]}")
        out(f"  and replies by e-mail to {mail.reply_to}")
    chat = seed.channel_message_id.split(":", 1)[0]

    def to_customer(marker: str) -> OutboxItem | None:
        return next(
            (
                i
                for i in outbox.snapshot()
                if i.channel == "telegram" and i.to == chat and marker in i.text
            ),
            None,
        )

    final = await _wait(lambda: to_customer("огурцы"), "combined answer to the customer")
    out(f"  the customer gets ONE combined answer in Telegram:\n      {final.text!r}")
    survey = await _wait(lambda: to_customer("0 до 10"), "survey question")
    out(f"  then the survey: {survey.text!r}")
    n = int(seed.channel_message_id.split(":", 1)[1])
    survey_answer = {
        "channel": "telegram",
        "language": "ru",
        "customer": seed.sample["customer"],
        "text": "10",
    }
    sent = send_sample(s, survey_answer, n + 1000, chat_id=int(chat))
    out(f"  the customer answers '10' in Telegram (HTTP {sent.status})")
    events = await _wait_case_event(s, outcome.case_id or "", "survey_answered")
    out(f"  survey answer linked to the case: {events.detail}")


async def follow_up(s: Settings, seed: Sent, outcome: Outcome) -> None:
    """The customer asks again before anyone answered: the message joins the open case."""
    chat, n = seed.channel_message_id.split(":", 1)
    text = "Ну что там с моими бонусами?"
    again = {"channel": "telegram", "language": "ru", "customer": seed.sample["customer"]}
    sent = send_sample(s, {**again, "text": text}, int(n) + 500, chat_id=int(chat))
    out(f"  the customer asks again before any answer: {text!r} (HTTP {sent.status})")
    topics = [task_topic(s, d) for d in departments(s)]
    deadline = time.monotonic() + 60.0
    async with bus.reader(s, *topics) as c:
        while time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=300)).values():
                for m in msgs:
                    try:
                        notice = decode(TaskNotice, m.value)
                    except DecodeError:
                        continue
                    if notice.case_id == outcome.case_id and notice.message_id == sent.message_id:
                        out(
                            f"  → added to case {notice.case_id}, no second task: "
                            f"{notice.department} sees it as a {notice.type} notice"
                        )
                        return
    raise TimeoutError(f"the follow-up never reached the holders of {outcome.case_id}")


async def _wait_case_event(s: Settings, case_id: str, kind: str) -> CaseEvent:
    found = await _collect_case_events(s, case_id, kind, timeout_s=60.0)
    if found is None:
        raise TimeoutError(f"no {kind} event for {case_id}")
    return found


async def _collect_case_events(
    s: Settings, case_id: str, kind: str, timeout_s: float
) -> CaseEvent | None:
    deadline = time.monotonic() + timeout_s
    async with bus.reader(s, s.topic("case-events")) as c:
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        events = decode_case_events(m.value)
                    except DecodeError:
                        continue
                    for ev in events:
                        if ev.case_id == case_id and ev.type.value == kind:
                            return ev
    return None
