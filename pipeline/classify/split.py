"""Multi-intent split: one message, several requests.

1. ``segment`` cuts the text into candidate segments at sentence ends, line breaks, semicolons
   and ru/en connectives ("а ещё", "кроме того", "and also", "besides"...). Cutting too much is
   fine: step 3 glues fragments back.
2. The caller classifies every segment (and the whole text) in ONE vectorized call.
3. ``merge`` keeps a segment as a request of its own only when it is *strong*: at least
   ``min_words`` words and confidence ≥ ``split_threshold`` (and not abstained) — or, when a
   connective stands between it and a neighbour (the connective itself is evidence of a second
   request), confidence ≥ ``connective_threshold`` on the model's best label. Weak segments
   (greetings, fragments) join their neighbour; adjacent segments with the same label merge.
   One group left means a single-intent message: it stays whole, labelled by the whole-text
   prediction.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.classify.model import OUT_OF_SCOPE, UNKNOWN, IntentModel, Prediction

#: Connectives that start a new request wherever they stand after a space.
STRONG_CONNECTIVES: tuple[str, ...] = (
    "а ещё",
    "а еще",
    "и ещё",
    "и еще",
    "кроме того",
    "кроме этого",
    "помимо этого",
    "помимо того",
    "а также",
    "и заодно",
    "и кстати",
    "и вот ещё что",
    "and also",
    "and another thing",
    "in addition",
    "on top of that",
    "apart from that",
    "one more thing",
    "and by the way",
)
#: Connectives that start a new request only at a clause start (after punctuation or a new line).
WEAK_CONNECTIVES: tuple[str, ...] = (
    "ещё",
    "еще",
    "также",
    "плюс",
    "заодно",
    "кстати",
    "во-вторых",
    "вторая проблема",
    "also",
    "besides",
    "additionally",
    "plus",
    "another thing",
    "moreover",
    "by the way",
    "secondly",
)
CONNECTIVES = STRONG_CONNECTIVES + WEAK_CONNECTIVES


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


#: Any connective at the very start of a segment (to strip it from what the model sees).
_LEAD_CONN_RE = re.compile(
    r"(?:" + _alternation((*CONNECTIVES, "и", "а", "and", "but", "но")) + r")(?=[\s,:!]|$)",
    re.IGNORECASE,
)
_CONN_RE = re.compile(
    r"(?:(?<=\s)(?P<s>" + _alternation(STRONG_CONNECTIVES) + r")"
    r"|(?:(?<=[,;:—–-])|(?<=[,;:—–-]\s)|(?<=\n)|\A)(?P<w>" + _alternation(WEAK_CONNECTIVES) + r"))"
    r"(?=[\s,:!]|$)",
    re.IGNORECASE,
)
#: Abbreviations after which a period does not end a sentence.
_ABBREV = frozenset(
    {
        "ул",
        "д",
        "г",
        "пр",
        "пл",
        "просп",
        "кв",
        "корп",
        "стр",
        "им",
        "т",
        "е",
        "см",
        "тел",
        "руб",
        "коп",
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "no",
        "nr",
        "vs",
        "etc",
        "e",
        "g",
        "i",
    }
)
_SENT_END_RE = re.compile(r"[.!?…]+[\"»)]*\s+|\n+|;\s*")
_WORD_RE = re.compile(r"\w+")
_LEAD_RE = re.compile(r"^[\s,;:.!?—–-]+")
_TRAIL_RE = re.compile(r"[\s,;:—–-]+$")


@dataclass(frozen=True, slots=True)
class Segment:
    """A candidate segment ``[start, end)``; ``text`` (from ``content_start``) is what the
    model sees: the segment without its leading connective."""

    start: int
    end: int
    content_start: int
    text: str


@dataclass(frozen=True, slots=True)
class Part:
    """One request found in a message."""

    start: int
    end: int
    label: str
    category: str
    confidence: float
    abstained: bool


def _words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _cut_points(text: str) -> list[int]:
    cuts: set[int] = set()
    for m in _SENT_END_RE.finditer(text):
        if m.group().startswith("."):
            before = _WORD_RE.findall(text[max(0, m.start() - 12) : m.start()])
            if before and before[-1].lower() in _ABBREV:
                continue
        cuts.add(m.end())
    for m in _CONN_RE.finditer(text):
        cuts.add(m.start())
    return sorted(c for c in cuts if 0 < c < len(text))


def _content_offset(text: str) -> int:
    """Length of the leading connectives and punctuation of a segment."""
    pos = 0
    while True:
        lead = _LEAD_RE.match(text[pos:])
        if lead:
            pos += lead.end()
        m = _LEAD_CONN_RE.match(text[pos:])
        if not m or not m.end():
            return pos if _WORD_RE.search(text, pos) else 0
        pos += m.end()


def segment(text: str) -> list[Segment]:
    """Candidate segments; empty or punctuation-only pieces are dropped."""
    bounds = [0, *_cut_points(text), len(text)]
    out: list[Segment] = []
    for a, b in itertools.pairwise(bounds):
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        tail = _TRAIL_RE.search(piece)
        trail = len(tail.group()) if tail else 0
        start, end = a + lead, b - trail
        if end <= start or not _WORD_RE.search(text[start:end]):
            continue
        content = start + _content_offset(text[start:end])
        out.append(Segment(start, end, content, text[content:end]))
    return out


@dataclass
class _Group:
    start: int
    end: int
    best: Prediction | None  # strongest member; None while only weak members


def merge(
    text: str,
    segments: Sequence[Segment],
    predictions: Sequence[Prediction],
    whole: Prediction,
    *,
    split_threshold: float = 0.6,
    connective_threshold: float = 0.3,
    min_words: int = 2,
) -> list[Part]:
    """Glue segments into requests (see module doc)."""
    n = len(segments)
    led = [s.content_start > s.start for s in segments]  # starts with a connective
    near_connective = [led[i] or (i + 1 < n and led[i + 1]) for i in range(n)]

    def strong(i: int, seg: Segment, p: Prediction) -> bool:
        if _words(seg.text) < min_words or p.best == OUT_OF_SCOPE:
            return False
        if not p.abstained and p.confidence >= split_threshold:
            return True
        return near_connective[i] and p.confidence >= connective_threshold

    groups: list[_Group] = []
    pending_start: int | None = None  # weak segments before the first strong one
    for i, (seg, pred) in enumerate(zip(segments, predictions, strict=True)):
        if not strong(i, seg, pred):
            if groups:
                groups[-1].end = seg.end
            elif pending_start is None:
                pending_start = seg.start
            continue
        # groups compare the model's best labels: near a connective an abstained segment still
        # splits the message, but its part stays 'unknown' (abstention is kept)
        last = groups[-1].best if groups else None
        if last is not None and last.best == pred.best:
            g = groups[-1]
            g.end = seg.end
            if pred.confidence > last.confidence:
                g.best = pred
            continue
        start = seg.content_start if pending_start is None and groups else seg.start
        if pending_start is not None:
            start = pending_start
        pending_start = None
        groups.append(_Group(start, seg.end, pred))
    if len(groups) <= 1:
        s, e = _trim(text, 0, len(text))
        p = whole
        only = groups[0].best if groups else None
        if p.abstained and only is not None and not only.abstained:
            p = only  # the whole is unsure but one segment is clear
        return [Part(s, e, p.label, p.category, p.confidence, p.abstained)]
    return [
        Part(g.start, g.end, g.best.label, g.best.category, g.best.confidence, g.best.abstained)
        for g in groups
        if g.best is not None
    ]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    s = start + (len(piece) - len(piece.lstrip()))
    e = start + len(piece.rstrip())
    return (s, e) if e > s else (start, end)


def split_batch(
    model: IntentModel,
    texts: Sequence[str],
    *,
    split_threshold: float = 0.6,
    connective_threshold: float = 0.3,
    min_words: int = 2,
) -> list[list[Part]]:
    """Split many texts with one vectorized predict over all their segments (the whole-text
    vectors are derived from the segments', see ``IntentModel.predict_segmented``)."""
    segs = [segment(t) for t in texts]
    results = model.predict_segmented(
        [[seg.text for seg in ss] or [t] for t, ss in zip(texts, segs, strict=True)]
    )
    out: list[list[Part]] = []
    for t, ss, (whole, seg_preds) in zip(texts, segs, results, strict=True):
        if len(ss) > 1:
            out.append(
                merge(
                    t,
                    ss,
                    seg_preds,
                    whole,
                    split_threshold=split_threshold,
                    connective_threshold=connective_threshold,
                    min_words=min_words,
                )
            )
        else:
            s, e = _trim(t, 0, len(t))
            out.append([Part(s, e, whole.label, whole.category, whole.confidence, whole.abstained)])
    return out


def split_intents(model: IntentModel, text: str) -> list[Part]:
    """Split one text (convenience wrapper of ``split_batch``)."""
    return split_batch(model, [text])[0]


__all__ = [
    "CONNECTIVES",
    "UNKNOWN",
    "Part",
    "Segment",
    "merge",
    "segment",
    "split_batch",
    "split_intents",
]
