"""``TfidfVectorizer.transform`` of a fitted vectorizer, the same matrix, computed faster.

The classifier's features (word + char_wb TF-IDF in a ``FeatureUnion``) and the KB's
similarity index (char_wb TF-IDF) vectorize every message. scikit-learn builds every
n-gram string of every text, counts them in a dict per text and goes through a generic
``FeatureUnion`` (joblib) machinery; about a tenth of the worker's CPU. Here:

* char_wb n-grams never cross a word (sklearn pads each whitespace-separated word with one
  space and slices it), so a word's vocabulary indices depend on the word alone: they are
  computed once per distinct word and kept in a bounded cache (customers reuse words);
* word n-grams: the vectorizer's own tokenizer (``build_tokenizer``) or a faster one giving
  the same tokens (the classifier's stems, remembered per word: pipeline/classify/features.py),
  its n-grams joined and looked up without a Python loop per n-gram;
* the counts of a whole batch: a CSR matrix of ones whose repeats scipy sums; sublinear TF,
  IDF and L2 normalization are sklearn's own steps in the same order and dtype (the
  normalization is the Cython routine ``normalize`` runs, without its ~0.2 ms of argument
  validation per call), so the values are the same bits (tests/unit/test_tfidf.py compares
  both on the shipped texts). Unlike sklearn, no texts give an empty matrix, not an error.

Only the configurations used here are accepted (content input, no stop words, no custom
preprocessor, lowercase, no accent stripping, not binary, norm l1/l2/None); anything else
is refused when wrapping, so a refitted vectorizer with other options cannot silently
diverge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion
from sklearn.utils.sparsefuncs_fast import (
    inplace_csr_row_normalize_l1,
    inplace_csr_row_normalize_l2,
)

#: Distinct words kept with their char_wb indices before the cache starts over: ~20 k words
#: of a few hundred bytes each bound it to a few MB in a long-running worker.
WORD_CACHE_SIZE = 20_000
#: The column of an n-gram out of the vocabulary, until _counts drops it.
MISSING = -1


#: A word vectorizer's tokenizer: lower-cased text → tokens.
Tokenizer = Callable[[str], list[str]]


class FastTfidf:
    """``transform`` of a fitted ``TfidfVectorizer`` (analyzer ``char_wb`` or ``word``).
    ``tokenize``: a faster tokenizer that the caller knows gives the vectorizer's own tokens."""

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        cache_size: int = WORD_CACHE_SIZE,
        tokenize: Tokenizer | None = None,
    ) -> None:
        _check_supported(vectorizer)
        self.vectorizer = vectorizer
        self._vocabulary: dict[str, int] = vectorizer.vocabulary_
        self._n_features = len(self._vocabulary)
        self._min_n, self._max_n = vectorizer.ngram_range
        self._char_wb = vectorizer.analyzer == "char_wb"
        # a char_wb vectorizer may have token_pattern=None: its tokenizer is never built
        self._tokenize: Tokenizer = (
            str.split if self._char_wb else tokenize or vectorizer.build_tokenizer()
        )
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_size = cache_size

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """The TF-IDF matrix of ``texts``, equal to ``vectorizer.transform(texts)``."""
        columns: list[int] = []
        lengths: list[int] = []
        for text in texts:
            before = len(columns)
            if self._char_wb:
                self._add_char_wb(text, columns)
            else:
                self._add_words(text, columns)
            lengths.append(len(columns) - before)
        return self._tfidf(self._counts(columns, lengths))

    def _add_char_wb(self, text: str, columns: list[int]) -> None:
        # sklearn collapses runs of white space (re ``\s\s+``) before ``str.split()``; both
        # use the same white space (str.isspace), so splitting alone gives the same words.
        # The whole text is lower-cased first, as sklearn's preprocessor does.
        cache = self._cache
        for word in text.lower().split():
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= self._cache_size:
                    cache.clear()
                ids = cache[word] = self._word_ids(word)
            columns.extend(ids)

    def _add_words(self, text: str, columns: list[int]) -> None:
        # sklearn's word analyzer (``_word_ngrams``) over the vectorizer's own tokenizer, the
        # n-grams joined and looked up by map/zip (no Python loop per n-gram); an n-gram out
        # of the vocabulary is MISSING here and dropped in _counts
        tokens = self._tokenize(text.lower())
        get = self._vocabulary.get
        for n in range(self._min_n, self._max_n + 1):
            # the n shifted copies are of unequal lengths: zip stops at the last full n-gram
            shifted = (tokens[i:] for i in range(n))
            grams = tokens if n == 1 else map(" ".join, zip(*shifted, strict=False))
            columns.extend(map(get, grams, repeat(MISSING)))

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Vocabulary indices of a word's char_wb n-grams (``_char_wb_ngrams`` for one word)."""
        padded = f" {word} "
        size = len(padded)
        get = self._vocabulary.get
        ids: list[int] = []
        for n in range(self._min_n, self._max_n + 1):
            # a padded word shorter than n yields itself once, and no longer n-grams
            for start in range(max(1, size - n + 1)):
                i = get(padded[start : start + n])
                if i is not None:
                    ids.append(i)
            if size <= n:
                break
        return tuple(ids)

    def _counts(self, columns: list[int], lengths: list[int]) -> sparse.csr_matrix:
        """CSR term counts (sorted column indices, the vectorizer's dtype): a one for every
        n-gram, the repeats within a row summed by scipy (a sort per row, in C)."""
        n_rows = len(lengths)
        cols = np.asarray(columns, dtype=np.int32)
        known = cols != MISSING
        rows = np.repeat(np.arange(n_rows, dtype=np.int32), lengths)[known]
        indptr = np.zeros(n_rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        ones = np.ones(len(rows), dtype=self.vectorizer.dtype)
        x = sparse.csr_matrix((ones, cols[known], indptr), shape=(n_rows, self._n_features))
        x.sum_duplicates()
        return x

    def _tfidf(self, x: sparse.csr_matrix) -> sparse.csr_matrix:
        """TfidfTransformer.transform's steps, in its order and dtype."""
        if self.vectorizer.sublinear_tf:
            np.log(x.data, x.data)
            x.data += 1.0
        if self.vectorizer.use_idf:
            x.data *= self.vectorizer.idf_[x.indices]
        # what sklearn's normalize runs on a CSR matrix, without its per-call argument
        # validation (~0.2 ms: most of a one-text call)
        if self.vectorizer.norm == "l2":
            inplace_csr_row_normalize_l2(x)
        elif self.vectorizer.norm == "l1":
            inplace_csr_row_normalize_l1(x)
        return x


class FastUnion:
    """``transform`` of a fitted ``FeatureUnion`` of TF-IDF vectorizers, blocks side by side
    in the union's order (as ``FeatureUnion._hstack``). ``transformer_list`` is the union's.
    ``tokenizers``: a vectorizer's tokenizer → a faster one giving the same tokens."""

    def __init__(
        self,
        union: FeatureUnion,
        cache_size: int = WORD_CACHE_SIZE,
        tokenizers: Mapping[Tokenizer, Tokenizer] | None = None,
    ) -> None:
        if union.transformer_weights:
            raise ValueError("FastUnion: transformer_weights are not supported")
        self.transformer_list: list[tuple[str, Any]] = union.transformer_list
        faster: Mapping[Any, Tokenizer] = tokenizers or {}
        self._blocks = [
            FastTfidf(t, cache_size, faster.get(getattr(t, "tokenizer", None)))
            for _, t in union.transformer_list
        ]

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        blocks = [block.transform(texts) for block in self._blocks]
        out: sparse.csr_matrix = sparse.hstack(blocks).tocsr()
        return out


def _check_supported(vec: Any) -> None:
    if not isinstance(vec, TfidfVectorizer) or not hasattr(vec, "vocabulary_"):
        raise ValueError(f"FastTfidf needs a fitted TfidfVectorizer, not {type(vec).__name__}")
    plain = (
        vec.input == "content"
        and vec.preprocessor is None
        and vec.strip_accents is None
        and vec.lowercase
        and vec.stop_words is None
        and not vec.binary
        and vec.analyzer in ("char_wb", "word")
        and vec.norm in ("l1", "l2", None)
    )
    if not plain:
        raise ValueError(f"FastTfidf does not support this vectorizer's options: {vec!r}")
