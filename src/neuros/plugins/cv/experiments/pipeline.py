"""The one pipeline every experiment composes: features → head (the users' ``head.fit(maps, masks)``) → scores.

Experiments never re-implement a stage; they call these functions with different data. The report's protocol
is a head option set — ``label_rule`` (``"majority"``) and ``single_class="majority"`` (a training set with
one class gives a head that predicts it) — so its numbers come from the same code path as ``segment train``.
Features are cached per (backbone, dataset) by :class:`FeatureStore`, so the segmentation, cross-modality and
registration experiments of one suite extract each image once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..features import FeatureMap
from ..heads import SegmentationHead, make_head
from ..labels import patch_labels
from ..metrics import accuracy, binary_f1

__all__ = ["FeatureStore", "fit_head", "patch_truth", "pixel_dice", "score_head"]

ProgressFn = Callable[[str], None]


def fit_head(maps: Sequence[FeatureMap], masks: Sequence[np.ndarray], kind: str = "logistic",
             rule: str = "majority", seed: int = 0) -> SegmentationHead:
    """A head of ``kind`` fitted the report's way: ``label_rule=rule`` and ``single_class="majority"``.

    With a single class among the training patches the head predicts that class everywhere; its
    ``fitted_kind`` then says ``"majority"`` (what the tables print) instead of ``kind``.
    """
    return make_head(kind, seed=seed, label_rule=rule, single_class="majority").fit(list(maps), list(masks))


def patch_truth(maps: Sequence[FeatureMap], masks: Sequence[np.ndarray], rule: str = "majority") -> np.ndarray:
    """Every image's patch labels (label values, ``labels.patch_labels``), concatenated in grid order."""
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
    out = []
    for fm, mask in zip(maps, masks, strict=True):
        if tuple(np.shape(mask)) != tuple(fm.image_shape):
            raise ValueError(f"mask shape {np.shape(mask)} does not match image shape {fm.image_shape}")
        out.append(patch_labels(mask, round(fm.stride), rule=rule).ravel())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def score_head(head: SegmentationHead, maps: Sequence[FeatureMap], masks: Sequence[np.ndarray],
               rule: str = "majority") -> dict[str, Any]:
    """Patch-level accuracy and F1 of ``head`` on (maps, masks) with the counts needed to judge them."""
    truth = patch_truth(maps, masks, rule)
    pred = np.concatenate([p.ravel() for p in head.predict(list(maps), level="patch")])
    return {
        "accuracy": accuracy(truth, pred),
        "f1": binary_f1(truth, pred),
        "n_test_patches": int(truth.size),
        "n_test_positive": int((truth > 0).sum()),
        "n_predicted_positive": int((pred > 0).sum()),
    }


def pixel_dice(head: SegmentationHead, maps: Sequence[FeatureMap], masks: Sequence[np.ndarray]) -> float:
    """Dice (pixel F1, pooled over images) of the patch predictions painted onto pixels against the pixel masks.

    The pixel masks are ``head.predict(maps, level="pixel", interpolation="nearest")``: each patch's label on
    all its pixels, exactly the predictions the patch-level scores count. Beside the patch-level F1 it says
    how much of the *pixel* foreground they cover: with the majority rule, objects smaller than half a patch
    have no positive patch at all, so a high patch F1 can sit beside a low pixel Dice.
    """
    pred = np.concatenate([(p > 0).ravel() for p in head.predict(list(maps), level="pixel", interpolation="nearest")])
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
        self._heads: dict[tuple[str, str, str, str, int], SegmentationHead] = {}
        self._progress = progress

    def head(self, backbone: Backbone, key: str, data: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
             kind: str, rule: str, seed: int) -> SegmentationHead:
        """:func:`fit_head` on ``data`` (images, masks) of dataset ``key``, once per (backbone, key, kind, rule, seed).

        The features come from :meth:`get` (the same cache entry ``key``).
        """
        k = (_backbone_key(backbone), key, kind, rule, int(seed))
        if k not in self._heads:
            images, masks = data
            self._heads[k] = fit_head(self.get(backbone, key, images), masks, kind, rule, seed)
        return self._heads[k]

    def get(self, backbone: Backbone, key: str, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        k = (_backbone_key(backbone), key)
        if k not in self._cache:
            self._cache[k] = backbone.extract_batch(list(images))
            if self._progress is not None:
                self._progress(f"features {backbone.name} · {key}")
        return self._cache[k]
