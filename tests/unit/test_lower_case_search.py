"""is_status_question and is_not_helped search lower-cased ASCII/Cyrillic text without
IGNORECASE (faster, see ``text.LowerCasePattern``): the same answers as their IGNORECASE
search, including on the look-alike letters where a lower-cased search alone would differ."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest

from pipeline.domain import conversation, text
from pipeline.domain.conversation import FOLLOW_UP_MAX_CHARS, is_status_question
from pipeline.domain.text import fold, is_ascii_or_cyrillic, is_not_helped

STATUS_PHRASES = [
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
NOT_HELPED_PHRASES = [
    "не помогло",
    "Это не помогло, письмо так и не пришло",
    "всё равно не работает",
    "Всё ещё не списали",
    "по-прежнему не приходит код",
    "бесполезно, без толку",
    "It didn't help",
    "still not working after the reset",
    "that did not help at all",
    "Doesn't work",
    "The issue is still there",
    "That's not what I asked",
    "again can't log in",
    "Спасибо, всё получилось!",
    "Thanks, that helped",
    "Where is my order 5521?",
]
#: Characters IGNORECASE matches to a pattern letter although they are not its lower case
#: (``fold`` turns most of them into the letter itself; the dotless 'ı' it keeps).
TRICKY = {"s": "ſ", "k": "\u212a", "i": "ı", "в": "ᲀ", "т": "ᲄ", "о": "ᲂ"}
PLAIN = [chr(n) for n in (*range(0x80), *range(0x400, 0x500))]


def _status(search: Callable[[str], object]) -> Callable[[str], bool]:
    def check(t: str) -> bool:
        s = t.strip()
        return 0 < len(s) <= FOLLOW_UP_MAX_CHARS and search(s) is not None

    return check


#: (the check, the former IGNORECASE check, the lower-cased search alone, its pattern, phrases)
CHECKS = {
    "status": (
        is_status_question,
        _status(conversation._STATUS.ignorecase.search),
        _status(lambda s: conversation._STATUS.plain.search(s.lower())),
        conversation._STATUS.pattern,
        STATUS_PHRASES,
    ),
    "not_helped": (
        is_not_helped,
        lambda t: text._NOT_HELPED.ignorecase.search(fold(t)) is not None,
        lambda t: text._NOT_HELPED.plain.search(fold(t).lower()) is not None,
        text._NOT_HELPED.pattern,
        NOT_HELPED_PHRASES,
    ),
}


def variants(phrases: list[str], rng: random.Random) -> list[str]:
    out = []
    for phrase in phrases:
        for _ in range(20):
            chars = [c.upper() if rng.random() < 0.4 else c for c in phrase]
            out.append("".join(chars))
            odd = [TRICKY.get(c.lower(), c) if rng.random() < 0.3 else c for c in chars]
            out.append("".join(odd))
        out.append(phrase.replace("i", "İ").replace("I", "İ"))
        out.append(phrase.upper().replace("I", "ı"))
        out.append("  " + phrase + " \u2014 " + "x" * rng.randint(0, 150))
    return out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_pattern_is_lower_case_ascii_or_cyrillic(name: str) -> None:
    pattern = CHECKS[name][3]
    assert pattern.lower() == pattern
    assert is_ascii_or_cyrillic(pattern)


def test_ignorecase_is_lower_on_ascii_and_cyrillic() -> None:
    """The guard's promise, for every lower-case letter a pattern there can hold."""
    assert all(is_ascii_or_cyrillic(c) for c in PLAIN)
    assert not any(is_ascii_or_cyrillic(c) for c in "ıſ\u212aᲀİ\u0307\u0500é")
    for letter in (c for c in PLAIN if c.isalpha() and c.lower() == c):
        folded = re.compile(re.escape(letter), re.IGNORECASE)
        for c in PLAIN:
            assert bool(folded.fullmatch(c)) == (c.lower() == letter), (letter, c)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_same_answers_as_the_ignorecase_search(name: str) -> None:
    check, reference, lower_only, _, phrases = CHECKS[name]
    texts = variants(phrases, random.Random(7))
    answers = [check(t) for t in texts]
    assert answers == [reference(t) for t in texts]
    assert any(answers) and not all(answers)
    # the case the fallback is there for: the lower-cased search alone would answer otherwise
    assert any(lower_only(t) != reference(t) for t in texts)
