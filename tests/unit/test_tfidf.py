"""FastTfidf / FastUnion (pipeline/domain/tfidf.py) give sklearn's TF-IDF matrices.

Compared on the shipped texts (training set, KB questions, sample messages) and hostile
inputs, with the classifier's own feature union and the KB's vectorizer configuration,
fitted on half of the texts so the other half brings unseen words and n-grams.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

from pipeline.classify.model import TrainParams, _features, default_training_set
from pipeline.config import DEFAULT_CONFIG_DIR
from pipeline.domain.text import fold
from pipeline.domain.tfidf import FastTfidf, FastUnion
from pipeline.route.kb import KbIndex

KB_DIR = DEFAULT_CONFIG_DIR / "kb"
SAMPLES = DEFAULT_CONFIG_DIR / "samples" / "messages.jsonl"

HOSTILE = [
    "",
    " ",
    "\t\n  \r\n",
    "a",
    "a b c я ы",
    "😀 🙂x 👍🏽👍🏽",
    "ΣΑΣ ΟΔΟΣ σοφός ΌΣΟΣ",  # final sigma: lower() looks at the neighbours
    "İstanbul ǅungla ß ẞ ﬁ",  # lower() changes the length
    "x" * 3000,
    "длинноесловобезпробелов" * 40,
    "a\u00a0b\u2003c\u3000d\u2028e\u2029f\u202fg\u200bh",  # unicode spaces (and a zero-width one)
    "\x1c\x1dq\x1e\x1fr\x85s\x0bt\x0cu",  # separators str.split() treats as white space
    "Привет,   мир!!!  hello   WORLD  \t 123 4,5",
    "日本語のテキスト مرحبا بالعالم שלום",
    "order order order order #12345 order",
]


def _corpus() -> list[str]:
    texts = list(default_training_set().texts)
    kb = KbIndex.from_dir(KB_DIR)
    texts += [q for art in kb.articles.values() for qs in art.questions.values() for q in qs]
    texts += [json.loads(line)["text"] for line in SAMPLES.read_text().splitlines() if line]
    return texts + HOSTILE


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


def assert_same(fast: sparse.csr_matrix, slow: sparse.csr_matrix) -> None:
    assert type(fast) is type(slow)
    assert fast.dtype == slow.dtype
    assert fast.shape == slow.shape
    fast.sort_indices()
    slow.sort_indices()
    np.testing.assert_array_equal(fast.indptr, slow.indptr)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    np.testing.assert_allclose(fast.data, slow.data, rtol=1e-6, atol=0)


def test_the_classifier_union_gives_sklearns_matrix(corpus: list[str]) -> None:
    union = _features(TrainParams()).fit(corpus[::2])
    fast = FastUnion(union)
    assert_same(fast.transform(corpus), union.transform(corpus))
    # the warm word cache gives the same again, batch by batch
    for i in range(0, len(corpus), 977):
        assert_same(fast.transform(corpus[i : i + 977]), union.transform(corpus[i : i + 977]))


def test_the_kb_vectorizer_gives_sklearns_matrix(corpus: list[str]) -> None:
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=1)
    vec.fit([fold(t) for t in corpus[1::2]])
    folded = [fold(t) for t in corpus]
    assert_same(FastTfidf(vec).transform(folded), vec.transform(folded))
    assert_same(FastTfidf(vec).transform(corpus), vec.transform(corpus))


@pytest.mark.parametrize(
    "options",
    [
        {"analyzer": "word"},
        {"analyzer": "word", "ngram_range": (1, 3), "min_df": 3, "smooth_idf": False},
        {"analyzer": "char_wb", "ngram_range": (1, 3), "norm": None, "use_idf": False},
        {"analyzer": "char_wb", "ngram_range": (3, 3), "norm": "l1", "token_pattern": None},
    ],
)
def test_other_options_and_a_tiny_cache(corpus: list[str], options: dict[str, object]) -> None:
    part = corpus[::7]
    vec = TfidfVectorizer(**options).fit(part[::2])
    fast = FastTfidf(vec, cache_size=50)  # cleared many times on the way
    for i in range(0, len(part), 500):
        assert_same(fast.transform(part[i : i + 500]), vec.transform(part[i : i + 500]))
    assert len(fast._cache) <= 50


def test_no_texts_and_blank_texts() -> None:
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).fit(["hello world", "привет"])
    fast = FastTfidf(vec)
    for texts in (["", " \n\t"], ["zzz qqq"], [""]):
        assert_same(fast.transform(texts), vec.transform(texts))
    with pytest.raises(ValueError, match="0 sample"):  # sklearn's normalize refuses 0 rows
        vec.transform([])
    assert fast.transform([]).shape == (0, len(vec.vocabulary_))


def test_splitting_on_str_whitespace_is_sklearns_normalization() -> None:
    # sklearn collapses r"\s\s+" before str.split(); FastTfidf only splits: the same words
    # because both treat exactly the same characters as white space.
    space = re.compile(r"\s")
    chars = (chr(c) for c in range(sys.maxunicode + 1))
    assert [c for c in chars if c.isspace() != bool(space.match(c))] == []


def test_unsupported_vectorizers_are_refused() -> None:
    texts = ["one two", "two three"]
    with pytest.raises(ValueError, match="fitted"):
        FastTfidf(TfidfVectorizer())
    for options in ({"analyzer": "char"}, {"lowercase": False}, {"stop_words": ["one"]}):
        with pytest.raises(ValueError, match="options"):
            FastTfidf(TfidfVectorizer(**options).fit(texts))
    weighted = FeatureUnion([("w", TfidfVectorizer())], transformer_weights={"w": 2.0})
    with pytest.raises(ValueError, match="weights"):
        FastUnion(weighted.fit(texts))
