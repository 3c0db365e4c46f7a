"""Edges of the Telegram, Chatwoot and Twilio parsers: files, commands, odd but valid fields.

Sources of the payload shapes:

* Telegram: Bot API reference (core.telegram.org/bots/api), objects ``Message``,
  ``PhotoSize`` (an array, smallest first), ``Document``, ``Voice``, ``MessageEntity`` of type
  ``bot_command``; ``/start`` is what a client sends when a user presses Start.
* Chatwoot: "A sample webhook payload" of chatwoot/docs ``docs/product/others/webhook-events.md``
  (agent in ``sender`` without a type, customer in ``contact``, ``conversation.display_id``,
  ``"created_at": "2020-03-03 13:05:57 UTC"``), and its ``message_created`` sample
  (attachments in the ``file_type``/``data_url`` format of Chatwoot's attachment push data).
* Twilio: the inbound-message parameters (``NumMedia``, ``MediaUrl0``, ``MediaContentType0``)
  and the status-callback parameters (``MessageStatus``, ``ErrorCode``) of Twilio's Messaging
  webhook reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pipeline.errors import InvalidInput
from pipeline.events import Identity
from pipeline.ingest.channels import (
    BotCommand,
    Ignored,
    PlatformReceipt,
    bot_command,
    parse_chatwoot,
    parse_telegram,
    parse_twilio,
)
from pipeline.ingest.message import ParsedMessage

if TYPE_CHECKING:
    from tests.plugins.payloads import Payloads


def _tg(**message: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "message_id": 77,
        "from": {"id": 100200300, "is_bot": False, "first_name": "Анна", "language_code": "ru"},
        "chat": {"id": 100200300, "type": "private", "first_name": "Анна"},
        "date": 1_717_000_000,
    }
    msg.update(message)
    return {"update_id": 9001, "message": msg}


PHOTO = [
    {"file_id": "AgAD-small", "file_unique_id": "s", "file_size": 1201, "width": 90, "height": 67},
    {
        "file_id": "AgAD-large",
        "file_unique_id": "l",
        "file_size": 80210,
        "width": 1280,
        "height": 960,
    },
]


def test_telegram_photo_with_caption() -> None:
    msg = parse_telegram(_tg(photo=PHOTO, caption="Несвежие огурцы на полке"))
    assert isinstance(msg, ParsedMessage)
    assert msg.text == "Несвежие огурцы на полке"
    (att,) = msg.attachments
    assert (att.kind, att.platform_file_id, att.size, att.content_type) == (
        "photo",
        "AgAD-large",
        80210,
        "image/jpeg",
    )


def test_telegram_file_only_messages_are_requests_without_text() -> None:
    voice = {
        "file_id": "AwAD-voice",
        "file_unique_id": "v",
        "duration": 3,
        "mime_type": "audio/ogg",
    }
    document = {
        "file_id": "BQAD-doc",
        "file_unique_id": "d",
        "file_name": "receipt.pdf",
        "mime_type": "application/pdf",
        "file_size": 5321,
    }
    for field, value, kind in (("voice", voice, "voice"), ("document", document, "document")):
        msg = parse_telegram(_tg(**{field: value}))
        assert isinstance(msg, ParsedMessage), field
        assert msg.text == "" and msg.attachments[0].kind == kind
    assert parse_telegram(_tg(document=document)).attachments[0].filename == "receipt.pdf"  # type: ignore[union-attr]


def test_telegram_message_with_neither_text_nor_file_is_ignored_with_a_reason() -> None:
    result = parse_telegram(_tg(location={"latitude": 55.75, "longitude": 37.61}))
    assert isinstance(result, Ignored) and "location" in result.reason


def test_telegram_start_is_a_command() -> None:
    entities = [{"offset": 0, "length": 6, "type": "bot_command"}]
    start = parse_telegram(_tg(text="/start", entities=entities))
    assert isinstance(start, BotCommand) and start.command == "start"
    assert start.message.reply_to["chat_id"] == "100200300"
    deep = parse_telegram(_tg(text="/start@care_bot promo42"))
    assert isinstance(deep, BotCommand)
    assert isinstance(parse_telegram(_tg(text="/order 123 не пришёл")), ParsedMessage)


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/start", "start"),
        ("/help", "start"),
        ("/START@Bot x", "start"),
        ("start", None),
        ("", None),
    ],
)
def test_bot_command_words(text: str, command: str | None) -> None:
    assert bot_command(text) == command


# ---------------------------------------------------------------- Chatwoot

CHATWOOT_SAMPLE: dict[str, Any] = {
    "event": "message_created",
    "id": "1",
    "content": "Hi",
    "created_at": "2020-03-03 13:05:57 UTC",
    "message_type": "incoming",
    "content_type": "text",
    "content_attributes": {},
    "source_id": "",
    "sender": {"id": 1, "name": "Agent", "email": "agent@example.com"},
    "contact": {"id": "1", "name": "contact-name"},
    "conversation": {
        "display_id": "1",
        "additional_attributes": {
            "browser": {"device_name": "Macbook", "browser_name": "Chrome"},
            "referer": "http://www.chatwoot.com",
            "initiated_at": "Tue Mar 03 2020 18:37:38 GMT-0700 (Mountain Standard Time)",
        },
    },
    "account": {"id": "1", "name": "Chatwoot"},
}


def test_chatwoot_docs_sample_customer_is_the_contact_never_the_agent() -> None:
    msg = parse_chatwoot(CHATWOOT_SAMPLE)
    assert isinstance(msg, ParsedMessage)
    assert msg.identities == (Identity(kind="chatwoot", value="1:1"),)
    assert msg.name == "contact-name"
    assert msg.reply_to == {"conversation_id": "1", "account_id": "1"}
    assert msg.sent_at is not None and msg.sent_at.isoformat() == "2020-03-03T13:05:57+00:00"


def test_chatwoot_agent_sender_without_any_contact_is_refused_naming_the_field() -> None:
    data = {k: v for k, v in CHATWOOT_SAMPLE.items() if k != "contact"}
    with pytest.raises(InvalidInput) as info:
        parse_chatwoot(data)
    assert info.value.field == "contact.id"


def test_chatwoot_odd_optional_timestamp_does_not_reject_the_message() -> None:
    msg = parse_chatwoot({**CHATWOOT_SAMPLE, "created_at": "Tue Mar 03 2020 18:37:38 GMT-0700"})
    assert isinstance(msg, ParsedMessage) and msg.sent_at is None
    assert msg.metadata["chatwoot_created_at"].startswith("Tue Mar 03")


def test_chatwoot_attachment_only() -> None:
    attachment = {
        "id": 12,
        "message_id": 1,
        "file_type": "image",
        "account_id": 1,
        "extension": "png",
        "data_url": "https://chat.example.com/rails/active_storage/blobs/x/photo.png",
        "thumb_url": "https://chat.example.com/rails/active_storage/representations/x/photo.png",
        "file_size": 20480,
    }
    msg = parse_chatwoot({**CHATWOOT_SAMPLE, "content": None, "attachments": [attachment]})
    assert isinstance(msg, ParsedMessage) and msg.text == ""
    (att,) = msg.attachments
    assert (att.kind, att.size, att.platform_file_id) == ("image", 20480, "12")
    assert att.url is not None and att.url.endswith("photo.png")
    assert isinstance(parse_chatwoot({**CHATWOOT_SAMPLE, "content": ""}), Ignored)


# ---------------------------------------------------------------- Twilio

INBOUND = {
    "ToCountry": "US",
    "SmsMessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
    "NumMedia": "0",
    "SmsSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
    "SmsStatus": "received",
    "Body": "Hello",
    "To": "+15005550006",
    "NumSegments": "1",
    "MessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
    "AccountSid": "AC00000000000000000000000000000000",
    "From": "+14155552671",
    "ApiVersion": "2010-04-01",
}


def test_twilio_media_only_message() -> None:
    form = {
        **INBOUND,
        "Body": "",
        "NumMedia": "1",
        "MediaContentType0": "image/jpeg",
        "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/SM1/Media/ME96a",
    }
    msg = parse_twilio(form)
    assert isinstance(msg, ParsedMessage) and msg.text == ""
    (att,) = msg.attachments
    assert (att.kind, att.content_type, att.platform_file_id) == ("media", "image/jpeg", "ME96a")
    with pytest.raises(InvalidInput) as info:
        parse_twilio({**form, "MediaUrl0": ""})
    assert info.value.field == "MediaUrl0"


def test_twilio_status_callbacks_become_receipts(payloads: Payloads) -> None:
    delivered = parse_twilio(payloads.TWILIO_STATUS, "rep_abc")
    assert isinstance(delivered, PlatformReceipt)
    assert (delivered.status, delivered.delivery_id, delivered.channel) == (
        "delivered",
        "rep_abc",
        "sms",
    )
    failed = parse_twilio(
        {**payloads.TWILIO_STATUS, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    )
    assert isinstance(failed, PlatformReceipt) and failed.status == "failed"
    assert failed.error == "twilio undelivered (error 30003)"
    assert failed.delivery_id is None
    assert isinstance(parse_twilio({**payloads.TWILIO_STATUS, "MessageStatus": "queued"}), Ignored)
