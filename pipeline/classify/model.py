"""The intent model: TF-IDF word + character n-grams into a linear SVM, with abstention.

Features: word 1–3-grams + character 2–4-grams within word boundaries (``char_wb``: robust to
Russian inflection and typos), sublinear TF-IDF. Classifier: ``LinearSVC`` with the
Crammer–Singer multi-class loss (measured best on BANKING77: 91.6 % vs 91.3 % one-vs-rest;
``multi_class="ovr"`` is available).

Confidence. Label scores go through a softmax together with one fixed "none of them" logit
at 0, with a temperature fitted on a held-out split (minimum negative log-likelihood). Text that
no label scores above 0 (typically off-topic text) therefore gets confidence < 0.5; with
one-vs-rest scores that is exact ("no classifier claims it"), with Crammer–Singer scores it is
an empirical margin (checked on off-topic probes in the tests).

Abstention threshold, tuned on the held-out split: the lowest threshold whose accepted
predictions reach ``target_precision`` (default 0.97), but never below ``min_threshold``
(default 0.5, the point where the best label beats "none of them"). Below it the prediction is
``unknown``: the model never emits a label it was not trained on.

Out of scope: training data may carry the label ``_out_of_scope`` (off-topic examples). The
model learns it like any class, but predicting it is an abstention (``unknown``).

Training holds out ``holdout`` of the data (stratified, seeded) to measure the model and tune
temperature and threshold, then refits on all of it (``refit=True``). Everything is seeded:
the same data and library versions give the same artifact and the same version id.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from pipeline.errors import ModelError

if TYPE_CHECKING:
    from pipeline.config import Settings

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
#: A trained "none of our intents" class (off-topic examples); predicting it means abstaining.
OUT_OF_SCOPE = "_out_of_scope"
ESTIMATOR_FILE = "estimator.joblib"
META_FILE = "meta.json"
FORMAT_VERSION = 1

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction. ``label`` is ``unknown`` when abstained; ``best`` is the model's guess
    and ``best_category`` its category, even when abstained."""

    label: str
    category: str
    confidence: float
    abstained: bool
    best: str
    best_category: str


class TrainParams(BaseModel):
    """Hyper-parameters; part of the version id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    word_ngrams: tuple[int, int] = (1, 3)
    char_ngrams: tuple[int, int] = (2, 4)
    c: float = Field(default=0.7, gt=0)
    multi_class: str = Field(default="crammer_singer", pattern="^(ovr|crammer_singer)$")
    holdout: float = Field(default=0.1, ge=0.0, lt=0.5)
    target_precision: float = Field(default=0.97, gt=0, le=1)
    min_threshold: float = Field(default=0.5, ge=0, lt=1)
    refit: bool = True
    seed: int = 0


class HeldOut(BaseModel):
    """Metrics on the held-out split (of the model trained without it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    accuracy: float
    macro_f1: float
    abstention_rate: float
    accepted_accuracy: float
    temperature: float


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
    temperature: float
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
    }


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


