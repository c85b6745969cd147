"""Experiment 3: whole-patch translation estimation from patch correlations (Table 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..feature_matching import estimate_translation, patch_correlation
from ..shifts import min_overlap_count, overlap_count

__all__ = [
    "MIN_OVERLAP",
    "estimate_patch_shift",
    "min_overlap_patches",
    "run_registration",
    "shift_overlap",
    "shift_zero_fill",
]

#: Default fewest overlapping patches of a candidate shift, as a fraction of the grid's patches (the role and
#: the value of ``overlap_ratio`` in ``skimage.registration.phase_cross_correlation``). Without it the mean
#: along a diagonal of one or two patches — pure noise — can beat the true shift (a corner shift won for
#: the filter bank, whose uncentred features have a cosine near 1 everywhere).
MIN_OVERLAP = 0.3


def shift_zero_fill(image: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """``np.roll`` by ``(dy, dx)`` pixels with the wrapped-around rows/columns set to zero (the report's)."""
    dy, dx = int(shift[0]), int(shift[1])
    out = np.roll(image, (dy, dx), axis=(0, 1))
    if dy > 0:
        out[:dy] = 0
    elif dy < 0:
        out[dy:] = 0
    if dx > 0:
        out[:, :dx] = 0
    elif dx < 0:
        out[:, dx:] = 0
    return out


def shift_overlap(grid_shape: tuple[int, int], shift: tuple[int, int]) -> int:
    """Patches of an (h, w) grid that keep a partner inside the grid under a whole-patch ``shift``."""
    return overlap_count(grid_shape, shift)


def min_overlap_patches(grid_shape: tuple[int, int], fraction: float = MIN_OVERLAP) -> int:
    """The fewest overlapping patches (at least 1) a candidate shift needs: ``ceil(fraction · h · w)``."""
    return min_overlap_count(grid_shape, fraction)


def estimate_patch_shift(
    similarity: np.ndarray, grid_shape: tuple[int, int], min_overlap: float = MIN_OVERLAP
) -> tuple[int, int]:
    """The experiment's shift estimate: the report's ``estimate_translation`` over the shifts that keep at least
    ``min_overlap`` (a fraction of the grid's patches) overlapping.

    Examples
    --------
    >>> import numpy as np
    >>> from neuros.plugins.cv.feature_matching import patch_correlation
    >>> a = np.random.default_rng(0).standard_normal((6, 6, 8))
    >>> estimate_patch_shift(patch_correlation(a, np.roll(a, (1, -2), axis=(0, 1))), (6, 6))
    (1, -2)
    """
    need = min_overlap_patches(grid_shape, min_overlap)
    return estimate_translation(similarity, grid_shape=grid_shape, min_overlap=need)


def run_registration(
    backbone: Backbone,
    modality: str,
    image: np.ndarray,
    shifts: Sequence[tuple[int, int]],
    min_overlap: float = MIN_OVERLAP,
) -> dict[str, Any]:
    """Shift ``image`` by each patch-multiple shift, estimate it from patch correlations, and score it.

    The estimate is the report's ``estimate_translation(patch_correlation(a, b), grid)`` searched over the
    shifts that keep at least ``min_overlap`` (a fraction of the grid's patches) overlapping. The error of one
    shift is ``|Δdy| + |Δdx|`` in patches; ``mean_error`` averages over shifts.

    Parameters
    ----------
    backbone : Backbone
        Extracts the features of the image and of its shifted copies.
    modality : str
        Recorded with the result.
    image : ndarray
        The reference image.
    shifts : sequence of (int, int)
        Whole-patch shifts ``(dy, dx)`` to recover.
    min_overlap : float
        Fraction of the grid's patches a candidate shift must keep overlapping (:data:`MIN_OVERLAP`).
    """
    p = backbone.patch_size
    moved = [shift_zero_fill(image, (dy * p, dx * p)) for dy, dx in shifts]
    maps = backbone.extract_batch([image, *moved])
    ref = maps[0]
    need = min_overlap_patches(ref.grid_shape, min_overlap)
    rows = []
    for (dy, dx), fm in zip(shifts, maps[1:], strict=True):
        if shift_overlap(ref.grid_shape, (dy, dx)) < need:
            raise ValueError(
                f"shift ({dy}, {dx}) keeps {shift_overlap(ref.grid_shape, (dy, dx))} of {ref.grid_shape[0]}×"
                f"{ref.grid_shape[1]} patches overlapping, fewer than min_overlap = {min_overlap} ({need} patches): "
                "use a smaller shift, a larger image or a smaller min_overlap"
            )
        ey, ex = estimate_patch_shift(patch_correlation(ref.flat(), fm.flat()), ref.grid_shape, min_overlap)
        rows.append(
            {"true": [int(dy), int(dx)], "estimated": [ey, ex], "error": abs(ey - dy) + abs(ex - dx)}
        )
    return {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "modality": modality,
        "min_overlap_patches": need,
        "shifts": rows,
        "mean_error": float(np.mean([r["error"] for r in rows])),
    }
