"""Knowledge base: article files, a similarity index over their example questions, auto-reply.

Articles are Markdown files with YAML front matter (``pipeline/resources/kb/*.md``)::

    ---
    id: password-recovery
    title: {en: ..., ru: ...}
    intents: [recover_password]          # eligible classifier intents
    not_intents: [registration_problems] # near misses it must never answer
    link: https://help.example.com/...
    auto_reply: true
    questions: {en: [...], ru: [...]}    # many, varied example questions
    ---
    ## ru
    answer in Russian
    ## en
    answer in English

``KbIndex`` scores a text against every example question with TF-IDF over character
n-grams (both languages in one space: robust to typos and Russian inflection), takes per
article the best cosine, and turns [best, best − runner-up, mean of the best article's
top-2] into a confidence with a logistic model fitted on labelled questions
(``calibrate``). The auto-reply threshold comes from ``calibration.json`` next to the
articles; it was chosen on a calibration part of grouped held-out data (paraphrase families
kept on one side) for ≥ 95 % precision and is reported on a separate test part
(bench/similarity_kb.py says which).

An article answers only when all of these hold (``_decide``):

* the classifier's intents are given and are exactly one known intent: a message with two
  requests (or one request and an unrecognised part) is never half auto-replied — every part
  is routed;
* that intent is one the article declares (``intents``) and not one of its near misses
  (``not_intents``: a registration *problem* is not "how to create an account", a refund
  *request* is not the refund *policy*);
* the retrieval agrees: the best article by similarity is this one, with a calibrated
  confidence at or above the language's threshold.

Without intents (``pipeline kb search`` without ``--intent``) only the retrieval decides.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.domain.text import fold, model_language
from pipeline.domain.tfidf import FastTfidf
from pipeline.errors import ConfigError
from pipeline.events import KbArticle, utcnow

__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "KbIndex",
    "KbMatch",
    "LabelledQuestion",
    "calibrate",
    "load_article",
    "load_calibration",
    "load_kb",
    "parse_article",
]

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
FEATURES = ("best", "margin", "top2_mean", "inv_words")


# ---------------------------------------------------------------- models


class KbMatch(BaseModel):
    """Best article for a text and whether the auto-reply fires."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    article_id: str | None = Field(description="Best matching article, None if the KB is empty.")
    intents: list[str] = Field(default_factory=list, description="Intents the article covers.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated match confidence.")
    similarity: float = Field(default=0.0, description="Cosine to the nearest example question.")
    threshold: float = Field(description="Auto-reply threshold applied.")
    auto_reply: bool = Field(description="Whether the auto-reply fires.")
    language: str = Field(description="Language of the answer.")
    title: str | None = None
    answer: str | None = Field(default=None, description="Answer text in that language.")
    link: str | None = None
    reason: str = Field(description="Why the auto-reply fires or not.")


