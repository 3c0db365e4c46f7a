"""A small lexicon-based negative-sentiment / anger score for Russian and English.

Each negative cue (a word stem from the lexicon) adds its weight; an intensifier just before it
("очень", "extremely") multiplies it by 1.5; a negation just before it ("не", "not") cancels it.
A negated positive word ("не доволен", "not happy") counts as a negative cue. "!!"/"?!" and
shouting in capitals add to the total. The score is ``1 - exp(-total / 2)`` in [0, 1).
``anger`` is set when an anger cue, capitals or "!!!" come with a score ≥ 0.4.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: stem → weight (see ``_Lexicon`` for how stems match).
NEGATIVE: dict[str, float] = {
    # ru
    "ужас": 1.0, "кошмар": 1.0, "отвратител": 1.2, "отврат": 1.0, "безобраз": 1.0,
    "возмут": 1.2, "возмущ": 1.2, "бесит": 1.3, "бесят": 1.3, "достал": 1.0, "надоел": 1.0,
    "задолбал": 1.4, "хамств": 1.2, "хамил": 1.2, "нахамил": 1.2, "груб": 0.8, "обман": 1.0,
    "мошенн": 1.2, "позор": 1.2, "разочаров": 0.8, "недовол": 0.8, "плохо": 0.6,
    "плохой": 0.6, "плохое": 0.6, "худш": 0.8, "мерзк": 1.0, "невыносим": 1.0,
    "издевательств": 1.2, "нагл": 1.0, "обнаглел": 1.3, "раздраж": 0.8, "бешенств": 1.4,
    "ярост": 1.4, "сволоч": 1.5, "идиот": 1.4, "дебил": 1.5, "черт": 0.6,
    "неприемлем": 1.0, "отстой": 1.0, "бардак": 1.0, "катастроф": 0.8, "ненави": 1.3,
    "обидн": 0.6, "расстро": 0.6, "жуть": 0.8, "кидал": 1.2, "лохотрон": 1.3,
    "безответствен": 1.0, "некомпетент": 1.0, "хамск": 1.2, "отвратн": 1.2, "доколе": 1.0,
    "сколько можно": 1.0, "в последний раз": 0.6, "никогда больше": 0.8,
    # en
    "terrible": 1.0, "awful": 1.0, "horrible": 1.0, "disgusting": 1.2, "outrage": 1.2,
    "unacceptable": 1.0, "ridiculous": 1.0, "worst": 1.0, "bad": 0.5, "poor": 0.5,
    "angry": 1.2, "furious": 1.4, "annoyed": 0.8, "annoying": 0.8, "frustrat": 0.8,
    "disappoint": 0.8, "upset": 0.7, "hate": 1.2, "scam": 1.2, "fraud": 1.0, "rude": 1.0,
    "useless": 1.0, "pathetic": 1.2, "incompetent": 1.0, "disgrace": 1.2, "shameful": 1.0,
    "nightmare": 1.0, "fed up": 1.2, "sick of": 1.2, "damn": 1.0, "hell": 0.8, "fuck": 1.5,
    "fucking": 1.5, "shit": 1.4, "crap": 1.0, "stupid": 1.2, "idiot": 1.4, "livid": 1.4,
    "insult": 1.0, "never again": 0.8, "joke": 0.5, "sucks": 1.0, "appalling": 1.2,
}  # fmt: skip
ANGER = frozenset(
    {"возмут", "возмущ", "бесит", "бесят", "достал", "надоел", "задолбал", "ярост", "бешенств",
     "сволоч", "идиот", "дебил", "ненави", "обнаглел", "позор", "издевательств", "сколько можно",
     "angry", "furious", "livid", "hate", "fuck", "fucking", "shit", "damn", "fed up", "sick of",
     "outrage", "disgrace", "idiot", "stupid", "pathetic"}
)  # fmt: skip
#: Positive words whose negation is a negative cue.
POSITIVE: dict[str, float] = {
    "доволен": 0.8, "довольн": 0.8, "хорош": 0.5, "нормальн": 0.5, "приемлем": 0.8,
    "happy": 0.8, "satisfied": 0.8, "good": 0.5, "pleased": 0.8, "acceptable": 0.8,
    "ok": 0.4, "okay": 0.4, "helpful": 0.6,
}  # fmt: skip
NEGATORS = frozenset(
    {"не", "ни", "нет", "not", "no", "never", "don't", "dont", "isn't", "wasn't", "aren't",
     "didn't", "doesn't", "won't", "can't", "cannot", "nothing"}
)  # fmt: skip
INTENSIFIERS = frozenset(
    {"очень", "совсем", "совершенно", "абсолютно", "крайне", "максимально", "просто", "так",
     "такой", "настолько", "very", "extremely", "totally", "absolutely", "so", "really", "utterly",
     "completely", "most"}
)  # fmt: skip

_WORD_RE = re.compile(r"[\w']+")
_BANG_RE = re.compile(r"!{2,}|\?+!+[!?]*|!+\?+[!?]*")


class _Lexicon:
    """Stem lookup by dictionary, not regex (this runs on every message).

    ASCII stems of ≤ 4 letters match whole words only (so "hell" misses "hello"); other stems
    match a word start with any ending (Russian inflection); entries with a space match
    consecutive words."""

    def __init__(self, entries: dict[str, float]) -> None:
        self.weights = {k.replace("ё", "е"): v for k, v in entries.items()}
        self.phrases = {k: v for k, v in self.weights.items() if " " in k}
        self.exact = {k for k in self.weights if " " not in k and k.isascii() and len(k) <= 4}
        self.stems = {k for k in self.weights if " " not in k and k not in self.exact}
        self.min_len = min((len(k) for k in self.stems), default=1)
        # fast rejection: most words share no prefix with any stem or phrase
        self.heads = {k[: self.min_len] for k in self.stems}
        self.phrase_heads = {k.split()[0] for k in self.phrases}

    def match(self, words: list[str], i: int) -> tuple[str, int] | None:
        """(entry, words used) for the entry starting at word i, longest first."""
        w = words[i]
        if w in self.exact:
            return w, 1
        if w in self.phrase_heads:
            for n in (3, 2):
                if i + n > len(words):
                    continue
                phrase = " ".join(words[i : i + n])
                if phrase in self.phrases:
                    return phrase, n
        if w[: self.min_len] not in self.heads:
            return None
        for end in range(len(w), self.min_len - 1, -1):
            if w[:end] in self.stems:
                return w[:end], 1
        return None


_NEG = _Lexicon(NEGATIVE)
_POS = _Lexicon(POSITIVE)
_ANGER = frozenset(a.replace("ё", "е") for a in ANGER)
#: Whole words where an entry of either lexicon may start (``_Lexicon.match``'s first checks).
_START_WORDS = _NEG.exact | _NEG.phrase_heads | _POS.exact | _POS.phrase_heads


def _entry_starts(words: list[str]) -> list[int]:
    """Indices of the words where an entry of either lexicon may start (elsewhere both
    lexicons' ``match`` is None): the checks ``match`` starts with, for both lexicons in one
    comprehension (a method call per word and lexicon cost more than the rest)."""
    neg_len, neg_heads = _NEG.min_len, _NEG.heads
    pos_len, pos_heads = _POS.min_len, _POS.heads
    return [
        i
        for i, w in enumerate(words)
        if w in _START_WORDS or w[:neg_len] in neg_heads or w[:pos_len] in pos_heads
    ]


@dataclass(frozen=True, slots=True)
class Sentiment:
    """Negative sentiment in [0, 1), whether it reads as anger, and the cues found."""

    score: float
    anger: bool
    cues: tuple[str, ...]


def negative_sentiment(text: str) -> Sentiment:
    """Score a text (Russian or English; the lexicon holds both)."""
    raw_words = _WORD_RE.findall(text)
    words = [w.lower().replace("ё", "е") for w in raw_words]
    total = 0.0
    cues: list[str] = []
    anger = False
    resume = 0  # words before this index belong to a phrase already counted
    for i in _entry_starts(words):
        if i < resume:
            continue
        prev = words[max(0, i - 2) : i]
        hit = _NEG.match(words, i)
        if hit is not None:
            entry, used = hit
            if not any(p in NEGATORS for p in prev):
                boost = 1.5 if any(p in INTENSIFIERS for p in prev) else 1.0
                total += _NEG.weights[entry] * boost
                cues.append(entry)
                anger = anger or entry in _ANGER
            resume = i + used
            continue
        pos = _POS.match(words, i)
        if pos is not None and any(p in NEGATORS for p in prev):
            boost = 1.5 if any(p in INTENSIFIERS for p in prev) else 1.0
            total += _POS.weights[pos[0]] * boost
            cues.append(f"not {pos[0]}")
    # every match of _BANG_RE holds one of these pairs (a lone "?" ends most questions)
    if "!!" in text or "?!" in text or "!?" in text:
        for m in _BANG_RE.finditer(text):
            total += 0.5
            cues.append(m.group()[:3])
            anger = anger or "!!!" in m.group()
    # isupper first: it rules out most words with one call
    shouted = [w for w in raw_words if w.isupper() and len(w) >= 3 and w.isalpha()]
    if len(shouted) >= 2 and len(shouted) >= 0.3 * max(1, len(raw_words)):
        total += 0.8
        cues.append("CAPS")
        anger = True
    score = 1.0 - math.exp(-total / 2.0)
    return Sentiment(score=round(score, 4), anger=anger and score >= 0.4, cues=tuple(cues))
