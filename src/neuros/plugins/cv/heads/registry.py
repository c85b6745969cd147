"""Head kinds by name: ``make_head("logistic")``, ``list_heads()``."""

from __future__ import annotations

import difflib
from typing import Any

from .base import SegmentationHead
from .linear import IncrementalLinearHead, KNNHead, LogisticHead, RandomForestHead
from .mlp import MLPHead

__all__ = ["HEADS", "head_class", "list_heads", "make_head"]

HEADS: dict[str, type[SegmentationHead]] = {
    c.kind: c for c in (LogisticHead, IncrementalLinearHead, KNNHead, RandomForestHead, MLPHead)
}


def list_heads() -> list[str]:
    """Registered head kinds."""
    return list(HEADS)


def head_class(kind: str) -> type[SegmentationHead]:
    """The class registered as ``kind`` (one-line error with close matches otherwise)."""
    if kind not in HEADS:
        close = difflib.get_close_matches(str(kind), list(HEADS), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown head {kind!r}{hint} (available: {', '.join(HEADS)})")
    return HEADS[kind]


def make_head(kind: str = "logistic", seed: int = 0, class_weight: str | None = None, **params: Any):
    """A fresh head of ``kind`` (``logistic``, ``sgd``, ``knn``, ``rf``, ``mlp``).

    The head fits feature maps + pixel masks; ``experiments.pipeline`` (the report's protocol) calls the same
    object with a patch matrix, ``fit(X, y)`` / ``predict(X)`` (see :meth:`SegmentationHead.fit_patches`).
    """
    return head_class(kind)(seed=seed, class_weight=class_weight, **params)
