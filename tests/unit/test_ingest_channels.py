"""Pure channel parsers and their authentication checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.errors import DecodeError, InvalidInput, Unauthorized
from pipeline.events import Channel, Identity
from pipeline.ingest.channels import (
    Ignored,
    chatwoot_signature,
    check_bearer,
    check_chatwoot_signature,
    check_telegram_secret,
    check_twilio_signature,
    decode_json,
    parse_chatwoot,
    parse_generic,
    parse_telegram,
    parse_twilio,
    parse_voice,
    twilio_signature,
)
from pipeline.ingest.message import ParsedMessage


def _ok(result: ParsedMessage | Ignored) -> ParsedMessage:
    assert isinstance(result, ParsedMessage), result
    return result


def test_decode_json_errors() -> None:
    with pytest.raises(DecodeError):
        decode_json(b"\xff{}")
    with pytest.raises(DecodeError):
        decode_json(b"{")
    assert decode_json(b'{"a": 1}') == {"a": 1}


# ---------------------------------------------------------------- generic


def test_generic_ru_with_identities_and_topic() -> None:
    msg = parse_generic(
        {
            "channel": "webform",
            "message_id": 17,
            "customer": {"email": "Olga@Example.RU", "phone": "8 903 555 01 01", "name": "Ольга"},
            "text": "Не работает кондиционер",
            "topic": "Кондиционеры",
            "conversation_id": "conv-1",
            "metadata": {"page": "/hvac", "ab": 2},
        }
    )
    assert msg.channel is Channel.webform
    assert msg.channel_message_id == "17"
    assert msg.identities == (
        Identity(kind="email", value="olga@example.ru"),
        Identity(kind="phone", value="+79035550101"),
    )
    assert msg.routing_hints == {"form_topic": "Кондиционеры"}
    assert msg.reply_to == {
        "address": "olga@example.ru",
        "phone": "+79035550101",
        "conversation_id": "conv-1",
    }
    assert msg.metadata == {"page": "/hvac", "ab": "2"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "<body>"),
        ({"message_id": "1", "customer": {"id": "c"}, "text": "x"}, "channel"),
        (
            {"channel": "telegram", "message_id": "1", "customer": {"id": "c"}, "text": "x"},
            "channel",
        ),
        ({"channel": "webchat", "customer": {"id": "c"}, "text": "x"}, "message_id"),
        ({"channel": "webchat", "message_id": "1", "text": "x"}, "customer"),
        ({"channel": "webchat", "message_id": "1", "customer": {}, "text": "x"}, "customer"),
        ({"channel": "webchat", "message_id": "1", "customer": {"id": "c"}}, "text"),
        ({"channel": "webchat", "message_id": "1", "customer": {"id": "c"}, "text": 5}, "text"),
        (
            {"channel": "api", "message_id": "1", "customer": {"phone": "12"}, "text": "x"},
            "customer.phone",
        ),
        (
            {
                "channel": "api",
                "message_id": "1",
                "customer": {"id": "c"},
                "text": "x",
                "sent_at": "soon",
            },
            "sent_at",
        ),
        (
            {
                "channel": "api",
                "message_id": "1",
                "customer": {"id": "c"},
                "text": "x",
                "metadata": {"a": {"b": 1}},
            },
            "metadata.a",
        ),
    ],
)
def test_generic_invalid_names_field(payload: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_generic(payload)
    assert info.value.field == field


# ---------------------------------------------------------------- telegram


def _update(**message: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": 7,
        "from": {"id": 42, "is_bot": False, "first_name": "John", "last_name": "Doe"},
        "chat": {"id": 42, "type": "private"},
        "date": 1_700_000_000,
        "text": "Where is my parcel?",
    }
    base.update(message)
    return {"update_id": 1000, "message": base}


def test_telegram_text_message() -> None:
    msg = _ok(parse_telegram(_update()))
    assert msg.channel is Channel.telegram
    assert msg.channel_message_id == "42:7"
    assert msg.identities == (Identity(kind="telegram", value="42"),)
    assert msg.name == "John Doe"
    assert msg.reply_to == {"chat_id": "42", "message_id": "7"}
    assert msg.sent_at is not None and msg.sent_at.year == 2023


def test_telegram_caption_edit_and_shared_contact() -> None:
    caption = _update(text=None, caption="Фото чека")
    caption["message"].pop("text")
    assert _ok(parse_telegram(caption)).text == "Фото чека"
    edited = {"update_id": 1001, "edited_message": _update(edit_date=1_700_000_100)["message"]}
    msg = _ok(parse_telegram(edited))
    assert msg.channel_message_id == "42:7:edit:1700000100" and msg.metadata["edited"] == "true"
    shared = _update(contact={"phone_number": "79161234567", "user_id": 42})
    assert Identity(kind="phone", value="+79161234567") in _ok(parse_telegram(shared)).identities


def test_telegram_ignored_and_invalid() -> None:
    assert isinstance(parse_telegram({"update_id": 1, "callback_query": {}}), Ignored)
    sticker = _update()
    sticker["message"].pop("text")
    assert isinstance(parse_telegram(sticker), Ignored)
    bot = _update()
    bot["message"]["from"]["is_bot"] = True
    assert isinstance(parse_telegram(bot), Ignored)
    with pytest.raises(InvalidInput) as info:
        parse_telegram({"message": {}})
    assert info.value.field == "update_id"
    no_chat = _update()
    no_chat["message"].pop("chat")
    with pytest.raises(InvalidInput) as info:
        parse_telegram(no_chat)
    assert info.value.field == "message.chat"


def test_telegram_secret() -> None:
    settings = Settings(telegram_secret_token=SecretStr("s3"))
    check_telegram_secret({"X-Telegram-Bot-Api-Secret-Token": "s3"}, settings)
    with pytest.raises(Unauthorized) as info:
        check_telegram_secret({}, settings)
    assert info.value.status == 401
    with pytest.raises(Unauthorized) as info:
        check_telegram_secret({"X-Telegram-Bot-Api-Secret-Token": "s4"}, settings)
    assert info.value.status == 403
    check_telegram_secret({}, Settings())  # no secret configured → open


# ---------------------------------------------------------------- chatwoot


def _cw(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event": "message_created",
        "id": 11,
        "content": "Здравствуйте, вопрос по счёту",
        "message_type": "incoming",
        "created_at": 1_700_000_000,
        "sender": {"id": 5, "name": "Олег", "email": "oleg@example.ru", "type": "contact"},
        "conversation": {"id": 3},
        "account": {"id": 1},
        "inbox": {"id": 9},
    }
    data.update(over)
    return data


def test_chatwoot_incoming() -> None:
    msg = _ok(parse_chatwoot(_cw()))
    assert msg.channel is Channel.chatwoot
    assert msg.channel_message_id == "1:11"
    assert msg.reply_to == {"conversation_id": "3", "account_id": "1"}
    assert msg.identities == (
        Identity(kind="chatwoot", value="1:5"),
        Identity(kind="email", value="oleg@example.ru"),
    )
    assert msg.metadata["chatwoot_inbox_id"] == "9"


@pytest.mark.parametrize("mtype", ["outgoing", "template", "activity", 1, 2, 3])
def test_chatwoot_non_incoming_ignored(mtype: Any) -> None:
    assert isinstance(parse_chatwoot(_cw(message_type=mtype)), Ignored)


def test_chatwoot_other_cases() -> None:
    assert isinstance(parse_chatwoot(_cw(private=True)), Ignored)
    assert isinstance(parse_chatwoot(_cw(event="conversation_created")), Ignored)
    assert isinstance(parse_chatwoot(_cw(message_type=0)), ParsedMessage)
    with pytest.raises(InvalidInput) as info:
        parse_chatwoot(_cw(account=None))
    assert info.value.field == "account"
    agent = _cw(sender={"id": 2, "type": "user"})
    agent["conversation"] = {"id": 3, "meta": {"sender": {"id": 77}}}
    assert Identity(kind="chatwoot", value="1:77") in _ok(parse_chatwoot(agent)).identities


def test_chatwoot_signature() -> None:
    settings = Settings(chatwoot_hmac_token=SecretStr("k"))
    body = b'{"event":"message_created"}'
    sig = chatwoot_signature("k", "1700000000", body)
    want = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sig == f"sha256={want}"
    headers = {"X-Chatwoot-Signature": sig, "X-Chatwoot-Timestamp": "1700000000"}
    check_chatwoot_signature(headers, body, settings, now_s=1_700_000_010)
    with pytest.raises(Unauthorized) as info:
        check_chatwoot_signature(headers, body, settings, now_s=1_700_100_000)  # stale
    assert info.value.status == 403
    with pytest.raises(Unauthorized):
        check_chatwoot_signature(headers, body + b" ", settings, now_s=1_700_000_010)
    with pytest.raises(Unauthorized) as info:
        check_chatwoot_signature({}, body, settings, now_s=0)
    assert info.value.status == 401


# ---------------------------------------------------------------- twilio


def test_twilio_signature_matches_documented_algorithm() -> None:
    # The worked example of Twilio's security docs (auth token 12345).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    data = url + "".join(k + params[k] for k in sorted(params))
    manual = base64.b64encode(hmac.new(b"12345", data.encode(), hashlib.sha1).digest()).decode()
    assert manual == twilio_signature("12345", url, params)


def test_twilio_check_and_parse() -> None:
    settings = Settings(twilio_auth_token=SecretStr("tok"))
    form = {"MessageSid": "SM1", "From": "+79161234567", "To": "+15005550006", "Body": "Привет"}
    url = "https://router.example.com/webhooks/twilio"
    check_twilio_signature(
        {"X-Twilio-Signature": twilio_signature("tok", url, form)}, url, form, settings
    )
    with pytest.raises(Unauthorized):
        check_twilio_signature({"X-Twilio-Signature": "AAAA"}, url, form, settings)
    msg = parse_twilio(form)
    assert msg.channel is Channel.sms and msg.channel_message_id == "SM1"
    assert msg.reply_to == {"phone": "+79161234567", "service_number": "+15005550006"}
    wa = parse_twilio({**form, "From": "whatsapp:+14155552671"})
    assert wa.metadata["twilio_channel"] == "whatsapp"
    for missing in ("MessageSid", "From", "Body"):
        bad = {k: v for k, v in form.items() if k != missing}
        with pytest.raises(InvalidInput) as info:
            parse_twilio(bad)
        assert info.value.field == missing


# ---------------------------------------------------------------- voice


def test_voice_event() -> None:
    msg = parse_voice(
        {
            "call_id": "c-1",
            "caller": "+44 20 7946 0958",
            "transcript": "Hi, I left a voicemail about my refund",
            "ivr_menu": "3 / 2",
            "recording_url": "https://pbx/rec.wav",
            "duration_s": 31.5,
            "kind": "voicemail",
        }
    )
    assert msg.channel is Channel.voice
    assert msg.routing_hints == {"ivr_menu": "3>2"}
    assert msg.metadata == {
        "recording_url": "https://pbx/rec.wav",
        "voice_kind": "voicemail",
        "duration_s": "31.5",
    }
    assert msg.reply_to == {"phone": "+442079460958"}
    with pytest.raises(InvalidInput) as info:
        parse_voice({"call_id": "c", "caller": "+79161234567", "transcript": "x", "ivr_menu": {}})
    assert info.value.field == "ivr_menu"
    with pytest.raises(InvalidInput) as info:
        parse_voice(
            {
                "call_id": "c",
                "caller": "+79161234567",
                "transcript": "x",
                "recording_url": "ftp://x",
            }
        )
    assert info.value.field == "recording_url"


def test_bearer() -> None:
    settings = Settings(generic_api_token=SecretStr("t"))
    check_bearer({"Authorization": "Bearer t"}, settings)
    with pytest.raises(Unauthorized) as info:
        check_bearer({}, settings)
    assert info.value.status == 401
    with pytest.raises(Unauthorized) as info:
        check_bearer({"Authorization": "Bearer x"}, settings)
    assert info.value.status == 403
