"""Scores: the report's patch-level accuracy and F1, and pixel-level Dice / IoU / F1 / accuracy per image and
aggregated, with bootstrap confidence intervals over images; object matching (precision / recall / F1 at an
IoU threshold) and the region metrics of the ISBI 2012 EM challenge (adapted Rand error, variation of
information).

Pixel scores come from confusion matrices (``np.bincount``), so per-image and pooled scores and every
bootstrap replicate are sums of the same (n_images, K, K) counts — no Python loop over pixels or replicates.
Dice and F1 leave the background class (0) out of their means; a class that appears in neither the truth nor
the prediction of an image has no Dice for that image (NaN, skipped by the mean). Sparse truth (scribbles):
``score_images(..., ignore=v)`` scores only the pixels whose truth is not ``v``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array
from sklearn.metrics import accuracy_score, f1_score

__all__ = [
    "accuracy",
    "binary_f1",
    "bootstrap_ci",
    "confusion",
    "dice_iou",
    "match_instances",
    "membrane_region_scores",
    "pixel_scores",
    "region_scores",
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


def _labelled_pixels(
    y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray], n_classes: int, ignore: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The (truth, prediction) pixels of each image whose truth is not ``ignore``, as 1-D arrays."""
    if 0 < ignore < n_classes:
        raise ValueError(f"ignore={ignore} is one of the classes 1..{n_classes - 1}; mark unlabelled pixels with 0 "
                         f"or a value outside 0..{n_classes - 1} (e.g. 255)")
    truths, preds = [], []
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        keep = np.asarray(t) != ignore
        if not keep.any():
            raise ValueError(f"image {i} has no labelled pixel (every truth pixel equals ignore={ignore}); "
                             "drop it or label some of its pixels")
        truths.append(np.asarray(t)[keep])
        preds.append(np.asarray(p)[keep])
    return truths, preds


