"""Multi-intent split: evaluation on generated multi-request messages.

    python bench/classify_split_eval.py [--n 1500] [--seed 0]

Data. The default model's data (Bitext + our ru/en seed) is split 80/20 (stratified, seed 0);
a model is trained on the 80 %. From the held-out 20 % (real single-intent messages) the
generator builds, per language (en from Bitext, ru from the Russian seed):
40 % unjoined singles, 45 % pairs, 15 % triples of messages with *different* intents, joined by
natural connectives (". ", ". Also, ", " and also ", ", а ещё ", ". Кроме того, ", new line...).

Metrics.
* Boundaries: a gold boundary is the gap between two joined messages (from the end of one to
  the start of the next, connective included); a predicted boundary is the start of each
  predicted part after the first. A predicted boundary is correct if it falls inside a gold gap
  (±2 characters); each gap matches at most once. Precision, recall and F1 are micro-averaged
  over all messages (singles contribute only false positives).
* Part count accuracy: share of messages split into exactly the gold number of parts.
* Per-part label accuracy: for each gold part, the predicted part overlapping it most; correct
  when its label equals the gold intent (``unknown`` counts as wrong). Also per category.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.classify.model import IntentModel, default_training_set
from pipeline.classify.split import Part, split_batch

CONNECTIVES = {
    "en": [". ", ". Also, ", " and also ", ". Besides, ", ", and also ", ". In addition, ",
           "\n", ". Plus, ", ". Another thing: ", ". And one more thing: ", "! Also "],
    "ru": [". ", ", а ещё ", ". Кроме того, ", ". И ещё ", ". Также ", ", и ещё ", "\n",
           ". А ещё ", ". Ещё ", ". Помимо этого, ", "! И кстати, "],
}  # fmt: skip


@dataclass
class Sample:
    text: str
    parts: list[tuple[int, int, str, str]]  # start, end, label, category
    gaps: list[tuple[int, int]]
    lang: str


def _join(pieces: list[tuple[str, str, str]], lang: str, rng: random.Random) -> Sample:
    text = ""
    parts: list[tuple[int, int, str, str]] = []
    gaps: list[tuple[int, int]] = []
    for k, (t, label, cat) in enumerate(pieces):
        t = t.strip()
        if k > 0:
            conn = rng.choice(CONNECTIVES[lang])
            prev_end = len(text)
            if text and text[-1] in ".!?" and conn[0] in ".!,":
                conn = " " + conn[1:].lstrip() if conn[1:].strip() else " "
            text += conn
            if conn.strip() and conn.rstrip()[-1] not in ".!:" and conn not in ("\n",):
                t = t[0].lower() + t[1:]  # continues the sentence
            elif t:
                t = t[0].upper() + t[1:]
            gaps.append((prev_end, len(text)))
        start = len(text)
        text += t
        parts.append((start, len(text), label, cat))
    return Sample(text, parts, gaps, lang)


def generate(pool: dict[str, list[tuple[str, str, str]]], n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for lang, items in pool.items():
        for _ in range(n):
            r = rng.random()
            k = 1 if r < 0.40 else 2 if r < 0.85 else 3
            chosen: list[tuple[str, str, str]] = []
            while len(chosen) < k:
                cand = rng.choice(items)
                if all(cand[1] != c[1] for c in chosen):
                    chosen.append(cand)
            out.append(_join(chosen, lang, rng))
    return out


def score(samples: list[Sample], predicted: list[list[Part]]) -> dict[str, dict[str, float]]:
    by: dict[str, dict[str, float]] = {}
    for group in ("all", "en", "ru"):
        tp = fp = fn = 0
        count_ok = n = 0
        parts_ok = parts_n = cat_ok = 0
        multi_ok = multi_n = 0
        for s, pred in zip(samples, predicted, strict=True):
            if group != "all" and s.lang != group:
                continue
            n += 1
            count_ok += len(pred) == len(s.parts)
            used: set[int] = set()
            for p in pred[1:]:
                hit = next(
                    (
                        g
                        for g, (a, b) in enumerate(s.gaps)
                        if g not in used and a - 2 <= p.start <= b + 2
                    ),
                    None,
                )
                if hit is None:
                    fp += 1
                else:
                    used.add(hit)
                    tp += 1
            fn += len(s.gaps) - len(used)
            for a, b, label, cat in s.parts:
                best = max(pred, key=lambda p: min(b, p.end) - max(a, p.start))
                parts_n += 1
                parts_ok += best.label == label
                cat_ok += best.category == cat
                if len(s.parts) > 1:
                    multi_n += 1
                    multi_ok += best.label == label
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / (tp + fn) if tp + fn else 1.0
        by[group] = {
            "messages": n,
            "boundary_precision": prec,
            "boundary_recall": rec,
            "boundary_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "part_count_accuracy": count_ok / n if n else 0.0,
            "part_label_accuracy": parts_ok / parts_n if parts_n else 0.0,
            "part_category_accuracy": cat_ok / parts_n if parts_n else 0.0,
            "part_label_accuracy_multi": multi_ok / multi_n if multi_n else 0.0,
        }
    return by


def main() -> int:
    ap = argparse.ArgumentParser(description="multi-intent split evaluation")
    ap.add_argument("--n", type=int, default=1500, help="messages per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=0, help="print N wrongly split examples")
    args = ap.parse_args()
    ts = default_training_set()
    idx = np.arange(len(ts.texts))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=ts.labels)
    model = IntentModel.train(
        [ts.texts[i] for i in tr],
        [ts.labels[i] for i in tr],
        categories=ts.categories,
        sample_weight=[ts.weights[i] for i in tr],
    )
    pool: dict[str, list[tuple[str, str, str]]] = {"en": [], "ru": []}
    for i in te:
        lang = ts.languages[i]
        if ts.sources[i] == "out_of_scope" or (lang == "en" and ts.sources[i] != "bitext"):
            continue  # English on Bitext only (the English seed rows are ours)
        pool[lang].append((ts.texts[i], ts.labels[i], ts.categories[ts.labels[i]]))
    samples = generate(pool, args.n, args.seed)
    t0 = time.perf_counter()
    predicted = split_batch(model, [s.text for s in samples])
    secs = time.perf_counter() - t0
    sys.stdout.write(
        f"pool: {len(pool['en'])} en (Bitext held-out), {len(pool['ru'])} ru (seed held-out) "
        f"single-intent messages; {len(samples)} generated messages, split in {secs:.2f}s\n"
    )
    for group, m in score(samples, predicted).items():
        sys.stdout.write(
            f"[{group}] n={m['messages']:.0f} boundary P {m['boundary_precision']:.4f} "
            f"R {m['boundary_recall']:.4f} F1 {m['boundary_f1']:.4f} | part count acc "
            f"{m['part_count_accuracy']:.4f} | part label acc {m['part_label_accuracy']:.4f} "
            f"(in multi-part messages {m['part_label_accuracy_multi']:.4f}), category acc "
            f"{m['part_category_accuracy']:.4f}\n"
        )
    shown = 0
    for s, pred in zip(samples, predicted, strict=True):
        if shown >= args.show:
            break
        if len(pred) != len(s.parts):
            shown += 1
            sys.stdout.write(f"\n{s.text!r}\n  gold: {[p[2] for p in s.parts]}\n")
            for p in pred:
                sys.stdout.write(
                    f"  pred: {p.label} {p.confidence:.2f} {s.text[p.start : p.end]!r}\n"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
