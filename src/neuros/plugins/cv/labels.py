"""From pixel masks to patch labels (the report's majority rule, the foreground fraction, the plurality class).

Also the mask checks every head and metric shares: integer labels, matching shape, and the encoding of
arbitrary label values (e.g. 0/255 PNG masks) to class indices 0..K-1; and decoding of binary mask files by
their dtype (:func:`decode_binary_mask`: a 1-bit PNG reads as bool, an 8-bit one as 0..255 grey levels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._validation import check_mask
from .preprocess import pad_to_multiple

__all__ = [
    "DEFAULT_MAX_CLASSES",
    "check_training_masks",
    "class_balance_weights",
    "decode_binary_mask",
    "encode_masks",
    "mask_targets",
    "patch_fractions",
    "patch_labels",
    "patch_targets",
    "sample_positions",
]

RULES = ("argmax", "majority", "fraction")
DEFAULT_MAX_CLASSES = 16


def decode_binary_mask(mask: np.ndarray, threshold: float = 127, name: str = "mask") -> np.ndarray:
    """The foreground of a binary mask, decoded by its dtype: boolean as it is, any other dtype ``> threshold``.

    A 1-bit PNG reads as a boolean array (True = foreground), so thresholding it like an 8-bit mask
    (``True > 127`` is False) would lose every foreground pixel; 8-bit masks with anti-aliased edges (grey
    levels 1..254) take ``> threshold`` (default 127, the midpoint).

    Parameters
    ----------
    mask : ndarray
        A boolean, integer or float mask (e.g. from :func:`datasets.io.read_array`).
    threshold : float
        Values strictly above it are foreground (ignored for boolean masks).
    name : str
        How error messages name the mask (e.g. its file name).

    Returns
    -------
    ndarray of bool
        True on foreground pixels, same shape as ``mask``.
    """
    a = np.asarray(mask)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a boolean or real numeric mask, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf values; a mask must be finite")
    return a > threshold


def patch_fractions(mask: np.ndarray, patch: int = 16, n_classes: int | None = None) -> np.ndarray:
    """Per-patch class fractions of an integer mask: (h, w, K), with padding (bottom/right) not counted.

    The mask is padded like the image (to a multiple of ``patch``); padded pixels get weight 0, so a border
    patch's fractions refer to its real pixels only. Vectorised with one reshape and ``np.eye`` indexing.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    m = m.astype(np.int64)
    k = int(m.max()) + 1 if n_classes is None else int(n_classes)
    if m.size and (m.max() >= k):
        raise ValueError(f"mask has label {int(m.max())} but n_classes={k}")
    valid = pad_to_multiple(np.ones_like(m, dtype=np.float32), patch, mode="constant")
    valid[m.shape[0] :, :] = 0
    valid[:, m.shape[1] :] = 0
    mp = pad_to_multiple(m, patch, mode="edge")
    h, w = mp.shape[0] // patch, mp.shape[1] // patch
    onehot = np.eye(k, dtype=np.float32)[mp] * valid[:, :, None]
    sums = onehot.reshape(h, patch, w, patch, k).sum(axis=(1, 3))
    count = valid.reshape(h, patch, w, patch).sum(axis=(1, 3))
    return sums / np.maximum(count, 1)[:, :, None]


def patch_targets(fractions: np.ndarray, rule: str = "argmax", threshold: float = 0.5) -> np.ndarray:
    """Patch labels (h, w) from class fractions (h, w, K).

    ``"majority"`` (the report's protocol, binary): foreground when *more than* half the pixels are foreground.
    ``"fraction"``: the most frequent foreground class when its fraction exceeds ``threshold``, else 0 (for
    binary masks: foreground fraction > ``threshold``). ``"argmax"``: the plurality class, ties to the lower
    class id (for binary masks this equals ``"majority"``).
    """
    fr = np.asarray(fractions)
    if rule == "argmax":
        return fr.argmax(axis=2).astype(np.int64)
    if rule == "majority":
        if fr.shape[2] > 2:
            raise ValueError("rule='majority' is the report's binary rule; use 'argmax' or 'fraction' for multi-class")
        fg = 1.0 - fr[:, :, 0]
        return (fg > 0.5).astype(np.int64)
    if rule == "fraction":
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if fr.shape[2] < 2:
            return np.zeros(fr.shape[:2], dtype=np.int64)
        best = fr[:, :, 1:].argmax(axis=2)
        best_fr = np.take_along_axis(fr[:, :, 1:], best[:, :, None], axis=2)[:, :, 0]
        return np.where(best_fr > float(threshold), best + 1, 0).astype(np.int64)
    raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")


