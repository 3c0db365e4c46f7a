"""KB auto-reply precision and coverage on unseen questions, with a grouped split.

    python bench/similarity_kb.py [--model-cache DIR]          # report only
    python bench/similarity_kb.py --write                      # re-calibrate, then report

Data and split (nothing here is split by row):

1. The classifier: the default training data is grouped into paraphrase families and 25 % of
   each label's families are held out (``bench/split_eval.py``'s ``held_out_model``, seed 0);
   the model is trained on the rest and tuned as the shipped model is, on one family split
   (``--cv-tuning``: out-of-fold). Only held-out texts are used below.
2. Labelled questions: the held-out Bitext and Russian-seed texts (gold article: the article
   declaring their intent, else none — e.g. get_refund, registration_problems: near misses),
   the held-out off-topic texts, the hand-written Russian paraphrases of
   bench/similarity_kb_ru.csv (never training data), and 1,000 English + 1,000 Russian
   encodechka utterances (off-topic) that are not in the training data.
3. Those are grouped into paraphrase families again and split by family, per label, into a
   CALIBRATION part (the confidence model and the per-language thresholds are fitted there,
   ``--write`` stores them in pipeline/resources/kb/calibration.json) and a TEST part that
   nothing is tuned on. The figures that count are the TEST part's.

Decisions measured, per language: the pipeline's (the intents the held-out model finds in
the message, split into requests as the classify stage does — a message must be exactly one
recognised request, eligible for the article and not one of its near misses), the KB alone
(``pipeline kb search`` without intents), and with the gold intent (the retrieval's ceiling).
Precision: share of auto-replies that sent the right article. Coverage: share of answerable
questions answered with the right article.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from split_eval import describe_tuning, held_out_model, tuning

from pipeline.classify.dedup import normalize_text
from pipeline.classify.families import family_split
from pipeline.classify.model import OUT_OF_SCOPE
from pipeline.classify.split import split_batch
from pipeline.config import DEFAULT_CONFIG_DIR
from pipeline.route.kb import (
    CALIBRATION_FILE,
    Calibration,
    KbIndex,
    KbMatch,
    LabelledQuestion,
    calibrate,
    calibration_json,
    load_calibration,
    load_kb,
)

DATA = Path("/work/shared/data")
HERE = Path(__file__).resolve().parent
KB_DIR = DEFAULT_CONFIG_DIR / "kb"


@dataclass(frozen=True)
class Row:
    q: LabelledQuestion
    gold_intent: str | None  # None: off-topic
    group: str  # label used to split by family


def labelled(
    model_cache: Path | None, cv_tuning: bool = False
) -> tuple[list[Row], list[list[str]]]:
    """Rows and the intents the held-out model finds in each (split into requests)."""
    held = held_out_model(model_cache, params=tuning(cv_tuning))
    sys.stdout.write(describe_tuning(held.model) + "\n")
    ts = held.ts
    articles = load_kb(KB_DIR)
    by_intent = {i: a.article_id for a in articles for i in a.intents}
    rows: list[Row] = []
    for i in held.test:
        lang = ts.languages[i]
        if ts.labels[i] == OUT_OF_SCOPE:
            rows.append(Row(LabelledQuestion(ts.texts[i], lang, None), None, "_off_topic"))
        elif ts.sources[i] in ("bitext", "seed") and lang in ("en", "ru"):
            label = ts.labels[i]
            q = LabelledQuestion(ts.texts[i], lang, by_intent.get(label))
            rows.append(Row(q, label, label))
    intent_of = {a: i for i, a in sorted(by_intent.items(), reverse=True)}
    with open(HERE / "similarity_kb_ru.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            aid = r["article_id"] or None
            intent = intent_of[aid] if aid else "other_request"
            rows.append(Row(LabelledQuestion(r["text"], "ru", aid), intent, intent))
    seen = {normalize_text(t) for t in ts.texts}
    rng = random.Random(0)
    with open(DATA / "encodechka_intents_ru/intents_train.csv", encoding="utf-8") as f:
        enc = list(csv.DictReader(f))
    for col, lang in (("answer", "en"), ("text", "ru")):
        fresh = [r[col] for r in enc if normalize_text(r[col]) not in seen]
        for t in rng.sample(fresh, 1000):
            rows.append(Row(LabelledQuestion(t, lang, None), None, "_off_topic"))
    parts = split_batch(held.model, [r.q.text for r in rows])
    return rows, [[p.label for p in ps] for ps in parts]


def grouped_halves(rows: Sequence[Row]) -> tuple[list[int], list[int]]:
    """(calibration, test) row indices: paraphrase families kept on one side, per label."""
    texts = [r.q.text for r in rows]
    labels = [f"{r.q.language}:{r.group}" for r in rows]
    calib, test = family_split(texts, labels, test_size=0.5, seed=0)
    return sorted(calib.tolist()), sorted(test.tolist())


def decide(
    index: KbIndex, rows: Sequence[Row], intents: Sequence[list[str]] | None
) -> list[KbMatch]:
    return index.search_many(
        [r.q.text for r in rows], [r.q.language for r in rows], list(intents) if intents else None
    )


def report(rows: Sequence[Row], matches: Sequence[KbMatch], title: str) -> dict[str, float]:
    out = sys.stdout.write
    out(f"{title}\n")
    figures: dict[str, float] = {}
    for lang in ("en", "ru", "all"):
        sel = [i for i, r in enumerate(rows) if lang in ("all", r.q.language)]
        fired = [i for i in sel if matches[i].auto_reply]
        right = [i for i in fired if matches[i].article_id == rows[i].q.article_id]
        pos = [i for i in sel if rows[i].q.article_id is not None]
        unanswerable = [i for i in fired if rows[i].q.article_id is None]
        near = [i for i in unanswerable if rows[i].gold_intent is not None]
        p = len(right) / max(1, len(fired))
        cov = len(right) / max(1, len(pos))
        figures[f"{lang}_precision"], figures[f"{lang}_coverage"] = p, cov
        out(
            f"  {lang:>3}: precision {p:.4f} ({len(right)}/{len(fired)} auto-replies right)  "
            f"coverage {cov:.4f} of {len(pos)} answerable | wrong article "
            f"{len(fired) - len(right) - len(unanswerable)}, fired on unanswerable "
            f"{len(unanswerable)} ({len(near)} near-miss requests) of {len(sel) - len(pos)}\n"
        )
    return figures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help=f"store {CALIBRATION_FILE}")
    ap.add_argument("--target", type=float, default=0.95, help="precision, the KB alone")
    ap.add_argument(
        "--intent-target", type=float, default=0.95, help="precision, the pipeline decision"
    )
    ap.add_argument("--model-cache", type=Path, default=None, help="held-out model directory")
    ap.add_argument(
        "--cv-tuning",
        action="store_true",
        help="tune the held-out model out-of-fold, not on one split as the shipped model is",
    )
    ap.add_argument(
        "--dump",
        type=Path,
        default=None,
        help="write the TEST part as JSONL (text, language, intents found, gold_article) for "
        "`pipeline kb search --json --data FILE`",
    )
    a = ap.parse_args()
    out = sys.stdout.write
    rows, found = labelled(a.model_cache, a.cv_tuning)
    calib, test = grouped_halves(rows)
    articles = load_kb(KB_DIR)
    out(
        f"KB: {len(articles)} articles; labelled questions {len(rows)} (grouped split: "
        f"CALIBRATION part {len(calib)}, TEST part {len(test)})\n"
    )
    if a.write:
        index = KbIndex(articles)
        # every gate but the retrieval threshold (the classifier's requests, the article)
        gate = [
            m.auto_reply
            for m in decide(
                KbIndex(articles, Calibration(threshold=0.0)),
                [rows[i] for i in calib],
                [found[i] for i in calib],
            )
        ]
        cal = calibrate(
            index,
            [rows[i].q for i in calib],
            a.target,
            eligible=gate,
            intent_target_precision=a.intent_target,
        )
        index.calibration = cal
        tm = decide(index, [rows[i] for i in test], [found[i] for i in test])
        figs = report([rows[i] for i in test], tm, "TEST part, pipeline decision:")
        cal = Calibration(
            **{
                **cal.model_dump(),
                "report": {
                    "command": "python bench/similarity_kb.py --write",
                    "split": "grouped (paraphrase families): calibration part / test part",
                    "test_precision": round(figs["all_precision"], 4),
                    "test_coverage": round(figs["all_coverage"], 4),
                    "test_size": len(test),
                    "calibration_size": len(calib),
                },
            }
        )
        (KB_DIR / CALIBRATION_FILE).write_bytes(calibration_json(cal))
        out(f"wrote {KB_DIR / CALIBRATION_FILE}\n")
    index = KbIndex(articles, load_calibration(KB_DIR))
    cal = index.calibration
    out(
        f"thresholds: KB alone {cal.thresholds}, with the classifier's intent "
        f"{cal.intent_thresholds}\n"
    )
    for name, part in (("CALIBRATION", calib), ("TEST", test)):
        sub = [rows[i] for i in part]
        report(sub, decide(index, sub, [found[i] for i in part]), f"{name} part, pipeline:")
    sub = [rows[i] for i in test]
    if a.dump is not None:
        with a.dump.open("wb") as f:
            for i in test:
                r = rows[i]
                line = {
                    "text": r.q.text,
                    "language": r.q.language,
                    "intents": found[i],
                    "gold_article": r.q.article_id,
                }
                f.write(orjson.dumps(line) + b"\n")
        out(f"wrote the TEST part to {a.dump}\n")
    report(sub, decide(index, sub, None), "TEST part, KB alone (kb search, no intents):")
    gold = [[r.gold_intent or "unknown"] for r in sub]
    report(sub, decide(index, sub, gold), "TEST part, gold intent given:")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
