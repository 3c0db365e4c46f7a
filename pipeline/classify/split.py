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
4. ``refine`` looks for a boundary the list of connectives does not know: inside every part it
   tries each clause boundary (sentence end, new line, semicolon, comma, dash, "и"/"а"/"но",
   "and"/"but") as a cut, classifies the two sides (one vectorized call per batch), and keeps
   the cut when both sides are confidently different requests: neither side out of scope, the
   model's best labels differ, the surer side reaches ``clause_strong`` × the model's own
   per-language abstention threshold (calibrated for precision) and the other
   ``clause_threshold`` × it, both have ≥ ``clause_min_words`` words, the first is not a
   condition ("Если не вернёте деньги, …") and the second, when short, does not point back
   ("когда её привезут?"). Relative to the model's own thresholds, the rule
   survives a retrained model with another confidence scale. A side the model abstains on
   still splits, but stays ``unknown``, as at a connective. Of several
   such cuts the one whose weaker side is the most confident wins; each side may be cut once
   more (``MAX_CLAUSE_DEPTH``). A single request whose clauses are vague ("…, can you show
   them") stays whole because its vague clause is not confident on its own.
   The thresholds were chosen on messages composed with one set of connectives and are
   reported on another set they never saw (bench/split_eval.py).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.classify.model import OUT_OF_SCOPE, UNKNOWN, IntentModel, Prediction
from pipeline.domain.text import detect_language

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
#: Clause boundaries inside a part where a second request may start (``refine``): a comma not
#: before a number ("Садовой, 12"), a colon or dash, or the space before "и"/"а"/"но"/"and"/"but".
_CLAUSE_RE = re.compile(r"[,:](?!\s*\d)\s*|\s[—–-]\s+|\s+(?=(?:и|а|но|and|but)\s)", re.IGNORECASE)
#: Pronouns that point back to the clause before: a SHORT side after a clause cut that has one
#: ("когда её привезут?", "tell me how I can do it") continues the same request; a longer one
#: usually names its own object ("my account was hacked, how do I get it back?").
_REFERS_BACK_RE = re.compile(
    r"(?<!\w)(?:её|ее|его|их|него|неё|нее|ним|ней|них|it|them)(?!\w)", re.IGNORECASE
)
REFERS_BACK_MAX_WORDS = 7
#: A clause that starts with a subordinator ("Если не вернёте деньги, …", "If it fails, …")
#: is a condition of what follows, not a request of its own.
_SUBORDINATE_RE = re.compile(
    r"\s*(?:если|когда|пока|хотя|так как|потому что|раз уж|if|when|while|although|because|"
    r"since|unless|once)\b",
    re.IGNORECASE,
)
#: Shares of the model's per-language abstention threshold the less sure / the surer side of
#: a clause cut need (1.0: the model would answer that side); chosen on the TUNED connectives
#: of bench/split_eval.py.
CLAUSE_THRESHOLD = 0.3
CLAUSE_STRONG = 0.7
#: Words each side of a clause cut needs ("как сделать?" is not a request of its own).
CLAUSE_MIN_WORDS = 3
#: How many times a part may be cut at clause boundaries (2: up to four parts).
MAX_CLAUSE_DEPTH = 2
#: At most this many clause boundaries are tried per part (bounds the cost of long e-mails).
MAX_CLAUSE_CUTS = 16
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


def _clause_cuts(text: str, start: int, end: int) -> list[int]:
    """Clause boundaries strictly inside ``[start, end)`` (sentence ends included)."""
    piece = text[start:end]
    cuts = {start + c for c in _cut_points(piece)}
    cuts.update(start + m.end() for m in _CLAUSE_RE.finditer(piece))
    return sorted(c for c in cuts if start < c < end)[:MAX_CLAUSE_CUTS]


@dataclass(frozen=True, slots=True)
class _Cut:
    part: int
    left: tuple[int, int]
    right: tuple[int, int]


def _sides(text: str, part: Part, at: int, min_words: int) -> _Cut | None:
    left_end = at - len(text[part.start : at]) + len(text[part.start : at].rstrip(" \t\n,;:—–-"))
    right_start = at + _content_offset(text[at : part.end])
    left = text[part.start : left_end]
    if _words(left) < min_words or _SUBORDINATE_RE.match(left):
        return None
    right = text[right_start : part.end]
    n = _words(right)
    if n < min_words or (n <= REFERS_BACK_MAX_WORDS and _REFERS_BACK_RE.search(right)):
        return None
    return _Cut(-1, (part.start, left_end), (right_start, part.end))


def refine(
    model: IntentModel,
    texts: Sequence[str],
    parts_of: Sequence[list[Part]],
    *,
    clause_threshold: float = CLAUSE_THRESHOLD,
    clause_strong: float = CLAUSE_STRONG,
    min_words: int = CLAUSE_MIN_WORDS,
    depth: int = MAX_CLAUSE_DEPTH,
) -> list[list[Part]]:
    """Cut parts at clause boundaries where both sides are confidently different requests
    (see module doc); one vectorized predict per round over every candidate side."""
    out = [list(parts) for parts in parts_of]
    todo = [[True] * len(parts) for parts in out]
    for _ in range(depth):
        cuts: list[tuple[int, _Cut]] = []
        for ti, (text, parts) in enumerate(zip(texts, out, strict=True)):
            for pi, part in enumerate(parts):
                if not todo[ti][pi]:
                    continue
                for at in _clause_cuts(text, part.start, part.end):
                    cut = _sides(text, part, at, min_words)
                    if cut is not None:
                        cuts.append((ti, _Cut(pi, cut.left, cut.right)))
        if not cuts:
            break
        flat = [texts[ti][a:b] for ti, c in cuts for a, b in (c.left, c.right)]
        preds = model.predict_batch(flat)
        best: dict[tuple[int, int], tuple[float, _Cut, Prediction, Prediction]] = {}
        for k, (ti, cut) in enumerate(cuts):
            left, right = preds[2 * k], preds[2 * k + 1]
            if OUT_OF_SCOPE in (left.best, right.best) or left.best == right.best:
                continue
            # each side against the model's own threshold for its language
            share = [
                p.confidence / max(1e-9, model.threshold_for(detect_language(t)[0]))
                for p, t in ((left, flat[2 * k]), (right, flat[2 * k + 1]))
            ]
            strength = min(share)
            if strength < clause_threshold or max(share) < clause_strong:
                continue
            key = (ti, cut.part)
            if key not in best or strength > best[key][0]:
                best[key] = (strength, cut, left, right)
        for ti, parts in enumerate(out):
            new_parts: list[Part] = []
            new_todo: list[bool] = []
            for pi, part in enumerate(parts):
                found = best.get((ti, pi))
                if found is None:
                    new_parts.append(part)
                    new_todo.append(False)
                    continue
                _, cut, left, right = found
                for (a, b), p in ((cut.left, left), (cut.right, right)):
                    new_parts.append(Part(a, b, p.label, p.category, p.confidence, p.abstained))
                    new_todo.append(True)
            out[ti] = new_parts
            todo[ti] = new_todo
    return out


def split_batch(
    model: IntentModel,
    texts: Sequence[str],
    *,
    split_threshold: float = 0.6,
    connective_threshold: float = 0.3,
    min_words: int = 2,
    clause_threshold: float | None = CLAUSE_THRESHOLD,
    clause_strong: float = CLAUSE_STRONG,
    clause_min_words: int = CLAUSE_MIN_WORDS,
) -> list[list[Part]]:
    """Split many texts with one vectorized predict over all their segments (the whole-text
    vectors are derived from the segments', see ``IntentModel.predict_segmented``), then
    ``refine`` the parts at clause boundaries (``clause_threshold=None``: connectives only)."""
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
    if clause_threshold is None:
        return out
    return refine(
        model,
        texts,
        out,
        clause_threshold=clause_threshold,
        clause_strong=clause_strong,
        min_words=clause_min_words,
    )


def split_intents(model: IntentModel, text: str) -> list[Part]:
    """Split one text (convenience wrapper of ``split_batch``)."""
    return split_batch(model, [text])[0]


__all__ = [
    "CLAUSE_THRESHOLD",
    "CONNECTIVES",
    "UNKNOWN",
    "Part",
    "Segment",
    "merge",
    "refine",
    "segment",
    "split_batch",
    "split_intents",
]