def patch_labels(mask: np.ndarray, patch: int = 16, rule: str = "majority", threshold: float = 0.5) -> np.ndarray:
    """Patch labels (h, w) of one pixel mask, as label values (see :func:`mask_targets` for the rules).

    Label 0 is background whether or not the mask holds it, so ``"majority"`` means "more than half the pixels
    are not 0" for any binary mask (0/1, 0/255, boolean).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    classes = np.union1d(np.unique(check_mask(m, m.shape)), [0])
    (targets,), classes = mask_targets([m], [m.shape], patch, rule, threshold, classes)
    return classes[targets]


def mask_targets(
    masks: Sequence[np.ndarray],
    shapes: Sequence[tuple[int, int]],
    patch: int,
    rule: str = "argmax",
    threshold: float = 0.5,
    classes: np.ndarray | None = None,
    unlabelled: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The one way from pixel masks to training targets at a grid's stride: check, encode, per-cell rule.

    Parameters
    ----------
    masks : sequence of ndarray
        Integer (or boolean) label masks, one per image.
    shapes : sequence of (H, W)
        Each image's shape; every mask must have it.
    patch : int
        Pixels per grid cell side (the feature map's stride: 16 for patches, 1 for pixels).
    rule : {"argmax", "majority", "fraction"}
        How a cell's label follows from its pixels (:func:`patch_targets`). At ``patch=1`` every rule gives
        the pixel's own label.
    threshold : float
        Foreground fraction for ``rule="fraction"``.
    classes : ndarray, optional
        Known label values (sorted); by default the union of values in ``masks`` (:func:`encode_masks`).
    unlabelled : int, optional
        A mask value that is no class (e.g. 0 in a scribble mask): its pixels are neither trained nor counted
        in a cell's fractions, and a cell without any labelled pixel gets the target -1.

    Returns
    -------
    targets : list of ndarray
        One (h, w) int64 grid per mask, of class indices into ``classes`` (-1: unlabelled).
    classes : ndarray
        The sorted label values (never ``unlabelled``).
    """
    if rule not in RULES:
        raise ValueError(f"label rule must be one of {', '.join(RULES)}, got {rule!r}")
    encoded, classes = encode_masks(masks, shapes, classes, unlabelled=unlabelled)
    k = len(classes)
    if unlabelled is None and int(patch) > 1:  # the report's path, unchanged (Tables 1-3 are pinned to it)
        return [patch_targets(patch_fractions(m, patch, k), rule, threshold) for m in encoded], classes
    return [_sparse_cell_targets(m, int(patch), k, rule, threshold) for m in encoded], classes


