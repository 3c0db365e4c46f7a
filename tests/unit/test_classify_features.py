"""StemCache (pipeline/classify/features.py) gives stem_tokens' tokens, and the classifier's
fast features with it give sklearn's matrix."""

from __future__ import annotations

import pytest

from pipeline.classify.features import StemCache
from pipeline.classify.model import TrainParams, _features, default_training_set, stem_tokens
from pipeline.domain.tfidf import FastUnion

ODD = ["", " ", "a", "Я и в", "x" * 300, "мои заказы, моими заказами", "don't_stop 42nd ½ Ⅻ"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t.lower() for t in default_training_set().texts[::3]] + ODD


@pytest.mark.parametrize("size", [20_000, 50, 1])
def test_the_cache_gives_stem_tokens_tokens(texts: list[str], size: int) -> None:
    stems = StemCache(size)
    for _ in range(2):  # cold, then warm (or started over many times with a tiny cache)
        assert [stems(t) for t in texts] == [stem_tokens(t) for t in texts]
    if size > 1:  # (it holds at least the words of the text just read)
        assert len(stems._stems) <= size


def test_the_union_with_the_cache_gives_sklearns_matrix(texts: list[str]) -> None:
    union = _features(TrainParams()).fit(texts[::2])
    fast = FastUnion(union, tokenizers={stem_tokens: StemCache()})
    got, want = fast.transform(texts), union.transform(texts)
    assert (got != want).nnz == 0 and got.dtype == want.dtype
