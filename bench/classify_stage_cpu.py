"""CPU per message of the classify stage's pure work: dedup + contacts, then classification.

    python bench/classify_stage_cpu.py [--n 6000] [--batch 256] [--reps 3] [--profile OUT]
        [--history K]   # K earlier messages per customer first: a busy customer's state
    python bench/classify_stage_cpu.py --digest    # what the stage decides, as one hash
    PYTHONPATH=/tmp/old-tree python bench/classify_stage_cpu.py   # the same, another tree

The texts and messages of bench/pipeline_throughput.py's flat-out phase (``texts()``,
``make()``: Bitext English utterances, 997 customers, so each customer's dedup state grows
as in the worker), the shipped workflow's tag rules, stores and priority weights, and the
worker's own code: ``ClassifyAgent.remember`` over a plain dict as the dedup table, then
``Classifier.classify_batch`` with its contact counts. No broker, no Faust: what is measured
is the CPU the worker spends in its classify agent between decoding and sending.

The collector is set as the worker sets it once loaded (``runtime.tune_gc``: the loaded
objects frozen, young collections rarer); with CPython's settings (``--default-gc``) it
walked the classifier's objects, about a fifth more CPU here.

Process CPU time (``time.process_time``, BLAS limited to one thread), so the figure holds on
a shared, noisy machine; each repetition uses fresh message ids and customers, and the
table keeps the earlier repetitions' states (as a worker's does). Compare two trees by
running this script in each, back to back (``PYTHONPATH=<tree>``).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_throughput import make, texts  # the benchmark's own messages

from pipeline.classify import dedup
from pipeline.classify.agents import ClassifyAgent
from pipeline.classify.core import Classifier
from pipeline.classify.model import default_training_set
from pipeline.config import Settings
from pipeline.domain.workflow import load_workflow
from pipeline.events import utcnow
from pipeline.metrics import Metrics
from pipeline.runtime import tune_gc

#: make() gives message i to customer i % 997.
CUSTOMERS = 997


def digest(agent: SimpleNamespace, classifier: Classifier, pool: list[str]) -> str:
    """sha256 of everything the stage decides for fixed messages: dedup decisions, contact
    counts, classified messages and the dedup table's values. 3,000 bench texts and 1,500
    Russian training texts, then each again from the same customer (every third wrapped in
    a greeting and a signature: same-text and near duplicates). Equal digests from two trees
    (``PYTHONPATH=<tree>``): the same behaviour on these messages. The decisions' digest
    leaves the table out: equal when two trees decide the same but store it differently."""
    ru = [t for t, lang in zip(*_training_texts(), strict=True) if lang == "ru"][:1500]
    texts_ = pool[:3000] + ru
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    msgs = []
    for i, text in enumerate(texts_ * 2):
        again = i >= len(texts_)
        body = f"Hello, {text}\n\nThanks,\nJohn" if again and i % 3 == 0 else text
        m = make(body, i % len(texts_) if again and i % 5 == 0 else i, "digest")
        msgs.append(m.model_copy(update={"received_at": now, "customer_id": f"c{i % 700}"}))
    h = hashlib.sha256()
    for k in range(0, len(msgs), 256):
        batch = msgs[k : k + 256]
        decisions, recent = ClassifyAgent.remember(agent, batch, now)  # type: ignore[arg-type]
        for out in (*decisions, *classifier.classify_batch(batch, now=now, recent_contacts=recent)):
            h.update(out.model_dump_json().encode())
        h.update(json.dumps(recent, sort_keys=True).encode())
    decided = h.hexdigest()
    for key in sorted(agent.dedup_table):
        h.update(f"{key}={agent.dedup_table[key]}".encode())
    return f"{len(msgs)} messages, digest {h.hexdigest()} (decisions alone {decided})"


def _training_texts() -> tuple[list[str], list[str]]:
    ts = default_training_set()
    return ts.texts, ts.languages


def main() -> int:
    ap = argparse.ArgumentParser(description="classify stage CPU per message")
    ap.add_argument("--n", type=int, default=6000, help="messages per repetition")
    ap.add_argument("--batch", type=int, default=256, help="messages per batch (worker: 256)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", type=Path, default=None, help="cProfile stats of one more rep")
    ap.add_argument(
        "--history",
        type=int,
        default=0,
        help="earlier messages per customer remembered (not timed) before each repetition: "
        "a busy customer's dedup state (the throughput bench's customers reach ~12)",
    )
    ap.add_argument(
        "--digest", action="store_true", help="print a digest of the outputs instead (see below)"
    )
    ap.add_argument(
        "--default-gc",
        action="store_true",
        help="time with CPython's collector settings (default: the worker's, runtime.tune_gc)",
    )
    args = ap.parse_args()
    s = Settings()
    wf = load_workflow(s.rules_path)
    classifier = Classifier.from_settings(
        s, tag_rules=wf.tag_rules, stores=wf.stores, weights=wf.priority
    )
    # the agent's remember() over a dict: the same code the worker runs on its table
    agent = SimpleNamespace(
        dedup_table={},
        dedup_cfg=dedup.DedupConfig(window_s=s.dedup_window_s),
        ctx=SimpleNamespace(metrics=Metrics()),  # remember() counts unreadable states
    )
    encoder = classifier.model.encoder
    if encoder is not None:  # the agent reads the slow path's weights before it starts too
        encoder.encode(["warm-up"])
    pool = texts()
    if args.digest:
        sys.stdout.write(f"{digest(agent, classifier, pool)}\n")
        return 0
    if not args.default_gc:  # as the worker does once loaded: else ~a fifth more CPU here
        tune_gc()
    with threadpool_limits(limits=1):
        warm = [make(pool[i], i, "warm") for i in range(args.batch)]
        classifier.classify_batch(warm, recent_contacts={})
        rows = []
        for rep in range(args.reps):
            run = f"r{rep}-{time.time_ns()}"
            msgs = [make(pool[(i * 7919) % len(pool)], i, run) for i in range(args.n)]
            # the same customers (i % 997), other ids and texts, earlier
            earlier = [
                make(pool[(i * 104729 + 13) % len(pool)], args.n + i, run)
                for i in range(args.history * CUSTOMERS)
            ]
            for k in range(0, len(earlier), args.batch):
                ClassifyAgent.remember(agent, earlier[k : k + args.batch], utcnow())  # type: ignore[arg-type]
            t_dedup = t_cls = 0.0
            for k in range(0, len(msgs), args.batch):
                batch = msgs[k : k + args.batch]
                now = utcnow()
                t0 = time.process_time()
                _, recent = ClassifyAgent.remember(agent, batch, now)  # type: ignore[arg-type]
                t1 = time.process_time()
                classifier.classify_batch(batch, now=now, recent_contacts=recent)
                t2 = time.process_time()
                t_dedup += t1 - t0
                t_cls += t2 - t1
            n = len(msgs)
            rows.append((t_dedup / n * 1000, t_cls / n * 1000))
            sys.stdout.write(
                f"rep {rep}: remember {rows[-1][0]:.3f} ms/msg, classify_batch "
                f"{rows[-1][1]:.3f} ms/msg, total {sum(rows[-1]):.3f} ms/msg\n"
            )
        if args.profile:  # one more repetition, not counted (cProfile's overhead)
            msgs = [
                make(pool[(i * 7919) % len(pool)], i, f"p{time.time_ns()}") for i in range(args.n)
            ]
            prof = cProfile.Profile()
            prof.enable()
            for k in range(0, len(msgs), args.batch):
                batch = msgs[k : k + args.batch]
                _, recent = ClassifyAgent.remember(agent, batch, now)  # type: ignore[arg-type]
                classifier.classify_batch(batch, now=now, recent_contacts=recent)
            prof.disable()
            prof.dump_stats(args.profile)
    tot = [a + b for a, b in rows]
    sys.stdout.write(
        f"{args.n} messages x {args.reps} reps ({args.history} earlier per customer), batches "
        f"of {args.batch}, 1 thread, {'default' if args.default_gc else 'worker'} gc, model "
        f"{classifier.version}: median remember {statistics.median(r[0] for r in rows):.3f}, "
        f"classify_batch {statistics.median(r[1] for r in rows):.3f}, total "
        f"{statistics.median(tot):.3f} ms CPU/msg (min {min(tot):.3f}, max {max(tot):.3f})\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
