"""Hostile and random input: every parser returns a result or raises InvalidInput, nothing else.

Properties checked for every generated input: the parser either returns a ``ParsedMessage`` or
an ``Ignored`` with a reason, or raises ``InvalidInput`` (or one of its typed subclasses from
``pipeline.errors``) with a message and a 4xx status; any other exception fails the test. A
parsed message normalizes into a valid ``InboundMessage`` that round-trips through the codec
unchanged, and parsing the same input again gives the same message id (the idempotency key).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codec import decode, encode
from pipeline.config import Settings
from pipeline.domain.text import clean_text, detect_language, find_pii, normalize_phone
from pipeline.domain.tokens import parse_reply_address
from pipeline.errors import DecodeError, InvalidInput
from pipeline.events import CustomerProfile, InboundMessage
from pipeline.ingest.channels import (
    Ignored,
    decode_json,
    parse_chatwoot,
    parse_generic,
    parse_telegram,
    parse_twilio,
    parse_voice,
)
from pipeline.ingest.email_parse import parse_email, to_parsed_message
from pipeline.ingest.message import ParsedMessage, build_inbound

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS = Settings()
NOW = datetime(2024, 1, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def _keys(*names: str) -> st.SearchStrategy[str]:
    return st.sampled_from(names) | st.text(max_size=8)


def _structured(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Objects whose keys are mostly the platform's own, with random values and nesting."""
    return st.recursive(
        st.none() | st.integers() | st.text(max_size=40) | st.booleans(),
        lambda children: (
            st.dictionaries(keys, children, max_size=8) | st.lists(children, max_size=3)
        ),
        max_leaves=25,
    )


def _check(result: ParsedMessage | Ignored) -> None:
    """``Ignored`` with a reason, or a message that normalizes and round-trips."""
    assert isinstance(result, ParsedMessage | Ignored), type(result)
    if isinstance(result, Ignored):
        assert isinstance(result.reason, str) and result.reason
        return
    msg = build_inbound(result, CustomerProfile(customer_id="c"), SETTINGS, NOW)
    assert msg.message_id == result.message_id and msg.channel == result.channel
    assert msg.text == clean_text(msg.text) and len(msg.text) <= SETTINGS.max_text_chars
    assert msg.language in ("ru", "en", "other")
    assert all(0 <= span.start < span.end <= len(msg.text) for span in msg.pii)
    assert decode(InboundMessage, encode(msg)) == msg  # the codec loses nothing


def _rejected(exc: InvalidInput) -> None:
    """A typed refusal: says what is wrong and maps to a 4xx answer."""
    assert str(exc)
    assert 400 <= exc.status < 500


def _run(fn: Any, payload: Any) -> None:
    try:
        result = fn(payload)
    except InvalidInput as exc:  # anything else propagates and fails the test
        _rejected(exc)
        return
    _check(result)
    if isinstance(result, ParsedMessage):  # the idempotency key depends on the input only
        again = fn(payload)
        assert isinstance(again, ParsedMessage) and again.message_id == result.message_id


@FUZZ
@given(st.binary(max_size=300))
def test_decode_json_bytes(raw: bytes) -> None:
    try:
        value = decode_json(raw)
    except DecodeError as exc:
        _rejected(exc)
        assert exc.field == "<body>"
        return
    # Accepted bytes are UTF-8 JSON and decode to what the standard library reads.
    assert value == json.loads(raw.decode("utf-8"))


@FUZZ
@given(json_values)
def test_decode_json_accepts_every_json_document(value: Any) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert decode_json(raw) == value


@FUZZ
@given(
    json_values
    | _structured(
        _keys("channel", "message_id", "customer", "text", "email", "phone", "id", "external_id")
        | _keys("subject", "sent_at", "topic", "metadata", "conversation_id", "name")
    )
)
def test_generic(payload: Any) -> None:
    _run(parse_generic, payload)


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            "channel": st.sampled_from(["webchat", "webform", "social", "api"]),
            "message_id": st.text(min_size=1, max_size=20) | st.integers(),
            "customer": st.fixed_dictionaries(
                {},
                optional={
                    "email": st.emails() | st.text(max_size=20),
                    "phone": st.from_regex(r"\+?[0-9 ()-]{0,16}", fullmatch=True),
                    "id": st.text(max_size=10),
                    "name": st.text(max_size=20),
                },
            ),
            "text": st.text(max_size=200),
        },
        optional={"sent_at": st.text(max_size=30) | st.integers(), "metadata": json_values},
    )
)
def test_generic_near_valid(payload: Any) -> None:
    _run(parse_generic, payload)


@FUZZ
@given(
    json_values
    | _structured(
        _keys("update_id", "message", "edited_message", "message_id", "from", "chat", "id")
        | _keys("date", "text", "caption", "is_bot", "first_name", "contact", "phone_number")
        | _keys("user_id", "edit_date", "language_code", "username")
    )
)
def test_telegram(payload: Any) -> None:
    _run(parse_telegram, payload)


@FUZZ
@given(
    json_values
    | _structured(
        _keys("event", "id", "content", "message_type", "private", "sender", "conversation")
        | _keys("account", "inbox", "email", "phone_number", "type", "meta", "contact_inbox")
        | _keys("contact_id", "created_at", "name", "channel")
    )
)
def test_chatwoot(payload: Any) -> None:
    if isinstance(payload, dict):
        payload.setdefault("event", "message_created")
    _run(parse_chatwoot, payload)


