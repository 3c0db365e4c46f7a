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
   model's best labels differ, and each side reaches ``clause_threshold`` (0.8) × the model's
   own per-language abstention threshold (calibrated for precision), so a side the model
   would not answer on its own — a vague "…, can you help me?" — does not cut; and neither
   side may read as the other side's request too (its confidence of the other's label below
   ``RELATED_LIMIT``, by the fast model and by the encoder): a context clause and the request
   it leads to ("I bought a product, how can I change my order?") is one request. Relative to
   the model's own thresholds, the rule survives a retrained model with another confidence
   scale. Before any model reads them, sides that cannot be a request of their own are
   dropped: fewer than ``clause_min_words`` words; a condition ("Если не вернёте деньги,
   …"); closed-class words only ("could you help me?", "как это сделать?"); and a short side
   (≤ ``SHORT_SIDE_WORDS``) that points back ("когда её привезут?") or is a bare reference — a
   number without a verb or a question ("…, чек от 12 ноября": the keyword "чек" is not a
   second request); and a short left side that only tells what the customer did ("Я купил
   товар, как изменить заказ?": the context of the request after it, which the model reads
   as place_order with no trace of the request). Of several such cuts the one whose weaker
   side is the most confident wins; each side may be cut once more (``MAX_CLAUSE_DEPTH``).
   Cost: the fast model reads every side; the cascade's slow encoder re-reads only the sides
   it is unsure of of the cuts the fast model already reads as two different requests.
   The thresholds were chosen on messages composed with one set of connectives and are
   reported on another set they never saw, and on hand-written singles and pairs
   (bench/split_eval.py, bench/split_singles.csv).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from pipeline.classify.model import OUT_OF_SCOPE, UNKNOWN, IntentModel, Prediction
from pipeline.domain.text import LowerCasePattern, detect_language

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
#: Any connective anywhere: a text without one has no match of _CONN_RE. Most texts have
#: none, and this search costs a third of _CONN_RE's (look-behinds at every position,
#: case-insensitive).
_ANY_CONN = LowerCasePattern(_alternation(CONNECTIVES))
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
#: A SHORT side of a clause cut (up to this many words) that depends on the other side
#: continues the same request; a longer one usually names its own object ("my account was
#: hacked, how do I get it back?"). It depends when it points back or is a bare reference.
SHORT_SIDE_WORDS = 7
#: Pronouns and demonstratives that point back to the clause before ("когда её привезут?",
#: "как это сделать?", "how do I do that?").
_REFERS_BACK_RE = re.compile(
    r"(?<!\w)(?:её|ее|его|их|него|неё|нее|ним|ней|них|это|этого|этом|этим|этому|"
    r"it|them|this|that|these|those)(?!\w)",
    re.IGNORECASE,
)
#: A bare reference: a number (order, receipt, card, date, amount) in a side without a finite
#: verb or a question ("…, чек от 12 ноября", "…, card number 7781 2201") identifies what the
#: other side is about; a keyword in it ("чек", "receipt") is not a second request.
_NUMBER_RE = re.compile(r"\d|№")
#: What makes a clause a request of its own rather than a noun phrase: a question, a question
#: word, a modal or auxiliary, a subject pronoun, or (Russian) a finite verb or infinitive
#: ending. English participles ("dated", "ending in") are left out: they qualify nouns.
_PREDICATE_RE = re.compile(
    r"\?|(?<!\w)(?:где|когда|как|почему|зачем|сколько|что|какой|какая|какие|куда|ли|нужен|"
    r"нужна|нужно|нужны|надо|можно|нельзя|прошу|хочу|пожалуйста|what|where|when|why|how|"
    r"which|who|i|you|we|me|my|our|your|am|is|are|was|were|be|been|do|does|did|can|could|"
    r"would|will|should|might|must|have|has|had|need|needs|want|wants|please|let)(?!\w)"
    r"|\w(?:ть|ться|тся|ешь|ишь|ете|ите|йте|ем|ет|ёт|ит|ут|ют|ят|ат|л|ла|ло|ли|лся|лась|лось|"
    r"лись)(?!\w)",
    re.IGNORECASE,
)
#: A clause that starts with a subordinator ("Если не вернёте деньги, …", "If it fails, …")
#: is a condition of what follows, not a request of its own.
_SUBORDINATE_RE = re.compile(
    r"\s*(?:если|когда|пока|хотя|так как|потому что|раз уж|if|when|while|although|because|"
    r"since|unless|once)\b",
    re.IGNORECASE,
)
#: A short left side that only tells what the customer did — first person, past tense, no
#: negation, no question ("Я купил товар, …", "Я заказал диван вчера, …", "I ordered an item,
#: …") — is the context of the request after it, not a request of its own: the model reads it as
#: the request to do that (place_order) and leaves no trace of the request it leads to (0.004 of
#: change_shipping_address), so ``_one_request`` cannot see it. A problem told in the past tense
#: names its own request ("Я не получил заказ", "I never got my refund"): negation keeps it.
_NARRATES_RE = re.compile(
    r"\s*(?:я|мы)\s+(?:\w+\s+)?\w+(?:л|ла|ли|лся|лась|лись)(?!\w)"
    r"|\s*(?:i|we)\s+(?:just\s+|recently\s+|have\s+)?"
    r"(?:(?!need\b|feed\b)\w+ed|bought|paid|made|got|sent|took|spent)(?!\w)",
    re.IGNORECASE,
)
_NEGATION_RE = re.compile(
    r"\?|(?<!\w)(?:не|нет|ни|not|no|never|cannot)(?!\w)|n't(?!\w)", re.IGNORECASE
)
#: Share of the model's per-language abstention threshold EACH side of a clause cut needs
#: (1.0: the model would answer that side). Chosen on the TUNED connectives of
#: bench/split_eval.py (0.3 let "…, can you help me?" cut 5 % of English singles; 0.7–1.0
#: score alike there, 0.8 best).
CLAUSE_THRESHOLD = 0.8
#: A clause cut whose either side gives the other side's label this much confidence reads as
#: one request told in two clauses (``_one_request``). Chosen on the TUNED connectives of
#: bench/split_eval.py and the shipped model's over-cuts of Bitext single requests.
RELATED_LIMIT = 0.05
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


@lru_cache(maxsize=512)
def _cut_points(text: str) -> tuple[int, ...]:
    # cached: ``refine`` asks again for the cuts of a part that is the whole text (most texts);
    # 512 > a batch (classify_batch_size 256), and ≤ 10 MB of texts (max_text_chars 20,000)
    cuts: set[int] = set()
    for m in _SENT_END_RE.finditer(text):
        if m.group().startswith("."):
            before = _WORD_RE.findall(text[max(0, m.start() - 12) : m.start()])
            if before and before[-1].lower() in _ABBREV:
                continue
        cuts.add(m.end())
    if _ANY_CONN.found_in(text):
        for m in _CONN_RE.finditer(text):
            cuts.add(m.start())
    return tuple(sorted(c for c in cuts if 0 < c < len(text)))


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


#: Closed-class words: pronouns, auxiliaries, modals, question words, politeness and the
#: verbs of asking for help or information. A side made of these alone ("could you help me?",
#: "what should I do?", "can you give me some information?", "подскажите, пожалуйста", "как
#: мне быть?") names no request of its own.
_CLOSED_CLASS = """
    i me my you u your we us our it this that a an the to for with out of on in about
    can could would will should shall do does did is are am be please help assist assistance
    support tell advise explain show what how why where when which who there any anything
    something anyone someone know let like want need thanks thank so now then just also again
    some more give provide information info details
    я мне меня мой моя моё мое мои вы вам вас ты тебе тебя мы нам нас это этим этом то
    как что где когда почему зачем ли же бы ну вот с по на в о об за для к у и а но
    можно можете можешь могли могу может помогите помочь помощь подскажите подскажи
    подсказать скажите скажи объясните пожалуйста спасибо заранее сделать делать быть
    нужно надо хочу хотел хотела есть кто нибудь
    дайте дать информацию информация подробности подробнее
"""
_FUNCTION_WORDS = frozenset(_CLOSED_CLASS.split())


def _bare_reference(side: str) -> bool:
    return bool(_NUMBER_RE.search(side)) and not _PREDICATE_RE.search(side)


def _narrates(side: str) -> bool:
    """The side only tells what the customer did (``_NARRATES_RE``)."""
    return bool(_NARRATES_RE.match(side)) and not _NEGATION_RE.search(side)


def _no_content(side: str) -> bool:
    return all(w.lower() in _FUNCTION_WORDS for w in _WORD_RE.findall(side))


def _sides(text: str, part: Part, at: int, min_words: int) -> _Cut | None:
    """The two sides of a cut, or None when one cannot be a request of its own (too short,
    a condition, or a short side that points back or is a bare reference)."""
    left_end = at - len(text[part.start : at]) + len(text[part.start : at].rstrip(" \t\n,;:—–-"))
    right_start = at + _content_offset(text[at : part.end])
    left = text[part.start : left_end]
    right = text[right_start : part.end]
    nl, nr = _words(left), _words(right)
    if min(nl, nr) < min_words or _SUBORDINATE_RE.match(left):
        return None
    if nr <= SHORT_SIDE_WORDS and (_REFERS_BACK_RE.search(right) or _bare_reference(right)):
        return None
    if nl <= SHORT_SIDE_WORDS and (_bare_reference(left) or _narrates(left)):
        return None
    if _no_content(left) or _no_content(right):
        return None
    return _Cut(-1, (part.start, left_end), (right_start, part.end))


def _candidates(
    texts: Sequence[str], parts_of: Sequence[list[Part]], todo: Sequence[list[bool]], min_words: int
) -> list[tuple[int, _Cut]]:
    """(text index, cut) of every clause boundary of the parts still to look at."""
    cuts: list[tuple[int, _Cut]] = []
    for ti, (text, parts) in enumerate(zip(texts, parts_of, strict=True)):
        for pi, part in enumerate(parts):
            if not todo[ti][pi]:
                continue
            for at in _clause_cuts(text, part.start, part.end):
                cut = _sides(text, part, at, min_words)
                if cut is not None:
                    cuts.append((ti, _Cut(pi, cut.left, cut.right)))
    return cuts


def _different(left: Prediction, right: Prediction) -> bool:
    """The two sides read as two different in-scope requests."""
    return OUT_OF_SCOPE not in (left.best, right.best) and left.best != right.best


def _confidence_of(p: Prediction, label: str) -> float:
    """``p``'s confidence of ``label`` (0 when it is not among its best labels)."""
    return next((c for best, c in p.top if best == label), 0.0)


def _one_request(left: Prediction, right: Prediction, limit: float) -> bool:
    """Either side also reads as the other side's request (its confidence of the other's label
    reaches ``limit``): a context clause and the request it leads to ("I bought a product, how
    can I change my order?": the context reads as product_quality 0.79 and change_order 0.13;
    "I have no shipping address, can you set one up?"). Two separate requests rarely leave a
    trace of each other: on composed pairs of held-out texts 95 % stay below 0.01."""
    return max(_confidence_of(left, right.best), _confidence_of(right, left.best)) >= limit


def _strength(model: IntentModel, sides: Sequence[tuple[Prediction, str]], related: float) -> float:
    """The weaker side's confidence as a share of the model's own threshold for its language;
    0 when the sides are not two different in-scope requests, or read as one (``related``)."""
    (left, _), (right, _) = sides
    if not _different(left, right) or _one_request(left, right, related):
        return 0.0
    return min(
        p.confidence / max(1e-9, model.threshold_for(detect_language(t)[0])) for p, t in sides
    )


def _predict_distinct(model: IntentModel, texts: Sequence[str], cascade: bool) -> list[Prediction]:
    """``model.predict_batch`` of ``texts``, the fast model reading each distinct text once:
    messages of a batch can leave the same clause side ("I have no online account", "what do
    I have to do?": 14 % of the sides in a batch of 256 of the bench's Bitext texts). The fast
    model reads every row on its own, so a repeated text gets the prediction it would get
    anyway. The cascade's encoder reads a batch together: with ``cascade`` every text is read
    as before."""
    if cascade:
        return model.predict_batch(texts)
    distinct = list(dict.fromkeys(texts))
    preds = model.predict_batch(distinct, cascade=False)
    if len(distinct) == len(texts):
        return preds
    of = dict(zip(distinct, preds, strict=True))
    return [of[t] for t in texts]


def _judge(
    model: IntentModel, flat: Sequence[str], prefilter: bool, related: float
) -> list[tuple[float, Prediction, Prediction]]:
    """(strength, left, right) per cut (``flat``: the sides of every cut, left then right).

    The fast model reads every side; the cascade's slow encoder then re-reads only the sides
    the fast model is unsure of AND only of the cuts the fast model already reads as two
    different in-scope requests: a cut it reads as one request (the same label, an off-topic
    side, or sides that read as each other's request) is dropped without encoding. A cut
    either model reads as one request does not cut. ``prefilter=False``: the cascade reads
    every side."""
    fast = _predict_distinct(model, flat, cascade=not prefilter)
    preds = list(fast)
    if prefilter:
        unsure = [
            i
            for k in range(0, len(flat), 2)
            if _different(fast[k], fast[k + 1]) and not _one_request(fast[k], fast[k + 1], related)
            for i in (k, k + 1)
            if fast[i].confidence < model.cascade_threshold_for(detect_language(flat[i])[0])
        ]
        for i, p in zip(unsure, model.predict_batch([flat[i] for i in unsure]), strict=True):
            preds[i] = p
    out: list[tuple[float, Prediction, Prediction]] = []
    for k in range(0, len(flat), 2):
        sides = ((preds[k], flat[k]), (preds[k + 1], flat[k + 1]))
        one = _one_request(fast[k], fast[k + 1], related)
        out.append((0.0 if one else _strength(model, sides, related), preds[k], preds[k + 1]))
    return out


def refine(
    model: IntentModel,
    texts: Sequence[str],
    parts_of: Sequence[list[Part]],
    *,
    clause_threshold: float = CLAUSE_THRESHOLD,
    min_words: int = CLAUSE_MIN_WORDS,
    depth: int = MAX_CLAUSE_DEPTH,
    prefilter: bool = True,
    related: float = RELATED_LIMIT,
) -> list[list[Part]]:
    """Cut parts at clause boundaries where both sides are confidently different requests
    (see module doc); one vectorized predict per round over every candidate side."""
    out = [list(parts) for parts in parts_of]
    todo = [[True] * len(parts) for parts in out]
    for _ in range(depth):
        cuts = _candidates(texts, out, todo, min_words)
        if not cuts:
            break
        flat = [texts[ti][a:b] for ti, c in cuts for a, b in (c.left, c.right)]
        best: dict[tuple[int, int], tuple[float, _Cut, Prediction, Prediction]] = {}
        for (ti, cut), (strength, left, right) in zip(
            cuts, _judge(model, flat, prefilter, related), strict=True
        ):
            key = (ti, cut.part)
            if strength >= clause_threshold and (key not in best or strength > best[key][0]):
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
    clause_min_words: int = CLAUSE_MIN_WORDS,
    clause_prefilter: bool = True,
    clause_related: float = RELATED_LIMIT,
    relabel_parts: bool = True,
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
    if clause_threshold is not None:
        out = refine(
            model,
            texts,
            out,
            clause_threshold=clause_threshold,
            min_words=clause_min_words,
            prefilter=clause_prefilter,
            related=clause_related,
        )
    return relabel(model, texts, out) if relabel_parts else out


def relabel(
    model: IntentModel, texts: Sequence[str], parts_of: Sequence[list[Part]]
) -> list[list[Part]]:
    """Label every part of a multi-part message by reading the part itself with the cascade
    (one batch): a part was labelled by the fast model reading one of its segments or clause
    sides, and the encoder reads unsure parts better (bench/split_eval.py, held-out
    connectives, both labels right: ru 0.667 -> 0.745, en 0.845 -> 0.877). A reading the
    model would not answer (abstained) does not replace an answered one. Neighbours that now
    read as the same request are one part again; a message left with one part is whole."""
    where = [
        (ti, pi) for ti, parts in enumerate(parts_of) if len(parts) > 1 for pi in range(len(parts))
    ]
    preds = model.predict_batch(
        [texts[ti][parts_of[ti][pi].start : parts_of[ti][pi].end] for ti, pi in where]
    )
    out = [list(parts) for parts in parts_of]
    for (ti, pi), p in zip(where, preds, strict=True):
        part = out[ti][pi]
        if p.abstained and not part.abstained:
            continue  # the model would not answer the whole part: keep what its side read as
        out[ti][pi] = Part(part.start, part.end, p.label, p.category, p.confidence, p.abstained)
    for ti in {ti for ti, _ in where}:
        merged: list[Part] = []
        for part in out[ti]:
            if merged and merged[-1].label == part.label != UNKNOWN:
                best = max(merged[-1], part, key=lambda x: x.confidence)
                part = replace(best, start=merged[-1].start, end=part.end)
                merged[-1] = part
            else:
                merged.append(part)
        if len(merged) == 1:
            s, e = _trim(texts[ti], 0, len(texts[ti]))
            merged = [replace(merged[0], start=s, end=e)]
        out[ti] = merged
    return out


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
    "relabel",
    "segment",
    "split_batch",
    "split_intents",
]
