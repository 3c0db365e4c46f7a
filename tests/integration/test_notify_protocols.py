"""Delivery over real protocols: local stand-ins for the Telegram Bot API, the Chatwoot API,
the Twilio Messages API and an outbound webhook (aiohttp on 127.0.0.1:0), and a real SMTP
server (aiosmtpd on 127.0.0.1:0). No broker is needed; no real time is slept (fake sleep).
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.domain.tokens import parse_reply_address
from pipeline.events import (
    Channel,
    Entity,
    Reply,
    ReplyKind,
    SubRequest,
    SubRequestKind,
)
from pipeline.notify.compose import compose_external, compose_reply_email
from pipeline.notify.delivery import Deliverer

if TYPE_CHECKING:
    from tests.plugins.events import MakeSubRequest

BOT_TOKEN = "123456:ABC-test_token"
CHATWOOT_TOKEN = "cw-secret"
TWILIO_SID = "AC11111111111111111111111111111111"
TWILIO_TOKEN = "tw-secret"
WEBHOOK_TOKEN = "wh-secret"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CARD = "4276 1600 1234 5675"
RU_TEXT = (
    f"В магазине «Пятёрочка» 0412 продают несвежие огурцы, а на кассе не списались бонусы "
    f"с карты {CARD}. Соседка тоже жаловалась, её номер +7 916 123-45-67."
)


# ---------------------------------------------------------------- fake platforms (HTTP)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakePlatforms:
    """Records every request; ``failures[name]`` are answered before the normal response."""

    requests: list[Seen] = field(default_factory=list)
    failures: dict[str, list[web.Response]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/sendMessage", self.telegram)
        app.router.add_post(
            "/api/v1/accounts/{account}/conversations/{conversation}/messages", self.chatwoot
        )
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio)
        app.router.add_post("/hook", self.webhook)
        return app

    async def _record(self, request: web.Request, name: str) -> web.Response | None:
        self.requests.append(
            Seen(request.method, request.path, dict(request.headers), await request.read())
        )
        queue = self.failures.get(name)
        return queue.pop(0) if queue else None

    async def telegram(self, request: web.Request) -> web.Response:
        if failure := await self._record(request, "telegram"):
            return failure
        if request.match_info["token"] != BOT_TOKEN:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        body = await request.json()
        message = {"message_id": len(self.requests), "chat": {"id": body["chat_id"]}}
        return web.json_response({"ok": True, "result": {**message, "text": body["text"]}})

    async def chatwoot(self, request: web.Request) -> web.Response:
        if failure := await self._record(request, "chatwoot"):
            return failure
        if request.headers.get("api_access_token") != CHATWOOT_TOKEN:
            return web.json_response({"error": "Invalid Access Token"}, status=401)
        body = await request.json()
        return web.json_response({"id": 9001, "content": body["content"], "message_type": 1})

    async def twilio(self, request: web.Request) -> web.Response:
        if failure := await self._record(request, "twilio"):
            return failure
        expected = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        form = await request.post()
        return web.json_response(
            {"sid": "SM" + "0" * 32, "status": "queued", "to": form["To"], "body": form["Body"]},
            status=201,
        )

    async def webhook(self, request: web.Request) -> web.Response:
        if failure := await self._record(request, "webhook"):
            return failure
        return web.json_response({"accepted": True}, status=202)


@pytest_asyncio.fixture
async def platforms() -> AsyncIterator[tuple[FakePlatforms, str]]:
    fake = FakePlatforms()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- SMTP server


@dataclass
class MailSink:
    """aiosmtpd handler: stores envelopes; scripted DATA replies and refused recipients."""

    received: list[Envelope] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    attempts: int = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refused:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        self.received.append(envelope)
        return "250 Message accepted"


@pytest_asyncio.fixture
async def smtp_server() -> AsyncIterator[tuple[MailSink, int]]:
    sink = MailSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="mx.test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield sink, port
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- helpers


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_settings(base_url: str = "http://127.0.0.1:9", smtp_port: int = 9, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_api_base_url": base_url,
        "telegram_bot_token": SecretStr(BOT_TOKEN),
        "chatwoot_api_base_url": base_url,
        "chatwoot_api_token": SecretStr(CHATWOOT_TOKEN),
        "chatwoot_account_id": "7",
        "twilio_api_base_url": base_url,
        "twilio_account_sid": TWILIO_SID,
        "twilio_auth_token": SecretStr(TWILIO_TOKEN),
        "twilio_from_number": "+15005550006",
        "outbound_webhook_url": f"{base_url}/hook",
        "outbound_webhook_token": SecretStr(WEBHOOK_TOKEN),
        "smtp_relay_host": "127.0.0.1",
        "smtp_relay_port": smtp_port,
        "mail_from": "care@example.com",
        "reply_domain": "reply.example.com",
        "delivery_max_attempts": 4,
        "delivery_backoff_s": 0.2,
        "delivery_backoff_max_s": 5.0,
        "delivery_timeout_s": 5.0,
        "delivery_rate_limits": {},
    }
    values.update(kw)
    return Settings(**values)


def make_reply(channel: Channel, reply_to: dict[str, str], **update: Any) -> Reply:
    values: dict[str, Any] = {
        "reply_id": "rep_0123456789abcdef01234567",
        "case_id": "case_89abcdef0123456789abcdef",
        "message_id": "msg_1",
        "customer_id": "cust_1",
        "channel": channel,
        "reply_to": reply_to,
        "language": "ru",
        "kind": ReplyKind.resolution,
        "text": "Огурцы заменены, бонусы начислены. Спасибо, что написали!",
        "created_at": NOW,
    }
    values.update(update)
    return Reply(**values)


@pytest.fixture
def sub_request(make_sub_request: MakeSubRequest) -> MakeSubRequest:
    """The shared SubRequest builder with this module's text (a named store, card and phone)."""

    def build(**update: Any) -> SubRequest:
        mine: dict[str, Any] = {
            "text": RU_TEXT,
            "full_text": RU_TEXT,
            "entities": [Entity(kind="store", value="0412")],
            "created_at": NOW,
        }
        return make_sub_request(**(mine | update))

    return build


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def deliverer(settings: Settings, session: aiohttp.ClientSession, sleep: FakeSleep) -> Deliverer:
    return Deliverer(settings, session, sleep=sleep, rng=random.Random(1), now=lambda: NOW)


