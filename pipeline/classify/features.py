"""The intent model with its TF-IDF features computed by ``FastUnion`` (the same matrix).

This lives outside ``model.py`` on purpose: ``default_model_key`` hashes ``model.py``'s
bytes, so an edit there would retrain the default model. The fitted vectorizers are not
touched; only the object that calls their ``transform`` is replaced, in a copy of the
model (the loaded model keeps sklearn's ``FeatureUnion`` and saves as before).
"""

from __future__ import annotations

import copy
import re

from sklearn.pipeline import FeatureUnion, Pipeline

from pipeline.classify.model import IntentModel, stem_tokens
from pipeline.domain.tfidf import WORD_CACHE_SIZE, FastUnion

#: The words ``stem_tokens`` stems (its own pattern).
_WORD = re.compile(r"\w+")


class StemCache:
    """``stem_tokens`` with the stem of every word seen remembered: the same tokens without
    the two Snowball calls per text (about half the word block's cost). At most ``size``
    words, then it starts over."""

    def __init__(self, size: int = WORD_CACHE_SIZE) -> None:
        self._stems: dict[str, str] = {}
        self._size = size

    def __call__(self, text: str) -> list[str]:
        words = _WORD.findall(text)
        stems = self._stems
        try:
            return list(map(stems.__getitem__, words))
        except KeyError:  # a word not seen yet: stem the text's new words in one call
            new = [w for w in dict.fromkeys(words) if w not in stems]
            if len(stems) + len(new) > self._size:
                stems.clear()
                new = list(dict.fromkeys(words))
            # each word is stemmed on its own, so stemming them apart gives the same stems
            stems.update(zip(new, stem_tokens(" ".join(new)), strict=True))
            return list(map(stems.__getitem__, words))


def with_fast_features(model: IntentModel) -> IntentModel:
    """A copy of ``model`` whose ``features`` step is ``FastUnion`` over the same fitted
    vectorizers; a model without such a step (or already fast) is returned as it is."""
    # private on purpose: the one place outside model.py that reaches in (see above)
    estimator = model._estimator
    union = estimator.named_steps.get("features")
    if not isinstance(union, FeatureUnion):
        return model
    fast = copy.copy(model)
    features = FastUnion(union, tokenizers={stem_tokens: StemCache()})
    steps = [(name, features if step is union else step) for name, step in estimator.steps]
    fast._estimator = Pipeline(steps)
    return fast