def _sparse_cell_targets(encoded: np.ndarray, patch: int, k: int, rule: str, threshold: float) -> np.ndarray:
    """Cell targets of an encoded mask with -1 = unlabelled: the rule over each cell's labelled pixels."""
    if patch == 1:
        return encoded
    h, w = -(-encoded.shape[0] // patch), -(-encoded.shape[1] // patch)
    padded = np.full((h * patch, w * patch), -1, dtype=np.int64)
    padded[: encoded.shape[0], : encoded.shape[1]] = encoded
    # Per-cell class counts with one bincount over (cell, class) codes rather than a one-hot stack: an
    # (H, W, K) float array would cost K times the mask's memory on large images.
    cell = (np.arange(h * patch)[:, None] // patch) * w + (np.arange(w * patch)[None, :] // patch)
    ok = padded >= 0
    counts = np.bincount(cell[ok] * k + padded[ok], minlength=h * w * k).reshape(h, w, k).astype(np.float32)
    total = counts.sum(axis=2)
    targets = patch_targets(counts / np.maximum(total, 1)[:, :, None], rule, threshold)
    targets[total == 0] = -1
    return targets


def sample_positions(
    targets: Sequence[np.ndarray],
    max_per_class: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Flat grid indices of the labelled cells (target >= 0) to train on, per map, at most ``max_per_class``.

    The budget is per class over all maps together: a class with more labelled cells than the budget keeps a
    uniform random subset (``numpy.random.default_rng(seed)``, so the table is reproducible from the seed);
    rarer classes keep every cell. Indices come back sorted within each map (row-major order).
    """
    flat = [np.asarray(t).ravel() for t in targets]
    labelled = [np.flatnonzero(t >= 0) for t in flat]
    if max_per_class is None:
        return labelled
    budget = int(max_per_class)
    if budget < 1:
        raise ValueError(f"max_samples_per_class must be >= 1, got {max_per_class}")
    which = np.concatenate([np.full(idx.size, i, dtype=np.int64) for i, idx in enumerate(labelled)])
    where = np.concatenate(labelled)
    y = np.concatenate([t[idx] for t, idx in zip(flat, labelled, strict=True)])
    rng = np.random.default_rng(int(seed))
    keep = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):  # a loop over classes (a handful), not over positions
        members = np.flatnonzero(y == c)
        keep[members if members.size <= budget else rng.choice(members, budget, replace=False)] = True
    return [np.sort(where[keep & (which == i)]) for i in range(len(flat))]


def encode_masks(
    masks: Sequence[np.ndarray],
    shapes: Sequence[tuple[int, int]],
    classes: np.ndarray | None = None,
    unlabelled: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Check masks against image shapes and encode their label values to class indices 0..K-1.

    Parameters
    ----------
    masks : sequence of ndarray
        Integer (or boolean, or integral float) label masks.
    shapes : sequence of (H, W)
        The shape each mask must have.
    classes : ndarray, optional
        Known label values (sorted); by default the union of values in ``masks``. A label not in ``classes``
        raises.
    unlabelled : int, optional
        A value that is no class: encoded as -1, never in ``classes`` (a ``classes`` holding it raises).

    Returns
    -------
    encoded : list of ndarray
        int64 masks with values in 0..K-1 (index into ``classes``); -1 where the mask is ``unlabelled``.
    classes : ndarray
        The sorted label values.
    """
    if len(masks) != len(shapes):
        raise ValueError(f"{len(shapes)} images but {len(masks)} masks")
    checked = [check_mask(m, s, name=f"masks[{i}]") for i, (m, s) in enumerate(zip(masks, shapes, strict=True))]
    values = np.unique(np.concatenate([np.unique(m) for m in checked])) if checked else np.array([], np.int64)
    if unlabelled is not None:
        values = values[values != int(unlabelled)]
        if values.size == 0:
            raise ValueError(f"the masks hold no labelled pixel: every pixel is the unlabelled value {unlabelled}; "
                             "paint at least one stroke of each class")
    if classes is None:
        classes = values
    classes = np.asarray(classes, dtype=np.int64)
    if unlabelled is not None and int(unlabelled) in classes:
        raise ValueError(f"the unlabelled value {unlabelled} is also a class ({classes.tolist()}); pick an "
                         "unlabelled value that no class uses")
    unknown = np.setdiff1d(values, classes)
    if unknown.size:
        raise ValueError(f"masks hold label(s) {unknown.tolist()} not among the known classes {classes.tolist()}")
    encoded = [np.searchsorted(classes, m.astype(np.int64)) for m in checked]
    if unlabelled is not None:
        for e, m in zip(encoded, checked, strict=True):
            e[m == int(unlabelled)] = -1
    return encoded, classes


CLASS_WEIGHTS = (None, "balanced", "sqrt")


def class_weights_per_class(counts: np.ndarray, mode: str | None) -> np.ndarray | None:
    """Per-class loss weights from labelled counts: ``"balanced"`` (scikit-learn's rule ``n / (K_present · count)``),
    ``"sqrt"`` (its square root, rescaled so the weighted mean over the samples stays 1: half way between no
    weighting and full balancing on a log scale), or None (no weighting). Absent classes get weight 0.

    Examples
    --------
    >>> class_weights_per_class(np.array([30, 10]), "balanced").round(3).tolist()
    [0.667, 2.0]
    """
    if mode is None:
        return None
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of None, 'balanced', 'sqrt', got {mode!r}")
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    n = counts.sum()
    w = np.where(present, n / (max(int(present.sum()), 1) * np.maximum(counts, 1)), 0.0)
    if mode == "sqrt":
        w = np.sqrt(w)
        w = w * n / max(float((w * counts).sum()), 1e-12)
    return w


def class_balance_weights(y: np.ndarray, n_classes: int, mode: str = "balanced") -> np.ndarray:
    """Per-sample weights from :func:`class_weights_per_class` (``"balanced"``: ``n / (K_present · count[y])``)."""
    y = np.asarray(y, dtype=np.int64)
    return class_weights_per_class(np.bincount(y, minlength=n_classes), mode)[y]


def _opt(name: str, cli: bool) -> str:
    return f"--{name.replace('_', '-')}" if cli else f"{name}="


def _values_hint(values: np.ndarray, n: int = 6) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:n].tolist())
    return f"{shown}, …" if values.size > n else shown


def check_training_masks(
    masks: Sequence[np.ndarray],
    names: Sequence[str],
    threshold: float | None = None,
    classes: Sequence[int] | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    cli: bool = False,
) -> list[np.ndarray]:
    """Check training masks before a head turns every distinct value into a class; binarise or select values.

    An anti-aliased mask (grey edge levels) or an image passed as a mask would otherwise train a head with
    dozens or hundreds of classes without a word. Three modes:

    - ``threshold=T``: binarise — foreground where ``mask > T``; boolean masks (1-bit PNGs) as they are
      (:func:`decode_binary_mask`). A mask with values in 0..1 and ``T >= 1`` is refused (it would be empty).
    - ``classes=[v1, v2, ...]``: keep these label values; every other value becomes background (0). A listed
      value that occurs in no mask is refused (a typo would otherwise train on nothing).
    - neither: masks must hold integer labels with at most ``max_classes`` distinct values per mask and in
      all, and must not mix 1-bit (0/1) files with 8-bit label values.

    Parameters
    ----------
    masks : sequence of ndarray
        2-D masks (boolean, integer or float).
    names : sequence of str
        One name per mask for the error messages (e.g. its file name).
    threshold : float, optional
        Binarisation threshold (exclusive with ``classes``).
    classes : sequence of int, optional
        Label values to keep (exclusive with ``threshold``).
    max_classes : int
        The most distinct values a mask (and the whole set) may hold without ``threshold``/``classes``.
    cli : bool
        Name the options as command-line flags (``--threshold``) rather than arguments (``threshold=``).

    Returns
    -------
    list of ndarray
        Integer masks (uint8 0/1 after ``threshold``; label values otherwise).

    Raises
    ------
    ValueError
        One line naming the mask, the count or values found and the option that fixes it.
    """
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} masks but {len(names)} names")
    if threshold is not None and classes is not None:
        raise ValueError(f"give {_opt('threshold', cli)} or {_opt('classes', cli)}, not both")
    if int(max_classes) < 2:
        raise ValueError(f"{_opt('max_classes', cli)} must be at least 2, got {max_classes}")
    arrays = [np.asarray(m) for m in masks]
    for a, name in zip(arrays, names, strict=True):
        if a.ndim != 2:
            raise ValueError(f"mask {name} has shape {a.shape}, not a single-channel 2-D label image; "
                             "save masks as greyscale/label images")
    if threshold is not None:
        return [_binarise(a, name, float(threshold), cli) for a, name in zip(arrays, names, strict=True)]
    ints = [_integer_labels(a, name, cli) for a, name in zip(arrays, names, strict=True)]
    if classes is not None:
        return _select_classes(ints, names, classes, cli)
    return _check_counts(arrays, ints, names, int(max_classes), cli)