# ---------------------------------------------------------------- HTTP platforms


async def test_telegram_send_message_format(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    reply = make_reply(
        Channel.telegram, {"chat_id": "-1001234", "message_id": "77"}, link="https://kb/1"
    )
    receipt = await deliverer(make_settings(url), session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered" and receipt.attempts == 1
    assert receipt.delivery_id == reply.reply_id and receipt.channel == "telegram"
    [req] = fake.requests
    assert req.method == "POST" and req.path == f"/bot{BOT_TOKEN}/sendMessage"
    assert req.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(req.body) == {
        "chat_id": -1001234,
        "text": reply.text + "\nhttps://kb/1",
        "reply_to_message_id": 77,
    }


async def test_a_reply_over_telegrams_limit_arrives_in_ordered_parts(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    paragraph = ("Мы проверили все ваши заказы за год, вот что мы нашли. " * 10).strip()
    text = "\n\n".join(f"{n}. {paragraph}" for n in range(1, 21))
    assert len(text) > 2 * 4096
    reply = make_reply(Channel.telegram, {"chat_id": "42"}, text=text)
    receipt = await deliverer(make_settings(url), session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered" and receipt.delivery_id == reply.reply_id
    bodies = [orjson.loads(r.body)["text"] for r in fake.requests]
    assert len(bodies) == 3 and all(len(b) <= 4096 for b in bodies)
    assert "\n\n".join(bodies) == text  # cut between paragraphs, nothing lost, in order


async def test_chatwoot_create_message_format(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    reply = make_reply(Channel.chatwoot, {"conversation_id": "55"}, language="en", text="Done!")
    receipt = await deliverer(make_settings(url), session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered"
    [req] = fake.requests
    assert req.path == "/api/v1/accounts/7/conversations/55/messages"
    assert req.headers["api_access_token"] == CHATWOOT_TOKEN
    assert req.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(req.body) == {
        "content": "Done!",
        "message_type": "outgoing",
        "private": False,
    }


async def test_twilio_messages_format(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    reply = make_reply(Channel.sms, {"phone": "+79161234567"})
    receipt = await deliverer(make_settings(url), session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered"
    [req] = fake.requests
    assert req.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    auth = base64.b64decode(req.headers["Authorization"].removeprefix("Basic ")).decode()
    assert auth == f"{TWILIO_SID}:{TWILIO_TOKEN}"
    form = parse_qs(req.body.decode("ascii"), strict_parsing=True)
    assert form == {
        "To": ["+79161234567"],
        "From": ["+15005550006"],
        "Body": [reply.text],
        # Twilio reports the SMS's progress to our ingest, keyed by the reply id
        "StatusCallback": [f"http://127.0.0.1:8080/webhooks/twilio?delivery_id={reply.reply_id}"],
    }


async def test_twilio_answers_from_the_number_the_customer_wrote_to(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    reply = make_reply(
        Channel.sms,
        {"phone": "+79161234567", "service_number": "whatsapp:+14155238886"},
        language="en",
        text="Your bonus points are back.",
    )
    receipt = await deliverer(make_settings(url), session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered"
    form = parse_qs(fake.requests[0].body.decode("ascii"), strict_parsing=True)
    assert form["From"] == ["whatsapp:+14155238886"]
    assert form["To"] == ["whatsapp:+79161234567"]
    assert form["Body"] == ["Your bonus points are back."]


async def test_outbound_webhook_format(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    reply = make_reply(Channel.webchat, {"session_id": "w1"})
    receipt = await deliverer(make_settings(url), session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered"
    [req] = fake.requests
    assert req.path == "/hook"
    assert req.headers["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert req.headers["Idempotency-Key"] == reply.reply_id
    assert Reply.model_validate_json(req.body) == reply


async def test_transient_500_then_200_delivered_after_retries(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    fake.failures["telegram"] = [
        web.Response(status=500, text="Internal Server Error"),
        web.Response(status=502, text="Bad Gateway"),
    ]
    sleep = FakeSleep()
    receipt = await deliverer(make_settings(url), session, sleep).deliver_reply(
        make_reply(Channel.telegram, {"chat_id": "42"})
    )
    assert receipt.status == "delivered" and receipt.attempts == 3
    assert len(fake.requests) == 3
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 0.2 and 0 <= sleep.delays[1] <= 0.4


async def test_permanent_400_fails_without_retries(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    fake.failures["telegram"] = [
        web.json_response(
            {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
            status=400,
        )
    ]
    sleep = FakeSleep()
    receipt = await deliverer(make_settings(url), session, sleep).deliver_reply(
        make_reply(Channel.telegram, {"chat_id": "42"})
    )
    assert receipt.status == "failed" and receipt.attempts == 1
    assert receipt.error is not None
    assert "HTTP 400" in receipt.error and "chat not found" in receipt.error
    assert BOT_TOKEN not in receipt.error  # the URL with the token never leaks
    assert len(fake.requests) == 1 and sleep.delays == []


async def test_wrong_credentials_are_permanent(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    _fake, url = platforms
    settings = make_settings(url, twilio_auth_token=SecretStr("wrong"))
    receipt = await deliverer(settings, session, FakeSleep()).deliver_reply(
        make_reply(Channel.sms, {"phone": "+79161234567"})
    )
    assert receipt.status == "failed" and receipt.attempts == 1
    assert receipt.error is not None and "HTTP 401" in receipt.error


async def test_telegram_429_retry_after_honoured(
    platforms: tuple[FakePlatforms, str], session: aiohttp.ClientSession
) -> None:
    fake, url = platforms
    fake.failures["telegram"] = [
        web.json_response(
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 3",
                "parameters": {"retry_after": 3},
            },
            status=429,
        )
    ]
    fake.failures["chatwoot"] = [web.Response(status=503, headers={"Retry-After": "4"})]
    sleep = FakeSleep()
    d = deliverer(make_settings(url), session, sleep)
    tg = await d.deliver_reply(make_reply(Channel.telegram, {"chat_id": "42"}))
    cw = await d.deliver_reply(make_reply(Channel.chatwoot, {"conversation_id": "5"}))
    assert tg.status == cw.status == "delivered" and tg.attempts == cw.attempts == 2
    assert sleep.delays == [3.0, 4.0]


async def test_connection_refused_is_transient_until_last_attempt(
    session: aiohttp.ClientSession,
) -> None:
    # a port nothing listens on: bind, read the port, close
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    sleep = FakeSleep()
    receipt = await deliverer(
        make_settings(f"http://127.0.0.1:{port}"), session, sleep
    ).deliver_reply(make_reply(Channel.telegram, {"chat_id": "42"}))
    assert receipt.status == "failed" and receipt.attempts == 4
    assert receipt.error is not None and receipt.error.startswith("transient:")
    assert BOT_TOKEN not in receipt.error
    assert len(sleep.delays) == 3


# ---------------------------------------------------------------- SMTP


def parse(envelope: Envelope) -> EmailMessage:
    raw = envelope.original_content or envelope.content
    assert isinstance(raw, bytes)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


async def test_external_email_received_by_smtp_server(
    smtp_server: tuple[MailSink, int], session: aiohttp.ClientSession, sub_request: MakeSubRequest
) -> None:
    sink, port = smtp_server
    settings = make_settings(smtp_port=port)
    sr = sub_request()
    receipt = await deliverer(settings, session, FakeSleep()).deliver_external(
        sr, compose_external(sr, settings)
    )
    assert receipt.status == "delivered" and receipt.attempts == 1
    assert receipt.delivery_id == sr.sub_request_id and receipt.channel == "email"
    [envelope] = sink.received
    assert envelope.mail_from == "care@example.com"
    assert envelope.rcpt_tos == ["director.0412@stores.example.com"]
    msg = parse(envelope)
    assert msg["To"] == "director.0412@stores.example.com"
    assert msg["Message-ID"] == f"<{sr.sub_request_id}@reply.example.com>"
    assert sr.case_id in msg["Subject"] and "магазин 0412" in msg["Subject"]
    assert parse_reply_address(msg["Reply-To"], settings) == (sr.case_id, sr.sub_request_id)
    body = text_of(msg)
    assert "несвежие огурцы" in body and "«Пятёрочка»" in body
    assert "**** **** **** 5675" in body and "1600" not in body
    assert "+* *** ***-**-67" in body and "916" not in body
    assert "Срок ответа: 27.11.2026 15:30 UTC" in body


async def test_reply_email_to_customer_threaded(
    smtp_server: tuple[MailSink, int], session: aiohttp.ClientSession
) -> None:
    sink, port = smtp_server
    settings = make_settings(smtp_port=port)
    reply = make_reply(
        Channel.email,
        {"address": "ivan@mail.ru", "message_id": "<orig@mail.ru>", "subject": "Огурцы"},
    )
    receipt = await deliverer(settings, session, FakeSleep()).deliver_reply(reply)
    assert receipt.status == "delivered"
    [envelope] = sink.received
    assert envelope.rcpt_tos == ["ivan@mail.ru"]
    msg = parse(envelope)
    assert msg["Subject"] == "Re: Огурцы"
    assert msg["In-Reply-To"] == "<orig@mail.ru>" and msg["References"] == "<orig@mail.ru>"
    assert text_of(msg) == reply.text + "\n"
    assert msg["Message-ID"] == compose_reply_email(reply, settings)["Message-ID"]


async def test_smtp_451_then_accepted(
    smtp_server: tuple[MailSink, int], session: aiohttp.ClientSession, sub_request: MakeSubRequest
) -> None:
    sink, port = smtp_server
    sink.data_replies = ["451 4.3.0 Try again later"]
    settings = make_settings(smtp_port=port)
    sr = sub_request(language="en", text="Stale cucumbers", full_text="Stale cucumbers")
    sleep = FakeSleep()
    receipt = await deliverer(settings, session, sleep).deliver_external(
        sr, compose_external(sr, settings)
    )
    assert receipt.status == "delivered" and receipt.attempts == 2
    assert sink.attempts == 2 and len(sink.received) == 1 and len(sleep.delays) == 1
    assert "Stale cucumbers" in text_of(parse(sink.received[0]))


async def test_smtp_550_recipient_is_permanent(
    smtp_server: tuple[MailSink, int], session: aiohttp.ClientSession, sub_request: MakeSubRequest
) -> None:
    sink, port = smtp_server
    sink.refused = {"director.0412@stores.example.com"}
    settings = make_settings(smtp_port=port)
    sr = sub_request()
    sleep = FakeSleep()
    receipt = await deliverer(settings, session, sleep).deliver_external(
        sr, compose_external(sr, settings)
    )
    assert receipt.status == "failed" and receipt.attempts == 1 and sleep.delays == []
    assert receipt.error is not None and "550 5.1.1 No such user here" in receipt.error
    assert sink.received == []


@pytest.mark.parametrize("language", ["ru", "en"])
async def test_broadcast_one_mail_per_recipient(
    smtp_server: tuple[MailSink, int],
    session: aiohttp.ClientSession,
    language: str,
    sub_request: MakeSubRequest,
) -> None:
    sink, port = smtp_server
    settings = make_settings(smtp_port=port)
    d = deliverer(settings, session, FakeSleep())
    recipients = [f"director.{n:04d}@stores.example.com" for n in (1, 2, 3)]
    for n, rcpt in enumerate(recipients):
        sr = sub_request(
            kind=SubRequestKind.broadcast,
            recipient=rcpt,
            sub_request_id=f"sr_{n:024x}",
            language=language,
        )
        assert (await d.deliver_external(sr, compose_external(sr, settings))).status == "delivered"
    got = {e.rcpt_tos[0]: parse(e) for e in sink.received}
    assert sorted(got) == recipients
    tokens = {parse_reply_address(m["Reply-To"], settings) for m in got.values()}
    assert len(tokens) == 3