class Calibration(BaseModel):
    """Logistic confidence model and per-language auto-reply thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: list[str] = Field(default_factory=lambda: list(FEATURES))
    coef: list[float] = Field(default_factory=lambda: [12.0, 6.0, 0.0, 0.0])
    intercept: float = -7.0
    threshold: float = Field(default=0.9, ge=0.0, le=1.0, description="Default threshold.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per language, the retrieval alone (no intents)."
    )
    intent_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per language, when the classifier's one intent is eligible for the article "
        "(the two agree, so the retrieval needs less on its own).",
    )
    target_precision: float = 0.95
    intent_target_precision: float = 0.95
    report: dict[str, Any] = Field(default_factory=dict, description="Figures at calibration.")

    def confidence(self, feats: Sequence[float]) -> float:
        z = self.intercept + sum(c * f for c, f in zip(self.coef, feats, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def threshold_for(self, language: str, with_intent: bool = False) -> float:
        if with_intent and language in self.intent_thresholds:
            return self.intent_thresholds[language]
        return self.thresholds.get(language, self.threshold)


@dataclass(frozen=True)
class LabelledQuestion:
    """One calibration example: the article that should answer it, or None."""

    text: str
    language: str
    article_id: str | None


# ---------------------------------------------------------------- files


_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?(.*)\Z", re.DOTALL)
_FRONT_KEYS = frozenset(
    {"id", "title", "intents", "not_intents", "link", "auto_reply", "questions"}
)
_SECTION = re.compile(r"^##\s+(\w+)\s*$", re.MULTILINE)


def parse_article(source: str, name: str = "<string>") -> KbArticle:
    """Parse one Markdown article; ConfigError naming ``name`` when it is malformed."""
    m = _FRONT.match(source.lstrip("\ufeff"))
    if not m:
        raise ConfigError(f"{name}: no YAML front matter (--- ... ---) at the top")
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: bad YAML front matter: {exc}") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"{name}: front matter must be a mapping")
    unknown = set(meta) - _FRONT_KEYS
    if unknown:
        raise ConfigError(f"{name}: unknown front-matter keys {sorted(unknown)}")
    answers: dict[str, str] = {}
    parts = _SECTION.split(m.group(2))
    for lang, text in zip(parts[1::2], parts[2::2], strict=True):
        if text.strip():
            answers[lang.lower()] = text.strip()
    if not answers:
        raise ConfigError(f"{name}: no answer sections (## ru / ## en)")
    try:
        article = KbArticle(
            article_id=str(meta.get("id") or ""),
            title=meta.get("title") or {},
            questions=meta.get("questions") or {},
            answer=answers,
            intents=meta.get("intents") or [],
            not_intents=meta.get("not_intents") or [],
            link=meta.get("link"),
            auto_reply=meta.get("auto_reply", True),
            updated_at=utcnow(),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ConfigError(f"{name}: {where}: {first.get('msg')}") from exc
    if not article.article_id:
        raise ConfigError(f"{name}: missing 'id'")
    both = sorted(set(article.intents) & set(article.not_intents))
    if both:
        raise ConfigError(f"{name}: intents {both} are both eligible and near misses")
    if not any(article.questions.values()):
        raise ConfigError(f"{name}: no example questions")
    for lang in article.questions:
        if lang not in article.answer:
            raise ConfigError(f"{name}: questions in {lang!r} but no '## {lang}' answer")
    return article


def load_article(path: Path) -> KbArticle:
    """Read and parse one article file."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_article(source, str(path))


