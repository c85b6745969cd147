"""Patch-level correspondence: the report's API (``patch_correlation``, ``estimate_translation``).

Shift convention (everywhere in neurOS cv): ``(dy, dx)`` such that
``image_b ≈ np.roll(image_a, (dy, dx), axis=(0, 1))``, i.e. the content of patch ``(y, x)`` of *a* is found
at patch ``(y + dy, x + dx)`` of *b*.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["diagonal_means", "estimate_translation", "patch_correlation"]


def _as_patch_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 3:  # (h, w, C) feature grid
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, C) patch embeddings or an (h, w, C) grid, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/inf")
    return arr.astype(np.float32, copy=False)


def patch_correlation(a: Any, b: Any, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarity between every patch embedding of ``a`` and every one of ``b``.

    Parameters
    ----------
    a, b : array_like
        (N_a, C) and (N_b, C) patch embeddings (or (h, w, C) grids, flattened row-major).
    eps : float
        Vectors with a norm below ``eps`` are treated as zero and get similarity 0.

    Returns
    -------
    ndarray, shape (N_a, N_b), float32
        ``S[i, j] = <a_i, b_j> / (|a_i| |b_j|)``.
    """
    a2 = _as_patch_matrix(a, "a")
    b2 = _as_patch_matrix(b, "b")
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"a and b have different feature dimensions: {a2.shape[1]} vs {b2.shape[1]}")
    na = np.linalg.norm(a2, axis=1, keepdims=True)
    nb = np.linalg.norm(b2, axis=1, keepdims=True)
    an = np.divide(a2, na, out=np.zeros_like(a2), where=na > eps)
    bn = np.divide(b2, nb, out=np.zeros_like(b2), where=nb > eps)
    return an @ bn.T


def _grid(grid_size: Any, grid_shape: Any, n_a: int, n_b: int) -> tuple[int, int]:
    if grid_shape is not None:
        h, w = (int(v) for v in grid_shape)
    elif grid_size is not None:
        if isinstance(grid_size, (tuple, list, np.ndarray)):
            h, w = (int(v) for v in grid_size)
        else:
            h = w = int(grid_size)
    else:
        raise ValueError("give grid_size (square grid side) or grid_shape (h, w)")
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1×1, got {h}×{w}")
    if n_a != h * w or n_b != h * w:
        raise ValueError(f"similarity is {n_a}×{n_b} but a {h}×{w} grid has {h * w} patches per image")
    return h, w


def diagonal_means(similarity: Any, grid_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and count of ``S[(y, x), (y + dy, x + dx)]`` over all in-grid pairs, for every shift.

    Returns ``(means, counts)`` of shape (2h - 1, 2w - 1), indexed by ``(dy + h - 1, dx + w - 1)``. Work is
    O(N²) (every matrix entry is read once); the Python loop runs over the 2h - 1 row shifts only, and the
    column-shift sums are one ``np.bincount`` per row shift.
    """
    s = np.asarray(similarity, dtype=np.float64)
    h, w = grid_shape
    s4 = s.reshape(h, w, h, w)
    sums = np.zeros((2 * h - 1, 2 * w - 1))
    xa, xb = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
    dx_key = (xb - xa + w - 1).ravel()
    for dy in range(-(h - 1), h):
        ya = np.arange(max(0, -dy), min(h, h - dy))
        block = s4[ya, :, ya + dy, :].sum(axis=0)  # (w, w): [xa, xb]
        sums[dy + h - 1] = np.bincount(dx_key, weights=block.ravel(), minlength=2 * w - 1)
    dys = np.arange(-(h - 1), h)
    dxs = np.arange(-(w - 1), w)
    counts = (h - np.abs(dys))[:, None] * (w - np.abs(dxs))[None, :]
    return sums / counts, counts


def estimate_translation(
    similarity: Any,
    grid_size: int | tuple[int, int] | None = None,
    *,
    grid_shape: tuple[int, int] | None = None,
    max_shift: int | tuple[int, int] | None = None,
    min_overlap: int = 1,
) -> tuple[int, int]:
    """The whole-patch shift that maximises the mean similarity along the matching diagonal (the report's).

    For a candidate shift ``(dy, dx)`` the score is the mean of ``S[(y, x), (y + dy, x + dx)]`` over all
    patches ``(y, x)`` whose partner lies inside the grid. Ties go to the smaller shift (|dy| + |dx|), then
    to the first in row-major order.

    Parameters
    ----------
    similarity : array_like, shape (N, N)
        ``patch_correlation(a, b)`` of two images with the same grid.
    grid_size : int or (int, int)
        Side of a square grid (the report's argument); a pair is read as ``(h, w)``.
    grid_shape : (int, int), optional
        ``(h, w)`` of a non-square grid (takes precedence over ``grid_size``).
    max_shift : int or (int, int), optional
        Largest |dy| (and |dx|) considered, in patches. Default: every shift with enough overlap.
    min_overlap : int
        Fewest overlapping patches a shift needs to be considered (default 1, the report's definition).

    Returns
    -------
    (dy, dx) : tuple of int
        In patches, such that ``b ≈ roll(a, (dy, dx))``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((6, 6, 8))
    >>> b = np.roll(a, (1, -2), axis=(0, 1))
    >>> estimate_translation(patch_correlation(a, b), 6)
    (1, -2)
    """
    s = np.asarray(similarity)
    if s.ndim != 2:
        raise ValueError(f"similarity must be a 2-D (N_a, N_b) matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("similarity contains NaN/inf")
    h, w = _grid(grid_size, grid_shape, s.shape[0], s.shape[1])
    means, counts = diagonal_means(s, (h, w))
    return _best_shift(means, counts, (h, w), max_shift, min_overlap)


def _best_shift(
    means: np.ndarray,
    counts: np.ndarray,
    grid_shape: tuple[int, int],
    max_shift: int | tuple[int, int] | None,
    min_overlap: int,
) -> tuple[int, int]:
    """Arg-max over allowed shifts of a (2h-1, 2w-1) score table, ties to the smallest shift."""
    h, w = grid_shape
    dys = np.arange(-(h - 1), h)[:, None]
    dxs = np.arange(-(w - 1), w)[None, :]
    allowed = counts >= max(int(min_overlap), 1)
    if max_shift is not None:
        my, mx = (max_shift, max_shift) if np.isscalar(max_shift) else max_shift
        if int(my) < 0 or int(mx) < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        allowed &= (np.abs(dys) <= int(my)) & (np.abs(dxs) <= int(mx))
    if not allowed.any():
        raise ValueError(f"no shift satisfies max_shift={max_shift} and min_overlap={min_overlap}")
    score = np.where(allowed, means, -np.inf)
    best = score.max()
    # Scores within 1e-6 of the best are ties (float32 similarities differ in the last bits).
    ties = np.argwhere(score >= best - 1e-6 * max(1.0, abs(best)))
    mag = np.abs(ties[:, 0] - (h - 1)) + np.abs(ties[:, 1] - (w - 1))
    iy, ix = ties[np.argmin(mag)]
    return int(iy - (h - 1)), int(ix - (w - 1))
