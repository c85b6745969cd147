"""Experiments 1 and 2: patch segmentation per modality (Table 1) and across modalities (Table 2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from .pipeline import FeatureStore, patch_truth, pixel_dice, score_head

__all__ = ["SegmentationData", "explain_single_class", "run_crossmodal", "run_segmentation", "same_modality"]

# modality -> {"train": (images, masks), "test": (images, masks)}
SegmentationData = Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]


def explain_single_class(
    train_modality: str, test_modality: str, train_labels: np.ndarray, test_labels: np.ndarray, protocol: str
) -> str | None:
    """A sentence explaining a meaningless F1 (a set with no positive patch), or None when F1 is meaningful.

    ``train_labels`` and ``test_labels`` are the sets' patch labels (:func:`~.pipeline.patch_truth`).
    """
    n_train, n_test = int((train_labels > 0).sum()), int((test_labels > 0).sum())
    parts = []
    if n_train == 0:
        parts.append(f"the {train_modality} training set has no positive patch (of {train_labels.size})")
    if n_test == 0:
        parts.append(f"the {test_modality} test set has no positive patch (of {test_labels.size})")
    if not parts:
        return None
    why = "; ".join(parts)
    if protocol == "report" and "mri" in (train_modality, test_modality) and (
        (train_modality == "mri" and n_train == 0) or (test_modality == "mri" and n_test == 0)
    ):
        why += (
            ": under protocol='report' the MRI lesion (radius ≤ 12 px) is centred on a patch corner, so no "
            "16×16 patch is majority-lesion and patch labels are all background"
        )
    return f"F1 = 0 is a labelling artefact, not a property of the features — {why}. " + (
        "Use protocol='random' (random lesion placement) for a meaningful score."
        if protocol == "report"
        else "Add images with foreground."
    )


def run_crossmodal(
    backbone: Backbone,
    data: SegmentationData,
    store: FeatureStore,
    train_modalities: Sequence[str],
    test_modalities: Sequence[str],
    *,
    head: str = "logistic",
    rule: str = "majority",
    protocol: str = "report",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train one head per training modality and score it on each test modality's test set.

    Returns one record per (train, test) pair with the patch-level accuracy and F1 (majority labels), counts,
    the pixel Dice of the same patch predictions painted onto pixels (:func:`~.pipeline.pixel_dice`), the head
    actually fitted (``"majority"`` when the training set has a single class) and, when F1 is meaningless, a
    ``note`` explaining why.
    """
    records = []
    for tr in train_modalities:
        model = store.head(backbone, f"{tr}/train", data[tr]["train"], head, rule, seed)
        train_labels = patch_truth(store.get(backbone, f"{tr}/train", data[tr]["train"][0]), data[tr]["train"][1],
                                   rule)
        for te in test_modalities:
            te_images, te_masks = data[te]["test"]
            te_maps = store.get(backbone, f"{te}/test", te_images)
            scores = score_head(model, te_maps, te_masks, rule)
            rec: dict[str, Any] = {
                "backbone": backbone.name,
                "weights": backbone.weights,
                "train": tr,
                "test": te,
                "head": model.fitted_kind,
                "label_rule": rule,
                "n_train_patches": int(train_labels.size),
                "n_train_positive": int((train_labels > 0).sum()),
                **scores,
                "pixel_dice": pixel_dice(model, te_maps, te_masks),
            }
            rec["note"] = explain_single_class(tr, te, train_labels, patch_truth(te_maps, te_masks, rule), protocol)
            records.append(rec)
    return records


def run_segmentation(
    backbone: Backbone,
    data: SegmentationData,
    store: FeatureStore,
    modalities: Sequence[str],
    **kw: Any,
) -> list[dict[str, Any]]:
    """Table 1: train and test on the same modality (the diagonal of the cross-modality grid)."""
    return same_modality([r for m in modalities for r in run_crossmodal(backbone, data, store, [m], [m], **kw)])


def same_modality(grid: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table 1 records from cross-modality records: the pairs with train == test, keyed by ``modality``."""
    return [
        {"modality": r["train"], **{k: v for k, v in r.items() if k not in ("train", "test")}}
        for r in grid
        if r["train"] == r["test"]
    ]