def _binarise(a: np.ndarray, name: str, threshold: float, cli: bool) -> np.ndarray:
    fg = decode_binary_mask(a, threshold, name=f"mask {name}")
    if a.dtype != bool and a.size and threshold >= 1 and 0 < float(a.max()) <= 1:
        raise ValueError(f"mask {name} holds values in 0..1, all <= {_opt('threshold', cli)} {threshold:g}, so it "
                         f"would be all background; use {_opt('threshold', cli)} 0 for 0/1 masks "
                         "(0.5 for probabilities)")
    return fg.astype(np.uint8)


def _integer_labels(a: np.ndarray, name: str, cli: bool) -> np.ndarray:
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"mask {name} has dtype {a.dtype}; masks hold integer labels")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"mask {name} contains NaN/inf values; masks hold integer labels")
        frac = a[a != np.round(a)]
        if frac.size:
            raise ValueError(f"mask {name} holds non-integer values (e.g. {float(frac[0]):g}): binarise with "
                             f"{_opt('threshold', cli)} T (foreground where mask > T)")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"mask {name} has negative labels (min {a.min()}); class ids must be >= 0")
    return a


def _select_classes(ints: list[np.ndarray], names: Sequence[str], classes: Sequence[int],
                    cli: bool) -> list[np.ndarray]:
    keep = np.unique(np.asarray(list(classes)))
    if keep.size == 0:
        raise ValueError(f"{_opt('classes', cli)} names no label value")
    if not np.issubdtype(keep.dtype, np.integer) and not np.all(keep == np.round(keep)):
        raise ValueError(f"{_opt('classes', cli)} must list integer label values, got {keep.tolist()}")
    keep = keep.astype(np.int64)
    found = np.unique(np.concatenate([np.unique(m) for m in ints]))
    missing = np.setdiff1d(keep[keep != 0], found)
    if missing.size:
        raise ValueError(f"{_opt('classes', cli)} value(s) {missing.tolist()} occur in no mask "
                         f"(values found: {_values_hint(found)})")
    return [np.where(np.isin(m, keep), m, 0).astype(np.int64) for m in ints]


