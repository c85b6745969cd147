"""Simulated scribbles: a sparse training mask drawn from a dense one, as a person would in ilastik.

Each class's connected components (8-connected) are thinned to their skeleton
(:func:`skimage.morphology.skeletonize`, Zhang & Suen 1984); every component gets a few short strokes, each
the skeleton pixels of that component within ``length / 2`` of a random skeleton point — a short stretch
along the object's centre line, never near its border. Objects get ``per_object`` strokes, background
regions ``per_background``, and a large component (a membrane network, a big background region) one more
stroke per ``every`` skeleton pixels, so strokes spread over it. Everything follows from ``seed``.

Value mapping: a scribble pixel of dense class ``c`` holds ``c + 1``; every other pixel holds ``unlabelled``
(0 by default). Train with ``unlabelled=0`` and map predictions back with ``dense = predicted - 1``
(:func:`dense_classes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_mask, check_positive_int

__all__ = ["dense_classes", "labelled_fraction", "simulate_scribbles"]


def _skeleton_points(mask: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skeleton pixels of every class's components: (N, 2) coordinates, their class, their component id."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    coords, cls, comp = [], [], []
    offset = 0
    for c in classes:  # a loop over classes (a handful), not pixels
        binary = mask == c
        labels, n = ndi.label(binary, structure=np.ones((3, 3), bool))
        yx = np.argwhere(skeletonize(binary))
        coords.append(yx)
        cls.append(np.full(len(yx), c, mask.dtype))
        comp.append(labels[yx[:, 0], yx[:, 1]].astype(np.int64) - 1 + offset)
        offset += n
    return np.concatenate(coords), np.concatenate(cls), np.concatenate(comp)


def _starts(comp: np.ndarray, quota: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``quota[k]`` distinct random skeleton points of each component k (all when fewer)."""
    order = np.lexsort((rng.random(comp.size), comp))  # components in order, points shuffled within each
    sorted_comp = comp[order]
    first = np.searchsorted(sorted_comp, sorted_comp, side="left")
    rank = np.arange(comp.size) - first
    return order[rank < quota[sorted_comp]]


def simulate_scribbles(
    mask: Any,
    seed: int = 0,
    per_object: int = 2,
    per_background: int = 2,
    length: int = 24,
    every: int = 400,
    width: int = 1,
    background: int = 0,
    unlabelled: int = 0,
) -> np.ndarray:
    """A sparse scribble mask from a dense label mask, reproducible from ``seed``.

    Parameters
    ----------
    mask : (H, W) int array
        Dense labels (every value is a class).
    seed : int
        Fixes the stroke positions.
    per_object, per_background : int
        Strokes per connected component of a foreground class / of the ``background`` class.
    length : int
        Stroke extent in pixels (the skeleton within ``length / 2`` of the stroke's centre).
    every : int
        One extra stroke per ``every`` skeleton pixels of a component (spreads strokes over large regions).
    width : int
        Stroke width in pixels (1 = the skeleton; 2 widens it by one pixel, clipped to the class).
    background : int
        The class whose components count as background regions.
    unlabelled : int
        Value of the pixels left unlabelled (0 by default); must differ from every ``class + 1``.

    Returns
    -------
    (H, W) int array
        ``class + 1`` on scribble pixels, ``unlabelled`` elsewhere. Every class of ``mask`` gets at least
        one scribble pixel; every scribble pixel lies inside the class it names.
    """
    from scipy.spatial import cKDTree

    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) label array, got shape {arr.shape}")
    arr = check_mask(arr, arr.shape, "mask")
    for name, value in (("per_object", per_object), ("per_background", per_background), ("length", length),
                        ("every", every), ("width", width)):
        check_positive_int(value, name)
    classes = np.unique(arr)
    if np.isin(unlabelled, classes.astype(np.int64) + 1):
        raise ValueError(f"unlabelled={unlabelled} equals a scribble value (class + 1 = {classes.tolist()} + 1); "
                         "choose an unlabelled value outside them (0 is the usual choice)")
    rng = np.random.default_rng(seed)
    yx, cls, comp = _skeleton_points(arr, classes)
    sizes = np.bincount(comp)
    comp_class = np.zeros(sizes.size, arr.dtype)
    comp_class[comp] = cls
    quota = np.where(comp_class == background, per_background, per_object) + sizes // every
    starts = _starts(comp, quota, rng)
    hits = cKDTree(yx).query_ball_point(yx[starts], r=length / 2.0, return_sorted=False)
    stroke = np.repeat(starts, [len(h) for h in hits])
    near = np.concatenate([np.asarray(h, np.int64) for h in hits])
    keep = near[comp[near] == comp[stroke]]  # the same component: a stretch of this object's skeleton
    dtype = np.promote_types(np.min_scalar_type(int(classes.max()) + 1), np.min_scalar_type(unlabelled))
    out = np.full(arr.shape, unlabelled, dtype)
    out[yx[keep, 0], yx[keep, 1]] = cls[keep].astype(dtype) + 1
    if width > 1:
        out = _widen(out, arr, classes, width, unlabelled)
    return out


def _widen(out: np.ndarray, mask: np.ndarray, classes: np.ndarray, width: int, unlabelled: int) -> np.ndarray:
    """Dilate each class's strokes by a width×width square, clipped to that class's pixels."""
    from scipy import ndimage as ndi

    square = np.ones((width, width), bool)
    wide = out.copy()
    for c in classes:  # a loop over classes
        grown = ndi.binary_dilation(out == c + 1, structure=square) & (mask == c) & (wide == unlabelled)
        wide[grown] = c + 1
    return wide


def dense_classes(scribble_values: np.ndarray) -> np.ndarray:
    """Map scribble values (``class + 1``) — e.g. a head's predictions — back to the dense classes."""
    return np.asarray(scribble_values).astype(np.int64) - 1


def labelled_fraction(scribbles: np.ndarray, unlabelled: int = 0) -> float:
    """Fraction of pixels that carry a scribble label."""
    return float(np.mean(np.asarray(scribbles) != unlabelled))
