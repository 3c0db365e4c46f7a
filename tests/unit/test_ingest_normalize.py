"""Pure normalization: phones, e-mails, text cleaning, language, timestamps, PII."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.config import Settings
from pipeline.domain.text import (
    canonical_channel,
    clean_text,
    detect_language,
    find_pii,
    luhn_ok,
    normalize_email,
    normalize_identity,
    normalize_phone,
    parse_timestamp,
    truncate,
)
from pipeline.errors import InvalidInput
from pipeline.events import Channel, CustomerProfile, Identity
from pipeline.ingest.message import ParsedMessage, build_inbound


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("+7 (916) 123-45-67", "+79161234567"),
        ("8 916 123 45 67", "+79161234567"),
        ("89161234567", "+79161234567"),
        ("9161234567", "+79161234567"),
        ("7-916-123-45-67", "+79161234567"),
        ("+44 20 7946 0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
        ("whatsapp:+14155552671", "+14155552671"),
        ("tel:+1-415-555-2671", "+14155552671"),
        ("12345", None),
        ("+7 916 123", None),
        ("+0123456789", None),
        ("abc", None),
        ("", None),
        ("+١٢٣٤٥٦٧٨٩٠", None),  # non-ASCII digits are not accepted
    ],
)
def test_normalize_phone(raw: str, want: str | None) -> None:
    assert normalize_phone(raw) == want


def test_normalize_email() -> None:
    assert normalize_email(" <Anna.Smirnova@Example.RU> ") == "anna.smirnova@example.ru"
    assert normalize_email("not-an-address") is None
    assert normalize_email("a@b") is None
    assert normalize_email("a@b..com") is None


def test_normalize_identity_errors_name_the_field() -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_identity("phone", "123")
    assert info.value.field == "customer.phone"
    assert normalize_identity("telegram", " 42 ") == Identity(kind="telegram", value="42")


def test_canonical_channel_aliases() -> None:
    assert canonical_channel("Twilio") is Channel.sms
    assert canonical_channel("web_form") is Channel.webform
    with pytest.raises(InvalidInput):
        canonical_channel("pigeon")


def test_clean_text_nfc_invisible_controls_whitespace() -> None:
    decomposed = "е\u0308ж"  # e + combining diaeresis → ё in NFC
    raw = f"  Hello\u200b  world\u00a0!\r\n\r\n\r\n\r\n{decomposed}\x07\ufeff  \t end "
    assert clean_text(raw) == "Hello world !\n\nёж end"
    assert clean_text("При\u00adвет") == "Привет"


def test_truncate_marks_cut() -> None:
    text, cut = truncate("word " * 100, 120)
    assert cut and len(text) <= 120 and not text.endswith(" ")
    assert truncate("short", 120) == ("short", False)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Здравствуйте, не пришёл заказ", "ru"),
        ("Привет", "ru"),
        ("Hello, my order has not arrived", "en"),
        ("refund", "en"),
        ("Guten Tag, meine Bestellung ist nicht angekommen", "other"),
        ("Добрий день, де моє замовлення? Дякую, їжак", "other"),  # Ukrainian
        ("你好，我的订单没有到", "other"),
        ("12345 !!!", "other"),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    got, conf = detect_language(text)
    assert got == lang
    assert 0.0 <= conf <= 1.0


def test_language_confidence_grows_with_length() -> None:
    short = detect_language("заказ")[1]
    long = detect_language("Здравствуйте, мой заказ так и не пришёл, помогите пожалуйста")[1]
    assert long > short


def test_parse_timestamp() -> None:
    assert parse_timestamp("2024-05-01T12:00:00+03:00", "f") == datetime(2024, 5, 1, 9, tzinfo=UTC)
    assert parse_timestamp("2024-05-01T12:00:00Z", "f").hour == 12
    assert parse_timestamp("2024-05-01T12:00:00", "f").tzinfo is UTC
    assert parse_timestamp(0, "f") == datetime(1970, 1, 1, tzinfo=UTC)
    for bad in ("yesterday", True, None, 10**20):
        with pytest.raises(InvalidInput) as info:
            parse_timestamp(bad, "sent_at")
        assert info.value.field == "sent_at"


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("41111x")


def test_find_pii_cards_phones_emails() -> None:
    text = (
        "Card 4111 1111 1111 1111 and 1234 5678 9012 3456, "
        "call +7 916 123-45-67 or write to anna@example.ru. Order 5521."
    )
    spans = find_pii(text)
    found = [(s.kind, text[s.start : s.end]) for s in spans]
    assert found == [
        ("card", "4111 1111 1111 1111"),
        ("phone", "+7 916 123-45-67"),
        ("email", "anna@example.ru"),
    ]


def test_find_pii_russian_text() -> None:
    text = "Мой телефон 8 (903) 555-01-01, карта 5500-0000-0000-0004"
    kinds = [s.kind for s in find_pii(text)]
    assert kinds == ["phone", "card"]


def test_build_inbound_truncates_and_flags() -> None:
    settings = Settings(max_text_chars=100)
    parsed = ParsedMessage(
        channel=Channel.webchat,
        channel_message_id="x1",
        identities=(Identity(kind="email", value="a@b.co"),),
        text="слово " * 100,
    )
    profile = CustomerProfile(customer_id="c1")
    msg = build_inbound(parsed, profile, settings, datetime(2024, 1, 1, tzinfo=UTC))
    assert len(msg.text) <= 100
    assert msg.metadata["truncated"] == "true"
    assert msg.language == "ru"
    assert msg.customer_id == "c1" and msg.profile == profile
