"""Per-class decision offsets chosen on held-out training images: ``argmax(log p + b)`` instead of ``argmax p``.

Class-balanced training (``class_weight="balanced"``, or a class-balanced sample of positions) tells a head that
every class is equally common, so its posteriors favour the rare classes: on ssTEM the conv head's mitochondria
came out with precision ≈ 0.5 at recall ≈ 0.9, a rim of false positives around every organelle. Shifting each
class's log-probability by an offset moves the decision back. The offsets are chosen to maximise the mean
Dice over classes on images the head was not trained on, then the head is refit on every image and keeps the
offsets — the procedure of scikit-learn's ``TunedThresholdClassifierCV`` (a decision threshold chosen on a
held-out split, then ``refit``), which handles binary classifiers on tables only; this is its multi-class,
image-level form for heads over feature maps.

:func:`tune_offsets` searches the offsets; :func:`fit_tuned` runs the whole procedure; the head stores them as
``decision_offsets_`` (saved in ``head.json``) and :meth:`SegmentationHead.decide` applies them everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import clone

from ..labels import encode_masks
from ..metrics import confusion
from .base import SegmentationHead, _mask_list, as_maps

__all__ = ["DEFAULT_GRID", "fit_tuned", "tune_offsets"]

#: Offsets tried for each class (natural-log units: ±3 multiplies a class's odds by e^±3 ≈ 20). ±2 was too
#: narrow: the class-balanced conv head's mitochondria offset stopped at the grid's end on ssTEM.
DEFAULT_GRID = tuple(np.round(np.arange(-3.0, 3.001, 0.25), 2))


def _mean_dice(cm: np.ndarray) -> float:
    """Mean Dice over the classes present in truth or prediction of a (K, K) confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present])) if present.any() else 0.0


def tune_offsets(proba: Sequence[np.ndarray], truth: Sequence[np.ndarray], grid: Sequence[float] = DEFAULT_GRID,
                 sweeps: int = 2, shrink: bool = True) -> tuple[np.ndarray, float, float]:
    """Per-class log-probability offsets that maximise the mean Dice over classes on labelled images.

    Coordinate ascent: class 0 stays at 0 (only differences matter); each other class's offset in turn is set
    to the ``grid`` value that scores best with the others fixed, ``sweeps`` times over the classes (exhaustive
    for two classes; for three, the search converges in two sweeps on ssTEM to the exhaustive pair search).

    Then, with ``shrink`` and at least two images, the offsets are moved back towards zero one grid step at a
    time while the move is not worse than the best offsets by more than one standard error of the paired
    per-image difference — the "one-standard-error rule" (Breiman et al., *Classification and Regression
    Trees*, 1984; Hastie et al., *The Elements of Statistical Learning*, Sec. 7.10): among settings the held-out
    images cannot tell apart, take the smallest change. The score is often flat over a range of offsets (on
    ssTEM the out-of-fold mean Dice moved by 0.002 between membrane offsets −0.5 and −1), and the far end of
    a flat range is the choice least likely to carry over to other images.

    Parameters
    ----------
    proba : sequence of (..., K) arrays
        Class probabilities of held-out images.
    truth : sequence of int arrays
        Class indices 0..K-1 of the same pixels; negative values are unlabelled (not scored).
    grid : sequence of float
        Offsets tried per class.
    sweeps : int
        Passes over the classes.
    shrink : bool
        Apply the one-standard-error rule above after the search.

    Returns
    -------
    offsets : (K,) float32
    before, after : float
        Mean Dice over classes (all images pooled) with zero offsets and with the chosen ones.
    """
    if len(proba) != len(truth) or not proba:
        raise ValueError(f"tune_offsets needs as many probability maps as truth maps (got {len(proba)} and "
                         f"{len(truth)}), at least one")
    k = proba[0].shape[-1]
    keep = [np.asarray(t).ravel() >= 0 for t in truth]
    logp = [np.log(np.clip(p.reshape(-1, k)[m], 1e-7, None)) for p, m in zip(proba, keep, strict=True)]
    y = [np.asarray(t).ravel()[m] for t, m in zip(truth, keep, strict=True)]

    def score(b: np.ndarray) -> float:
        return _mean_dice(sum(confusion(t, (lp + b).argmax(axis=1), k) for t, lp in zip(y, logp, strict=True)))

    best = np.zeros(k, dtype=np.float32)
    before = current = score(best)
    for _ in range(int(sweeps)):
        for c in range(1, k):  # a loop over classes and grid values (a few dozen scores), not pixels
            for v in grid:
                trial = best.copy()
                trial[c] = v
                s = score(trial)
                if s > current + 1e-12:
                    best, current = trial, s
    if shrink and len(y) >= 2:
        best = _shrink(best, y, logp, k, np.asarray(grid, dtype=np.float32))
        current = score(best)
    return best, before, current


