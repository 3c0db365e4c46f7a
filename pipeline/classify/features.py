"""The intent model with its TF-IDF features computed by ``FastUnion`` (the same matrix).

This lives outside ``model.py`` on purpose: ``default_model_key`` hashes ``model.py``'s
bytes, so an edit there would retrain the default model. The fitted vectorizers are not
touched; only the object that calls their ``transform`` is replaced, in a copy of the
model (the loaded model keeps sklearn's ``FeatureUnion`` and saves as before).
"""

from __future__ import annotations

import copy

from sklearn.pipeline import FeatureUnion, Pipeline

from pipeline.classify.model import IntentModel
from pipeline.domain.tfidf import FastUnion


def with_fast_features(model: IntentModel) -> IntentModel:
    """A copy of ``model`` whose ``features`` step is ``FastUnion`` over the same fitted
    vectorizers; a model without such a step (or already fast) is returned as it is."""
    # private on purpose: the one place outside model.py that reaches in (see above)
    estimator = model._estimator
    union = estimator.named_steps.get("features")
    if not isinstance(union, FeatureUnion):
        return model
    fast = copy.copy(model)
    steps = [(name, FastUnion(union) if step is union else step) for name, step in estimator.steps]
    fast._estimator = Pipeline(steps)
    return fast