def _fit(params: TrainParams, x: list[str], y: Any, w: Any) -> Pipeline:
    """Fit a fresh pipeline; liblinear's convergence warning is logged, not raised (the
    held-out metrics say whether the model is good)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        est = _build(params).fit(x, y, clf__sample_weight=w)
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            log.info("liblinear: %s", warning.message)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return est


def _build(params: TrainParams) -> Pipeline:
    features = FeatureUnion(
        [
            (
                "word",
                TfidfVectorizer(
                    ngram_range=params.word_ngrams, sublinear_tf=True, dtype=np.float32
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
    clf = LinearSVC(
        C=params.c, multi_class=params.multi_class, random_state=params.seed, max_iter=2000
    )
    return Pipeline([("features", features), ("clf", clf)])


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


def _tune_threshold(conf: FloatArray, correct: npt.NDArray[np.bool_], params: TrainParams) -> float:
    """Lowest threshold whose accepted predictions reach the target precision."""
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= params.target_precision)[0]
    if len(ok) == 0:
        return max(params.min_threshold, float(conf.max()) if len(conf) else 1.0)
    threshold = float(conf[order][ok[-1]])
    return max(params.min_threshold, threshold)


def _macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    labels = sorted(set(gold))
    f1s = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


class IntentModel:
    """A trained intent model: ``predict_batch`` is the one call to use on batches."""

    def __init__(self, estimator: Pipeline, meta: ModelMeta) -> None:
        self._estimator = estimator
        self.meta = meta
        classes = [str(c) for c in estimator.classes_]
        self._classes = np.array(classes, dtype=object)
        self._category_of = np.array([meta.categories.get(c, c) for c in classes], dtype=object)

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def threshold(self) -> float:
        return self.meta.threshold

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
    ) -> IntentModel:
        """Train, measure on a held-out split, tune the threshold, refit on everything."""
        params = params or TrainParams()
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
        started = time.perf_counter()
        x = list(texts)
        y = np.array(labels, dtype=object)
        w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        temperature, threshold, held_out = 1.0, params.min_threshold, None
        counts = {label: int((y == label).sum()) for label in distinct}
        can_hold_out = params.holdout > 0 and min(counts.values()) >= 2
        n_test = round(len(x) * params.holdout)
        if can_hold_out and n_test >= len(distinct):
            idx = np.arange(len(x))
            tr, te = train_test_split(
                idx, test_size=params.holdout, random_state=params.seed, stratify=y
            )
            est = _fit(params, [x[i] for i in tr], y[tr], w[tr])
            classes = list(est.classes_)
            scores = np.asarray(est.decision_function([x[i] for i in te]), dtype=np.float64)
            known = np.array([g in classes for g in y[te]])
            gold = np.array([classes.index(g) if g in classes else 0 for g in y[te]])
            temperature = _fit_temperature(scores[known], gold[known])
            conf = _confidences(scores, temperature)
            best = conf.argmax(axis=1)
            top = conf[np.arange(len(best)), best]
            pred = [classes[i] for i in best]
            correct = np.array([p == g for p, g in zip(pred, y[te], strict=True)])
            threshold = _tune_threshold(top, correct, params)
            accepted = top >= threshold
            held_out = HeldOut(
                rows=len(te),
                accuracy=float(correct.mean()),
                macro_f1=_macro_f1(list(y[te]), pred),
                abstention_rate=float(1 - accepted.mean()),
                accepted_accuracy=float(correct[accepted].mean()) if accepted.any() else 0.0,
                temperature=temperature,
            )
            if not params.refit:
                final = est
        if held_out is None or params.refit:
            final = _fit(params, x, y, w)
        seconds = time.perf_counter() - started
        libs = library_versions()
        sha = data_sha256(x, list(labels), cats)
        version_src = json.dumps(
            [sha, params.model_dump(mode="json"), {k: libs[k] for k in ("sklearn", "numpy")}]
        )
        meta = ModelMeta(
            version="intent-" + hashlib.sha256(version_src.encode()).hexdigest()[:12],
            data_sha256=sha,
            rows=len(x),
            labels=distinct,
            categories=cats,
            params=params,
            threshold=threshold,
            temperature=temperature,
            held_out=held_out,
            libraries=libs,
            trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
            training_seconds=round(seconds, 3),
        )
        log.info(
            "trained %s on %d rows, %d labels in %.1fs (threshold %.3f, held-out %s)",
            meta.version,
            len(x),
            len(distinct),
            seconds,
            threshold,
            held_out.accuracy if held_out else None,
        )
        return cls(final, meta)

    # ------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        """Write ``estimator.joblib`` and ``meta.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self._estimator, directory / ESTIMATOR_FILE, compress=3)
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
        try:
            estimator: Any = joblib.load(directory / ESTIMATOR_FILE)
        except (OSError, ValueError, EOFError, AttributeError, ImportError) as exc:
            raise ModelError(f"cannot load {directory / ESTIMATOR_FILE}: {exc}") from exc
        if not isinstance(estimator, Pipeline):
            raise ModelError(f"{directory / ESTIMATOR_FILE} does not hold a scikit-learn Pipeline")
        return cls(estimator, meta)

    # ------------------------------------------------------------ prediction

    def _scores(self, x: Any) -> FloatArray:
        scores = np.asarray(self._estimator.named_steps["clf"].decision_function(x), np.float64)
        if scores.ndim == 1:  # binary: sklearn returns the positive class score only
            scores = np.stack([-scores, scores], axis=1)
        return scores

    def confidences(self, texts: Sequence[str]) -> FloatArray:
        """Per-label confidence matrix (rows: texts, columns: ``estimator.classes_``)."""
        if not texts:
            return np.zeros((0, len(self._classes)))
        x = self._estimator.named_steps["features"].transform(list(texts))
        return _confidences(self._scores(x), self.meta.temperature)

    def _predictions(self, conf: FloatArray) -> list[Prediction]:
        if conf.shape[0] == 0:
            return []
        best = conf.argmax(axis=1)
        top = conf[np.arange(len(best)), best]
        labels = self._classes[best]
        cats = self._category_of[best]
        threshold = self.meta.threshold
        out: list[Prediction] = []
        for label, cat, c in zip(labels.tolist(), cats.tolist(), top.tolist(), strict=True):
            if label == OUT_OF_SCOPE:
                out.append(Prediction(UNKNOWN, UNKNOWN, c, True, label, UNKNOWN))
            elif c >= threshold:
                out.append(Prediction(label, cat, c, False, label, cat))
            else:
                out.append(Prediction(UNKNOWN, UNKNOWN, c, True, label, cat))
        return out

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """One vectorized predict over all texts."""
        return self._predictions(self.confidences(texts))

    def predict_segmented(
        self, segments: Sequence[Sequence[str]]
    ) -> list[tuple[Prediction, list[Prediction]]]:
        """(whole, per-segment) predictions of many segmented texts in one vectorized call.

        Only the segments are vectorized. A text with several segments gets its whole-text
        vector as the sum of its segments' vectors, re-normalized per feature block (each
        TF-IDF block is L2-normalized, as the vectorizer does): character n-grams never cross
        a word, so this is the whole text's vector up to the connective words, the word
        n-grams across segment boundaries and sublinear TF of repeated terms. It saves
        vectorizing every multi-part message twice."""
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
        conf = _confidences(self._scores(sparse.vstack(blocks).tocsr()), self.meta.temperature)
        preds = self._predictions(conf)
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
    libs = library_versions()
    h.update(f"{libs['sklearn']}|{libs['numpy']}|{FORMAT_VERSION}".encode())
    return h.hexdigest()[:16]