def load_kb(directory: Path) -> list[KbArticle]:
    """Every ``*.md`` article of a directory (sorted by file name); ids must be unique."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: KB directory does not exist")
    articles: list[KbArticle] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        art = load_article(path)
        if art.article_id in seen:
            raise ConfigError(
                f"{path}: duplicate id {art.article_id!r} (also {seen[art.article_id]})"
            )
        seen[art.article_id] = path
        articles.append(art)
    return articles


def load_calibration(directory: Path) -> Calibration:
    """Calibration stored beside the articles; defaults (logged) when the file is missing."""
    path = directory / CALIBRATION_FILE
    if not path.exists():
        log.warning("%s missing: using an uncalibrated default threshold", path)
        return Calibration()
    try:
        return Calibration.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid calibration: {exc}") from exc


# ---------------------------------------------------------------- text


# ---------------------------------------------------------------- index


class KbIndex:
    """Similarity index over the example questions of the articles; refit on each change."""

    def __init__(
        self, articles: Iterable[KbArticle] = (), calibration: Calibration | None = None
    ) -> None:
        self.calibration = calibration or Calibration()
        self._articles: dict[str, KbArticle] = {}
        for a in articles:
            if not a.deleted:
                self._articles[a.article_id] = a
        self._fit()

    @classmethod
    def from_dir(cls, directory: Path) -> KbIndex:
        """Index of the articles of a directory with its calibration file."""
        return cls(load_kb(directory), load_calibration(directory))

    @property
    def articles(self) -> Mapping[str, KbArticle]:
        return dict(self._articles)

    def upsert(self, article: KbArticle) -> None:
        """Add or replace an article (a tombstone removes it)."""
        if article.deleted:
            self.remove(article.article_id)
            return
        self._articles[article.article_id] = article
        self._fit()

    def remove(self, article_id: str) -> None:
        """Drop an article (no-op when unknown)."""
        if self._articles.pop(article_id, None) is not None:
            self._fit()

    def may_auto_reply(self, intents: Sequence[str]) -> bool:
        """Whether ``search`` with these classifier intents can auto-reply at all: exactly one
        recognised intent that some auto-reply article answers (``_decide``'s intent rules).
        When not, the route agent does not search: the match could only say why not."""
        return len(intents) == 1 and intents[0] != "unknown" and intents[0] in self._answerable

    def _fit(self) -> None:
        self._answerable = frozenset(
            intent
            for art in self._articles.values()
            if art.auto_reply
            for intent in art.intents
            if intent not in art.not_intents
        )
        texts: list[str] = []
        owners: list[int] = []
        self._ids = sorted(self._articles)
        for i, aid in enumerate(self._ids):
            for qs in self._articles[aid].questions.values():
                for q in qs:
                    texts.append(fold(q))
                    owners.append(i)
        #: Each article's questions are rows start:end (they were added article by article).
        bounds = np.searchsorted(np.asarray(owners), np.arange(len(self._ids) + 1))
        self._spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
        # The articles with questions and where their rows start: their spans tile the rows
        # in order, so one np.maximum.reduceat takes every article's best cosine at once.
        self._asked = np.asarray([a for a, (s, e) in enumerate(self._spans) if e > s], np.intp)
        self._asked_starts = np.asarray([self._spans[a][0] for a in self._asked], np.intp)
        if not texts:
            self._vec: TfidfVectorizer | None = None
            return
        self._vec = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=1
        )
        self._matrix = self._vec.fit_transform(texts)
        # the same matrix as self._vec.transform, faster (pipeline/domain/tfidf.py)
        self._fast = FastTfidf(self._vec)
        # The product's right side in the format scipy would convert it to on every search.
        self._questions_t = csr_matrix(self._matrix.T)

    def features(self, texts: Sequence[str]) -> list[tuple[str | None, list[float], float]]:
        """Per text: (best article id, calibration features, cosine to nearest question)."""
        if self._vec is None or not texts:
            return [(None, [0.0] * len(FEATURES), 0.0) for _ in texts]
        sims = (self._fast.transform([fold(t) for t in texts]) @ self._questions_t).toarray()
        n_art = len(self._ids)
        # Per text and article, the best cosine of the article's questions (0 without any).
        per_article = np.zeros((len(texts), n_art))
        per_article[:, self._asked] = np.maximum.reduceat(sims, self._asked_starts, axis=1)
        # Every row's argsort in one call: the same sort of each row as one call per row.
        orders = np.argsort(-per_article, axis=1)
        out: list[tuple[str | None, list[float], float]] = []
        for text, row, per_art, order in zip(texts, sims, per_article, orders, strict=True):
            best = int(order[0])
            s1 = float(per_art[best])
            s2 = float(per_art[order[1]]) if n_art > 1 else 0.0
            start, end = self._spans[best]
            # The mean of the best two cosines (or of the one), without np.mean's overhead.
            top = np.sort(row[start:end])[-2:].tolist()
            top2 = sum(top) / len(top) if top else 0.0
            # Short texts reach high cosines by chance ("time now" ~ "delivery time").
            inv_words = 1.0 / max(1, len(text.split()))
            out.append((self._ids[best], [s1, s1 - s2, top2, inv_words], s1))
        return out

    def search(
        self, text: str, language: str | None = None, intents: Sequence[str] | None = None
    ) -> KbMatch:
        """Best article for ``text``; ``intents`` are the classifier's labels, when known."""
        return self.search_many([text], [language], [intents])[0]

    def search_many(
        self,
        texts: Sequence[str],
        languages: Sequence[str | None] | None = None,
        intents: Sequence[Sequence[str] | None] | None = None,
    ) -> list[KbMatch]:
        """``search`` for a batch (one vectorizer call)."""
        langs = list(languages) if languages is not None else [None] * len(texts)
        ints = list(intents) if intents is not None else [None] * len(texts)
        return [
            self._decide(t, lang, it, feat)
            for t, lang, it, feat in zip(texts, langs, ints, self.features(texts), strict=True)
        ]

    def _decide(
        self,
        text: str,
        language: str | None,
        intents: Sequence[str] | None,
        feat: tuple[str | None, list[float], float],
    ) -> KbMatch:
        lang = model_language(text, language)
        threshold = self.calibration.threshold_for(lang, with_intent=intents is not None)
        aid, feats, sim = feat
        if aid is None or not text.strip():
            return KbMatch(
                article_id=None,
                confidence=0.0,
                threshold=threshold,
                auto_reply=False,
                language=lang,
                reason="empty knowledge base" if aid is None else "empty text",
            )
        art = self._articles[aid]
        conf = self.calibration.confidence(feats)
        answer_lang = (
            lang if lang in art.answer else ("en" if "en" in art.answer else next(iter(art.answer)))
        )
        reasons: list[str] = []
        if intents is not None:
            labels = [i or "unknown" for i in intents]
            known = [i for i in labels if i != "unknown"]
            if len(labels) != 1 or not known:
                # two requests, or one plus a part nobody recognised: never half-answered
                reasons.append(
                    f"message has {len(labels)} request(s), {len(known)} recognised; "
                    "auto-reply needs exactly one recognised request"
                )
            elif known[0] in art.not_intents:
                reasons.append(f"intent {known[0]!r} is a near miss this article must not answer")
            elif known[0] not in art.intents:
                reasons.append(f"intent {known[0]!r} is not eligible for this article")
        if not art.auto_reply:
            reasons.append("article does not allow auto-reply")
        if conf < threshold:
            reasons.append(f"confidence {conf:.3f} below threshold {threshold:.3f}")
        if lang not in art.answer:
            reasons.append(f"no answer in {lang!r}")
        fire = not reasons
        return KbMatch(
            article_id=aid,
            intents=list(art.intents),
            confidence=round(conf, 4),
            similarity=round(sim, 4),
            threshold=threshold,
            auto_reply=fire,
            language=answer_lang,
            title=art.title.get(answer_lang),
            answer=art.answer.get(answer_lang),
            link=art.link,
            reason=(
                f"confidence {conf:.3f} ≥ threshold {threshold:.3f}" if fire else "; ".join(reasons)
            ),
        )


# ---------------------------------------------------------------- calibration


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=1000)
    model.fit(x, y)
    return [float(c) for c in model.coef_[0]], float(model.intercept_[0])