def score_images(
    y_true: Sequence[np.ndarray],
    y_pred: Sequence[np.ndarray],
    n_classes: int,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    require_classes: bool = True,
    ignore: int | None = None,
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
    ignore : int, optional
        Sparse truth: the value of unlabelled truth pixels (e.g. 0 in a scribble mask, or 255). Those pixels
        are left out entirely — neither truth nor error, whatever is predicted there. It must be 0 (then the
        means run over classes 1..K-1 as usual) or a value outside 0..K-1. Default: every pixel is scored.

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
    if ignore is not None:
        y_true, y_pred = _labelled_pixels(y_true, y_pred, n_classes, int(ignore))
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


def _label_image(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image (0 = background), got dtype {arr.dtype}; "
                         "label a mask or probabilities first with instances.label_instances")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.min() < 0:
        raise ValueError(f"{name} holds negative labels (min {arr.min()}); labels must be ≥ 0 (0 = background)")
    return arr


def _label_pair(true_labels: Any, pred_labels: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    t, p = _label_image(true_labels, names[0]), _label_image(pred_labels, names[1])
    if t.shape != p.shape:
        raise ValueError(f"{names[0]} shape {t.shape} differs from {names[1]} shape {p.shape}")
    return t, p


def _overlaps(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency of two label images: object sizes and the overlapping (true, pred) pairs.

    Returns ``(true_sizes, pred_sizes, rows, cols, inter)``: sizes of the objects (background left out,
    indexed 0..n-1 in label order) and, for every pair of objects that share pixels, their indices and the
    number of shared pixels.
    """
    t_ids, t_inv = np.unique(t.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(p.ravel(), return_inverse=True)
    t_off, p_off = int(t_ids[0] == 0), int(p_ids[0] == 0)  # index 0 is the background when present
    t_sizes = np.bincount(t_inv, minlength=t_ids.size)[t_off:]
    p_sizes = np.bincount(p_inv, minlength=p_ids.size)[p_off:]
    both = (t_inv >= t_off) & (p_inv >= p_off)
    key = (t_inv[both] - t_off).astype(np.int64) * max(p_sizes.size, 1) + (p_inv[both] - p_off)
    pairs, inter = np.unique(key, return_counts=True)
    rows, cols = np.divmod(pairs, max(p_sizes.size, 1))
    return t_sizes, p_sizes, rows, cols, inter


def _assign(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """IoUs of the one-to-one matching of candidate pairs with the most pairs, then the largest summed IoU."""
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    n = min(r_ids.size, c_ids.size)
    cost = np.zeros((r_ids.size, c_ids.size))
    cost[r, c] = -1.0 - iou / (2 * n)  # count first, summed IoU as the tie-breaker (its total < 0.5 < 1)
    sel_r, sel_c = linear_sum_assignment(cost)
    score = np.zeros_like(cost)
    score[r, c] = iou
    picked = cost[sel_r, sel_c] < 0
    return score[sel_r[picked], sel_c[picked]]


def match_instances(true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Object-level detection scores: one-to-one matching of true and predicted objects at IoU ≥ a threshold.

    The IoU of every overlapping pair comes from a sparse contingency of the two label images (no dense
    object × object table over the image). At ``iou_threshold > 0.5`` an object has at most one candidate,
    so the candidates are the matching; otherwise, where an object has several, the matching maximises the
    number of pairs with IoU ≥ ``iou_threshold`` and then their summed IoU
    (``scipy.optimize.linear_sum_assignment`` on the candidate pairs only). The numbers equal
    ``stardist.matching.matching`` [1]_ at thresholds ≥ 0.5 (and its conventions: a score is 0 when nothing
    is matched).

    Parameters
    ----------
    true_labels, pred_labels : ndarray of int, same shape
        Instance label images, 0 = background; labels need not be consecutive.
    iou_threshold : float
        A pair matches when its intersection over union is at least this, in (0, 1].

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``n_true``, ``n_pred`` (int); ``precision`` = tp / n_pred, ``recall`` =
        tp / n_true, ``f1`` = 2 tp / (n_true + n_pred); ``mean_matched_iou`` (mean IoU of the matched
        pairs), ``mean_true_iou`` (summed matched IoU / n_true), ``panoptic_quality`` [2]_ (summed matched
        IoU / (tp + fp/2 + fn/2)); ``iou_threshold``.

    Raises
    ------
    ValueError
        Non-integer or negative labels, shapes that differ, a threshold outside (0, 1].

    References
    ----------
    .. [1] U. Schmidt, M. Weigert, C. Broaddus and G. Myers, "Cell detection with star-convex polygons",
       MICCAI 2018, pp. 265–273 (``stardist.matching``).
    .. [2] A. Kirillov, K. He, R. Girshick, C. Rother and P. Dollár, "Panoptic segmentation", CVPR 2019.
    """
    t, p = _label_pair(true_labels, pred_labels, ("true_labels", "pred_labels"))
    thr = float(iou_threshold)
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold!r}")
    t_sizes, p_sizes, rows, cols, inter = _overlaps(t, p)
    iou = inter / (t_sizes[rows] + p_sizes[cols] - inter)
    ok = iou >= thr
    rows, cols, iou = rows[ok], cols[ok], iou[ok]
    matched = iou
    if np.unique(rows).size < rows.size or np.unique(cols).size < cols.size:  # an object with 2+ candidates
        matched = _assign(rows, cols, iou)
    n_true, n_pred, tp = int(t_sizes.size), int(p_sizes.size), int(matched.size)
    fp, fn, total = n_pred - tp, n_true - tp, float(matched.sum())
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_true": n_true,
        "n_pred": n_pred,
        "precision": tp / n_pred if tp else 0.0,
        "recall": tp / n_true if tp else 0.0,
        "f1": 2 * tp / (n_true + n_pred) if tp else 0.0,
        "mean_matched_iou": total / tp if tp else 0.0,
        "mean_true_iou": total / n_true if n_true else 0.0,
        "panoptic_quality": total / (tp + fp / 2 + fn / 2) if tp else 0.0,
        "iou_threshold": thr,
    }


def region_scores(true_regions: np.ndarray, pred_regions: np.ndarray) -> dict[str, float]:
    """Region (neuron) segmentation scores of the ISBI 2012 EM challenge: adapted Rand error and VI.

    Pixels with truth 0 (the membrane, when the truth regions come from
    ``instances.membrane_regions(..., fill=False)``) are left out of every score; every other pixel counts,
    whatever its predicted label.

    Parameters
    ----------
    true_regions, pred_regions : ndarray of int, same shape
        Region label images (0 in the truth = not scored).

    Returns
    -------
    dict
        ``adapted_rand_error`` (0 = the same partition, up to 1; 1 − the F-score of ``rand_precision`` and
        ``rand_recall``); ``rand_precision``: of the pixel pairs in one predicted region, the fraction in one
        true region (a false merge lowers it); ``rand_recall``: of the pixel pairs in one true region, the
        fraction in one predicted region (a false split lowers it);
        ``vi_split`` = H(pred | truth) and ``vi_merge`` = H(truth | pred) in bits, and ``vi`` their sum.

    Raises
    ------
    ValueError
        Non-integer or negative labels, shapes that differ, or a truth that is 0 everywhere.

    References
    ----------
    .. [1] I. Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for
       connectomics", *Frontiers in Neuroanatomy* 9:142, 2015, doi:10.3389/fnana.2015.00142.
    .. [2] M. Meilă, "Comparing clusterings — an information based distance", *Journal of Multivariate
       Analysis* 98(5):873–895, 2007.
    .. [3] W. M. Rand, "Objective criteria for the evaluation of clustering methods", *Journal of the
       American Statistical Association* 66(336):846–850, 1971.
    """
    from skimage.metrics import adapted_rand_error, contingency_table, variation_of_information  # lazy: slow

    t, p = _label_pair(true_regions, pred_regions, ("true_regions", "pred_regions"))
    keep = t != 0
    if not keep.any():
        raise ValueError("true_regions is 0 everywhere; there is no region to score")
    t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)  # a predicted 0 is one more region here
    # Sparse (true, pred) counts, as a sparse array whatever skimage's default sparse type.
    table = csr_array(contingency_table(t, p, ignore_labels=(), normalize=False))
    n = float(t.size)
    data = table.data.astype(np.float64)
    same = float(data @ data) - n  # ordered pixel pairs in one true and one predicted region
    true_pairs = float(np.square(table.sum(axis=1).astype(np.float64)).sum()) - n
    pred_pairs = float(np.square(table.sum(axis=0).astype(np.float64)).sum()) - n
    # Our own Rand fractions: skimage returns them in the order opposite to its docstring (scikit-image issue
    # #6485). With no pair inside any predicted (true) region, nothing is merged (split): precision (recall) 1.
    prec = same / pred_pairs if pred_pairs > 0 else 1.0
    rec = same / true_pairs if true_pairs > 0 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 when both are all single pixels: no error
        are = float(np.nan_to_num(adapted_rand_error(t, p, table=table)[0], nan=0.0))
    split, merge = variation_of_information(t, p, table=table / n)  # images only for its shape check
    return {
        "adapted_rand_error": are,
        "rand_precision": prec,
        "rand_recall": rec,
        "vi_split": float(split),
        "vi_merge": float(merge),
        "vi": float(split + merge),
    }