def _shrink(best: np.ndarray, y: list[np.ndarray], logp: list[np.ndarray], k: int, grid: np.ndarray) -> np.ndarray:
    """The one-standard-error rule of :func:`tune_offsets`: step offsets towards zero while the paired per-image
    mean Dice difference to ``best`` is at least minus its standard error."""

    def per_image(b: np.ndarray) -> np.ndarray:
        return np.array([_mean_dice(confusion(t, (lp + b).argmax(axis=1), k)) for t, lp in zip(y, logp, strict=True)])

    ref = per_image(best)
    current = best.copy()
    while True:  # at most (grid steps × classes) moves, each scoring K − 1 candidates
        accepted = []
        for c in range(1, k):
            nearer = grid[(np.abs(grid) < abs(current[c]) - 1e-6) & (grid * current[c] >= 0)]
            if nearer.size == 0:
                continue
            trial = current.copy()
            trial[c] = nearer[np.argmin(np.abs(nearer - current[c]))]
            diff = per_image(trial) - ref
            if diff.mean() >= -diff.std(ddof=1) / np.sqrt(diff.size):
                accepted.append((float(diff.mean()), trial))
        if not accepted:
            return current
        current = max(accepted, key=lambda t: t[0])[1]


def _holdout(n: int, holdout: int | float, seed: int) -> np.ndarray:
    """Indices of the held-out images: ``holdout`` of them (a count, or a fraction of ``n``), seeded."""
    if (isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)) or holdout <= 0
            or (holdout >= 1 and float(holdout) != int(holdout))):
        raise ValueError(f"holdout must be a positive number of images or a fraction in (0, 1), got {holdout!r}")
    count = int(holdout) if holdout >= 1 else max(1, round(float(holdout) * n))
    if n < 2 or count >= n:
        raise ValueError(f"tuning decision offsets needs images to train on and images to hold out: {n} training "
                         f"image(s), holdout {holdout!r}; pass more images or a smaller holdout")
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def fit_tuned(head: SegmentationHead, feature_maps: Any, masks: Sequence[np.ndarray], holdout: int | float = 0.25,
              refit: bool = True) -> SegmentationHead:
    """Fit ``head`` with decision offsets tuned on held-out images (then refit on all of them).

    A copy of ``head`` (``sklearn.base.clone``: same parameters, unfitted) is fitted on the images not held out,
    predicts the held-out ones, and :func:`tune_offsets` picks the offsets there; then ``head`` itself is fitted
    on every image (``refit=True``; with ``refit=False`` the copy fitted without the held-out images is kept)
    and given the offsets. Held-out images are chosen with the head's ``seed``.

    Parameters
    ----------
    head : SegmentationHead
        Any head (its parameters unchanged).
    feature_maps, masks
        As for ``head.fit``: one map and mask per training image. Unlabelled pixels (``head.unlabelled``) are
        neither trained on nor scored.
    holdout : int or float
        Images held out to tune on: a count (≥ 1) or a fraction of the images (at least one).
    refit : bool
        Refit on all images after tuning (training cost doubles; every labelled image is learned from).

    Returns
    -------
    SegmentationHead
        The fitted head with ``decision_offsets_`` and ``decision_`` (how they were chosen, saved with it).
    """
    maps = as_maps(feature_maps)
    masks = _mask_list(feature_maps, masks)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} feature maps but {len(masks)} masks")
    held = _holdout(len(maps), holdout, int(head.seed))
    rest = np.setdiff1d(np.arange(len(maps)), held)
    probe = clone(head).fit([maps[i] for i in rest], [masks[i] for i in rest])
    proba = probe.predict_proba([maps[i] for i in held])
    truth, _ = encode_masks([masks[i] for i in held], [maps[i].image_shape for i in held],
                            unlabelled=head.unlabelled, classes=probe.classes_)
    offsets, before, after = tune_offsets(proba, truth)
    fitted = head.fit(maps, masks) if refit else probe
    if not np.array_equal(fitted.classes_, probe.classes_):
        raise ValueError(f"the held-out images hold classes {sorted(set(fitted.classes_) - set(probe.classes_))} "
                         "that the other images lack; hold out fewer images or label every class in more of them")
    fitted.decision_offsets_ = offsets
    fitted.decision_ = {"rule": "argmax(log p + offsets)", "offsets": [float(v) for v in offsets],
                        "held_out_images": [int(i) for i in held], "refit": bool(refit),
                        "mean_dice_held_out": {"argmax": before, "tuned": after}}
    return fitted
