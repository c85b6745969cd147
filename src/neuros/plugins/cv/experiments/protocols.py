"""The report's protocol and a better one, side by side.

- ``protocol="report"``: the report's synthetic data (centred MRI lesion), patch labels by majority, an
  unweighted logistic head, patch-level accuracy/F1 — including its MRI artefact (F1 = 0, explained by
  :func:`..segmentation.explain_single_class`).
- ``protocol="better"``: randomised lesion/object placement (``datasets.synthetic`` ``protocol="random"``),
  class-balanced training, predictions upsampled to pixels and scored with pixel Dice (background excluded)
  and bootstrap confidence intervals over test images; a test set with a single class is an error, not a 0.

:func:`fit_on` / :func:`score_on` are the better protocol's steps; the real-data suite uses them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from ..backbones.base import Backbone
from ..datasets.synthetic import make_dataset
from ..heads import make_head
from ..labels import mask_targets
from ..metrics import score_images
from .pipeline import FeatureStore
from .segmentation import run_segmentation

__all__ = ["fit_and_score", "fit_on", "run_protocol_comparison", "score_on"]


def fit_on(
    backbone: Backbone,
    store: FeatureStore,
    train_key: str,
    train: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
    *,
    head: str = "logistic",
    class_weight: str | None = "balanced",
    label_rule: str = "argmax",
    seed: int = 0,
) -> Any:
    """A head of kind ``head`` fitted on ``train`` (images, masks); features come from ``store``.

    ``train_key`` names the image set in the feature cache (``FeatureStore``), so relabelled copies of a set
    (e.g. binary foreground for cross-modality transfer) reuse its features.
    """
    model = make_head(head, seed=seed, class_weight=class_weight, label_rule=label_rule)
    return model.fit(store.get(backbone, train_key, train[0]), list(train[1]))


def score_on(
    model: Any,
    backbone: Backbone,
    store: FeatureStore,
    test_key: str,
    test: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pixel Dice/IoU per class with bootstrap CIs over test images (``metrics.score_images``), plus the
    report's patch-level accuracy and macro F1 (foreground classes) on the same images."""
    k = len(class_names)
    te_maps = store.get(backbone, test_key, test[0])
    truth = [np.asarray(m).astype(np.int64) for m in test[1]]
    pred = model.predict(te_maps, level="pixel")
    scores = score_images(truth, [np.asarray(p) for p in pred], k, class_names, n_boot=n_boot, seed=seed)
    patch_pred = np.concatenate([p.ravel() for p in model.predict(te_maps, level="patch")])
    targets, _ = mask_targets(truth, [fm.image_shape for fm in te_maps], round(te_maps[0].stride),
                              model.label_rule, model.threshold, np.arange(k))
    patch_true = np.concatenate([t.ravel() for t in targets])
    return {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "head": model.kind,
        "class_weight": model.class_weight,
        "n_train_patches": int(model.n_train_patches_),
        "n_test_images": len(truth),
        **{k_: scores[k_] for k_ in ("classes", "f1", "f1_ci", "accuracy", "accuracy_ci")},
        "patch_accuracy": float((patch_pred == patch_true).mean()),
        "patch_f1": float(f1_score(patch_true, patch_pred, labels=list(range(1, k)), average="macro",
                                   zero_division=0.0)),
    }


def fit_and_score(
    backbone: Backbone,
    store: FeatureStore,
    train_key: str,
    train: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
    test_key: str,
    test: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    **head_kw: Any,
) -> dict[str, Any]:
    """:func:`fit_on` ``train`` then :func:`score_on` ``test`` (masks hold labels 0..K-1)."""
    model = fit_on(backbone, store, train_key, train, seed=seed, **head_kw)
    return score_on(model, backbone, store, test_key, test, class_names, n_boot=n_boot, seed=seed)


def run_protocol_comparison(
    backbone: Backbone,
    store: FeatureStore,
    modalities: Sequence[str] = ("em", "mri", "histology"),
    *,
    n_train: int = 10,
    n_test: int = 5,
    size: int = 128,
    seed: int = 0,
    n_boot: int = 1000,
) -> list[dict[str, Any]]:
    """One record per modality: the report protocol's patch accuracy/F1 (with its note) beside the better
    protocol's pixel Dice with a bootstrap CI."""
    data = {
        m: {s: make_dataset(m, n, size, seed=2 * seed + i, protocol="report")
            for i, (s, n) in enumerate((("train", n_train), ("test", n_test)))}
        for m in modalities
    }
    report = {r["modality"]: r for r in run_segmentation(backbone, data, store, list(modalities), head="logistic",
                                                         rule="majority", protocol="report", seed=seed)}
    out = []
    for m in modalities:
        tr = make_dataset(m, n_train, size, seed=2 * seed, protocol="random")
        te = make_dataset(m, n_test, size, seed=2 * seed + 1, protocol="random")
        better = fit_and_score(backbone, store, f"synthetic-random/{m}/train", (list(tr[0]), list(tr[1])),
                               f"synthetic-random/{m}/test", (list(te[0]), list(te[1])),
                               ("background", "foreground"), n_boot=n_boot, seed=seed)
        r = report[m]
        out.append({
            "modality": m,
            "backbone": backbone.name,
            "weights": backbone.weights,
            "report": {"accuracy": r["accuracy"], "f1": r["f1"], "head": r["head"], "note": r["note"],
                       "n_test_positive_patches": r["n_test_positive"]},
            "better": {"dice": better["classes"]["foreground"]["dice"],
                       "dice_ci": better["classes"]["foreground"]["dice_ci"],
                       "accuracy": better["accuracy"], "patch_f1": better["patch_f1"]},
        })
    return out
