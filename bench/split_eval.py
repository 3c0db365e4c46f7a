"""Multi-request split on composed messages, with connectives the splitter was NOT tuned on.

    python bench/split_eval.py [--n 600] [--seed 0] [--show 5]

Split of the data (grouped, never by row). The default model's training data (Bitext +
the ru/en seed + out-of-scope) is grouped into paraphrase families and 25 % of each
(language, label)'s families are held out (``pipeline.classify.families.family_split``,
seed 0); a model is
trained on the rest with ``IntentModel.train`` (the default parameters: the cascade), and tuned
as the shipped model is: on one family split of 20 % of its training rows (``SHIPPED_TUNING``;
``--cv-tuning``: out-of-fold, as ``TrainParams`` would choose at this size). Only held-out texts
are composed below: the model has seen neither them nor their near-paraphrases.

Composed messages, per language (en: held-out Bitext; ru: held-out Russian seed):

* singles: one held-out request, unchanged (must stay whole);
* pairs: two held-out requests with different intents joined by a connective.

Connectives come in two sets. TUNED: the ones the splitter's thresholds were chosen on
(``--connectives tuned``). HELD-OUT: never looked at while tuning (the default report).
Neither set is a list inside the splitter: it cuts at clause boundaries (sentence ends, new
lines, semicolons, commas, dashes, "и"/"а"/"and"/"but") and keeps a cut when the parts are
confidently different requests.

Figures: share of pairs split into exactly two parts at the right place (the second part
starts inside the connective's gap, ±2 characters) and with both parts' labels right; share
of singles kept whole.

Hand-written (bench/split_singles.csv, written before the rules were changed): single
requests with a clause that is no request of its own (a vague "…, can you help me?", a
reference "…, чек от 12 ноября", a reason) and a few two-request messages that carry a
number; the rules were chosen on the ``tune`` rows, the ``test`` rows are reported. The
composed pools have almost no numbers, so only these rows measure the bare-reference rule.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.classify.families import family_split
from pipeline.classify.model import (
    IntentModel,
    TrainingSet,
    TrainParams,
    data_sha256,
    default_model_key,
    default_training_set,
)
from pipeline.classify.split import Part, split_batch
from pipeline.errors import ModelError

TUNED: dict[str, list[str]] = {
    "en": [". ", " and ", ", ", "\n", ". Also, ", " and also ", "; "],
    "ru": [". ", " и ", ", ", "\n", ", а ещё ", ". Кроме того, ", "; "],
}
HELD_OUT: dict[str, list[str]] = {
    "en": [", and ", "! And ", " - ", ".\n\n", ", and then ", ". Oh and ", "? And ",
           ". Second question: ", " and I also want to know ", "\n- "],
    "ru": [", и ", "! И ", " — ", ".\n\n", ", и потом ", ". И вот что: ", "? И ",
           ". Второй вопрос: ", " и ещё хочу узнать ", "\n- "],
}  # fmt: skip


def grouped_split(ts: TrainingSet, held: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, held-out): whole paraphrase families per label on one side.

    Families and shares are per language and label: split by label alone, a label's Russian
    rows (few families next to hundreds of English ones) can all land on one side, and the
    held-out Russian would measure a language the model never saw for that label."""
    keys = [f"{lang}:{label}" for lang, label in zip(ts.languages, ts.labels, strict=True)]
    train, test = family_split(ts.texts, keys, test_size=held, seed=seed)
    return sorted(train.tolist()), sorted(test.tolist())


@dataclass
class HeldOut:
    """The default training data, its grouped split and a model trained without the held-out
    families (shared by bench/similarity_kb.py)."""

    ts: TrainingSet
    train: list[int]
    test: list[int]
    model: IntentModel


#: How the held-out model tunes its thresholds, as the shipped default model does: on ONE
#: paraphrase-family split of ``holdout`` (20 %) of its training rows. ``TrainParams`` switches
#: to 5-fold family cross-validation below ``calibration_rows`` (1,500) held-out rows; the
#: shipped model holds out 3,191 rows (single split), while this model's 75 % of the data
#: would hold out only 813 and be tuned out-of-fold — another procedure than the one whose
#: figures the benches stand for. ``calibration_rows=0`` keeps the single split.
SHIPPED_TUNING = TrainParams(calibration_rows=0)


def tuning(cross_validated: bool) -> TrainParams:
    """The held-out model's parameters: the shipped single split, or (``--cv-tuning``)
    ``TrainParams``' own choice, 5-fold family cross-validation at this data size."""
    return TrainParams() if cross_validated else SHIPPED_TUNING


