"""Paraphrase families and splits that keep each family on one side.

Templated corpora (Bitext) hold many near-identical rewordings of one sentence; a random row
split puts siblings on both sides and measures memory, not generalisation. A *family* is a set
of same-label texts whose word uni+bigram sets are near each other (MinHash LSH, Jaccard about
``threshold``). Grouping is leader-based, not transitive: a text joins the family of the first
earlier text it is near, else it leads a new one, so a chain of small rewordings cannot merge
a whole label into one family.

``family_split`` then holds out whole families per label until the label's held-out share
reaches ``test_size``: every label is represented on both sides when it has at least two
families, and no family is on both sides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt
from datasketch import MinHash, MinHashLSH

from pipeline.classify.dedup import normalize_text

NUM_PERM = 64
#: 16 bands of 4 rows over 64 permutations: the LSH's S-curve crosses 0.5 at Jaccard ≈ 0.5.
_BANDS = (16, 4)

IntArray = npt.NDArray[np.int64]


def _word_grams(text: str) -> list[bytes]:
    words = normalize_text(text).split()
    grams = set(words) | {f"{a} {b}" for a, b in pairwise(words)}
    return [g.encode("utf-8") for g in sorted(grams)] or [b""]


def paraphrase_families(texts: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Family id per text (the index of the family's first text); families never mix labels."""
    perm = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32").permutations
    index: dict[str, MinHashLSH] = {}
    exact: dict[tuple[str, str], int] = {}
    family: list[int] = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        key = (label, normalize_text(text))
        if key in exact:
            family.append(exact[key])
            continue
        mh = MinHash(num_perm=NUM_PERM, permutations=perm, scheme="affine32")
        mh.update_batch(_word_grams(text))
        lsh = index.get(label)
        if lsh is None:
            lsh = index[label] = MinHashLSH(num_perm=NUM_PERM, params=_BANDS)
        hits = lsh.query(mh)
        if hits:
            family.append(family[min(hits)])
        else:
            family.append(i)
            lsh.insert(i, mh)
        exact[key] = family[-1]
    return family


def family_split(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    test_size: float,
    seed: int = 0,
    families: Sequence[int] | None = None,
) -> tuple[IntArray, IntArray]:
    """(train, test) row indices; whole families go to test per label, in a seeded random
    order, while the label's test share stays within ``test_size`` (the first family may take it
    to twice that). A label with a single family stays in training."""
    fam = list(families) if families is not None else paraphrase_families(texts, labels)
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(fam):
        members[f].append(i)
    by_label: dict[str, list[int]] = defaultdict(list)
    for f in members:
        by_label[labels[f]].append(f)
    test: list[int] = []
    for label in sorted(by_label):
        fams = by_label[label]
        if len(fams) < 2:
            continue
        total = sum(len(members[f]) for f in fams)
        target = test_size * total
        taken = 0
        for k in rng.permutation(len(fams)):
            size = len(members[fams[k]])
            if taken + size <= target or (taken == 0 and size <= 2 * target):
                test.extend(members[fams[k]])
                taken += size
            if taken >= target:
                break
    test_idx = np.array(sorted(test), dtype=np.int64)
    mask = np.ones(len(fam), dtype=bool)
    mask[test_idx] = False
    return np.nonzero(mask)[0].astype(np.int64), test_idx
