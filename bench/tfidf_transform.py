"""TF-IDF transform alone: sklearn's vs pipeline/domain/tfidf.py's, same texts, same matrices.

    python bench/tfidf_transform.py [--n 3000] [--batch 256] [--reps 5]

The first ``--n`` texts of bench/pipeline_throughput.py (Bitext English utterances, or the
shipped samples without /work/shared/data) in batches, through the default model's feature
union (word stems 1-2 + char_wb 2-4) and the KB index's char_wb 2-5 vectorizer (on folded
texts, as ``KbIndex.features``). Process CPU per text, best of ``--reps`` passes; "cold" is
one pass with an empty word cache, "warm" the best of the passes after it (a worker's steady
state). Every fast matrix is checked equal to sklearn's on the way. Prints the distinct
words cached.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_throughput import texts as bench_texts  # the benchmark's own texts

from pipeline.classify.model import default_model
from pipeline.config import DEFAULT_CONFIG_DIR, Settings
from pipeline.domain.text import fold
from pipeline.domain.tfidf import FastTfidf, FastUnion
from pipeline.route.kb import KbIndex

Transform = Callable[[Sequence[str]], Any]


def cpu_per_text(transform: Transform, batches: list[list[str]], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        for batch in batches:
            transform(batch)
        best = min(best, time.process_time() - t0)
    return best / sum(len(b) for b in batches) * 1e6


def check(fast: Transform, slow: Transform, batches: list[list[str]]) -> None:
    for batch in batches:
        a, b = fast(batch), slow(batch)
        same = (a != b).nnz == 0 and np.array_equal(a.indices, b.indices)
        if not same:
            raise SystemExit("fast and sklearn matrices differ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    pool = bench_texts()[: args.n]
    union = default_model(Settings())._estimator.named_steps["features"]
    kb = KbIndex.from_dir(DEFAULT_CONFIG_DIR / "kb")
    cases: list[tuple[str, Any, Callable[[], FastTfidf | FastUnion], list[str]]] = [
        ("classifier union", union, lambda: FastUnion(union), pool),
        ("KB char_wb", kb._vec, lambda: FastTfidf(kb._vec), [fold(t) for t in pool]),
    ]
    with threadpool_limits(limits=1):
        for name, slow, make_fast, data in cases:
            batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]
            fast = make_fast()
            cold = cpu_per_text(fast.transform, batches, 1)
            warm = cpu_per_text(fast.transform, batches, args.reps)
            sk = cpu_per_text(slow.transform, batches, args.reps)
            check(fast.transform, slow.transform, batches)
            blocks = fast._blocks if isinstance(fast, FastUnion) else [fast]
            words = max(len(b._cache) for b in blocks)
            sys.stdout.write(
                f"{name}: sklearn {sk:.1f} us/text, fast {warm:.1f} warm / {cold:.1f} cold "
                f"({sk / warm:.1f}x warm), {words} words cached, {len(data)} texts, batches "
                f"of {args.batch}\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
