"""Survey answers: CSAT (1–5) and NPS (0–10) scores read from short ru/en replies.

Pure helpers. A reply counts as an answer only when it is short and holds a number on the question's
scale (digits or a number word: "5", "оценка 4", "9 из 10", "десять", "five"); a number
on another scale is "unclear" and the customer is asked again. A longer message with a
number in it is not an answer.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "NpsClass",
    "Reading",
    "SurveyKind",
    "is_negative",
    "nps_class",
    "parse_score",
    "read_answer",
]

SurveyKind = Literal["csat", "nps"]
NpsClass = Literal["promoter", "passive", "detractor"]

RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10)}
MAX_ANSWER_CHARS = 80

_WORDS: dict[str, int] = {
    "ноль": 0, "нуль": 0, "один": 1, "одна": 1, "два": 2, "две": 2, "три": 3, "четыре": 4,
    "пять": 5, "шесть": 6, "семь": 7, "восемь": 8, "девять": 9, "десять": 10,
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
#: School grades (a five-point scale): "пятёрка" answers a 1–5 question, not a 0–10 one.
_GRADES: dict[str, int] = {
    "единица": 1, "единицу": 1, "двойка": 2, "двойку": 2, "тройка": 3, "тройку": 3,
    "четверка": 4, "четверку": 4, "пятерка": 5, "пятерку": 5,
}  # fmt: skip
_TOKEN_RE = re.compile(r"\d{1,3}(?:[.,]\d+)?|[a-zа-я]+", re.IGNORECASE)
_SCALE_RE = re.compile(r"(?:/|\bиз\s+|\bout\s+of\s+)(5|10)\b", re.IGNORECASE)

#: What a short reply to a survey question is: a score, "unclear" (a number, but not one
#: on this question's scale — ask again), or None (not an answer at all).
Reading = int | Literal["unclear"] | None


def read_answer(text: str, kind: SurveyKind) -> Reading:
    """Read a reply to a survey question (ru/en, digits or words).

    A number outside the question's scale ("10" to a 1–5 question), a number given on
    another scale ("5/5", "4 из 5" to a 0–10 question) and, on the 0–10 scale, a bare
    "пять"/"five" or a school grade ("пятёрка": the top of a five-point scale, not a
    detractor's 5) are "unclear": the customer is asked again. Digits answering the 0–10
    question are taken as written.
    """
    t = text.strip().lower().replace("ё", "е")
    if not t or len(t) > MAX_ANSWER_CHARS:
        return None
    low, high = RANGES[kind]
    value: int | None = None
    worded = False
    for token in _TOKEN_RE.findall(t):
        if token[0].isdigit():
            if "." in token or "," in token or len(token) > 2:
                return None  # an amount, an order number: not a score
            value = int(token)
        elif token in _WORDS:
            value, worded = _WORDS[token], True
        elif token in _GRADES:
            if kind == "nps":
                return "unclear"
            value = _GRADES[token]
        else:
            continue
        break
    if value is None:
        return None
    scale = _SCALE_RE.search(t)
    if scale is not None and int(scale.group(1)) != high:
        return "unclear"
    if not low <= value <= high:
        return "unclear"
    if kind == "nps" and worded and value == 5 and scale is None:
        return "unclear"
    return value


def parse_score(text: str, kind: SurveyKind) -> int | None:
    """The score in a survey reply, or None when the text is not a clear answer."""
    reading = read_answer(text, kind)
    return reading if isinstance(reading, int) else None


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