@FUZZ
@given(
    st.dictionaries(
        _keys("MessageSid", "SmsSid", "From", "To", "Body", "NumMedia", "AccountSid"),
        st.text(max_size=40),
        max_size=8,
    )
)
def test_twilio(form: dict[str, str]) -> None:
    _run(parse_twilio, form)


@FUZZ
@given(
    json_values
    | _structured(
        _keys("call_id", "caller", "called", "transcript", "ivr_menu", "recording_url")
        | _keys("started_at", "duration_s", "kind", "language")
    )
)
def test_voice(payload: Any) -> None:
    _run(parse_voice, payload)


# Well-formed input of every channel, with random content: always accepted (so the codec
# round trip above is exercised on every example, not only on the few random hits).
_texts = st.text(min_size=1, max_size=300).filter(str.strip)
_ids = st.integers(min_value=1, max_value=2**53) | st.from_regex(
    r"[A-Za-z0-9_-]{1,40}", fullmatch=True
)
_phones = st.from_regex(r"\+79[0-9]{9}", fullmatch=True)


@FUZZ
@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "channel": st.sampled_from(["webchat", "webform", "social", "api"]),
                "message_id": _ids,
                "customer": st.fixed_dictionaries({"id": _ids}, optional={"name": st.text()}),
                "text": _texts,
            },
            optional={"subject": st.text(max_size=100), "topic": st.text(max_size=50)},
        ).map(lambda d: ("generic", d)),
        st.fixed_dictionaries(
            {
                "update_id": st.integers(min_value=1, max_value=2**31),
                "message": st.fixed_dictionaries(
                    {
                        "message_id": st.integers(min_value=1, max_value=2**31),
                        "date": st.integers(min_value=0, max_value=2**31),
                        "chat": st.fixed_dictionaries(
                            {"id": st.integers(min_value=1, max_value=2**40)}
                        ),
                        "from": st.fixed_dictionaries(
                            {"is_bot": st.just(False), "first_name": st.text(max_size=30)}
                        ),
                        "text": _texts,
                    }
                ),
            }
        ).map(lambda d: ("telegram", d)),
        st.fixed_dictionaries(
            {
                "MessageSid": st.from_regex(r"SM[0-9a-f]{32}", fullmatch=True),
                "From": _phones,
                "To": _phones,
                "Body": _texts,
            }
        ).map(lambda d: ("twilio", d)),
        st.fixed_dictionaries(
            {"call_id": _ids, "caller": _phones, "transcript": _texts},
            optional={"ivr_menu": st.lists(st.sampled_from(["1", "2", "3"]), max_size=3)},
        ).map(lambda d: ("voice", d)),
    )
)
def test_well_formed_input_is_accepted_and_round_trips(case: tuple[str, Any]) -> None:
    parser = {
        "generic": parse_generic,
        "telegram": parse_telegram,
        "twilio": parse_twilio,
        "voice": parse_voice,
    }[case[0]]
    result = parser(case[1])
    assert isinstance(result, ParsedMessage), result
    _run(parser, case[1])


mime_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "From",
                "To",
                "Subject",
                "Message-ID",
                "In-Reply-To",
                "References",
                "Date",
                "Content-Type",
                "Content-Transfer-Encoding",
                "Content-Disposition",
                "MIME-Version",
            ]
        ),
        st.sampled_from(
            [
                "a@example.com",
                "=?koi8-r?b?8NLJ18XU?= <x@y.ru>",
                "=?utf-8?q?broken",
                'multipart/mixed; boundary="b"',
                "multipart/alternative; boundary=b",
                "text/plain; charset=koi8-r",
                "text/plain; charset=x-unknown",
                "text/html; charset=windows-1251",
                "base64",
                "quoted-printable",
                'attachment; filename="=?utf-8?b?0YQ=?="',
                "<id@x>",
                "Wed, 99 Foo 2024 99:99:99 +9999",
            ]
        )
        | st.text(max_size=40),
    ),
    max_size=10,
)


@FUZZ
@given(
    mime_headers,
    st.binary(max_size=400) | st.text(max_size=300).map(lambda t: t.encode("utf-8")),
)
def test_email_mime(headers: list[tuple[str, str]], body: bytes) -> None:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8", errors="replace")
    parts = b"--b\r\nContent-Type: text/plain\r\n\r\n" + body + b"\r\n--b--\r\n"
    for raw in (head + b"\r\n" + body, head + b"\r\n" + parts, body):
        try:
            mail = parse_email(raw)
        except InvalidInput as exc:
            _rejected(exc)
            continue
        _run(lambda m: to_parsed_message(m, "support@example.com"), mail)


@FUZZ
@given(st.text(max_size=300))
def test_text_helpers_never_crash(text: str) -> None:
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned  # idempotent
    lang, conf = detect_language(cleaned)
    assert lang in ("ru", "en", "other") and 0.0 <= conf <= 1.0
    for span in find_pii(cleaned):
        assert 0 <= span.start < span.end <= len(cleaned)
    phone = normalize_phone(text)
    assert phone is None or re.fullmatch(r"\+[1-9][0-9]{7,14}", phone), phone
    assert parse_reply_address(text, SETTINGS) is None or "@" in text
