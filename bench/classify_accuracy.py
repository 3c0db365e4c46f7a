"""Accuracy and training time of the intent model on the public data sets.

    python bench/classify_accuracy.py [--data-dir ../shared/data] [--multi-class ovr|crammer_singer]

Prints:
* BANKING77, official train/test: test accuracy (best label), macro-F1, abstention rate and
  accuracy on the rows not abstained, training seconds (incl. the held-out tuning and refit).
* Bitext + our ru/en seed (the default model's data): stratified 80/20 split (seed 0); accuracy
  on the Bitext held-out rows and on the Russian seed held-out rows, separately.
* Russian encodechka intents: stratified 5-fold cross-validation accuracy (mean ± sd).
* Training time of the full default model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline.classify.model import (
    OUT_OF_SCOPE,
    IntentModel,
    TrainParams,
    columns,
    default_training_set,
    evaluate,
    read_table,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def banking77(data: Path, params: TrainParams) -> None:
    tr = read_table(data / "banking77" / "train.csv")
    te = read_table(data / "banking77" / "test.csv")
    x, y = columns(tr, data, "text", "category")
    xt, yt = columns(te, data, "text", "category")
    t0 = time.perf_counter()
    model = IntentModel.train(x, y, params=params)
    secs = time.perf_counter() - t0
    r = evaluate(model, xt, yt)
    out(
        f"BANKING77 test ({r.rows} rows, {len(set(y))} intents): accuracy {r.accuracy:.4f}, "
        f"macro-F1 {r.macro_f1:.4f}; abstention {r.abstention_rate:.4f} at threshold "
        f"{r.threshold:.3f}, accuracy when not abstained {r.accepted_accuracy:.4f}; "
        f"training {secs:.1f}s"
    )


def bitext_and_seed(params: TrainParams) -> None:
    ts = default_training_set()
    idx = np.arange(len(ts.texts))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=ts.labels)
    model = IntentModel.train(
        [ts.texts[i] for i in tr],
        [ts.labels[i] for i in tr],
        categories=ts.categories,
        params=params,
        sample_weight=[ts.weights[i] for i in tr],
    )
    bitext = [i for i in te if ts.sources[i] == "bitext"]
    ru_seed = [i for i in te if ts.sources[i] == "seed" and ts.languages[i] == "ru"]
    oos = [i for i in te if ts.sources[i] == "out_of_scope"]
    for name, rows in (("Bitext held-out", bitext), ("Russian seed held-out", ru_seed)):
        r = evaluate(model, [ts.texts[i] for i in rows], [ts.labels[i] for i in rows])
        out(
            f"{name} ({r.rows} rows): accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f}, "
            f"abstention {r.abstention_rate:.4f}, accuracy when not abstained "
            f"{r.accepted_accuracy:.4f}"
        )
    preds = model.predict_batch([ts.texts[i] for i in bitext])
    cat_ok = np.mean(
        [
            p.best and model.category(p.best) == ts.categories[ts.labels[i]]
            for p, i in zip(preds, bitext, strict=True)
        ]
    )
    out(f"Bitext held-out category (department) accuracy: {cat_ok:.4f}")
    oos_preds = model.predict_batch([ts.texts[i] for i in oos])
    out(
        f"off-topic held-out ({len(oos)} rows, ru+en): abstained "
        f"{np.mean([p.abstained for p in oos_preds]):.4f}"
    )


def encodechka(data: Path, params: TrainParams, folds: int) -> None:
    rows = read_table(data / "encodechka_intents_ru" / "intents_train.csv")
    x, y = columns(rows, data, "text", "label")
    xa, ya = np.array(x, dtype=object), np.array(y, dtype=object)
    # labels with fewer members than folds cannot be stratified: they stay in training only
    counts = {lab: int((ya == lab).sum()) for lab in set(y)}
    ok = np.array([counts[lab] >= folds for lab in y])
    accs = []
    cv_params = params.model_copy(update={"holdout": 0.0})
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    rare_x, rare_y = list(xa[~ok]), list(ya[~ok])
    for tr, te in skf.split(xa[ok], ya[ok]):
        model = IntentModel.train(
            list(xa[ok][tr]) + rare_x, list(ya[ok][tr]) + rare_y, params=cv_params
        )
        pred = model.predict_labels(list(xa[ok][te]))
        accs.append(float(np.mean([p == g for p, g in zip(pred, ya[ok][te], strict=True)])))
    out(
        f"Russian encodechka intents ({len(x)} rows, {len(counts)} labels; {int((~ok).sum())} "
        f"rows of labels with < {folds} members kept in training only): {folds}-fold CV "
        f"accuracy {np.mean(accs):.4f} ± {np.std(accs):.4f}"
    )


def default_training_time(params: TrainParams) -> None:
    ts = default_training_set()
    t0 = time.perf_counter()
    model = IntentModel.train(
        ts.texts, ts.labels, categories=ts.categories, params=params, sample_weight=ts.weights
    )
    secs = time.perf_counter() - t0
    h = model.meta.held_out
    out(
        f"default model: {len(ts.texts)} rows, {len(set(ts.labels) - {OUT_OF_SCOPE})} intents → "
        f"{len(set(ts.categories.values()) - {'unknown'})} categories (+ the out-of-scope "
        f"class), trained in {secs:.1f}s "
        f"(held-out accuracy {h.accuracy if h else float('nan'):.4f}, threshold "
        f"{model.threshold:.3f})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--multi-class", default=None, choices=["ovr", "crammer_singer"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--only", choices=["banking77", "bitext", "encodechka", "default"], default=None
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = TrainParams(**({"multi_class": args.multi_class} if args.multi_class else {}))
    out(f"params: {params.model_dump_json()}")
    if args.only in (None, "banking77"):
        banking77(args.data_dir, params)
    if args.only in (None, "bitext"):
        bitext_and_seed(params)
    if args.only in (None, "encodechka"):
        encodechka(args.data_dir, params, args.folds)
    if args.only in (None, "default"):
        default_training_time(params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