def membrane_region_scores(
    true_membrane: np.ndarray, pred_membrane: np.ndarray, threshold: float = 0.5, min_size: int = 0
) -> dict[str, float]:
    """ISBI 2012 region scores of a membrane prediction: the regions each membrane map separates, compared.

    Truth regions: the 4-connected non-membrane components of ``true_membrane``, membrane pixels not scored.
    Predicted regions: :func:`instances.membrane_regions` of ``pred_membrane`` (seeds below ``threshold``,
    specks under ``min_size`` pixels dropped), grown over the predicted membrane so every pixel has a region.

    Parameters
    ----------
    true_membrane : ndarray, shape (H, W)
        Truth membrane mask (boolean, or integer with non-zero = membrane).
    pred_membrane : ndarray, shape (H, W)
        Predicted membrane probability in [0, 1] or a predicted membrane mask.
    threshold, min_size
        Passed to :func:`instances.membrane_regions` for the prediction.

    Returns
    -------
    dict
        :func:`region_scores` plus ``n_true_regions`` and ``n_pred_regions``.

    References
    ----------
    .. [1] I. Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for
       connectomics", *Frontiers in Neuroanatomy* 9:142, 2015, doi:10.3389/fnana.2015.00142.
    """
    from .instances import membrane_regions  # lazy, like skimage, which it imports

    t = np.asarray(true_membrane)
    if t.dtype != bool and not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"true_membrane must be a boolean or integer membrane mask, got dtype {t.dtype}")
    if np.shape(pred_membrane) != t.shape:
        raise ValueError(f"true_membrane shape {t.shape} differs from pred_membrane shape {np.shape(pred_membrane)}")
    true_regions = membrane_regions(t, fill=False)
    pred_regions = membrane_regions(pred_membrane, threshold=threshold, min_size=min_size, fill=True)
    scores: dict[str, float] = region_scores(true_regions, pred_regions)
    scores["n_true_regions"] = int(true_regions.max())
    scores["n_pred_regions"] = int(pred_regions.max())
    return scores
