"""Hostile and random WhatsApp, VK and Twilio-status input: a result or a typed 4xx, nothing else.

Every generated payload either parses (messages, ignored events, receipts, commands; a
parsed message normalizes into a valid InboundMessage) or raises ``InvalidInput`` with a
message and a 4xx status; any other exception fails the test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from pipeline.codec import decode, encode
from pipeline.config import Settings
from pipeline.errors import InvalidInput
from pipeline.events import CustomerProfile, InboundMessage
from pipeline.ingest.channels import Answer, BotCommand, Ignored, PlatformReceipt, parse_twilio
from pipeline.ingest.message import ParsedMessage, build_inbound
from pipeline.ingest.messengers import parse_vk, parse_whatsapp

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS = Settings(vk_confirmation_code="c0de", vk_secret=SecretStr("s"))
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def _keys(*names: str) -> st.SearchStrategy[str]:
    return st.sampled_from(names) | st.text(max_size=8)


#: Digits that are not ASCII (``"²".isdigit()`` is true, ``int("²")`` fails) and huge numbers.
ODD_NUMBERS = st.sampled_from(["²", "٣", "1²", "99999999999999999999", "-1", "1e3"])


def _structured(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none()
        | st.integers()
        | st.text(max_size=40)
        | ODD_NUMBERS
        | st.booleans()
        | st.floats(),
        lambda children: (
            st.dictionaries(keys, children, max_size=8) | st.lists(children, max_size=3)
        ),
        max_leaves=30,
    )


def _check(item: Any) -> None:
    if isinstance(item, BotCommand):
        item = item.message
    if isinstance(item, Ignored | Answer):
        assert item.reason if isinstance(item, Ignored) else item.text
        return
    if isinstance(item, PlatformReceipt):
        assert item.provider_message_id and item.status in ("sent", "delivered", "read", "failed")
        return
    assert isinstance(item, ParsedMessage), type(item)
    msg = build_inbound(item, CustomerProfile(customer_id="c"), SETTINGS, NOW)
    assert decode(InboundMessage, encode(msg)) == msg


def _run(fn: Any, payload: Any) -> None:
    try:
        result = fn(payload)
    except InvalidInput as exc:
        assert str(exc) and 400 <= exc.status < 500
        return
    for item in result if isinstance(result, list) else [result]:
        _check(item)


WA_KEYS = _keys(
    "object", "entry", "changes", "field", "value", "metadata", "phone_number_id", "contacts"
) | _keys("messages", "statuses", "from", "id", "type", "text", "body", "image", "timestamp")


@FUZZ
@given(_structured(WA_KEYS))
def test_whatsapp(payload: Any) -> None:
    if isinstance(payload, dict):
        payload.setdefault("object", "whatsapp_business_account")
    _run(parse_whatsapp, payload)


VK_KEYS = _keys(
    "type", "object", "message", "from_id", "peer_id", "text", "attachments", "group_id"
) | _keys("secret", "conversation_message_id", "payload", "photo", "sizes", "url", "doc")


@FUZZ
@given(_structured(VK_KEYS))
def test_vk(payload: Any) -> None:
    if isinstance(payload, dict):
        payload.setdefault("type", "message_new")
        payload.setdefault("secret", "s")
    _run(lambda p: parse_vk(p, SETTINGS), payload)


@FUZZ
@given(
    st.dictionaries(
        _keys("MessageSid", "MessageStatus", "SmsStatus", "ErrorCode", "From", "NumMedia")
        | _keys("MediaUrl0", "MediaContentType0", "To"),
        st.text(max_size=40) | ODD_NUMBERS,
        max_size=8,
    )
)
def test_twilio_status_and_media(form: dict[str, str]) -> None:
    _run(parse_twilio, form)
