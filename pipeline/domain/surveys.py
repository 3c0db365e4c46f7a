"""Survey answers: CSAT (1–5) and NPS (0–10) scores read from short ru/en replies.

Pure helpers. A reply counts as an answer only when it is short and holds one number in
range (digits or a number word: "5", "5/5", "оценка 4", "9 из 10", "десять", "five").
A longer message with a number in it is treated as a new message, not as a score.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["NpsClass", "SurveyKind", "is_negative", "nps_class", "parse_score"]

SurveyKind = Literal["csat", "nps"]
NpsClass = Literal["promoter", "passive", "detractor"]

RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10)}
MAX_ANSWER_CHARS = 80

_WORDS: dict[str, int] = {
    # ru (stems cover the usual case endings)
    "ноль": 0, "нуль": 0, "один": 1, "одн": 1, "единиц": 1, "два": 2, "двойк": 2, "две": 2,
    "три": 3, "тройк": 3, "четыр": 4, "четвёрк": 4, "четверк": 4, "пят": 5, "пятёрк": 5,
    "пятерк": 5, "шест": 6, "сем": 7, "восем": 8, "девят": 9, "десят": 10,
    # en
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_WORD_RE = re.compile(
    r"\b(" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")[а-яёa-z]*", re.IGNORECASE
)
_NUM_RE = re.compile(r"(?<![\d.,])(\d{1,2})(?![\d.,]\d)")


def parse_score(text: str, kind: SurveyKind) -> int | None:
    """The score in a survey reply, or None when the text is not an answer."""
    t = text.strip()
    if not t or len(t) > MAX_ANSWER_CHARS:
        return None
    low, high = RANGES[kind]
    nums = _NUM_RE.findall(t)
    if nums:
        n = int(nums[0])
        return n if low <= n <= high else None
    m = _WORD_RE.search(t.lower())
    if m:
        stem = next(s for s in sorted(_WORDS, key=len, reverse=True) if m.group(1).lower() == s)
        n = _WORDS[stem]
        return n if low <= n <= high else None
    return None


def nps_class(score: int) -> NpsClass:
    """NPS bucket: 9–10 promoter, 7–8 passive, 0–6 detractor."""
    if score >= 9:
        return "promoter"
    if score >= 7:
        return "passive"
    return "detractor"


def is_negative(kind: SurveyKind, score: int) -> bool:
    """Negative answers are flagged to the quality topic: CSAT ≤ 2, NPS detractors."""
    return score <= 2 if kind == "csat" else nps_class(score) == "detractor"
