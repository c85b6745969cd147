"""Head kinds by name: ``make_head("logistic")``, ``list_heads()``; :data:`DEFAULT_HEAD`, the settings the
documented results use (the real suite's head and ``neuros-cv segment train``'s defaults)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from .base import SegmentationHead
from .linear import IncrementalLinearHead, KNNHead, LogisticHead, RandomForestHead
from .mlp import MLPHead

__all__ = ["DEFAULT_HEAD", "HEADS", "HeadSettings", "head_class", "list_heads", "make_head"]


@dataclass(frozen=True)
class HeadSettings:
    """A head's kind, class weighting and patch label rule (see :class:`~.base.SegmentationHead`)."""

    kind: str = "logistic"
    class_weight: str | None = "balanced"
    label_rule: str = "argmax"


#: The best-measured settings documented in docs/segmentation.md: the real suite (``RealSuiteConfig``) and
#: ``neuros-cv segment train`` both take their defaults from here, so the CLI trains the head the tables used.
#: Class balancing matters on real EM: membrane Dice 0.35 balanced vs 0.23 unweighted (filterbank, held-out ssTEM).
DEFAULT_HEAD = HeadSettings()

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
    ``fit(maps, masks)`` with ``label_rule="majority", single_class="majority"``.
    """
    return head_class(kind)(seed=seed, class_weight=class_weight, **params)