def _check_counts(arrays: list[np.ndarray], ints: list[np.ndarray], names: Sequence[str], max_classes: int,
                  cli: bool) -> list[np.ndarray]:
    fix = f"binarise with {_opt('threshold', cli)} 127 or list {_opt('classes', cli)}"
    uniques = []
    for m, name in zip(ints, names, strict=True):
        u = np.unique(m)
        if u.size > max_classes:
            raise ValueError(f"mask {name} has {u.size} distinct values (more than {_opt('max_classes', cli)} "
                             f"{max_classes}): {fix}")
        uniques.append(u)
    union = np.unique(np.concatenate(uniques)) if uniques else np.array([], np.int64)
    if union.size > max_classes:
        raise ValueError(f"the masks hold {union.size} distinct values in all (more than "
                         f"{_opt('max_classes', cli)} {max_classes}): {fix}")
    one_bit = [n for a, n in zip(arrays, names, strict=True) if a.dtype == bool]
    wide = [(n, int(u.max())) for a, u, n in zip(arrays, uniques, names, strict=True)
            if a.dtype != bool and u.size and u.max() > 1]
    if one_bit and wide:
        raise ValueError(f"masks mix 1-bit files ({one_bit[0]}: 0/1) with label values up to {wide[0][1]} "
                         f"({wide[0][0]}), which would be different classes: binarise all with "
                         f"{_opt('threshold', cli)} 127 (1-bit masks stay as they are)")
    return ints
