"""Ingest adapters over real protocols against the real broker.

HTTP posts in each platform's own format, SMTP sessions via smtplib, the eml/mbox import
and the CLI; every test reads the records back from the real topics.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from pipeline.bus import Publisher, ensure_topics, read_all
from pipeline.config import Settings
from pipeline.domain.tokens import reply_address
from pipeline.events import DeadLetter, Identity, InboundMessage, TaskUpdate, derive_id
from pipeline.ingest.channels import chatwoot_signature, twilio_signature
from pipeline.ingest.eml import import_path
from pipeline.ingest.identity import CustomerDirectory
from pipeline.ingest.server import IngestServer, create_app
from pipeline.ingest.service import IngestService

pytestmark = pytest.mark.integration

RESOURCES = Path(__file__).resolve().parents[2] / "pipeline" / "resources"
TG_SECRET = "tg-secret-123"
TWILIO_TOKEN = "twilio-auth-token"
CW_SECRET = "chatwoot-secret"


def _settings(kafka: Settings, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "ingest_port": 0,
        "smtp_port": 0,
        "telegram_secret_token": SecretStr(TG_SECRET),
        "twilio_auth_token": SecretStr(TWILIO_TOKEN),
        "chatwoot_hmac_token": SecretStr(CW_SECRET),
        "customers_path": RESOURCES / "customers.csv",
        "support_addresses": ["support@example.com", "help@example.ru"],
        "reply_domain": "reply.example.com",
        "reply_token_secret": SecretStr("test-reply-secret"),
    }
    values.update(extra)
    return kafka.model_copy(update=values)


@pytest.fixture
async def server(kafka: Settings) -> AsyncIterator[IngestServer]:
    srv = IngestServer(_settings(kafka))
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def http(server: IngestServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        yield session


async def _inbound(settings: Settings) -> list[tuple[str, InboundMessage]]:
    records = await read_all(settings, [settings.topic("inbound")], idle_s=0.8)
    return [
        ((r.key or b"").decode(), InboundMessage.model_validate_json(r.value or b""))
        for r in records
    ]


async def _dlq(settings: Settings) -> list[DeadLetter]:
    records = await read_all(settings, [settings.topic("dlq")], idle_s=0.8)
    return [DeadLetter.model_validate_json(r.value or b"") for r in records]


def _telegram_update(update_id: int, text: str, *, user: int = 100200300) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id % 1000,
            "from": {"id": user, "is_bot": False, "first_name": "Анна", "language_code": "ru"},
            "chat": {"id": user, "type": "private", "first_name": "Анна"},
            "date": 1_717_000_000,
            "text": text,
        },
    }


# ---------------------------------------------------------------- generic /ingest


async def test_generic_webform_en_lands_on_inbound(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    payload = {
        "channel": "webform",
        "message_id": "form-0001",
        "customer": {"email": "New.Customer@Example.org", "name": "Jane Roe"},
        "text": "Hello, my order\u200b 77 never arrived. Call me at +44 20 7946 0958 please.",
        "subject": "Delivery",
        "sent_at": "2024-05-01T12:00:00+03:00",
        "topic": "delivery",
        "metadata": {"page": "/contact"},
    }
    async with http.post("/ingest", json=payload) as resp:
        assert resp.status == 202, await resp.text()
        body = await resp.json()
    got = await _inbound(server.settings)
    assert len(got) == 1
    key, msg = got[0]
    assert key == msg.customer_id == body["customer_id"]
    assert msg.message_id == body["message_id"] == derive_id("msg", "webform", "form-0001")
    assert msg.customer_id.startswith("prov_")
    assert msg.text == "Hello, my order 77 never arrived. Call me at +44 20 7946 0958 please."
    assert msg.language == "en" and msg.language_confidence > 0.5
    assert msg.routing_hints == {"form_topic": "delivery"}
    assert msg.sent_at is not None and msg.sent_at.utcoffset() is not None
    assert msg.sent_at.hour == 9
    assert [p.kind for p in msg.pii] == ["phone"]
    assert msg.reply_to["address"] == "new.customer@example.org"
    assert msg.profile is not None and msg.profile.name == "Jane Roe"


# ---------------------------------------------------------------- telegram


async def test_telegram_ru_known_customer_and_retry_publishes_once(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    update = _telegram_update(
        5001, "Здравствуйте! Не начислили бонусы на карту 4111 1111 1111 1111"
    )
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    for _ in range(3):  # Telegram retries until it gets a 2xx
        async with http.post("/webhooks/telegram", json=update, headers=headers) as resp:
            assert resp.status == 200
    got = await _inbound(server.settings)
    assert len(got) == 1
    msg = got[0][1]
    assert msg.channel.value == "telegram"
    assert msg.customer_id == "cust_anna_smirnova"  # telegram id from the customers import
    assert msg.profile is not None and msg.profile.tier == "gold"
    assert msg.language == "ru"
    assert msg.reply_to["chat_id"] == "100200300"
    assert [p.kind for p in msg.pii] == ["card"]


async def test_telegram_forged_or_unsigned_is_refused(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    update = _telegram_update(5002, "hi")
    async with http.post("/webhooks/telegram", json=update) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
    bad = {"X-Telegram-Bot-Api-Secret-Token": "guess"}
    async with http.post("/webhooks/telegram", json=update, headers=bad) as resp:
        assert resp.status == 403
    assert await _inbound(server.settings) == []


async def test_telegram_non_message_update_is_ignored(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    update = {"update_id": 9, "callback_query": {"id": "1", "data": "x"}}
    async with http.post("/webhooks/telegram", json=update, headers=headers) as resp:
        assert resp.status == 200
        assert "ignored" in await resp.json()
    assert await _inbound(server.settings) == []


# ---------------------------------------------------------------- chatwoot


def _chatwoot(message_type: str, msg_id: int, content: str) -> dict[str, Any]:
    return {
        "event": "message_created",
        "id": msg_id,
        "content": content,
        "created_at": "2024-05-01T10:00:00.000Z",
        "message_type": message_type,
        "content_type": "text",
        "private": False,
        "sender": {
            "id": 901,
            "name": "Mark Twain",
            "email": "mark@example.net",
            "phone_number": "+1 415 555 2671",
            "type": "contact",
        },
        "conversation": {"id": 33, "channel": "Channel::WebWidget"},
        "account": {"id": 1, "name": "Acme"},
        "inbox": {"id": 2, "name": "Website"},
    }


async def _post_chatwoot(
    http: aiohttp.ClientSession, payload: dict[str, Any], secret: str = CW_SECRET
) -> aiohttp.ClientResponse:
    body = orjson.dumps(payload)
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Chatwoot-Timestamp": ts,
        "X-Chatwoot-Signature": chatwoot_signature(secret, ts, body),
    }
    resp = await http.post("/webhooks/chatwoot", data=body, headers=headers)
    await resp.read()
    return resp


async def test_chatwoot_incoming_links_identities_then_sms_same_customer(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    resp = await _post_chatwoot(http, _chatwoot("incoming", 1, "My invoice is wrong."))
    assert resp.status == 200
    resp = await _post_chatwoot(http, _chatwoot("outgoing", 2, "Agent reply"))
    assert resp.status == 200 and "ignored" in await resp.json()
    resp = await _post_chatwoot(http, _chatwoot("incoming", 3, "forged"), secret="nope")
    assert resp.status == 403
    # The same person then texts from the phone Chatwoot revealed.
    form = {"MessageSid": "SM1", "From": "+14155552671", "To": "+15005550006", "Body": "Any news?"}
    url = server.settings.public_base_url.rstrip("/") + "/webhooks/twilio"
    sig = twilio_signature(TWILIO_TOKEN, url, form)
    async with http.post(
        "/webhooks/twilio", data=urlencode(form).encode(), headers=_form_headers(sig)
    ) as r:
        assert r.status == 200
        assert "<Response>" in await r.text()
    got = [m for _, m in await _inbound(server.settings)]
    assert [m.channel.value for m in got] == ["chatwoot", "sms"] or sorted(
        m.channel.value for m in got
    ) == ["chatwoot", "sms"]
    assert len({m.customer_id for m in got}) == 1
    cw = next(m for m in got if m.channel.value == "chatwoot")
    assert cw.reply_to == {"conversation_id": "33", "account_id": "1"}
    assert {i.kind for i in cw.identities} == {"chatwoot", "email", "phone"}
    sms = next(m for m in got if m.channel.value == "sms")
    assert sms.reply_to == {"phone": "+14155552671", "service_number": "+15005550006"}


def _form_headers(signature: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return headers


async def test_twilio_unsigned_and_forged_are_refused(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    form = {"MessageSid": "SM2", "From": "+79161234567", "To": "+15005550006", "Body": "Привет"}
    body = urlencode(form).encode()
    async with http.post("/webhooks/twilio", data=body, headers=_form_headers(None)) as r:
        assert r.status == 401
    url = server.settings.public_base_url.rstrip("/") + "/webhooks/twilio"
    forged = twilio_signature("wrong-token", url, form)
    async with http.post("/webhooks/twilio", data=body, headers=_form_headers(forged)) as r:
        assert r.status == 403
    assert await _inbound(server.settings) == []


# ---------------------------------------------------------------- voice


async def test_voice_ivr_event(server: IngestServer, http: aiohttp.ClientSession) -> None:
    event = {
        "call_id": "call-42",
        "caller": "8 (916) 123-45-67",
        "called": "+74950000000",
        "transcript": "Добрый день, у меня не работает кондиционер после установки",
        "ivr_menu": ["2", "1"],
        "recording_url": "https://pbx.example.ru/rec/call-42.wav",
        "started_at": 1_717_000_000,
    }
    async with http.post("/webhooks/voice", json=event) as resp:
        assert resp.status == 202
    ((_, msg),) = await _inbound(server.settings)
    assert msg.channel.value == "voice"
    assert msg.customer_id == "cust_anna_smirnova"  # phone from the import, E.164-normalized
    assert msg.routing_hints["ivr_menu"] == "2>1"
    assert msg.metadata["recording_url"].endswith("call-42.wav")
    assert msg.reply_to == {"phone": "+79161234567"}


# ---------------------------------------------------------------- bad input


async def test_bad_input_gets_4xx_and_dead_letters(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    json_h = {"Content-Type": "application/json"}
    async with http.post("/ingest", data=b'{"channel": "webchat", ', headers=json_h) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "decode_error"
    missing = {"channel": "webchat", "message_id": "m1", "customer": {"email": "a@b.co"}}
    async with http.post("/ingest", json=missing) as r:
        assert r.status == 400
        body = await r.json()
        assert body["field"] == "text" and body["detail"]
    async with http.post("/ingest", data=b"text=hi", headers=_form_headers(None)) as r:
        assert r.status == 415
    async with http.post("/ingest", data=b'{"text": "\xff\xfe"}', headers=json_h) as r:
        assert r.status == 400
    big = {"channel": "webchat", "message_id": "m2", "customer": {"email": "a@b.co"}}
    big["text"] = "x" * (server.settings.max_message_bytes + 10)
    async with http.post("/ingest", json=big) as r:
        assert r.status == 413
        assert (await r.json())["error"] == "payload_too_large"
    dead = await _dlq(server.settings)
    assert len(dead) == 5
    assert {d.stage for d in dead} == {"ingest.generic"}
    assert any(base64.b64decode(d.raw_b64) == b'{"channel": "webchat", ' for d in dead)
    assert all(len(base64.b64decode(d.raw_b64)) <= server.settings.max_message_bytes for d in dead)
    assert await _inbound(server.settings) == []


# ---------------------------------------------------------------- broker down


async def test_broker_down_answers_503_then_retry_succeeds(kafka: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    down = _settings(kafka, kafka_bootstrap_servers=f"127.0.0.1:{dead_port}", produce_timeout_s=1.0)
    await ensure_topics(_settings(kafka))
    payload = {
        "channel": "api",
        "message_id": "api-1",
        "customer": {"phone": "+7 903 555-01-01"},
        "text": "Не работает личный кабинет",
    }
    publisher = Publisher(down)
    server = TestServer(create_app(down, publisher), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(server.make_url("/ingest"), json=payload) as r,
        ):
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
    finally:
        await server.close()
        await publisher.close()
    # The platform retries once the broker is back: accepted exactly once.
    up = _settings(kafka)
    publisher = Publisher(up)
    server = TestServer(create_app(up, publisher), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(server.make_url("/ingest"), json=payload) as r:
                    assert r.status == 202
    finally:
        await server.close()
        await publisher.close()
    got = await _inbound(up)
    assert len(got) == 1 and got[0][1].channel_message_id == "api-1"


async def test_smtp_broker_down_is_451(kafka: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    down = _settings(kafka, kafka_bootstrap_servers=f"127.0.0.1:{dead_port}", produce_timeout_s=1.0)
    srv = IngestServer(down, directory=CustomerDirectory(), create_topics=False)
    await srv.start()
    try:
        msg = _mail("bob@example.org", "support@example.com", "Hi", "My router is broken.")
        with pytest.raises(smtplib.SMTPDataError) as info:
            await asyncio.to_thread(_smtp_send, srv.smtp_port, msg, ["support@example.com"])
        assert info.value.smtp_code == 451
    finally:
        await srv.stop()


# ---------------------------------------------------------------- SMTP


def _mail(sender: str, to: str, subject: str, text: str, charset: str = "utf-8") -> bytes:
    msg = MIMEText(text, "plain", charset)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash((sender, text)))}@mail.example>"
    return msg.as_bytes()


def _smtp_send(port: int, raw: bytes, rcpts: list[str], sender: str = "x@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        # On the wire lines end in CRLF (smtplib sends bytes as they are).
        client.sendmail(sender, rcpts, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


async def test_smtp_russian_koi8_and_english_html(server: IngestServer) -> None:
    ru = _mail(
        "Иван Петров <ivan.petrov@example.ru>",
        "support@example.com",
        "Оплата",
        "Здравствуйте! Не могу оплатить заказ 5521.\n\n> старое письмо\n\n-- \nИван",
        "koi8-r",
    )
    await asyncio.to_thread(_smtp_send, server.smtp_port, ru, ["support@example.com"])
    en = MIMEMultipart("alternative")
    en["From"] = "John Miller <John.Miller@example.co.uk>"
    en["To"] = "help@example.ru"
    en["Subject"] = "Refund"
    en["Message-ID"] = "<en-1@mail.example>"
    en["In-Reply-To"] = "<root@care>"
    en["References"] = "<root@care>"
    en.attach(
        MIMEText(
            "<p>I want a <b>refund</b> for order 9.</p><p>Best regards,<br>John</p>",
            "html",
            "utf-8",
        )
    )
    pdf = MIMEText("%PDF-1.4 fake", "plain", "utf-8")
    pdf.add_header("Content-Disposition", "attachment", filename="invoice.pdf")
    outer = MIMEMultipart("mixed")
    for h in ("From", "To", "Subject", "Message-ID", "In-Reply-To", "References"):
        outer[h] = en[h]
    outer.attach(en)
    outer.attach(pdf)
    await asyncio.to_thread(_smtp_send, server.smtp_port, outer.as_bytes(), ["help@example.ru"])
    got = {m.channel_message_id: m for _, m in await _inbound(server.settings)}
    assert len(got) == 2
    ru_msg = next(m for m in got.values() if m.language == "ru")
    assert ru_msg.text == "Здравствуйте! Не могу оплатить заказ 5521."
    assert ru_msg.customer_id == "cust_ivan_petrov"
    assert ru_msg.subject == "Оплата"
    assert ru_msg.routing_hints == {"to_address": "support@example.com"}
    en_msg = got["<en-1@mail.example>"]
    assert en_msg.text == "I want a refund for order 9."
    assert en_msg.customer_id == "cust_john_miller"
    assert en_msg.conversation_id == "<root@care>"
    assert en_msg.in_reply_to == "<root@care>" and en_msg.references == ["<root@care>"]
    assert [a.filename for a in en_msg.attachments] == ["invoice.pdf"]
    assert en_msg.reply_to["address"] == "john.miller@example.co.uk"


async def test_smtp_refuses_other_recipients(server: IngestServer) -> None:
    raw = _mail("a@example.org", "sales@example.com", "x", "hello")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await asyncio.to_thread(_smtp_send, server.smtp_port, raw, ["sales@example.com"])
    assert next(iter(info.value.recipients.values()))[0] == 550
    forged = "reply+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@reply.example.com"
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(_smtp_send, server.smtp_port, raw, [forged])


async def test_smtp_reply_token_becomes_task_update(server: IngestServer) -> None:
    case_id, sub_id = derive_id("case", "m1"), derive_id("sr", "m1", "store")
    addr = reply_address(sub_id, case_id, server.settings)
    msg = EmailMessage()
    msg["From"] = "Директор магазина <director.msk012@stores.example.ru>"
    msg["To"] = addr
    msg["Subject"] = "Re: Просроченные огурцы"
    msg["Message-ID"] = "<dir-1@stores.example.ru>"
    msg.set_content(
        "Огурцы заменили, витрину проверили.\n\n"
        "15 мая 2024 г., в 10:00, Поддержка <support@example.com> написал(а):\n> Просим проверить"
    )
    await asyncio.to_thread(_smtp_send, server.smtp_port, msg.as_bytes(), [addr])
    records = await read_all(server.settings, [server.settings.topic("task-updates")], idle_s=0.8)
    assert len(records) == 1 and records[0].key == case_id.encode()
    upd = TaskUpdate.model_validate_json(records[0].value or b"")
    assert (upd.case_id, upd.sub_request_id, upd.status.value) == (case_id, sub_id, "resolved")
    assert upd.resolution == "Огурцы заменили, витрину проверили."
    assert upd.source == "email" and upd.author == "director.msk012@stores.example.ru"
    assert await _inbound(server.settings) == []


async def test_same_customer_telegram_then_email_one_id(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    async with http.post(
        "/webhooks/telegram", json=_telegram_update(6001, "Где мой заказ?"), headers=headers
    ) as r:
        assert r.status == 200
    raw = _mail("anna.smirnova@example.ru", "support@example.com", "Заказ", "Заказ так и не пришёл")
    await asyncio.to_thread(_smtp_send, server.smtp_port, raw, ["support@example.com"])
    got = [m for _, m in await _inbound(server.settings)]
    assert sorted(m.channel.value for m in got) == ["email", "telegram"]
    assert {m.customer_id for m in got} == {"cust_anna_smirnova"}


async def test_provisional_links_survive_restart(kafka: Settings) -> None:
    settings = _settings(kafka)
    first = IngestServer(settings)
    await first.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{first.http_port}") as http:
            both = {"email": "linked@example.org", "phone": "+7 999 111-22-33"}
            p1 = {"channel": "webchat", "message_id": "w1", "customer": both, "text": "one"}
            async with http.post("/ingest", json=p1) as r:
                cid = (await r.json())["customer_id"]
    finally:
        await first.stop()
    second = IngestServer(settings)
    await second.start()  # rebuilds the directory from the customers topic
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{second.http_port}") as http:
            p2 = {
                "channel": "webchat",
                "message_id": "w2",
                "customer": {"phone": "89991112233"},
                "text": "two",
            }
            async with http.post("/ingest", json=p2) as r:
                assert (await r.json())["customer_id"] == cid
    finally:
        await second.stop()


async def test_a_link_made_by_one_ingest_process_reaches_another_running_one(
    kafka: Settings,
) -> None:
    settings = _settings(kafka)
    a, b = IngestServer(settings), IngestServer(settings)  # ports 0: each binds its own
    await a.start()
    await b.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{a.http_port}") as http:
            both = {"email": "moves@example.org", "phone": "+7 999 444-55-66"}
            p1 = {"channel": "webchat", "message_id": "m1", "customer": both, "text": "one"}
            async with http.post("/ingest", json=p1) as r:
                cid = (await r.json())["customer_id"]
        # B never saw that message; it learns the link from the customers topic.
        email = Identity(kind="email", value="moves@example.org")
        deadline = asyncio.get_running_loop().time() + 30
        while b.service.directory.lookup(email) != cid:
            assert asyncio.get_running_loop().time() < deadline, "B never learned the link"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{b.http_port}") as http:
            p2 = {
                "channel": "webform",
                "message_id": "m2",
                "customer": {"email": "moves@example.org"},
                "text": "two",
            }
            async with http.post("/ingest", json=p2) as r:
                assert (await r.json())["customer_id"] == cid  # not a provisional e-mail id
    finally:
        await b.stop()
        await a.stop()


# ---------------------------------------------------------------- eml / mbox import and CLI


async def test_eml_directory_and_mbox_import(kafka: Settings, tmp_path: Path) -> None:
    settings = _settings(kafka)
    await ensure_topics(settings)
    d = tmp_path / "mail"
    d.mkdir()
    (d / "a.eml").write_bytes(
        _mail(
            "emily.clark@example.com", "support@example.com", "Card", "My card was charged twice."
        )
    )
    (d / "b.eml").write_bytes(
        _mail("ольга@пример.рф", "support@example.com", "x", "текст", "windows-1251")
    )  # not a usable address → rejected, the rest goes on
    mbox = tmp_path / "archive.mbox"
    parts = []
    for n, text in enumerate(["Первое письмо про доставку", "Second mail about billing"]):
        raw = _mail(f"user{n}@example.net", "support@example.com", f"s{n}", text, "windows-1251")
        parts.append(b"From user@example.net Mon Jan  1 00:00:00 2024\n" + raw + b"\n")
    mbox.write_bytes(b"".join(parts))
    publisher = Publisher(settings)
    try:
        service = IngestService(settings, publisher)
        await service.load_directory()
        out = io.StringIO()
        assert await import_path(service, d, out) == (1, 1)
        assert await import_path(service, mbox, out) == (2, 0)
    finally:
        await publisher.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "rejected" in lines[1]
    got = [m for _, m in await _inbound(settings)]
    assert sorted(m.text for m in got) == sorted(
        ["My card was charged twice.", "Первое письмо про доставку", "Second mail about billing"]
    )
    assert any(m.customer_id == "cust_emily_clark" for m in got)
    assert len(await _dlq(settings)) == 1


async def test_cli_ingest_eml_koi8(kafka: Settings, tmp_path: Path) -> None:
    m = MIMEText(
        "Здравствуйте! Не могу оплатить заказ 5521, карта отклоняется.\n\n-- \nАнна",
        "plain",
        "koi8-r",
    )
    m["From"] = "anna@example.net"
    m["To"] = "support@example.com"
    m["Subject"] = "Оплата"
    m["Message-ID"] = "<contract-check-1@example.net>"
    path = tmp_path / "mail.eml"
    path.write_bytes(m.as_bytes())
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.kafka_bootstrap_servers or "",
        "PIPELINE_TOPIC_PREFIX": kafka.topic_prefix,
    }
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline.cli", "ingest", "eml", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "accepted" in proc.stdout
    ((_, msg),) = await _inbound(kafka)
    assert msg.text == "Здравствуйте! Не могу оплатить заказ 5521, карта отклоняется."
    assert msg.subject == "Оплата" and msg.language == "ru"
    assert msg.channel_message_id == "<contract-check-1@example.net>"
