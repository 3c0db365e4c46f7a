"""Rule tags from the workflow configuration: keywords or regular expressions per language.

A rule fires when any of its patterns for the message's language (or for ``"*"``, any
language) matches. Keywords match case-insensitively at a word start, so a keyword may be a
stem ("просроч" matches "просроченный"); regexes are Python ``re`` patterns, case-insensitive.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.domain.text import is_ascii_or_cyrillic

ANY_LANGUAGE = "*"

#: A pattern made only of these pieces finds in an ASCII/Cyrillic text's ``lower()``, without
#: re.IGNORECASE, what it finds in the text with it (``text.LowerCasePattern``): lower-case
#: letters, digits, the classes \w \s \d and \b, escaped punctuation, groups without flags
#: or names, classes without ranges ('-' first or last), quantifiers, alternation, anchors.
#: Not: upper case (a letter, \W, \S, \B...), ranges ([ -_] holds 'A'), inline flags,
#: back-references and numeric escapes (\1, \x41: 'A').
_CASELESS = re.compile(
    r"""(?:[a-zа-яё0-9 _,.'"!*+?{}|^$:;=<>&%#@/~-]
    | \\[wsdb] | \\[^\w]
    | \((?!\?) | \(\?(?::|=|!|<=|<!) | \)
    | \[\^?-?(?:[a-zа-яё0-9 _,.'"!*+?{}|^$:;=<>&%#@/~()]|\\[wsdb]|\\[^\w])+-?\]
    )*""",
    re.VERBOSE,
)


class CaselessPattern:
    """A pattern searched as with re.IGNORECASE; in ASCII/Cyrillic text, when the pattern
    allows (``_CASELESS``), without it in the text's ``lower()``: IGNORECASE turns off sre's
    skip to the branches' first letters (a search several times slower)."""

    def __init__(self, pattern: str) -> None:
        self.ignorecase = re.compile(pattern, re.IGNORECASE)
        self.plain = re.compile(pattern) if _CASELESS.fullmatch(pattern) else None

    def search(self, text: str, low: str | None) -> re.Match[str] | None:
        """``re.search(pattern, text, re.IGNORECASE)``, given ``low = lowered(text)``."""
        if self.plain is not None and low is not None:
            return self.plain.search(low)
        return self.ignorecase.search(text)

    def finditer(self, text: str, low: str | None) -> Iterator[re.Match[str]]:
        """``re.finditer(pattern, text, re.IGNORECASE)``, given ``low = lowered(text)``: the
        same spans; a match's text lower-cased when ``low`` was searched."""
        if self.plain is not None and low is not None:
            return self.plain.finditer(low)
        return self.ignorecase.finditer(text)


def lowered(text: str) -> str | None:
    """``text.lower()`` when it may stand for ``text`` in ``CaselessPattern.search``."""
    return text.lower() if is_ascii_or_cyrillic(text) else None


def valid_regexes(value: dict[str, list[str]]) -> dict[str, list[str]]:
    """Validator of a language → regexes table: every pattern compiles (ValueError if not)."""
    for lang, patterns in value.items():
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regex for {lang!r}: {p!r}: {exc}") from exc
    return value


class TagRule(BaseModel):
    """One tag and the patterns, per language, that put it on a message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag: str = Field(min_length=1, description="Tag to add, e.g. 'food_safety'.")
    keywords: dict[str, list[str]] = Field(
        default_factory=dict, description="Language ('ru', 'en', '*') → keywords or stems."
    )
    regexes: dict[str, list[str]] = Field(
        default_factory=dict, description="Language ('ru', 'en', '*') → regular expressions."
    )

    @field_validator("regexes")
    @classmethod
    def _valid_regexes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return valid_regexes(value)

    def model_post_init(self, __context: object) -> None:
        # compiled now: a rule whose patterns do not compile fails where it is loaded
        _ = self.searches

    @cached_property
    def searches(self) -> dict[str, CaselessPattern]:
        """Language → the rule's keywords and regexes as one case-insensitive pattern.

        A plain attribute once computed: ``matches`` runs for every rule on every message,
        and reading a pydantic private attribute costs ~1.3 µs."""
        compiled: dict[str, CaselessPattern] = {}
        for lang in set(self.keywords) | set(self.regexes):
            # lower-cased (the same under IGNORECASE), so the pattern may search lower()
            words = [re.escape(_lower(k.strip())) for k in self.keywords.get(lang, []) if k.strip()]
            # one look-behind before all the keywords: matches where one per keyword did, at
            # a third of the cost (the engine tries the look-behind once per position)
            parts = [r"(?<!\w)(?:" + "|".join(words) + ")"] if words else []
            parts += [f"(?:{r})" for r in self.regexes.get(lang, [])]
            if parts:
                compiled[lang] = CaselessPattern("|".join(parts))
        return compiled

    def matches(self, text: str, language: str) -> bool:
        """Whether the rule fires on this text in this language."""
        return self.fires(text, language, lowered(text))

    def fires(self, text: str, language: str, low: str | None) -> bool:
        """``matches``, given ``low = lowered(text)`` (computed once for all the rules)."""
        searches = self.searches
        for lang in (language, ANY_LANGUAGE):
            rx = searches.get(lang)
            if rx is not None and rx.search(text, low):
                return True
        return False


def _lower(keyword: str) -> str:
    """A keyword lower-cased where that keeps its IGNORECASE matches (ASCII, Cyrillic)."""
    return keyword.lower() if is_ascii_or_cyrillic(keyword) else keyword


def apply_tag_rules(text: str, language: str, rules: Sequence[TagRule]) -> list[str]:
    """Tags of the rules that fire, in rule order, without repeats."""
    tags: list[str] = []
    low = lowered(text)
    for rule in rules:
        if rule.tag not in tags and rule.fires(text, language, low):
            tags.append(rule.tag)
    return tags
