"""is_status_question searches lower-cased ASCII/Cyrillic text without IGNORECASE (faster):
the same answers as the IGNORECASE search of the text, including where they could differ."""

from __future__ import annotations

import random
import re

from pipeline.domain import conversation
from pipeline.domain.conversation import FOLLOW_UP_MAX_CHARS, is_status_question

PHRASES = [
    "Ну что там с моими бонусами?",
    "когда вы ответите на заявку",
    "До сих пор нет денег",
    "Всё ещё жду",
    "какой статус обращения 1A2B3C4D",
    "Почему не вернули деньги?",
    "Any news on my refund?",
    "I'm still waiting for the courier",
    "What's the status of my order",
    "Is there an update?",
    "Why did you reject my claim",
    "haven't heard from you",
    "Where is my order 5521?",
    "I want a refund for the broken kettle",
    "Не могу оплатить заказ картой",
    "спасибо 👍",
]
#: Characters IGNORECASE matches to a pattern letter whose lower() is not that letter.
TRICKY = {"s": "ſ", "k": "\u212a", "i": "ı", "в": "ᲀ", "т": "ᲄ", "о": "ᲂ"}


def reference(text: str) -> bool:
    """The former check: the IGNORECASE search of the stripped text."""
    t = text.strip()
    return 0 < len(t) <= FOLLOW_UP_MAX_CHARS and bool(conversation._STATUS.search(t))


def variants(rng: random.Random) -> list[str]:
    out = []
    for phrase in PHRASES:
        for _ in range(20):
            chars = [c.upper() if rng.random() < 0.4 else c for c in phrase]
            out.append("".join(chars))
            odd = [TRICKY.get(c.lower(), c) if rng.random() < 0.3 else c for c in chars]
            out.append("".join(odd))
        out.append(phrase.replace("i", "İ").replace("I", "İ"))
        out.append("  " + phrase + " \u2014 " + "x" * rng.randint(0, 150))
    return out


def test_the_pattern_is_lower_case() -> None:
    pattern = conversation._STATUS_PATTERN
    assert pattern.lower() == pattern


def test_ignorecase_is_lower_on_ascii_and_cyrillic() -> None:
    letters = {c for c in conversation._STATUS_PATTERN if c.isalpha()}
    plain = [chr(n) for n in (*range(0x80), *range(0x400, 0x500))]
    assert all(conversation._ASCII_OR_CYRILLIC.fullmatch(c) for c in plain)
    for letter in letters:
        folded = re.compile(re.escape(letter), re.IGNORECASE)
        for c in plain:
            assert bool(folded.fullmatch(c)) == (c.lower() == letter), (letter, c)


def test_same_answers_as_the_ignorecase_search() -> None:
    texts = variants(random.Random(7))
    answers = [is_status_question(t) for t in texts]
    assert answers == [reference(t) for t in texts]
    assert any(answers) and not all(answers)
    # the case the fallback is there for: a lower-cased search would have missed it
    tricky = [
        t
        for t in texts
        if reference(t) and not conversation._STATUS_LOWER.search(t.strip().lower())
    ]
    assert tricky
