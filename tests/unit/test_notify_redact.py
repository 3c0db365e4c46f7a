"""Redaction of personal data in text sent to external parties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.text import luhn_ok
from pipeline.events import PiiSpan
from pipeline.notify.redact import find_pii, mask_card, mask_email, mask_phone, redact

VALID_CARD = "4276 1600 1234 5675"  # passes Luhn
INVALID_CARD = "4276 1600 1234 5678"  # fails Luhn: an order number, not a card


def test_luhn_valid_card_is_masked_keeping_last_four_ru() -> None:
    text = f"Бонусы не списались с карты {VALID_CARD}, проверьте."
    out = redact(text)
    assert "**** **** **** 5675" in out
    assert "4276" not in out
    assert out.startswith("Бонусы не списались с карты ")
    assert out.endswith(", проверьте.")


def test_luhn_invalid_digit_run_is_not_a_card() -> None:
    text = f"Order reference {INVALID_CARD} was not delivered."
    assert "card" not in [s.kind for s in find_pii(text)]
    assert INVALID_CARD in redact(text, kinds=("card",))


def test_unseparated_card_masked_en() -> None:
    out = redact("My card 4111111111111111 was charged twice")
    assert out == "My card ************1111 was charged twice"


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+7 916 123-45-67", "+* *** ***-**-67"),
        ("8 (916) 123-45-67", "* (***) ***-**-67"),
        ("+44 20 7946 0958", "+** ** **** **58"),
    ],
)
def test_phones_masked_keep_last_two(phone: str, masked: str) -> None:
    assert redact(f"Позвоните соседке: {phone}.") == f"Позвоните соседке: {masked}."


def test_email_masked_to_first_letter_and_domain() -> None:
    assert redact("write to ivan.petrov@mail.ru please") == "write to i***@mail.ru please"


def test_kinds_select_what_is_masked() -> None:
    text = f"card {VALID_CARD}, phone +7 916 123-45-67, mail a.b@example.org"
    only_cards = redact(text, kinds=("card",))
    assert "5675" in only_cards and "1600" not in only_cards
    assert "+7 916 123-45-67" in only_cards and "a.b@example.org" in only_cards
    everything = redact(text)
    assert "123-45" not in everything and "a.b@" not in everything


def test_keep_leaves_listed_contacts_visible() -> None:
    text = "Магазин: +7 495 000-00-00, клиент: +7 916 123-45-67, store@shop.ru"
    out = redact(text, keep={"+74950000000", "store@shop.ru"})
    assert "+7 495 000-00-00" in out and "store@shop.ru" in out
    assert "+7 916 123-45-67" not in out


def test_cards_are_never_kept() -> None:
    assert "1600" not in redact(f"card {VALID_CARD}", keep={VALID_CARD.replace(" ", "")})


def test_explicit_spans_are_used_and_bad_ones_ignored() -> None:
    text = "abc 12345 def"
    spans = [
        PiiSpan(start=4, end=9, kind="phone"),
        PiiSpan(start=5, end=8, kind="card"),  # overlaps the first: ignored
        PiiSpan(start=10, end=99, kind="email"),  # beyond the text: ignored
    ]
    assert redact(text, spans) == "abc ***45 def"


def test_text_without_pii_is_unchanged() -> None:
    text = "Огурцы в магазине 0412 несвежие; заказ 123456789. Cucumbers are stale."
    assert redact(text) == text


def test_maskers() -> None:
    assert mask_card("5555-5555-5555-4444") == "****-****-****-4444"
    assert mask_phone("+79161234567") == "+*********67"
    assert mask_email("x@y.ru") == "x***@y.ru"


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if luhn_ok(prefix + d):
            return prefix + d
    raise AssertionError("unreachable")


@given(
    body=st.lists(st.integers(0, 9), min_size=11, max_size=17),  # 13..19 digits
    sep=st.sampled_from(["", " ", "-"]),
    before=st.sampled_from(["Карта ", "card: ", "номер карты ", ""]),
    after=st.sampled_from([" спасибо", ", thanks", "."]),
)
def test_property_every_valid_card_is_masked(
    body: list[int], sep: str, before: str, after: str
) -> None:
    digits = _luhn_complete("4" + "".join(map(str, body)))
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    card = sep.join(groups)
    out = redact(f"{before}{card}{after}")
    assert out == f"{before}{mask_card(card)}{after}"
    assert out.count("*") == len(digits) - 4
