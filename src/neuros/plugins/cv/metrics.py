"""Scores: the report's patch-level accuracy and F1, computed by scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

__all__ = ["accuracy", "binary_f1"]


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in size: {t.size} vs {p.size}")
    if t.size == 0:
        raise ValueError("cannot score an empty set")
    return t, p


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of equal labels."""
    t, p = _pair(y_true, y_pred)
    return float(accuracy_score(t, p))


def binary_f1(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> float:
    """F1 of the ``positive`` class; 0.0 when it appears in neither truth nor prediction (the report's value).

    Callers that report this number must flag the single-class case (see ``experiments.pipeline``).
    """
    t, p = _pair(y_true, y_pred)
    return float(f1_score(t, p, pos_label=positive, average="binary", zero_division=0.0))
