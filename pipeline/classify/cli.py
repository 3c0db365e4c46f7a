"""``pipeline model train|eval|predict``.

    pipeline model train [--data FILE --out DIR] [--text-col --label-col --category-col]
        no --data: retrain the default model (Bitext + our ru/en seed) into the cache
        (or into --out when given)
    pipeline model eval [--model DIR] --data FILE [--text-col --label-col] [--json]
    pipeline model predict [--model DIR] --data FILE [--text-col] --out PRED.jsonl

Data files are CSV (header row) or JSONL. Without --model, eval and predict use the default
model (``PIPELINE_MODEL_PATH`` when set).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.classify.model import (
    UNKNOWN,
    EvalReport,
    IntentModel,
    TrainParams,
    columns,
    default_model,
    evaluate,
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
        f"abstention threshold {meta.threshold:.3f} (temperature {meta.temperature:.3f})",
    ]
    if meta.held_out is not None:
        h = meta.held_out
        lines.append(
            f"held-out ({h.rows} rows): accuracy {h.accuracy:.4f}, macro-F1 {h.macro_f1:.4f}, "
            f"abstention {h.abstention_rate:.4f}, accuracy when not abstained "
            f"{h.accepted_accuracy:.4f}"
        )
    return "\n".join(lines) + "\n"


def cmd_train(args: argparse.Namespace) -> int:
    params = TrainParams(seed=args.seed)
    if args.data is None:
        if args.out is None:
            model = default_model(get_settings(), retrain=True)
        else:
            model = train_default_model(params)
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
        model = IntentModel.train(texts, labels, categories=categories, params=params)
        model.save(args.out)
    sys.stdout.write(_summary(model))
    return 0


def _format_report(r: EvalReport) -> str:
    out = [
        f"model {r.model_version} on {r.rows} rows",
        f"accuracy            {r.accuracy:.4f}",
        f"macro-F1            {r.macro_f1:.4f}",
        f"abstention rate     {r.abstention_rate:.4f}  (threshold {r.threshold:.3f})",
        f"accuracy, accepted  {r.accepted_accuracy:.4f}",
    ]
    if r.unseen_labels:
        out.append(f"labels the model never saw: {', '.join(r.unseen_labels)}")
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
            record = {
                "text": text,
                "label": UNKNOWN if p.abstained else p.label,
                "category": p.category,
                "confidence": round(p.confidence, 6),
                "abstained": p.abstained,
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    abstained = sum(p.abstained for p in preds)
    sys.stdout.write(
        f"{len(preds)} predictions by {model.version} written to {args.out} "
        f"({abstained} abstained)\n"
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
