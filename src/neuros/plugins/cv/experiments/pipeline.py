"""The one pipeline every experiment composes: features → patch table → head → scores.

Experiments never re-implement a stage; they call these functions with different data. Features are cached
per (backbone, dataset) by :class:`FeatureStore`, so the segmentation, cross-modality and registration
experiments of one suite extract each image once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..features import FeatureMap
from ..heads import MajorityClassifier, make_head
from ..labels import patch_labels
from ..metrics import accuracy, binary_f1

__all__ = [
    "FeatureStore",
    "PatchTable",
    "fit_head",
    "paint_patches",
    "patch_table",
    "pixel_dice",
    "predict_patches",
    "score_head",
]

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class PatchTable:
    """Patch features ``X`` (n, C) and labels ``y`` (n,) of a set of images."""

    X: np.ndarray
    y: np.ndarray

    @property
    def n_positive(self) -> int:
        return int((self.y > 0).sum())


def patch_table(maps: Sequence[FeatureMap], masks: Sequence[np.ndarray], rule: str = "majority") -> PatchTable:
    """Stack every image's patch features with its patch labels (``labels.patch_labels``)."""
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
    if len(maps) == 0:
        raise ValueError("empty training set: no images")
    xs, ys = [], []
    for fm, mask in zip(maps, masks, strict=True):
        if tuple(np.shape(mask)) != tuple(fm.image_shape):
            raise ValueError(f"mask shape {np.shape(mask)} does not match image shape {fm.image_shape}")
        lab = patch_labels(mask, round(fm.stride), rule=rule)
        if lab.shape != fm.grid_shape:
            raise ValueError(f"label grid {lab.shape} does not match feature grid {fm.grid_shape}")
        xs.append(fm.flat())
        ys.append(lab.ravel())
    return PatchTable(np.concatenate(xs), np.concatenate(ys))


def fit_head(train: PatchTable, kind: str = "logistic", seed: int = 0) -> tuple[Any, str]:
    """Fit a head; with a single class in training, fall back to the majority class (the report's rule).

    Returns the fitted model and the name of what was actually fitted (``kind`` or ``"majority"``).
    """
    if len(np.unique(train.y)) < 2:
        return MajorityClassifier().fit(train.X, train.y), "majority"
    return make_head(kind, seed=seed).fit(train.X, train.y), kind


def score_head(model: Any, test: PatchTable) -> dict[str, Any]:
    """Patch-level accuracy and F1 with the counts needed to judge them."""
    pred = model.predict(test.X)
    return {
        "accuracy": accuracy(test.y, pred),
        "f1": binary_f1(test.y, pred),
        "n_test_patches": int(test.y.size),
        "n_test_positive": test.n_positive,
        "n_predicted_positive": int((pred > 0).sum()),
    }


def predict_patches(model: Any, fm: FeatureMap) -> np.ndarray:
    """The head's label of every patch of one feature map: an (h, w) grid."""
    return np.asarray(model.predict(fm.flat())).reshape(fm.grid_shape)


def paint_patches(grid: np.ndarray, fm: FeatureMap) -> np.ndarray:
    """Each patch's label painted onto all of its pixels (nearest, no smoothing), cropped to the image.

    This is the pixel mask of exactly the patch predictions the patch-level scores count, as the report's
    overlay figure shows it and :func:`pixel_dice` scores it.
    """
    step = round(fm.stride)
    g = np.asarray(grid)
    return np.repeat(np.repeat(g, step, axis=0), step, axis=1)[: fm.image_shape[0], : fm.image_shape[1]]


def pixel_dice(model: Any, maps: Sequence[FeatureMap], masks: Sequence[np.ndarray]) -> float:
    """Dice (pixel F1, pooled over images) of the painted patch predictions against the pixel masks.

    Beside the patch-level F1 it says how much of the *pixel* foreground the same predictions cover: with the
    majority rule, objects smaller than half a patch have no positive patch at all, so a high patch F1 can
    sit beside a low pixel Dice.
    """
    pred = np.concatenate([paint_patches(predict_patches(model, fm) > 0, fm).ravel() for fm in maps])
    true = np.concatenate([(np.asarray(m) > 0).ravel() for m in masks])
    return binary_f1(true.astype(np.int64), pred.astype(np.int64))


def _backbone_key(backbone: Backbone) -> str:
    """The cache key of a backbone's features: its spec string (name, weights and options that change them)."""
    return str(backbone.spec)


class FeatureStore:
    """Extract features once per (backbone, dataset key) and hand out cached :class:`FeatureMap` lists.

    It also keeps the heads fitted on those features (:meth:`head`), so later steps (e.g. the report's example
    figures) reuse the suite's heads instead of fitting them again.
    """

    def __init__(self, progress: ProgressFn | None = None) -> None:
        self._cache: dict[tuple[str, str], list[FeatureMap]] = {}
        self._heads: dict[tuple[str, str, str, int], tuple[Any, str]] = {}
        self._progress = progress

    def head(self, backbone: Backbone, key: str, train: PatchTable, kind: str, seed: int) -> tuple[Any, str]:
        """:func:`fit_head` on ``train`` (the patch table of dataset ``key``), once per (backbone, key, kind, seed)."""
        k = (_backbone_key(backbone), key, kind, int(seed))
        if k not in self._heads:
            self._heads[k] = fit_head(train, kind, seed)
        return self._heads[k]

    def get(self, backbone: Backbone, key: str, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        k = (_backbone_key(backbone), key)
        if k not in self._cache:
            self._cache[k] = backbone.extract_batch(list(images))
            if self._progress is not None:
                self._progress(f"features {backbone.name} · {key}")
        return self._cache[k]
