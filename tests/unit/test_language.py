"""detect_language's shortcuts (pipeline/domain/text.py) find what the plain steps find.

The detector reads every text and segment the classifier sees, so its steps take shortcuts
on ASCII text and count in C; these tests hold each shortcut to the plain step it replaces,
over every code point where that is possible.
"""

from __future__ import annotations

import random
import sys

import pytest

from pipeline.domain import text
from pipeline.domain.text import detect_language

ALL = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
ALPHA = [c for c in ALL if c.isalpha()]


def _plain_letters(s: str) -> str:
    return "".join(ch for ch in s if ch.isalpha())


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ascii_ = [chr(c) for c in range(128)]
    cyrillic = [chr(c) for c in range(0x400, 0x530)]
    pools = [ascii_, ALL, ALPHA, cyrillic + ascii_, list("abcXYZ 'ёЁІЇ.,!?-_1²½ⅫİΣσ") + cyrillic]
    return [
        "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        for pool in (rng.choice(pools) for _ in range(n))
    ]


def test_letters_of_ascii_text_are_its_alphabetic_characters() -> None:
    every_ascii = "".join(chr(c) for c in range(128))
    assert text._letters(every_ascii) == _plain_letters(every_ascii)
    for s in _random_texts(2000):
        assert text._letters(s) == _plain_letters(s)


def test_lower_words_of_ascii_text_are_the_words_lower_cased() -> None:
    for s in [*_random_texts(2000), "Hello, WORLD: can't_stop 42nd O'Neil"]:
        assert text._lower_words(s) == [w.lower() for w in text._WORD.findall(s)]


def test_cyrillic_count_counts_letters() -> None:
    for s in _random_texts(2000):
        letters = _plain_letters(s)
        cyr = sum(1 for ch in letters if "\u0400" <= ch <= "\u052f")
        assert text._scripts(letters)[0] == cyr


def test_foreign_letters_counted_in_the_lower_cased_text() -> None:
    # detect_language counts the foreign letters in letters.lower(): the same count as testing
    # each letter's own lower() ("ch.lower() in the foreign letters") for every letter there is
    # (the one context-dependent lower-casing, final sigma, gives no foreign letter)
    foreign = text._FOREIGN_CYRILLIC
    for ch in ALPHA:
        low = ch.lower()
        assert sum(map(low.count, foreign)) == (1 if low in foreign else 0), repr(ch)


@pytest.mark.parametrize(
    ("sample", "lang"),
    [
        ("Добрий день, де моє замовлення? Дякую, їжак", "other"),
        ("ДОБРИЙ ДЕНЬ, ДЕ МОЄ ЗАМОВЛЕННЯ? ДЯКУЮ, ЇЖАК", "other"),
        ("ЗДРАВСТВУЙТЕ, МОЙ ЗАКАЗ НЕ ПРИШЁЛ", "ru"),
        ("HELLO, MY ORDER HAS NOT ARRIVED", "en"),
        ("Lorem ipsum dolor sit amet", "other"),
    ],
)
def test_upper_case_text_reads_as_its_language(sample: str, lang: str) -> None:
    assert detect_language(sample)[0] == lang
