"""Scores: the report's patch-level accuracy and F1, and pixel-level Dice / IoU / F1 / accuracy per image and
aggregated, with bootstrap confidence intervals over images.

Pixel scores come from confusion matrices (``np.bincount``), so per-image and pooled scores and every
bootstrap replicate are sums of the same (n_images, K, K) counts — no Python loop over pixels or replicates.
Dice and F1 leave the background class (0) out of their means; a class that appears in neither the truth nor
the prediction of an image has no Dice for that image (NaN, skipped by the mean).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

__all__ = [
    "accuracy",
    "binary_f1",
    "bootstrap_ci",
    "confusion",
    "dice_iou",
    "pixel_scores",
    "require_two_classes",
    "score_images",
]


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


def require_two_classes(y_true: np.ndarray, what: str = "test set") -> None:
    """Raise when ``y_true`` holds a single class: Dice/F1 of the absent class would be meaningless."""
    values = np.unique(np.asarray(y_true))
    if values.size < 2:
        raise ValueError(
            f"the {what} holds a single class ({values.tolist()}); a Dice/F1 score would be meaningless — "
            "add images that contain the other classes"
        )


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) confusion counts, rows = truth, columns = prediction; labels must be 0..K-1."""
    t, p = _pair(y_true, y_pred)
    t, p = t.astype(np.int64), p.astype(np.int64)
    if t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def dice_iou(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class Dice, IoU and accuracy from confusion counts (…, K, K); NaN Dice/IoU for an absent class."""
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    fp = c.sum(axis=-2) - tp
    fn = c.sum(axis=-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        acc = tp.sum(axis=-1) / c.sum(axis=(-2, -1))
    return dice, iou, acc


def pixel_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Dice, IoU per class, F1 (mean Dice over foreground classes) and accuracy of one label map."""
    dice, iou, acc = dice_iou(confusion(y_true, y_pred, n_classes))
    return {
        "dice": dice.tolist(),
        "iou": iou.tolist(),
        "f1": float(np.nanmean(dice[1:])) if np.isfinite(dice[1:]).any() else float("nan"),
        "accuracy": float(acc),
    }


def bootstrap_ci(
    confusions: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, np.ndarray]:
    """Percentile bootstrap CIs over images for pooled per-class Dice, IoU, F1 and accuracy.

    Each replicate resamples images with replacement and pools their confusion counts (one matrix product for
    all replicates). Returns ``{"dice": (K, 2), "iou": (K, 2), "f1": (2,), "accuracy": (2,)}``.
    """
    conf = np.asarray(confusions, dtype=np.float64)
    n, k = conf.shape[0], conf.shape[1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    counts = np.zeros((int(n_boot), n))
    np.add.at(counts, (np.arange(int(n_boot))[:, None], idx), 1.0)
    pooled = (counts @ conf.reshape(n, k * k)).reshape(-1, k, k)
    dice, iou, acc = dice_iou(pooled)
    with warnings.catch_warnings():  # all-NaN columns (a class absent from a replicate) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        f1 = np.nanmean(dice[:, 1:], axis=1)
        q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
        return {
            "dice": np.nanpercentile(dice, q, axis=0).T,
            "iou": np.nanpercentile(iou, q, axis=0).T,
            "f1": np.nanpercentile(f1, q),
            "accuracy": np.percentile(acc, q),
        }


def score_images(
    y_true: Sequence[np.ndarray],
    y_pred: Sequence[np.ndarray],
    n_classes: int,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    require_classes: bool = True,
) -> dict[str, Any]:
    """Pixel scores per image and pooled over images, with bootstrap 95 % CIs over images.

    Parameters
    ----------
    y_true, y_pred : sequences of (H, W) int arrays
        Label maps with values 0..K-1 (0 = background); shapes must match pairwise.
    n_classes : int
        K.
    class_names : sequence of str, optional
        Names for the K classes (default ``"class0"``…).
    require_classes : bool
        Raise when a foreground class never occurs in the truth (its Dice would be meaningless).

    Returns
    -------
    dict
        ``per_image`` (list of :func:`pixel_scores`), ``classes`` (per foreground class: dice, dice_ci, iou,
        iou_ci, n_pixels), ``f1`` / ``f1_ci`` (mean foreground Dice), ``accuracy`` / ``accuracy_ci``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} truth maps but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of images")
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        if np.shape(t) != np.shape(p):
            raise ValueError(f"image {i}: truth shape {np.shape(t)} differs from prediction shape {np.shape(p)}")
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(n_classes)]
    confs = np.stack([confusion(t, p, n_classes) for t, p in zip(y_true, y_pred, strict=True)])
    support = confs.sum(axis=(0, 2))
    if require_classes:
        absent = [names[c] for c in range(1, n_classes) if support[c] == 0]
        if support[0] == confs.sum() or absent:
            raise ValueError(
                f"the test set has no pixel of class(es) {absent or names[1:]}; a Dice/F1 score would be "
                "meaningless — add test images that contain them"
            )
    dice, iou, acc = dice_iou(confs.sum(axis=0))
    ci = bootstrap_ci(confs, n_boot=n_boot, seed=seed)
    return {
        "n_images": len(y_true),
        "per_image": [pixel_scores(t, p, n_classes) for t, p in zip(y_true, y_pred, strict=True)],
        "classes": {
            names[c]: {
                "dice": float(dice[c]),
                "dice_ci": [float(v) for v in ci["dice"][c]],
                "iou": float(iou[c]),
                "iou_ci": [float(v) for v in ci["iou"][c]],
                "n_pixels": int(support[c]),
            }
            for c in range(1, n_classes)
        },
        "f1": float(np.nanmean(dice[1:])),
        "f1_ci": [float(v) for v in ci["f1"]],
        "accuracy": float(acc),
        "accuracy_ci": [float(v) for v in ci["accuracy"]],
    }