def _lowest_threshold(conf: np.ndarray, ok: np.ndarray, target: float, min_n: int) -> float:
    """Lowest threshold t whose accepted set (conf ≥ t) has precision ≥ target, n ≥ min_n."""
    order = np.argsort(-conf, kind="stable")
    c, k = conf[order], ok[order]
    prec = np.cumsum(k) / np.arange(1, len(k) + 1)
    for i in range(len(c) - 1, -1, -1):
        if i + 1 < len(c) and c[i + 1] == c[i]:
            continue  # a threshold at a tie accepts the whole tie
        if prec[i] >= target and i + 1 >= min_n:
            return float(c[i])
    return 1.0  # nothing qualifies: never auto-reply


def calibrate(
    index: KbIndex,
    examples: Sequence[LabelledQuestion],
    target_precision: float = 0.95,
    margin: float = 0.01,
    min_accepted: int = 20,
    eligible: Sequence[bool] | None = None,
    intent_target_precision: float = 0.95,
) -> Calibration:
    """Fit the confidence model and per-language thresholds on labelled questions.

    A threshold is the lowest confidence at which the accepted questions of that language
    still have precision ≥ ``target_precision + margin`` (the margin absorbs the
    difference between the calibration part and unseen data). ``eligible``: per example,
    whether the classifier's requests let the auto-reply through (see ``_decide``); then the
    ``intent_thresholds`` are chosen the same way for the precision of that whole decision,
    at ``intent_target_precision``.
    """
    feats = index.features([e.text for e in examples])
    x = np.asarray([f[1] for f in feats], dtype=np.float64)
    y = np.asarray(
        [
            e.article_id is not None and f[0] == e.article_id
            for e, f in zip(examples, feats, strict=True)
        ],
        dtype=np.int64,
    )
    coef, intercept = _fit_logistic(x, y)
    base = Calibration(coef=coef, intercept=intercept)
    conf = np.asarray([base.confidence(row) for row in x])
    langs = np.asarray([e.language for e in examples])

    def per_language(gate: np.ndarray, target: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for lang in sorted(set(langs.tolist())):
            sel = (langs == lang) & gate
            out[lang] = _lowest_threshold(
                conf[sel], y[sel], target + margin, min(min_accepted, int(y[sel].sum()))
            )
        return out

    thresholds = per_language(np.ones(len(examples), dtype=bool), target_precision)
    intent_thresholds = (
        per_language(np.asarray(eligible, dtype=bool), intent_target_precision)
        if eligible is not None
        else {}
    )
    default = max(thresholds.values()) if thresholds else base.threshold
    return Calibration(
        coef=coef,
        intercept=intercept,
        threshold=default,
        thresholds=thresholds,
        intent_thresholds=intent_thresholds,
        target_precision=target_precision,
        intent_target_precision=intent_target_precision,
    )


def calibration_json(cal: Calibration) -> bytes:
    """Pretty JSON for ``calibration.json``."""
    return orjson.dumps(cal.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n"
