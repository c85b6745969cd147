"""Patch classifiers on feature vectors: the report's logistic-regression head and its fallback."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["MajorityClassifier", "make_head"]


class MajorityClassifier:
    """Predicts the most frequent training class: the report's fallback when training has one class."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> MajorityClassifier:
        values, counts = np.unique(np.asarray(y), return_counts=True)
        self.classes_ = values
        self.majority_ = values[np.argmax(counts)]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.majority_)


def make_head(kind: str = "logistic", seed: int = 0, class_weight: str | None = None):
    """A fresh scikit-learn-style patch classifier.

    ``"logistic"``: standardised features + logistic regression (lbfgs, deterministic).
    """
    if kind == "logistic":
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=1000, random_state=seed, class_weight=class_weight),
        )
    raise ValueError(f"unknown head {kind!r}; available: logistic")
