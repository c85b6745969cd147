"""Shift bookkeeping shared by patch matching (:mod:`.feature_matching`) and image registration
(:mod:`.registration`): the search window, overlap counts, the minimum-overlap rule and the tie rule.

Conventions
-----------
A shift ``(dy, dx)`` means ``b ≈ np.roll(a, (dy, dx), axis=(0, 1))``. A *score table* for a window
``±(my, mx)`` has shape ``(2·my + 1, 2·mx + 1)`` and holds the score of shift ``(dy, dx)`` at index
``(dy + my, dx + mx)``: zero shift is the centre. The full table of an ``(h, w)`` grid is the window
``±(h - 1, w - 1)``.

Tie rule
--------
Among the allowed shifts, every score within ``TIE_RTOL · max(1, |best|)`` of the best one is a tie
(float32 features give similarities that differ in their last bits, and flat images give whole plateaus
of equal scores); ties go to the smallest shift ``|dy| + |dx|``, then to the first in row-major order
(smallest ``dy``, then smallest ``dx``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "TIE_RTOL",
    "best_shift",
    "crop_window",
    "min_overlap_count",
    "overlap_count",
    "overlap_counts",
    "overlap_mask",
    "parse_max_shift",
    "tie_tolerance",
]

#: Relative tolerance of the tie rule: scores within ``TIE_RTOL · max(1, |best|)`` of the best are ties.
TIE_RTOL = 1e-6


def tie_tolerance(best: float) -> float:
    """How far below ``best`` a score may lie and still tie with it: ``TIE_RTOL · max(1, |best|)``."""
    return TIE_RTOL * max(1.0, abs(float(best)))


def parse_max_shift(
    max_shift: Any,
    grid_shape: tuple[int, int],
    *,
    subpixel: bool = False,
    unit: str = "patches",
) -> tuple[int, int]:
    """The half-sizes ``(my, mx)`` of the integer search window for a ``max_shift`` bound on an (h, w) grid.

    Parameters
    ----------
    max_shift : None, number or (number, number)
        Largest ``|dy|`` (and ``|dx|``). None: every shift, ``(h - 1, w - 1)``. One number bounds both axes.
    grid_shape : (int, int)
        ``(h, w)``; the window is clipped to ``(h - 1, w - 1)``.
    subpixel : bool
        False (integer shifts): a fractional bound is rounded down (``|dy| <= 2.5`` allows ``|dy| <= 2``).
        True (sub-pixel answers): rounded up, so the integer window covers every shift within the bound.
    unit : str
        Named in the error message.

    Returns
    -------
    (my, mx) : tuple of int

    Raises
    ------
    ValueError
        A bound that is negative, not finite, not a number, or not one or two values.

    Examples
    --------
    >>> parse_max_shift(None, (5, 8))
    (4, 7)
    >>> parse_max_shift((2, 30), (5, 8))
    (2, 7)
    >>> parse_max_shift(2.5, (9, 9)), parse_max_shift(2.5, (9, 9), subpixel=True)
    ((2, 2), (3, 3))
    """
    h, w = (int(n) for n in grid_shape)
    if max_shift is None:
        return h - 1, w - 1
    pair = _bound_pair(max_shift, unit)
    rnd = math.ceil if subpixel else math.floor
    return min(int(rnd(pair[0])), h - 1), min(int(rnd(pair[1])), w - 1)


def _bound_pair(max_shift: Any, unit: str) -> tuple[float, float]:
    msg = f"max_shift must be >= 0 {unit} (one number or a (dy, dx) pair), got {max_shift!r}"
    values = np.asarray(max_shift, dtype=object)
    if values.ndim > 1:
        raise ValueError(msg)
    values = np.atleast_1d(values)
    if len(values) == 1:
        values = np.repeat(values, 2)
    if len(values) != 2:
        raise ValueError(msg)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(msg)
        if not math.isfinite(float(v)) or float(v) < 0:
            raise ValueError(msg)
        out.append(float(v))
    return out[0], out[1]


def overlap_counts(grid_shape: tuple[int, int], window: tuple[int, int] | None = None) -> np.ndarray:
    """Cells of an (h, w) grid that keep a partner inside the grid, for every shift of a window.

    Parameters
    ----------
    grid_shape : (int, int)
        ``(h, w)``.
    window : (int, int), optional
        ``(my, mx)``; default the full table ``(h - 1, w - 1)``.

    Returns
    -------
    ndarray of int64, shape (2·my + 1, 2·mx + 1)
        ``(h - |dy|) · (w - |dx|)`` (0 where the shift leaves the grid) at ``(dy + my, dx + mx)``.
    """
    h, w = (int(n) for n in grid_shape)
    my, mx = (h - 1, w - 1) if window is None else (int(window[0]), int(window[1]))
    rows = np.maximum(h - np.abs(np.arange(-my, my + 1)), 0)
    cols = np.maximum(w - np.abs(np.arange(-mx, mx + 1)), 0)
    return rows[:, None].astype(np.int64) * cols[None, :]


def overlap_count(grid_shape: tuple[int, int], shift: tuple[int, int]) -> int:
    """Cells of an (h, w) grid that keep a partner inside the grid under one whole-cell ``shift``."""
    h, w = (int(n) for n in grid_shape)
    return max(h - abs(int(shift[0])), 0) * max(w - abs(int(shift[1])), 0)


def min_overlap_count(grid_shape: tuple[int, int], fraction: float) -> int:
    """The fewest overlapping cells (at least 1) that ``fraction`` of an (h, w) grid asks for.

    ``ceil(fraction · h · w)``, forgiving float rounding (``0.3 · 10 · 10`` is 30, not 31).

    Raises
    ------
    ValueError
        ``fraction`` outside [0, 1].
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"min_overlap must be a fraction of the grid in [0, 1], got {fraction}")
    h, w = (int(n) for n in grid_shape)
    return max(1, math.ceil(float(fraction) * h * w - 1e-9))


