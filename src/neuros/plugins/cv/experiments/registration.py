"""Experiment 3: whole-patch translation estimation from patch correlations (Table 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..feature_matching import estimate_translation, patch_correlation

__all__ = ["run_registration", "shift_zero_fill"]


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


def run_registration(
    backbone: Backbone,
    modality: str,
    image: np.ndarray,
    shifts: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """Shift ``image`` by each patch-multiple shift, estimate it from patch correlations, and score it.

    The error of one shift is ``|Δdy| + |Δdx|`` in patches; ``mean_error`` averages over shifts.
    """
    p = backbone.patch_size
    moved = [shift_zero_fill(image, (dy * p, dx * p)) for dy, dx in shifts]
    maps = backbone.extract_batch([image, *moved])
    ref = maps[0]
    rows = []
    for (dy, dx), fm in zip(shifts, maps[1:], strict=True):
        sim = patch_correlation(ref.flat(), fm.flat())
        ey, ex = estimate_translation(sim, grid_shape=ref.grid_shape)
        rows.append(
            {"true": [int(dy), int(dx)], "estimated": [ey, ex], "error": abs(ey - dy) + abs(ex - dx)}
        )
    return {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "modality": modality,
        "shifts": rows,
        "mean_error": float(np.mean([r["error"] for r in rows])),
    }
