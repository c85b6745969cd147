"""Segmentation heads: one estimator interface over feature maps, five kinds, save/load.

``make_head(kind)`` builds one (``logistic``, ``sgd``, ``knn``, ``rf``, ``mlp``); every head has
``fit(feature_maps, masks)``, ``predict_proba(maps, level="pixel" | "patch")``, ``predict(...)``,
``save(dir)``; :func:`load_head` reads one back. :func:`fit_tuned` fits a head with per-class decision offsets
chosen on held-out images (``heads.decision``); :class:`CrossFitHead` averages copies of a head fitted without
one fold of the images each, with offsets tuned out of fold (``heads.crossfit``). ``single_class="majority"`` is
the report's single-class fallback (a head that predicts the one training class).
"""

from __future__ import annotations

from .base import FORMAT, SegmentationHead
from .crossfit import CrossFitHead
from .decision import fit_tuned, tune_offsets
from .linear import GradientBoostingHead, IncrementalLinearHead, KNNHead, LogisticHead, RandomForestHead
from .mlp import MLPHead
from .registry import (
    DEFAULT_HEAD,
    DEFAULT_PIXEL_HEAD,
    HEADS,
    HeadSettings,
    head_class,
    list_heads,
    load_head,
    make_head,
)

__all__ = [
    "DEFAULT_HEAD",
    "DEFAULT_PIXEL_HEAD",
    "FORMAT",
    "HEADS",
    "CrossFitHead",
    "GradientBoostingHead",
    "HeadSettings",
    "IncrementalLinearHead",
    "KNNHead",
    "LogisticHead",
    "MLPHead",
    "RandomForestHead",
    "SegmentationHead",
    "fit_tuned",
    "head_class",
    "list_heads",
    "load_head",
    "make_head",
    "tune_offsets",
]