def train_default_model(params: TrainParams | None = None) -> IntentModel:
    """Train the default product model from the shipped data (deterministic)."""
    ts = default_training_set()
    return IntentModel.train(
        ts.texts, ts.labels, categories=ts.categories, params=params, sample_weight=ts.weights
    )


def default_model(settings: Settings, *, retrain: bool = False) -> IntentModel:
    """The default model: loaded from the cache, or trained once and cached (atomic rename)."""
    cache = settings.data_dir / "models" / f"default-{default_model_key()}"
    if not retrain and (cache / META_FILE).is_file():
        try:
            return IntentModel.load(cache)
        except ModelError as exc:
            log.warning("cached default model unusable, retraining: %s", exc)
    model = train_default_model()
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


class EvalReport(BaseModel):
    """What ``pipeline model eval`` prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_version: str
    rows: int
    accuracy: float = Field(description="Best label vs gold, abstention ignored.")
    macro_f1: float
    abstention_rate: float
    accepted_accuracy: float = Field(description="Accuracy on the rows not abstained.")
    threshold: float
    unseen_labels: list[str] = Field(description="Gold labels the model was not trained on.")
    per_label: dict[str, LabelScores]
    confused: list[tuple[str, str, int]] = Field(description="(gold, predicted, count), top 10.")


def evaluate(model: IntentModel, texts: Sequence[str], gold: Sequence[str]) -> EvalReport:
    """Accuracy, macro-F1, per-label scores, most-confused pairs and abstention."""
    preds = model.predict_batch(texts)
    best = [p.best for p in preds]
    n = len(gold)
    correct = [b == g for b, g in zip(best, gold, strict=True)]
    accepted = [not p.abstained for p in preds]
    n_acc = sum(accepted)
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
    gold_labels = sorted(set(gold))
    return EvalReport(
        model_version=model.version,
        rows=n,
        accuracy=round(sum(correct) / n, 4) if n else 0.0,
        macro_f1=round(_macro_f1(list(gold), best), 4) if n else 0.0,
        abstention_rate=round(1 - n_acc / n, 4) if n else 0.0,
        accepted_accuracy=round(
            sum(c for c, a in zip(correct, accepted, strict=True) if a) / n_acc, 4
        )
        if n_acc
        else 0.0,
        threshold=model.threshold,
        unseen_labels=[g for g in gold_labels if g not in set(model.labels)],
        per_label=per_label,
        confused=[(g, b, c) for (g, b), c in confused],
    )