def describe_tuning(model: IntentModel) -> str:
    """How the held-out model was tuned and the thresholds it chose."""
    meta = model.meta
    how = (
        "one family split"
        if not meta.params.calibration_rows
        else f"family cross-validation when one split holds out < {meta.params.calibration_rows}"
    )
    rows = meta.held_out.rows if meta.held_out else 0
    thresholds = {k: round(v, 3) for k, v in meta.thresholds.items()}
    return f"held-out model tuned on {rows} rows ({how}); abstention thresholds {thresholds}"


#: Next to a cached held-out model: the training code, data and parameters it was built from.
CACHE_KEY_FILE = "bench-key.txt"


def cache_key(cache: Path) -> str | None:
    """The key a cached held-out model was saved with (None: no cache, or saved without one)."""
    try:
        return (cache / CACHE_KEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def held_out_model(
    cache: Path | None, seed: int = 0, held: float = 0.25, params: TrainParams = SHIPPED_TUNING
) -> HeldOut:
    """Train (or load from ``cache``) the model of the grouped split."""
    ts = default_training_set()
    train, test = grouped_split(ts, held, seed)
    # the default model's cache key also hashes the training code (model.py, families, encoder):
    # a model trained by other code, with the same data and parameters, is retrained too
    code_key = default_model_key(params)
    model = None
    if cache is not None and cache_key(cache) == code_key:
        try:
            model = IntentModel.load(cache)
        except ModelError:
            model = None
    texts, labels = [ts.texts[i] for i in train], [ts.labels[i] for i in train]
    cats = {label: ts.categories.get(label, label) for label in set(labels)}
    if model is not None and (
        model.meta.data_sha256 != data_sha256(texts, labels, cats) or model.meta.params != params
    ):
        model = None  # another split (the data or the families changed) or tuning: retrain
    if model is None:
        model = IntentModel.train(
            [ts.texts[i] for i in train],
            [ts.labels[i] for i in train],
            categories=ts.categories,
            params=params,
            sample_weight=[ts.weights[i] for i in train],
        )
        if cache is not None:
            model.save(cache)
            (cache / CACHE_KEY_FILE).write_text(code_key + "\n", encoding="utf-8")
    return HeldOut(ts, train, test, model)


@dataclass
class Sample:
    text: str
    labels: list[str]
    gap: tuple[int, int] | None  # where the second request starts (connective span)
    lang: str


def _clean(t: str) -> str:
    return " ".join(t.split()).strip()


def compose(
    pool: dict[str, list[tuple[str, str]]],
    connectives: dict[str, list[str]],
    n: int,
    seed: int,
) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for lang, items in pool.items():
        for _ in range(n):
            text, label = rng.choice(items)
            out.append(Sample(_clean(text), [label], None, lang))
        for _ in range(n):
            (a, la), (b, lb) = rng.sample(items, 2)
            while la == lb:
                b, lb = rng.choice(items)
            a, b = _clean(a).rstrip(".!?"), _clean(b)
            conn = rng.choice(connectives[lang])
            if conn.rstrip(" ")[-1:] in ".!?:\n-" and conn.strip() not in ("-", "—"):
                b = b[:1].upper() + b[1:]  # a new sentence or line
            elif not b[:2].isupper():  # "I", "OK" and acronyms keep their case
                b = b[:1].lower() + b[1:]
            out.append(Sample(a + conn + b, [la, lb], (len(a), len(a) + len(conn)), lang))
    return out


def score(samples: list[Sample], predicted: list[list[Part]], lang: str) -> dict[str, float]:
    mine = [(s, p) for s, p in zip(samples, predicted, strict=True) if s.lang == lang]
    singles = [(s, p) for s, p in mine if not s.gap]
    pairs = [(s, p) for s, p in mine if s.gap]
    whole = sum(len(p) == 1 for _, p in singles)
    two = placed = labelled = 0
    for s, p in pairs:
        if len(p) != 2 or s.gap is None:
            continue
        two += 1
        a, b = s.gap
        if a - 2 <= p[1].start <= b + 2:
            placed += 1
            labelled += [x.label for x in p] == s.labels
    return {
        "singles": len(singles),
        "kept_whole": whole / max(1, len(singles)),
        "pairs": len(pairs),
        "two_parts": two / max(1, len(pairs)),
        "two_parts_right_place": placed / max(1, len(pairs)),
        "both_labels_right": labelled / max(1, len(pairs)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="multi-request split on composed messages")
    ap.add_argument("--n", type=int, default=600, help="singles and pairs per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--connectives", choices=("held-out", "tuned", "both"), default="both")
    ap.add_argument("--show", type=int, default=0, help="print N wrong examples per language")
    ap.add_argument("--cache", type=Path, default=None, help="save/load the trained model here")
    ap.add_argument(
        "--cv-tuning",
        action="store_true",
        help="tune the held-out model out-of-fold (5 family folds) instead of on one family "
        "split as the shipped model is (see SHIPPED_TUNING)",
    )
    ap.add_argument(
        "--dump",
        type=Path,
        default=None,
        help="write the HELD-OUT-connective messages as CSV (text, language, requests) for "
        "`pipeline rules explain --json --data FILE` with PIPELINE_MODEL_PATH=the --cache model",
    )
    args = ap.parse_args()
    out = sys.stdout.write
    t0 = time.perf_counter()
    held = held_out_model(args.cache, args.seed, params=tuning(args.cv_tuning))
    ts, train, test, model = held.ts, held.train, held.test, held.model
    pool: dict[str, list[tuple[str, str]]] = {"en": [], "ru": []}
    for i in test:
        src, lang = ts.sources[i], ts.languages[i]
        if src == "bitext" or (src == "seed" and lang == "ru"):
            pool[lang].append((ts.texts[i], ts.labels[i]))
    out(
        f"grouped split (paraphrase families, seed {args.seed}): trained on {len(train)} rows, "
        f"held out {len(test)}; pools: {len(pool['en'])} en (Bitext), {len(pool['ru'])} ru "
        f"(seed) in {time.perf_counter() - t0:.0f}s\n"
        f"{describe_tuning(model)}\n"
    )
    sets = {"held-out": HELD_OUT, "tuned": TUNED}
    for name in ("held-out", "tuned") if args.connectives == "both" else (args.connectives,):
        samples = compose(pool, sets[name], args.n, args.seed)
        if args.dump is not None and name == "held-out":
            with args.dump.open("w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["language", "requests", "text"])
                w.writerows([s.lang, len(s.labels), s.text] for s in samples)
        t0 = time.perf_counter()
        predicted = split_batch(model, [s.text for s in samples])
        secs = time.perf_counter() - t0
        out(f"\nconnectives {name.upper()} ({len(samples)} messages, split in {secs:.1f}s)\n")
        for lang in ("en", "ru"):
            m = score(samples, predicted, lang)
            out(
                f"  [{lang}] pairs split into two {m['two_parts']:.3f} "
                f"(at the right place {m['two_parts_right_place']:.3f}, both labels right "
                f"{m['both_labels_right']:.3f}) of {m['pairs']:.0f} | singles kept whole "
                f"{m['kept_whole']:.3f} of {m['singles']:.0f}\n"
            )
            shown = 0
            for s, p in zip(samples, predicted, strict=True):
                if shown >= args.show or s.lang != lang:
                    continue
                if len(p) != len(s.labels):
                    shown += 1
                    out(f"    {s.text!r} gold {s.labels}\n")
                    for x in p:
                        out(f"      → {x.label} {x.confidence:.2f} {s.text[x.start : x.end]!r}\n")
    hand(model, out)
    return 0


def hand(model: IntentModel, out: Callable[[str], object]) -> None:
    """Report the hand-written singles and pairs per part and language."""
    with (Path(__file__).resolve().parent / "split_singles.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    predicted = split_batch(model, [r["text"] for r in rows])
    out("\nhand-written (bench/split_singles.csv)\n")
    for part in ("tune", "test"):
        for lang in ("en", "ru"):
            mine = [
                (r, p)
                for r, p in zip(rows, predicted, strict=True)
                if r["part"] == part and r["language"] == lang
            ]
            singles = [len(p) == 1 for r, p in mine if "+" not in r["label"]]
            pairs = [len(p) == 2 for r, p in mine if "+" in r["label"]]
            out(
                f"  [{part} {lang}] singles kept whole {sum(singles)}/{len(singles)} | "
                f"pairs split into two {sum(pairs)}/{len(pairs)}\n"
            )
            for r, p in mine:
                if len(p) != len(r["label"].split("+")):
                    parts = [
                        (x.label, round(x.confidence, 2), r["text"][x.start : x.end]) for x in p
                    ]
                    out(f"    {r['label']}: {parts}\n")


if __name__ == "__main__":
    sys.exit(main())
