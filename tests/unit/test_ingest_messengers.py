"""WhatsApp Cloud API and VK Callback API parsers and auth checks, on published payloads.

The payloads and their sources are in ``tests/plugins/payloads.py``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.errors import InvalidInput, Unauthorized
from pipeline.events import Channel, Identity
from pipeline.ingest.channels import Answer, BotCommand, Ignored, PlatformReceipt
from pipeline.ingest.message import ParsedMessage
from pipeline.ingest.messengers import (
    check_whatsapp_signature,
    parse_vk,
    parse_whatsapp,
    whatsapp_signature,
    whatsapp_verify,
)

if TYPE_CHECKING:
    from tests.plugins.payloads import Payloads

# ---------------------------------------------------------------- WhatsApp


def test_whatsapp_text_message_from_metas_sample(payloads: Payloads) -> None:
    (item,) = parse_whatsapp(payloads.META_TEXT)
    assert isinstance(item, ParsedMessage)
    assert item.channel is Channel.whatsapp
    assert item.channel_message_id == "ABGGFlA5Fpa"
    assert item.text == "this is a text message"
    assert item.name == "test user name"
    assert item.identities == (Identity(kind="phone", value="+16315551181"),)
    assert item.reply_to == {
        "phone": "+16315551181",
        "wa_id": "16315551181",
        "message_id": "ABGGFlA5Fpa",
        "phone_number_id": "123456123",
    }
    assert item.sent_at is not None and int(item.sent_at.timestamp()) == 1504902988


def test_whatsapp_image_with_caption_and_document_without(payloads: Payloads) -> None:
    image = {
        "from": "16315551181",
        "id": "wamid.img",
        "timestamp": "1504902988",
        "type": "image",
        "image": {
            "caption": "Чек из магазина",
            "mime_type": "image/jpeg",
            "sha256": "IMAGE_HASH",
            "id": "1234567890",
        },
    }
    document = {
        "from": "16315551181",
        "id": "wamid.doc",
        "timestamp": "1504902988",
        "type": "document",
        "document": {
            "filename": "invoice.pdf",
            "mime_type": "application/pdf",
            "sha256": "DOC_HASH",
            "id": "555",
        },
    }
    first, second = parse_whatsapp(payloads.whatsapp_messages(image, document))
    assert isinstance(first, ParsedMessage) and isinstance(second, ParsedMessage)
    assert first.text == "Чек из магазина"
    (att,) = first.attachments
    assert (att.kind, att.content_type, att.platform_file_id, att.sha256) == (
        "image",
        "image/jpeg",
        "1234567890",
        "IMAGE_HASH",
    )
    # An attachment-only message is a request without text, not ignored.
    assert second.text == ""
    assert second.attachments[0].filename == "invoice.pdf"


def test_whatsapp_reactions_are_not_requests_but_unknown_types_are(payloads: Payloads) -> None:
    reaction = {
        "from": "16315551181",
        "id": "wamid.r",
        "timestamp": "1",
        "type": "reaction",
        "reaction": {"message_id": "wamid.x", "emoji": "👍"},
    }
    unsupported = {"from": "16315551181", "id": "wamid.u", "timestamp": "1", "type": "unsupported"}
    ignored, kept = parse_whatsapp(payloads.whatsapp_messages(reaction, unsupported))
    assert isinstance(ignored, Ignored)
    assert isinstance(kept, ParsedMessage) and kept.metadata["whatsapp_type"] == "unsupported"


@pytest.mark.parametrize(
    ("raw", "status"), [("sent", "sent"), ("delivered", "delivered"), ("read", "read")]
)
def test_whatsapp_statuses_become_receipts(payloads: Payloads, raw: str, status: str) -> None:
    (item,) = parse_whatsapp(
        payloads.whatsapp_status(status=raw, biz_opaque_callback_data="rep_123")
    )
    assert isinstance(item, PlatformReceipt)
    assert (item.status, item.provider_status, item.delivery_id) == (status, raw, "rep_123")
    assert item.provider_message_id == "wamid.xyzxyz" and item.channel == "whatsapp"


def test_whatsapp_failed_status_keeps_the_error(payloads: Payloads) -> None:
    errors = [
        {
            "code": 130472,
            "title": "User's number is part of an experiment",
            "message": "User's number is part of an experiment",
        }
    ]
    (item,) = parse_whatsapp(payloads.whatsapp_status(status="failed", errors=errors))
    assert isinstance(item, PlatformReceipt) and item.status == "failed"
    assert item.error == "whatsapp error 130472: User's number is part of an experiment"
    assert item.delivery_id is None


def test_whatsapp_bad_items_name_the_field(payloads: Payloads) -> None:
    bad = payloads.whatsapp_messages({"id": "wamid.1", "type": "text", "text": {"body": "x"}})
    with pytest.raises(InvalidInput) as info:
        parse_whatsapp(bad)
    assert info.value.field == "entry[0].changes[0].value.messages[0].from"
    assert isinstance(parse_whatsapp({"object": "page", "entry": []})[0], Ignored)


def test_whatsapp_signature_and_handshake() -> None:
    settings = Settings(
        whatsapp_app_secret=SecretStr("app-secret"), whatsapp_verify_token=SecretStr("vt")
    )
    body = b'{"object":"whatsapp_business_account"}'
    want = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert whatsapp_signature("app-secret", body) == want
    check_whatsapp_signature({"X-Hub-Signature-256": want}, body, settings)
    with pytest.raises(Unauthorized) as info:
        check_whatsapp_signature({}, body, settings)
    assert info.value.status == 401
    with pytest.raises(Unauthorized) as info:
        check_whatsapp_signature({"X-Hub-Signature-256": want}, body + b" ", settings)
    assert info.value.status == 403
    query = {"hub.mode": "subscribe", "hub.verify_token": "vt", "hub.challenge": "1158201444"}
    assert whatsapp_verify(query, settings) == "1158201444"
    with pytest.raises(Unauthorized):
        whatsapp_verify({**query, "hub.verify_token": "guess"}, settings)


# ---------------------------------------------------------------- VK

VK_SETTINGS = Settings(
    vk_secret=SecretStr("vk-secret"), vk_confirmation_code="b1357503", vk_group_id=193668024
)


def test_vk_confirmation_answers_the_configured_string() -> None:
    answer = parse_vk({"type": "confirmation", "group_id": 193668024}, VK_SETTINGS)
    assert answer == Answer("b1357503")
    with pytest.raises(Unauthorized):
        parse_vk({"type": "confirmation", "group_id": 1}, VK_SETTINGS)  # another community


def test_vk_message_new(payloads: Payloads) -> None:
    msg = parse_vk(payloads.vk_message_new(), VK_SETTINGS)
    assert isinstance(msg, ParsedMessage)
    assert msg.channel is Channel.vk
    assert msg.channel_message_id == "193668024:228970688:127"
    assert msg.identities == (Identity(kind="social", value="vk:228970688"),)
    assert msg.reply_to == {"peer_id": "228970688", "group_id": "193668024"}
    assert msg.language_hint == "ru"
    assert msg.sent_at is not None and int(msg.sent_at.timestamp()) == 1586054794


def test_vk_secret_is_checked(payloads: Payloads) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_vk(payloads.vk_message_new(secret="guess"), VK_SETTINGS)
    assert info.value.status == 403
    event = payloads.vk_message_new()
    del event["secret"]
    with pytest.raises(Unauthorized) as info:
        parse_vk(event, VK_SETTINGS)
    assert info.value.status == 401


def test_vk_attachments_and_attachment_only(payloads: Payloads) -> None:
    attachments = [
        {
            "type": "photo",
            "photo": {
                "id": 457239342,
                "album_id": -3,
                "owner_id": 555644284,
                "sizes": [
                    {
                        "type": "m",
                        "url": "https://sun9-71.userapi.com/m.jpg",
                        "width": 60,
                        "height": 130,
                    },
                    {
                        "type": "p",
                        "url": "https://sun9-59.userapi.com/p.jpg",
                        "width": 200,
                        "height": 435,
                    },
                ],
            },
        },
        {
            "type": "doc",
            "doc": {
                "id": 1,
                "owner_id": 2,
                "title": "чек.pdf",
                "size": 52011,
                "ext": "pdf",
                "url": "https://vk.com/doc2_1",
            },
        },
        {
            "type": "audio_message",
            "audio_message": {
                "id": 7,
                "owner_id": 8,
                "duration": 4,
                "link_ogg": "https://psv4.userapi.com/a.ogg",
            },
        },
    ]
    msg = parse_vk(payloads.vk_message_new({"text": "", "attachments": attachments}), VK_SETTINGS)
    assert isinstance(msg, ParsedMessage) and msg.text == ""
    photo, doc, voice = msg.attachments
    assert (photo.kind, photo.url, photo.platform_file_id) == (
        "photo",
        "https://sun9-59.userapi.com/p.jpg",
        "photo555644284_457239342",
    )
    assert (doc.filename, doc.size, doc.content_type) == ("чек.pdf", 52011, "application/pdf")
    assert (voice.kind, voice.content_type) == ("audio_message", "audio/ogg")


def test_vk_start_button_and_other_events(payloads: Payloads) -> None:
    start = parse_vk(
        payloads.vk_message_new({"text": "Начать", "payload": '{"command":"start"}'}), VK_SETTINGS
    )
    assert isinstance(start, BotCommand) and start.command == "start"
    assert isinstance(parse_vk(payloads.vk_message_new({"out": 1}), VK_SETTINGS), Ignored)
    assert isinstance(
        parse_vk(payloads.vk_message_new({"from_id": -193668024}), VK_SETTINGS), Ignored
    )
    typing_state = {"type": "message_typing_state", "group_id": 193668024, "secret": "vk-secret"}
    assert isinstance(parse_vk(typing_state, VK_SETTINGS), Ignored)
    with pytest.raises(InvalidInput) as info:
        parse_vk(payloads.vk_message_new({"peer_id": None}), VK_SETTINGS)
    assert info.value.field == "object.message.peer_id"
