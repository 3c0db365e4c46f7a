"""Hostile and random input: every parser returns a result or raises InvalidInput, nothing else."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.errors import InvalidInput
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
from pipeline.ingest.normalize import clean_text, detect_language, find_pii, normalize_phone
from pipeline.notify.tokens import parse_reply_address

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
    """A parsed result must also survive normalization into the event model."""
    if isinstance(result, ParsedMessage):
        msg = build_inbound(result, CustomerProfile(customer_id="c"), SETTINGS, NOW)
        assert isinstance(msg, InboundMessage)
        InboundMessage.model_validate_json(msg.model_dump_json())


def _run(fn: Any, payload: Any) -> None:
    try:
        result = fn(payload)
    except InvalidInput:
        return
    _check(result)


@FUZZ
@given(st.binary(max_size=300))
def test_decode_json_bytes(raw: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        decode_json(raw)


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
        except InvalidInput:
            continue
        _check(to_parsed_message(mail, "support@example.com"))


@FUZZ
@given(st.text(max_size=300))
def test_text_helpers_never_crash(text: str) -> None:
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned  # idempotent
    lang, conf = detect_language(cleaned)
    assert lang in ("ru", "en", "other") and 0.0 <= conf <= 1.0
    for span in find_pii(cleaned):
        assert 0 <= span.start < span.end <= len(cleaned)
    normalize_phone(text)
    assert parse_reply_address(text, SETTINGS) is None or "@" in text
