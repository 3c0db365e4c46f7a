"""``pipeline model train|eval|predict``.

    pipeline model train [--data FILE --out DIR] [--text-col --label-col --category-col]
        no --data: retrain the default model (Bitext + our ru/en seed) into the cache
        (or into --out when given)
    pipeline model eval [--model DIR] --data FILE [--text-col --label-col] [--json]
    pipeline model predict [--model DIR] --data FILE [--text-col] --out PRED.jsonl
    pipeline model split --data FILE --train OUT.csv --test OUT.csv [--test-size 0.2]
        held-out split by paraphrase family (near-duplicate rewordings stay on one side)

Data files are CSV (header row) or JSONL. Without --model, eval and predict use the default
model (``PIPELINE_MODEL_PATH`` when set).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from pipeline.classify.families import family_split
from pipeline.classify.model import (
    EvalReport,
    IntentModel,
    columns,
    default_model,
    default_params,
    encodings_dir,
    evaluate,
    language_of,
    read_table,
    train_default_model,
)
from pipeline.config import get_settings
from pipeline.errors import ModelError

log = logging.getLogger(__name__)


def _load(model_dir: Path | None) -> IntentModel:
    if model_dir is not None:
        return IntentModel.load(model_dir)
    settings = get_settings()
    if settings.model_path is not None:
        return IntentModel.load(settings.model_path)
    return default_model(settings)


def _summary(model: IntentModel) -> str:
    meta = model.meta
    lines = [
        f"model {meta.version}: {meta.rows} rows, {len(meta.labels)} labels, "
        f"{len(set(meta.categories.values()))} categories, trained in {meta.training_seconds:.1f}s",
        f"abstention threshold {meta.threshold:.3f} for precision "
        f"{meta.params.target_precision} (temperature {meta.temperature:.3f}); "
        f"encoder {meta.params.encoder or 'none'}, cascade threshold "
        f"{meta.cascade_threshold:.3f}",
    ]
    if meta.held_out is not None:
        h = meta.held_out
        lines.append(
            f"held-out families ({h.rows} rows): top-1 {h.accuracy:.4f} (fast alone "
            f"{h.fast_accuracy:.4f}; on the slow-path rows encoder {h.slow_accuracy:.4f} vs "
            f"fast {h.fast_accuracy_slow_rows:.4f}), macro-F1 "
            f"{h.macro_f1:.4f}, coverage {1 - h.abstention_rate:.4f} at precision "
            f"{h.accepted_accuracy:.4f}, slow path {h.slow_share:.4f}, ECE {h.ece:.4f}"
        )
        for lang, ls in h.by_language.items():
            lines.append(
                f"  {lang}: {ls.rows} rows, threshold {ls.threshold:.3f}, coverage "
                f"{ls.coverage:.4f}, precision {ls.precision:.4f}, top-1 {ls.accuracy:.4f}, "
                f"cascade threshold {model.cascade_threshold_for(lang):.3f}"
            )
    return "\n".join(lines) + "\n"


def cmd_train(args: argparse.Namespace) -> int:
    settings = get_settings()
    params = default_params(settings).model_copy(update={"seed": args.seed})
    if args.no_encoder:
        params = params.model_copy(update={"encoder": None})
    cache = encodings_dir(settings)
    if args.data is None:
        if args.out is None:
            model = default_model(settings, retrain=True)
        else:
            model = train_default_model(params, cache_dir=cache)
            model.save(args.out)
    else:
        if args.out is None:
            raise ModelError("--out DIR is required with --data")
        rows = read_table(args.data)
        if not rows:
            raise ModelError(f"{args.data} has no rows")
        cols = columns(rows, args.data, args.text_col, args.label_col, args.category_col)
        texts, labels = cols[0], cols[1]
        keep = [i for i, (t, lab) in enumerate(zip(texts, labels, strict=True)) if t and lab]
        if len(keep) < len(texts):
            log.warning("skipped %d rows with an empty text or label", len(texts) - len(keep))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
        categories: dict[str, str] = {}
        if args.category_col is not None:
            for label, i in zip(labels, keep, strict=True):
                if cols[2][i]:
                    categories.setdefault(label, cols[2][i])
        model = IntentModel.train(
            texts, labels, categories=categories, params=params, cache_dir=cache
        )
        model.save(args.out)
    sys.stdout.write(_summary(model))
    return 0


def _format_report(r: EvalReport) -> str:
    out = [
        f"model {r.model_version} on {r.rows} rows",
        f"top-1 (best label)  {r.accuracy:.4f}",
        f"macro-F1            {r.macro_f1:.4f}",
        f"coverage            {r.coverage:.4f}  (threshold {r.threshold:.3f})",
        f"precision, answered {r.precision:.4f}",
        f"ECE (10 bins)       {r.ece:.4f}",
        f"slow path           {r.slow_share:.4f}",
    ]
    for lang, ls in r.by_language.items():
        out.append(
            f"  {lang}: {ls.rows} rows, threshold {ls.threshold:.3f}, coverage "
            f"{ls.coverage:.4f}, precision {ls.precision:.4f}, top-1 {ls.accuracy:.4f}"
        )
    if r.unseen_labels:
        out.append(f"labels the model never saw: {', '.join(r.unseen_labels)}")
    out.append("")
    out.append("reliability (confidence bin: rows, mean confidence, accuracy)")
    for b in r.reliability:
        out.append(f"  [{b.low:.1f}, {b.high:.1f}) {b.rows:6d} {b.confidence:.3f} {b.accuracy:.3f}")
    out.append("")
    out.append(f"{'label':32s} {'prec':>6s} {'recall':>6s} {'f1':>6s} {'n':>6s}")
    for label, s in r.per_label.items():
        out.append(
            f"{label[:32]:32s} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f} {s.support:6d}"
        )
    if r.confused:
        out.append("")
        out.append("most confused (gold → predicted: count)")
        for gold, pred, n in r.confused:
            out.append(f"  {gold} → {pred}: {n}")
    return "\n".join(out) + "\n"


def cmd_eval(args: argparse.Namespace) -> int:
    model = _load(args.model)
    rows = read_table(args.data)
    texts, gold = columns(rows, args.data, args.text_col, args.label_col)
    report = evaluate(model, texts, gold)
    if args.json:
        sys.stdout.write(json.dumps(report.model_dump(mode="json"), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(_format_report(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load(args.model)
    rows = read_table(args.data)
    (texts,) = columns(rows, args.data, args.text_col)
    preds = model.predict_batch(texts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for text, p in zip(texts, preds, strict=True):
            # label/category: the best guess even when abstained (the router then sends the
            # message to triage); top: the best labels with their confidences, best first
            record = {
                "text": text,
                "label": p.best,
                "category": p.best_category,
                "confidence": round(p.confidence, 6),
                "abstained": p.abstained,
                "top": [{"label": lab, "confidence": round(c, 6)} for lab, c in p.top],
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    abstained = sum(p.abstained for p in preds)
    sys.stdout.write(
        f"{len(preds)} predictions by {model.version} written to {args.out} "
        f"({abstained} abstained)\n"
    )
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    rows = read_table(args.data)
    texts, labels = columns(rows, args.data, args.text_col, args.label_col)
    train, test = family_split(
        texts,
        labels,
        test_size=args.test_size,
        seed=args.seed,
        strata=[language_of(t) for t in texts],
    )
    fields = list(rows[0].keys()) if rows else [args.text_col, args.label_col]
    for path, idx in ((args.train, train), (args.test, test)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows[i] for i in idx.tolist())
    sys.stdout.write(
        f"{len(train)} training rows to {args.train}, {len(test)} held-out rows to {args.test} "
        f"(whole paraphrase families on one side)\n"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``pipeline model train|eval|predict``."""
    parser = sub.add_parser("model", help="train, evaluate and apply the intent classifier")
    msub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    train = msub.add_parser("train", help="train a model (no --data: the default model)")
    train.add_argument("--data", type=Path, help="CSV or JSONL training data")
    train.add_argument("--out", type=Path, help="artifact directory to write")
    train.add_argument("--text-col", default="text")
    train.add_argument("--label-col", default="label")
    train.add_argument("--category-col", default=None, help="label → category (department)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--no-encoder", action="store_true", help="the fast TF-IDF model alone (no cascade)"
    )
    train.set_defaults(handler=cmd_train)

    ev = msub.add_parser("eval", help="accuracy, macro-F1, per-label scores, confusions")
    ev.add_argument("--model", type=Path, help="artifact directory (default: default model)")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--text-col", default="text")
    ev.add_argument("--label-col", default="label")
    ev.add_argument("--json", action="store_true", help="machine-readable metrics")
    ev.set_defaults(handler=cmd_eval)

    pr = msub.add_parser("predict", help="one JSON line per input row")
    pr.add_argument("--model", type=Path, help="artifact directory (default: default model)")
    pr.add_argument("--data", type=Path, required=True)
    pr.add_argument("--text-col", default="text")
    pr.add_argument("--out", type=Path, required=True, help="PRED.jsonl")
    pr.set_defaults(handler=cmd_predict)

    sp = msub.add_parser("split", help="train/test split by paraphrase family")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--train", type=Path, required=True, help="training rows (CSV)")
    sp.add_argument("--test", type=Path, required=True, help="held-out rows (CSV)")
    sp.add_argument("--text-col", default="text")
    sp.add_argument("--label-col", default="label")
    sp.add_argument("--test-size", type=float, default=0.2)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(handler=cmd_split)
