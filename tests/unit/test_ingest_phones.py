"""Phone normalization through libphonenumber's metadata (``phonenumbers``)."""

from __future__ import annotations

import pytest

from pipeline.domain.text import find_pii, normalize_phone


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        # Russia by default: 8-prefix, bare ten digits, a leading 7 without the plus
        ("8 (495) 123-45-67", "+74951234567"),
        ("+7 (916) 123-45-67", "+79161234567"),
        # Kazakhstan shares +7 (the hand-written rules took every +7 for Russia)
        ("+7 701 123 4567", "+77011234567"),
        ("+375 29 123-45-67", "+375291234567"),  # Belarus mobile
        ("+49 151 12345678", "+4915112345678"),  # Germany, 11-digit mobile
        ("+1 (415) 555-2671", "+14155552671"),
        ("00 44 20 7946 0958", "+442079460958"),
        ("+44 7700 900123", "+447700900123"),  # UK fiction range: possible, kept
        ("sms:+33 6 12 34 56 78", "+33612345678"),
        ("015112345678", None),  # a German national number without +49 is not Russian
        ("+7 495 123", None),  # too short for +7
        ("8 800", None),
        ("+49 151 1234567890123", None),  # too long
        ("+1٤١٥٥٥٥٢٦٧١", None),
    ],
)
def test_numbers_of_many_countries(raw: str, want: str | None) -> None:
    assert normalize_phone(raw) == want


def test_pii_spans_use_the_same_rules() -> None:
    text = "Звоните: +375 29 123-45-67 или 8 (495) 123-45-67, заказ 12345678"
    found = [text[s.start : s.end] for s in find_pii(text) if s.kind == "phone"]
    assert found == ["+375 29 123-45-67", "8 (495) 123-45-67"]
