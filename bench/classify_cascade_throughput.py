"""Throughput of the cascade on a realistic mix, one core, in batches; slow-path share.

    python bench/classify_cascade_throughput.py [--messages 6000] [--batch 256]

The mix (seeded): 40 % Bitext utterances (the phrasing the default model knows best), 25 % the
Russian test set (bench/classify_ru_test.csv, never trained on), 15 % BANKING77 test queries
(customer questions in other phrasings, mostly about intents we do not have), 10 % off-topic
Russian sentences (encodechka), 10 % two of the above joined with "and also" / "а ещё".

Measured with BLAS limited to one thread, on the same batches, in CPU seconds of this process
(``time.process_time``): the machine this was written on is shared, and wall time there
measures the neighbours.
* fast only: the TF-IDF model without the encoder (``predict_batch``);
* cascade: the default model (``predict_batch``): share of texts that took the slow path;
* stage: ``Classifier.classify_batch`` with the cascade (split candidates, entities, tags,
  priority): the figure that bounds a worker; and the same with the fast model only.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from classify_throughput import as_message  # bench/ is this script's directory
from threadpoolctl import threadpool_limits

from pipeline.classify.core import Classifier
from pipeline.classify.model import IntentModel, default_model, default_training_set
from pipeline.config import Settings

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def _column(path: Path, name: str, encoding: str = "utf-8") -> list[str]:
    return [r[name] for r in csv.DictReader(path.open(encoding=encoding)) if r[name].strip()]


def build_mix(n: int, seed: int, data: Path) -> list[str]:
    rng = random.Random(seed)
    ts = default_training_set()
    pools = [
        (0.40, [t for t, s in zip(ts.texts, ts.sources, strict=True) if s == "bitext"]),
        (0.25, _column(HERE / "classify_ru_test.csv", "text")),
        (0.15, _column(data / "banking77" / "test.csv", "text")),
        (0.10, _column(data / "encodechka_intents_ru" / "intents_train.csv", "text")),
    ]
    texts: list[str] = []
    for i in range(n):
        r = rng.random()
        if r >= 0.90:
            a, b = rng.choice(pools[0][1]), rng.choice(pools[1][1] + pools[0][1])
            texts.append(f"{a.rstrip('.!?')}, {'а ещё' if i % 2 else 'and also'} {b}")
            continue
        acc = 0.0
        for share, pool in pools:
            acc += share
            if r < acc:
                texts.append(rng.choice(pool))
                break
    return texts


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} msg/s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    args = ap.parse_args()
    model = default_model(Settings())
    fast = IntentModel(model._estimator, model.meta)  # the same model without its slow path
    texts = build_mix(args.messages, args.seed, args.data_dir)
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    now = datetime.now(UTC)
    msgs = [as_message(i, t, "other", now) for i, t in enumerate(texts)]  # language detected
    classifier = Classifier(model)
    fast_classifier = Classifier(fast)
    with threadpool_limits(limits=1):
        model.predict_batch(batches[0])  # warm-up: loads the encoder weights
        t0 = time.process_time()
        for b in batches:
            fast.predict_batch(b)
        t_fast = time.process_time() - t0
        slow = 0
        t0 = time.process_time()
        for b in batches:
            slow += sum(p.slow for p in model.predict_batch(b))
        t_cascade = time.process_time() - t0
        t0 = time.process_time()
        for i in range(0, len(msgs), args.batch):
            classifier.classify_batch(msgs[i : i + args.batch])
        t_stage = time.process_time() - t0
        t0 = time.process_time()
        for i in range(0, len(msgs), args.batch):
            fast_classifier.classify_batch(msgs[i : i + args.batch])
        t_stage_fast = time.process_time() - t0
    n = len(texts)
    sys.stdout.write(
        f"{n} messages (realistic mix) in batches of {args.batch}, 1 thread, "
        f"model {model.version}\n"
        f"fast model only (predict_batch):  {rate(n, t_fast)}\n"
        f"cascade (predict_batch):          {rate(n, t_cascade)}; slow path {slow / n:.3f} "
        f"of the texts\n"
        f"Classifier.classify_batch:        {rate(n, t_stage)} (split candidates + cascade + "
        f"entities, tags, priority)\n"
        f"Classifier.classify_batch, fast model only: {rate(n, t_stage_fast)}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
