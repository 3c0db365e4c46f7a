"""CaselessPattern searches ASCII/Cyrillic text lower-cased without re.IGNORECASE when the
pattern allows it (tag rules, priority words): the same matches as the IGNORECASE search."""

from __future__ import annotations

import random
import re

import pytest

from pipeline.classify import priority
from pipeline.config import Settings
from pipeline.domain.priority_weights import PriorityWeights
from pipeline.domain.tagging import CaselessPattern, TagRule, apply_tag_rules, lowered
from pipeline.domain.workflow import load_workflow

#: Characters IGNORECASE matches to a pattern letter although they are not its lower case.
TRICKY = {"s": "ſ", "k": "\u212a", "i": "ı", "в": "ᲀ", "т": "ᲄ", "о": "ᲂ"}
PLAIN = [chr(n) for n in (*range(0x80), *range(0x400, 0x500))]


def _shipped_patterns() -> list[str]:
    wf = load_workflow(Settings().rules_path)
    out = [p.ignorecase.pattern for r in wf.tag_rules for p in r.searches.values()]
    for weights in (wf.priority, PriorityWeights()):
        for table in (weights.urgency_patterns, weights.legal_patterns):
            for ps in table.values():
                out.append(r"(?<!\w)(?:" + "|".join(ps) + r")(?!\w)")
    return out


def _found(p: CaselessPattern, text: str) -> list[tuple[tuple[int, int], str]]:
    return [(m.span(), m.group().lower()) for m in p.finditer(text, lowered(text))]


def _reference(pattern: str, text: str) -> list[tuple[tuple[int, int], str]]:
    return [(m.span(), m.group().lower()) for m in re.finditer(pattern, text, re.IGNORECASE)]


def _texts(words: list[str], rng: random.Random) -> list[str]:
    out = []
    for _ in range(300):
        picked = [rng.choice(words) for _ in range(rng.randint(1, 8))]
        chars = [c.upper() if rng.random() < 0.3 else c for c in " ".join(picked)]
        out.append("".join(chars))
        out.append("".join(TRICKY.get(c.lower(), c) if rng.random() < 0.3 else c for c in chars))
        out.append("".join(rng.choice(PLAIN) for _ in range(rng.randint(0, 30))))
    return out


@pytest.mark.parametrize("pattern", _shipped_patterns())
def test_the_shipped_patterns_search_lower_case(pattern: str) -> None:
    p = CaselessPattern(pattern)
    assert p.plain is not None
    words = [*re.findall(r"\w+", pattern), "Суд", "COURT", "food", "expired", "milk", "-by"]
    for text in _texts(words, random.Random(3)):
        assert _found(p, text) == _reference(pattern, text), (pattern, text)


@pytest.mark.parametrize(
    "pattern",
    [
        r"[ -_]",  # a range of lower-case ends holding upper-case letters
        r"[a-z]",
        r"(?i)x",
        r"(?-i:a)b",
        r"\x41",
        r"\101",
        r"(a)\1",
        r"(?P<w>a)",
        r"A",
        r"\S+",
        r"\W",
        r"\Bx",
        r"[]a[-z]",
        r"é",
        r"ſ",
    ],
)
def test_other_patterns_keep_ignorecase(pattern: str) -> None:
    assert CaselessPattern(pattern).plain is None


#: Pieces the lower-case search accepts, for random patterns.
PIECES = [
    "a", "s", "k", "i", "в", "т", "ё", "е", "1", " ", "-", ",", r"\w", r"\s", r"\d", r"\b",
    ".", r"\.", r"\-", "[^вs]", r"[\w-]", r"[- k]", "(?:i|т)", "(?<!k)", "(?!\\w)", "(?=s)",
    "(?<=в)", "x?", "o*", "e+?", "b{1,2}", "^", "$",
]  # fmt: skip


def test_random_patterns_of_those_pieces_find_the_same() -> None:
    rng = random.Random(11)
    texts = _texts(["ask", "Вот", "ТЕКСТ", "ſki", "1-в", "ё е"], rng)
    for _ in range(300):
        pattern = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.3:
            pattern = f"(?:{pattern})|{rng.choice(PIECES)}"
        p = CaselessPattern(pattern)
        assert p.plain is not None, pattern
        for text in texts[:200]:
            assert _found(p, text) == _reference(pattern, text), (pattern, text)


def test_tag_rules_match_as_with_ignorecase() -> None:
    rule = TagRule(
        tag="legal", keywords={"ru": ["Роспотребнадзор"], "en": ["Stale"]}, regexes={"*": ["x"]}
    )
    assert rule.matches("пишу в РОСПОТРЕБНАДЗОР", "ru")
    assert rule.matches("it was STALE", "en")
    assert rule.matches("it was ſtale", "en")  # IGNORECASE's 's' ~ 'ſ': the fallback
    assert not rule.matches("it was ſtale", "ru")
    assert apply_tag_rules("X", "de", [rule]) == ["legal"]


def test_priority_words_are_lower_case_as_before() -> None:
    w = PriorityWeights()
    low = lowered("URGENT: my Lawyer says SUE")
    assert priority._find("URGENT: my Lawyer says SUE", "en", w.urgency_patterns, low) == ["urgent"]
    assert priority._find("my ſuing lawyer", "en", w.legal_patterns, None) == ["ſuing", "lawyer"]
