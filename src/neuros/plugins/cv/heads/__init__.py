"""Segmentation heads: one estimator interface over feature maps, five kinds, save/load.

``make_head(kind)`` builds one (``logistic``, ``sgd``, ``knn``, ``rf``, ``mlp``); every head has
``fit(feature_maps, masks)``, ``predict_proba(maps, level="pixel" | "patch")``, ``predict(...)``,
``save(dir)``; :func:`load_head` reads one back. ``MajorityClassifier`` is the report's single-class fallback.
"""

from __future__ import annotations

import numpy as np

from .base import FORMAT, SegmentationHead
from .linear import IncrementalLinearHead, KNNHead, LogisticHead, RandomForestHead
from .mlp import MLPHead
from .registry import DEFAULT_HEAD, HEADS, HeadSettings, head_class, list_heads, load_head, make_head

__all__ = [
    "DEFAULT_HEAD",
    "FORMAT",
    "HEADS",
    "HeadSettings",
    "IncrementalLinearHead",
    "KNNHead",
    "LogisticHead",
    "MLPHead",
    "MajorityClassifier",
    "RandomForestHead",
    "SegmentationHead",
    "head_class",
    "list_heads",
    "load_head",
    "make_head",
]


class MajorityClassifier:
    """Predicts the most frequent training class: the report's fallback when training has one class."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> MajorityClassifier:
        values, counts = np.unique(np.asarray(y), return_counts=True)
        self.classes_ = values
        self.majority_ = values[np.argmax(counts)]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.majority_)
