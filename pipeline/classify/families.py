"""Paraphrase families and splits that keep each family on one side.

Templated corpora (Bitext) hold many near-identical rewordings of one sentence; a random row
split puts siblings on both sides and measures memory, not generalisation. A *family* is a
connected component of the "near-duplicate" graph: two texts of the same label are linked when
the estimated Jaccard similarity of their word uni+bigram sets (MinHash, 64 permutations;
candidate pairs from an LSH index of 16 bands × 4 rows) is at least ``similarity`` (0.6). The
closure is transitive on purpose: a chain of small rewordings is one family, so no held-out
text has a near-duplicate in training. Measured on Bitext (bench notes of issue 10): with
this split no held-out row has a training row of its label at Jaccard ≥ 0.6, where a
leader-based grouping at 0.5 left 82 % of them one.

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
#: Texts at least this similar (estimated Jaccard of word uni+bigrams) are one family.
SIMILARITY = 0.6
#: 16 bands of 4 rows over 64 permutations: a pair at Jaccard 0.6 is a candidate with
#: probability 0.89, at 0.7 with 0.99 (candidates are then checked against SIMILARITY).
_BANDS = (16, 4)

IntArray = npt.NDArray[np.int64]


def _word_grams(text: str) -> list[bytes]:
    words = normalize_text(text).split()
    grams = set(words) | {f"{a} {b}" for a, b in pairwise(words)}
    return [g.encode("utf-8") for g in sorted(grams)] or [b""]


def paraphrase_families(
    texts: Sequence[str], labels: Sequence[str], *, similarity: float = SIMILARITY
) -> list[int]:
    """Family id per text (the smallest index in its family); families never mix labels."""
    perm = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32").permutations
    index: dict[str, MinHashLSH] = {}
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    signatures: list[MinHash] = []
    seen: dict[tuple[str, str], int] = {}
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        mh = MinHash(num_perm=NUM_PERM, permutations=perm, scheme="affine32")
        mh.update_batch(_word_grams(text))
        signatures.append(mh)
        key = (label, normalize_text(text))
        if key in seen:  # the same text again: no need to index it twice
            parent[root(i)] = root(seen[key])
            continue
        seen[key] = i
        lsh = index.get(label)
        if lsh is None:
            lsh = index[label] = MinHashLSH(num_perm=NUM_PERM, params=_BANDS)
        for j in lsh.query(mh):
            if mh.jaccard(signatures[j]) >= similarity:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        lsh.insert(i, mh)
    return [root(i) for i in range(len(texts))]


def _family_groups(
    labels: Sequence[str], families: Sequence[int], strata: Sequence[str] | None
) -> tuple[dict[int, list[int]], dict[tuple[str, str], list[int]]]:
    """Rows of each family, and the families of each (label, stratum) group."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(families):
        members[f].append(i)
    by_group: dict[tuple[str, str], list[int]] = defaultdict(list)
    for f in members:  # a family is one label; its first row's stratum stands for it
        by_group[(labels[f], strata[f] if strata is not None else "")].append(f)
    return members, by_group


def family_split(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    test_size: float,
    seed: int = 0,
    families: Sequence[int] | None = None,
    strata: Sequence[str] | None = None,
) -> tuple[IntArray, IntArray]:
    """(train, test) row indices; whole families go to test per label (and per stratum, e.g.
    language, when given), in a seeded random order, while the group's test share stays within
    ``test_size`` (the first family may take it to twice that). A group with a single family
    stays in training. Without strata, a label whose English rows are one big family would
    send all of its few Russian rows to the test side."""
    fam = list(families) if families is not None else paraphrase_families(texts, labels)
    rng = np.random.default_rng(seed)
    members, by_group = _family_groups(labels, fam, strata)
    test: list[int] = []
    for group in sorted(by_group):
        fams = by_group[group]
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


def family_folds(
    labels: Sequence[str],
    families: Sequence[int],
    *,
    folds: int,
    seed: int = 0,
    strata: Sequence[str] | None = None,
) -> list[IntArray]:
    """Held-out row indices of ``folds`` disjoint folds (cross-validation by family): per label
    (and stratum), the families in a seeded random order each go to the fold holding the fewest
    of that group's rows so far. A group with a single family is in no fold (it stays in
    training, as in ``family_split``)."""
    rng = np.random.default_rng(seed)
    members, by_group = _family_groups(labels, families, strata)
    out: list[list[int]] = [[] for _ in range(folds)]
    for group in sorted(by_group):
        fams = by_group[group]
        if len(fams) < 2:
            continue
        sizes = [0] * folds
        for k in rng.permutation(len(fams)):
            fold = sizes.index(min(sizes))
            out[fold].extend(members[fams[k]])
            sizes[fold] += len(members[fams[k]])
    return [np.array(sorted(rows), dtype=np.int64) for rows in out]