def overlap_mask(counts: np.ndarray, min_count: float) -> np.ndarray:
    """Shifts whose overlap count reaches ``min_count`` cells (at least one cell: a shift needs a pair)."""
    return np.asarray(counts) >= max(math.ceil(float(min_count)), 1)


def crop_window(table: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """The ``±(my, mx)`` centre of a centred score table (a view)."""
    cy, cx = (table.shape[0] - 1) // 2, (table.shape[1] - 1) // 2
    my, mx = int(window[0]), int(window[1])
    if not (0 <= my <= cy and 0 <= mx <= cx):
        raise ValueError(f"window ±({my}, {mx}) does not fit a table of shape {table.shape}")
    return table[cy - my : cy + my + 1, cx - mx : cx + mx + 1]


def best_shift(scores: np.ndarray, allowed: np.ndarray | None = None) -> tuple[int, int]:
    """The arg-max of a centred score table over the allowed shifts, with the module's tie rule.

    Parameters
    ----------
    scores : ndarray, shape (2·my + 1, 2·mx + 1)
        Score of shift ``(dy, dx)`` at ``(dy + my, dx + mx)``; NaN entries are never chosen.
    allowed : ndarray of bool, same shape, optional
        Shifts that may be chosen (default: every finite score).

    Returns
    -------
    (dy, dx) : tuple of int

    Raises
    ------
    ValueError
        No shift is allowed.

    Examples
    --------
    >>> import numpy as np
    >>> best_shift(np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    (-1, -1)
    >>> best_shift(np.zeros((3, 5)))
    (0, 0)
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] % 2 == 0 or s.shape[1] % 2 == 0:
        raise ValueError(f"a score table has odd sides (2·my + 1, 2·mx + 1), got shape {s.shape}")
    ok = ~np.isnan(s) if allowed is None else np.asarray(allowed, dtype=bool) & ~np.isnan(s)
    if not ok.any():
        raise ValueError("no shift is allowed")
    score = np.where(ok, s, -np.inf)
    best = score.max()
    ties = np.argwhere(ok & (score >= best - tie_tolerance(best)))
    my, mx = (s.shape[0] - 1) // 2, (s.shape[1] - 1) // 2
    dys, dxs = ties[:, 0] - my, ties[:, 1] - mx
    i = int(np.argmin(np.abs(dys) + np.abs(dxs)))  # first minimum: row-major order among equal sizes
    return int(dys[i]), int(dxs[i])
