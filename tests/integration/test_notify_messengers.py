"""Replies to WhatsApp and VK customers through the outbox stand-ins of their send APIs.

``pipeline.outbox.Outbox`` answers the WhatsApp Cloud API ``POST /{phone_number_id}/messages``
and VK ``messages.send`` over real HTTP (and, like VK, sends nothing for a repeated
``random_id``); the real ``Deliverer`` sends to it with the settings the outbox gives the
workers. The last test closes the loop through the real ingest server and broker: the
Twilio stand-in's status callbacks come back as DeliveryReceipts of the reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from pipeline.broker import free_port
from pipeline.bus import read_all
from pipeline.config import Settings
from pipeline.events import Channel, DeliveryReceipt, Reply, ReplyKind
from pipeline.ingest.server import IngestServer
from pipeline.notify.channels import VK_MAX_CHARS, vk_random_id
from pipeline.notify.delivery import Deliverer
from pipeline.outbox import Outbox

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def outbox() -> Iterator[Outbox]:
    box = Outbox().start()
    yield box
    box.stop()


@pytest.fixture
async def deliverer(outbox: Outbox) -> AsyncIterator[Deliverer]:
    env = {k.removeprefix("PIPELINE_").lower(): v for k, v in outbox.env().items()}
    settings = Settings.model_validate({**env, "delivery_rate_limits": {}})
    async with aiohttp.ClientSession() as session:
        yield Deliverer(settings, session)


def _reply(channel: Channel, reply_to: dict[str, str], text: str, **update: Any) -> Reply:
    return Reply(
        reply_id=update.pop("reply_id", f"rep_{channel.value}_1"),
        message_id="msg_1",
        customer_id="cust_1",
        channel=channel,
        reply_to=reply_to,
        language="ru",
        kind=ReplyKind.resolution,
        text=text,
        created_at=NOW,
        **update,
    )


def _items(outbox: Outbox, channel: str) -> list[Any]:
    return [i for i in outbox.snapshot() if i.channel == channel]


async def test_whatsapp_reply_goes_to_the_cloud_api_from_the_number_written_to(
    outbox: Outbox, deliverer: Deliverer
) -> None:
    reply_to = {"phone": "+16315551181", "wa_id": "16315551181", "phone_number_id": "123456123"}
    receipt = await deliverer.deliver_reply(
        _reply(Channel.whatsapp, reply_to, "Огурцы заменили, бонусы начислены.")
    )
    assert receipt.status == "delivered", receipt.error
    (item,) = _items(outbox, "whatsapp")
    assert item.to == "16315551181" and item.text == "Огурцы заменили, бонусы начислены."
    assert item.raw["phone_number_id"] == "123456123"
    assert item.raw["messaging_product"] == "whatsapp" and item.raw["type"] == "text"
    # The status webhooks of this message will carry our reply id back.
    assert item.raw["biz_opaque_callback_data"] == "rep_whatsapp_1"


async def test_vk_reply_retried_is_sent_once_and_long_replies_in_parts(
    outbox: Outbox, deliverer: Deliverer
) -> None:
    reply = _reply(
        Channel.vk, {"peer_id": "228970688", "group_id": "193668024"}, "Заказ 5521 в пути."
    )
    first = await deliverer.deliver_reply(reply)
    again = await deliverer.deliver_reply(reply)  # a replay after a crash, say
    assert first.status == again.status == "delivered"
    (item,) = _items(outbox, "vk")
    assert item.to == "228970688" and item.text == "Заказ 5521 в пути."
    assert item.raw["random_id"] == str(vk_random_id(reply.reply_id, reply.text))
    assert item.raw["v"] == "5.199"

    long_text = ("Шаг за шагом. " * 400).strip()
    assert len(long_text) > VK_MAX_CHARS
    long_reply = _reply(Channel.vk, {"peer_id": "228970688"}, long_text, reply_id="rep_vk_long")
    receipt = await deliverer.deliver_reply(long_reply)
    assert receipt.status == "delivered", receipt.error
    parts = _items(outbox, "vk")[1:]
    assert len(parts) == 2 and all(len(p.text) <= VK_MAX_CHARS for p in parts)
    assert len({p.raw["random_id"] for p in parts}) == 2


async def test_sms_status_callbacks_come_back_as_receipts_of_the_reply(
    outbox: Outbox, kafka: Settings
) -> None:
    # The whole loop over real HTTP: notify sends the SMS with a StatusCallback to the ingest,
    # the Twilio stand-in reports sent/delivered there, signed; the ingest publishes receipts.
    port = free_port()
    env = {k.removeprefix("PIPELINE_").lower(): v for k, v in outbox.env().items()}
    settings = kafka.model_copy(
        update={
            **Settings.model_validate(env).model_dump(include=set(env)),
            "ingest_port": port,
            "smtp_port": 0,
            "public_base_url": f"http://127.0.0.1:{port}",
            "twilio_auth_token": SecretStr("tw-token"),
            "customers_path": None,
            "delivery_rate_limits": {},
        }
    )
    server = IngestServer(settings)
    await server.start()
    try:
        reply = _reply(
            Channel.sms,
            {"phone": "+79161234567", "service_number": "+15005550006"},
            "Ваш заказ 5521 доставят завтра.",
            reply_id="rep_sms_status_1",
        )
        async with aiohttp.ClientSession() as session:
            receipt = await Deliverer(settings, session).deliver_reply(reply)
        assert receipt.status == "delivered", receipt.error
        got = await records_until(settings, 2)
    finally:
        await server.stop()
    assert [(r.delivery_id, r.status, r.source) for r in got] == [
        ("rep_sms_status_1", "sent", "platform"),
        ("rep_sms_status_1", "delivered", "platform"),
    ]
    assert got[0].provider_message_id == got[1].provider_message_id
    assert got[0].provider_message_id.startswith("SM")


async def records_until(settings: Settings, n: int) -> list[DeliveryReceipt]:
    """The deliveries topic once it holds ``n`` receipts (the callbacks are asynchronous)."""
    for _ in range(300):
        raw = await read_all(settings, [settings.topic("deliveries")], idle_s=0.3)
        if len(raw) >= n:
            return [DeliveryReceipt.model_validate_json(r.value or b"") for r in raw]
    return [DeliveryReceipt.model_validate_json(r.value or b"") for r in raw]
