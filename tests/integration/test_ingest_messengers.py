"""WhatsApp, VK, Twilio status callbacks and bot commands through the real ingest server.

Real HTTP to ``IngestServer`` and the real broker; every assertion reads the records back
from the topics. Payloads follow the platforms' published formats (builders and their
sources in tests/plugins/payloads.py).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from pipeline.bus import read_all
from pipeline.config import Settings
from pipeline.events import DeadLetter, DeliveryReceipt, InboundMessage, Reply
from pipeline.ingest.channels import twilio_signature
from pipeline.ingest.messengers import whatsapp_signature
from pipeline.ingest.server import IngestServer

if TYPE_CHECKING:
    from tests.plugins.payloads import Payloads

pytestmark = pytest.mark.integration

APP_SECRET = "meta-app-secret"
VERIFY_TOKEN = "verify-me"
VK_SECRET = "vk-secret"
TWILIO_TOKEN = "twilio-auth-token"
TG_SECRET = "tg-secret"
PUBLIC = "https://router.example.com"


@pytest.fixture
async def server(payloads: Payloads, kafka: Settings) -> AsyncIterator[IngestServer]:
    settings = kafka.model_copy(
        update={
            "ingest_port": 0,
            "smtp_port": 0,
            "whatsapp_app_secret": SecretStr(APP_SECRET),
            "whatsapp_verify_token": SecretStr(VERIFY_TOKEN),
            "vk_secret": SecretStr(VK_SECRET),
            "vk_confirmation_code": "b1357503",
            "vk_group_id": payloads.VK_GROUP,
            "twilio_auth_token": SecretStr(TWILIO_TOKEN),
            "telegram_secret_token": SecretStr(TG_SECRET),
            "public_base_url": PUBLIC,
            "customers_path": None,
        }
    )
    srv = IngestServer(settings)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def http(server: IngestServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        yield session


async def _topic(settings: Settings, name: str) -> list[bytes]:
    records = await read_all(settings, [settings.topic(name)], idle_s=0.8)
    return [r.value or b"" for r in records]


async def _inbound(settings: Settings) -> list[InboundMessage]:
    return [InboundMessage.model_validate_json(v) for v in await _topic(settings, "inbound")]


async def _receipts(settings: Settings) -> list[DeliveryReceipt]:
    return [DeliveryReceipt.model_validate_json(v) for v in await _topic(settings, "deliveries")]


async def _replies(settings: Settings) -> list[Reply]:
    return [Reply.model_validate_json(v) for v in await _topic(settings, "replies")]


# ---------------------------------------------------------------- WhatsApp


async def _post_whatsapp(
    http: aiohttp.ClientSession, payload: dict[str, Any], secret: str = APP_SECRET
) -> aiohttp.ClientResponse:
    body = orjson.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": whatsapp_signature(secret, body),
    }
    resp = await http.post("/webhooks/whatsapp", data=body, headers=headers)
    await resp.read()
    return resp


async def test_whatsapp_handshake_forgery_messages_media_and_statuses(
    payloads: Payloads, server: IngestServer, http: aiohttp.ClientSession
) -> None:
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    async with http.get("/webhooks/whatsapp", params=query) as resp:
        assert resp.status == 200 and await resp.text() == "1158201444"
    async with http.get("/webhooks/whatsapp", params={**query, "hub.verify_token": "x"}) as resp:
        assert resp.status == 403

    sample = payloads.META_TEXT["entry"][0]["changes"][0]["value"]["messages"][0]
    messages = payloads.whatsapp_messages(
        sample, payloads.whatsapp_image("wamid.img", media_id="998877")
    )
    forged = await _post_whatsapp(http, messages, secret="not-the-secret")
    assert forged.status == 403
    unsigned = await http.post("/webhooks/whatsapp", json=messages)
    assert unsigned.status == 401
    resp = await _post_whatsapp(http, messages)
    assert resp.status == 200
    assert len((await resp.json())["results"]) == 2

    status = payloads.whatsapp_status(
        id="wamid.out1", status="delivered", biz_opaque_callback_data="rep_0123456789abcdef01234567"
    )
    assert (await _post_whatsapp(http, status)).status == 200

    got = await _inbound(server.settings)
    assert [m.channel_message_id for m in got] == ["ABGGFlA5Fpa", "wamid.img"]
    text, image = got
    assert text.text == "this is a text message" and text.reply_to["phone_number_id"] == "123456123"
    assert image.text == "" and image.attachments[0].platform_file_id == "998877"
    assert text.customer_id == image.customer_id
    (receipt,) = await _receipts(server.settings)
    assert receipt.delivery_id == "rep_0123456789abcdef01234567"
    assert (receipt.status, receipt.source, receipt.provider_message_id) == (
        "delivered",
        "platform",
        "wamid.out1",
    )


# ---------------------------------------------------------------- VK


def _vk_message(payloads: Payloads, **message: Any) -> dict[str, Any]:
    msg = {"text": "Здравствуйте! Заказ 5521 так и не привезли", **message}
    event_id = f"ev{msg.get('conversation_message_id', 127)}"
    return payloads.vk_message_new(msg, secret=VK_SECRET, event_id=event_id)


async def test_vk_confirmation_secret_message_and_start_button(
    payloads: Payloads, server: IngestServer, http: aiohttp.ClientSession
) -> None:
    confirm = {"type": "confirmation", "group_id": payloads.VK_GROUP}
    async with http.post("/webhooks/vk", json=confirm) as resp:
        assert resp.status == 200 and await resp.text() == "b1357503"
    async with http.post("/webhooks/vk", json={**_vk_message(payloads), "secret": "guess"}) as resp:
        assert resp.status == 403
    for _ in range(2):  # VK repeats an event that was not answered "ok" in time
        async with http.post("/webhooks/vk", json=_vk_message(payloads)) as resp:
            assert resp.status == 200 and await resp.text() == "ok"
    start = _vk_message(
        payloads, text="Начать", payload='{"command":"start"}', conversation_message_id=128
    )
    async with http.post("/webhooks/vk", json=start) as resp:
        assert resp.status == 200 and await resp.text() == "ok"

    (msg,) = await _inbound(server.settings)
    assert msg.channel.value == "vk" and msg.reply_to == {
        "peer_id": "228970688",
        "group_id": str(payloads.VK_GROUP),
    }
    (greeting,) = await _replies(server.settings)
    assert greeting.channel.value == "vk" and greeting.language == "ru"
    assert greeting.customer_id == msg.customer_id  # the same VK user
    assert greeting.text.startswith("Здравствуйте")


# ---------------------------------------------------------------- Twilio, Telegram


async def test_twilio_status_callback_signed_with_the_default_port_becomes_a_receipt(
    payloads: Payloads, server: IngestServer, http: aiohttp.ClientSession
) -> None:
    form = {
        **payloads.TWILIO_STATUS,
        "SmsStatus": "undelivered",
        "MessageStatus": "undelivered",
        "ErrorCode": "30003",
    }
    path = "/webhooks/twilio?delivery_id=rep_0000000000000000000000aa"
    # Twilio sometimes signs over the URL with the scheme's default port.
    signature = twilio_signature(TWILIO_TOKEN, "https://router.example.com:443" + path, form)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
    }
    async with http.post(path, data=urlencode(form).encode(), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    (receipt,) = await _receipts(server.settings)
    assert receipt.delivery_id == "rep_0000000000000000000000aa"
    assert receipt.status == "failed" and receipt.error == "twilio undelivered (error 30003)"
    assert await _topic(server.settings, "dlq") == []


async def test_telegram_start_is_greeted_and_a_photo_is_a_request(
    server: IngestServer, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    sender = {"id": 555, "is_bot": False, "first_name": "John", "language_code": "en"}
    chat = {"id": 555, "type": "private"}
    start = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "from": sender,
            "chat": chat,
            "date": 1_717_000_000,
            "text": "/start",
            "entities": [{"offset": 0, "length": 6, "type": "bot_command"}],
        },
    }
    photo = {
        "update_id": 2,
        "message": {
            "message_id": 2,
            "from": sender,
            "chat": chat,
            "date": 1_717_000_100,
            "photo": [
                {
                    "file_id": "AgAD-s",
                    "file_unique_id": "s",
                    "file_size": 900,
                    "width": 90,
                    "height": 90,
                },
                {
                    "file_id": "AgAD-l",
                    "file_unique_id": "l",
                    "file_size": 90000,
                    "width": 900,
                    "height": 900,
                },
            ],
        },
    }
    for update in (start, start, photo):  # the retried /start is greeted once
        async with http.post("/webhooks/telegram", json=update, headers=headers) as resp:
            assert resp.status == 200
    (request,) = await _inbound(server.settings)
    assert request.text == "" and request.attachments[0].platform_file_id == "AgAD-l"
    replies = await _replies(server.settings)
    assert len({r.reply_id for r in replies}) == 1
    assert replies[0].language == "en" and replies[0].reply_to["chat_id"] == "555"


async def test_rejected_bodies_get_distinct_dead_letter_ids_naming_the_field(
    payloads: Payloads, server: IngestServer, http: aiohttp.ClientSession
) -> None:
    prefix = _vk_message(payloads)
    bodies = []
    for bad in (None, [], {"x": 1}):  # same first 64+ characters, different peer_id
        event = orjson.loads(orjson.dumps(prefix))
        event["object"]["message"]["peer_id"] = bad
        bodies.append(orjson.dumps(event))
    for body in bodies:
        async with http.post(
            "/webhooks/vk", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["field"] == "object.message.peer_id"
    dead = [DeadLetter.model_validate_json(v) for v in await _topic(server.settings, "dlq")]
    assert len({d.dead_letter_id for d in dead}) == 3
    assert {d.field for d in dead} == {"object.message.peer_id"}
    assert sorted(base64.b64decode(d.raw_b64) for d in dead) == sorted(bodies)
