"""KB auto-reply: calibrate the threshold on one half of a labelled set, report the other half.

    cd /work/main && /tmp/venv/bin/python bench/similarity_kb.py            # report only
    /tmp/venv/bin/python bench/similarity_kb.py --write                     # re-calibrate

Labelled set:

* English positives: Bitext utterances of every intent that has an article (label: that
  article); negatives: Bitext utterances of the other intents (track_order, get_refund,
  payment_issue, complaint, ... — near misses) and 1,000 off-topic English NLU utterances
  (encodechka ``answer`` column: weather, alarms, music...).
* Russian positives: hand-written paraphrases in bench/similarity_kb_ru.csv (not the KB's
  own example questions); negatives: the CSV's rows without an article (other customer
  requests) and 1,000 encodechka Russian utterances.

The set is split in half at random (seed 0, stratified by language and label); the
confidence model and per-language thresholds are fitted on half A (``--write`` stores
them in pipeline/resources/kb/calibration.json), precision and coverage are reported on
half B, without intents (the KB-only decision, as ``pipeline kb search``) and with the
gold intent given (as in the pipeline once the classifier has labelled the message).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import DEFAULT_CONFIG_DIR
from pipeline.route.kb import (
    CALIBRATION_FILE,
    Calibration,
    KbIndex,
    LabelledQuestion,
    calibrate,
    calibration_json,
    load_calibration,
    load_kb,
)

DATA = Path("/work/shared/data")
HERE = Path(__file__).resolve().parent
KB_DIR = DEFAULT_CONFIG_DIR / "kb"


def labelled(articles_by_intent: dict[str, str]) -> list[tuple[LabelledQuestion, str | None]]:
    """(question, gold intent or None for off-topic)."""
    rng = random.Random(0)
    out: list[tuple[LabelledQuestion, str | None]] = []
    with open(
        DATA / "bitext_customer_support/bitext_20k_utterances.csv", encoding="utf-8-sig"
    ) as f:
        for r in csv.DictReader(f):
            out.append(
                (
                    LabelledQuestion(r["utterance"], "en", articles_by_intent.get(r["intent"])),
                    r["intent"],
                )
            )
    with open(DATA / "encodechka_intents_ru/intents_train.csv", encoding="utf-8") as f:
        enc = list(csv.DictReader(f))
    for r in rng.sample(enc, 1000):
        out.append((LabelledQuestion(r["answer"], "en", None), None))
    for r in rng.sample(enc, 1000):
        out.append((LabelledQuestion(r["text"], "ru", None), None))
    article_intent = {a: i for i, a in sorted(articles_by_intent.items(), reverse=True)}
    with open(HERE / "similarity_kb_ru.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            aid = r["article_id"] or None
            out.append(
                (
                    LabelledQuestion(r["text"], "ru", aid),
                    article_intent[aid] if aid else "other_request",
                )
            )
    return out


def split(rows: list[tuple[LabelledQuestion, str | None]]) -> tuple[list[int], list[int]]:
    rng = random.Random(0)
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, (q, _) in enumerate(rows):
        groups[(q.language, q.article_id)].append(i)
    a: list[int] = []
    b: list[int] = []
    for key in sorted(groups, key=str):
        idx = groups[key]
        rng.shuffle(idx)
        a += idx[: len(idx) // 2]
        b += idx[len(idx) // 2 :]
    return sorted(a), sorted(b)


def report(
    index: KbIndex, rows: list[tuple[LabelledQuestion, str | None]], with_intent: bool, title: str
) -> None:
    qs = [q for q, _ in rows]
    matches = index.search_many(
        [q.text for q in qs],
        [q.language for q in qs],
        [[g or "unknown"] for _, g in rows] if with_intent else None,
    )
    out = sys.stdout.write
    out(f"{title}\n")
    for lang in ("en", "ru", "all"):
        sel = [i for i, q in enumerate(qs) if lang in ("all", q.language)]
        fired = [i for i in sel if matches[i].auto_reply]
        right = [i for i in fired if matches[i].article_id == qs[i].article_id]
        pos = [i for i in sel if qs[i].article_id is not None]
        neg = len(sel) - len(pos)
        false_on_neg = sum(1 for i in fired if qs[i].article_id is None)
        wrong_art = len(fired) - len(right) - false_on_neg
        p = len(right) / max(1, len(fired))
        cov = len(right) / max(1, len(pos))
        out(
            f"  {lang:>3}: precision {p:.4f} ({len(right)}/{len(fired)} auto-replies right)  "
            f"coverage {cov:.4f} of {len(pos)} answerable  | wrong article {wrong_art}, "
            f"fired on {false_on_neg}/{neg} unanswerable\n"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help=f"store {CALIBRATION_FILE}")
    ap.add_argument("--target", type=float, default=0.95)
    a = ap.parse_args()
    articles = load_kb(KB_DIR)
    by_intent = {i: art.article_id for art in articles for i in art.intents}
    rows = labelled(by_intent)
    half_a, half_b = split(rows)
    out = sys.stdout.write
    out(
        f"KB: {len(articles)} articles, "
        f"{sum(len(v) for art in articles for v in art.questions.values())} example questions; "
        f"labelled set {len(rows)} (calibration half {len(half_a)}, held-out half {len(half_b)})\n"
    )
    if a.write:
        index = KbIndex(articles)
        cal = calibrate(index, [rows[i][0] for i in half_a], target_precision=a.target)
        index.calibration = cal
        held = [rows[i] for i in half_b]
        matches = index.search_many([q.text for q, _ in held], [q.language for q, _ in held])
        fired = [i for i, m in enumerate(matches) if m.auto_reply]
        right = sum(1 for i in fired if matches[i].article_id == held[i][0].article_id)
        pos = sum(1 for q, _ in held if q.article_id)
        cal = Calibration(
            **{
                **cal.model_dump(),
                "report": {
                    "command": "python bench/similarity_kb.py --write",
                    "held_out_precision": round(right / max(1, len(fired)), 4),
                    "held_out_coverage": round(right / max(1, pos), 4),
                    "held_out_size": len(held),
                    "calibration_size": len(half_a),
                },
            }
        )
        (KB_DIR / CALIBRATION_FILE).write_bytes(calibration_json(cal))
        out(f"wrote {KB_DIR / CALIBRATION_FILE}: thresholds {cal.thresholds}\n")
    index = KbIndex(articles, load_calibration(KB_DIR))
    out(f"thresholds: {index.calibration.thresholds} (default {index.calibration.threshold})\n")
    report(index, [rows[i] for i in half_a], False, "calibration half A, no intents:")
    report(index, [rows[i] for i in half_b], False, "HELD-OUT half B, no intents (kb search):")
    report(index, [rows[i] for i in half_b], True, "HELD-OUT half B, gold intent given:")
    texts = [rows[i][0].text for i in half_b]
    t0 = time.perf_counter()
    index.search_many(texts)
    batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts[:500]:
        index.search(t)
    single = time.perf_counter() - t0
    out(
        f"lookups/s: batch of {len(texts)} {len(texts) / batch:,.0f}; one at a time "
        f"{500 / single:,.0f}\n"
    )
    t0 = time.perf_counter()
    index.upsert(articles[0])
    out(f"upsert (refit of the whole index): {1000 * (time.perf_counter() - t0):.0f} ms\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
