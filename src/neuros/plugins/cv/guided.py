"""Guided upsampling: a coarse grid of values (features or class probabilities) brought to pixels along the
image's own edges.

:func:`guided_filter` is the guided image filter of He, Sun and Tang [1]_: within every window the output is a
linear function of the guide, ``q = a·I + b``, fitted by least squares to the input, so edges of the guide
pass into the output while flat regions are smoothed. :func:`guided_upsample` upsamples a grid bilinearly
(:func:`~neuros.plugins.cv.features.upsample_to_pixels`) and then filters every channel guided by the grey image
— the joint-upsampling use of the filter described in [1]_. Box means come from
``scipy.ndimage.uniform_filter`` (O(1) per pixel whatever the radius), channels are filtered in chunks so that
memory stays a few copies of one chunk. A ground-floor module: NumPy/SciPy only, plus the bilinear upsampling
of :mod:`.features`.

References
----------
.. [1] K. He, J. Sun and X. Tang, "Guided Image Filtering", ECCV 2010; IEEE TPAMI 35(6), 2013.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._validation import as_image
from .features import upsample_to_pixels
from .preprocess import to_float01

__all__ = ["guide_image", "guided_filter", "guided_upsample"]

#: Channels filtered at once (bounds the temporary arrays to a few (H, W, chunk) float32 stacks).
CHANNEL_CHUNK = 32
#: A distribution along the last axis sums to 1 within this tolerance (auto-detection of probabilities).
SIMPLEX_TOL = 1e-3


def guide_image(image: np.ndarray) -> np.ndarray:
    """The grey guide (H, W) float32 in [0, 1] of an image: :func:`~.preprocess.to_float01` (``auto``), then the
    BT.601 luminance of colour images (the filter bank's rule)."""
    arr = to_float01(as_image(image))
    if arr.ndim == 3:
        rgb = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
        arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)² window of every pixel (reflecting borders) of an (H, W) or channel-first (K, H, W)
    array (channel-first: the filtered axes are the fast ones, 3× faster than (H, W, K))."""
    size = (1,) * (x.ndim - 2) + (2 * radius + 1, 2 * radius + 1)
    return ndimage.uniform_filter(x, size=size, mode="reflect")


def guided_filter(values: np.ndarray, guide: np.ndarray, radius: int, eps: float = 1e-3) -> np.ndarray:
    """He et al.'s guided filter of ``values`` (H, W[, K]) by the grey ``guide`` (H, W).

    In each (2r+1)² window ω the output is ``a·I + b`` with ``a = cov(I, p) / (var(I) + eps)`` and
    ``b = mean(p) − a·mean(I)``; every pixel averages the (a, b) of the windows that contain it. Linear in
    ``values`` (so sums across channels are kept: constant inputs come out unchanged) and independent of
    their scale; ``eps`` is in the guide's units squared (the guide in [0, 1]: ``eps=1e-3`` keeps edges whose
    local contrast exceeds about 0.03).

    Parameters
    ----------
    values : ndarray
        (H, W) or (H, W, K) input.
    guide : ndarray
        (H, W) guide image (float, [0, 1] for the documented meaning of ``eps``).
    radius : int
        Window radius in pixels (≥ 1).
    eps : float
        Regularisation (> 0): larger smooths more across edges.

    Returns
    -------
    ndarray
        Float32 array of ``values``' shape.
    """
    p = np.asarray(values, dtype=np.float32)
    guide_arr = np.asarray(guide, dtype=np.float32)
    if guide_arr.ndim != 2 or p.shape[:2] != guide_arr.shape:
        raise ValueError(f"guide must be (H, W) matching values' first two axes {p.shape[:2]}, got {guide_arr.shape}")
    if not (isinstance(radius, (int, np.integer)) and radius >= 1):
        raise ValueError(f"radius must be a whole number of pixels ≥ 1, got {radius!r}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    r = int(radius)
    squeeze = p.ndim == 2
    stack = p[:, :, None] if squeeze else p
    mean_i = _box(guide_arr, r)
    var_i = _box(guide_arr * guide_arr, r) - mean_i * mean_i
    inv = 1.0 / (np.maximum(var_i, 0.0) + np.float32(eps))
    out = np.empty_like(stack)
    for c0 in range(0, stack.shape[2], CHANNEL_CHUNK):
        chunk = np.ascontiguousarray(np.moveaxis(stack[:, :, c0 : c0 + CHANNEL_CHUNK], -1, 0))  # (k, H, W)
        mean_p = _box(chunk, r)
        a = (_box(guide_arr * chunk, r) - mean_i * mean_p) * inv
        b = mean_p - a * mean_i
        out[:, :, c0 : c0 + CHANNEL_CHUNK] = np.moveaxis(_box(a, r) * guide_arr + _box(b, r), 0, -1)
    return out[:, :, 0] if squeeze else out


def _is_simplex(values: np.ndarray) -> bool:
    """Whether ``values`` (h, w, K ≥ 2) look like per-cell class probabilities: in [0, 1] and summing to 1."""
    if values.ndim != 3 or values.shape[2] < 2:
        return False
    if values.min() < -SIMPLEX_TOL or values.max() > 1 + SIMPLEX_TOL:
        return False
    return bool(np.abs(values.sum(axis=2) - 1).max() <= SIMPLEX_TOL)


def _to_simplex(q: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and renormalise along the last axis (every entry ≤ the sum, so the result stays ≤ 1)."""
    q = np.clip(q, 0.0, 1.0)
    total = q.sum(axis=2, keepdims=True)
    flat = total <= 1e-12  # cannot happen for a filtered distribution; uniform if it ever does
    q = np.where(flat, np.float32(1.0 / q.shape[2]), q / np.where(flat, 1.0, total))
    return q.astype(np.float32)


def guided_upsample(values: np.ndarray, stride: float, image: np.ndarray, radius: int | None = None,
                    eps: float = 1e-3, *, probabilities: bool | None = None) -> np.ndarray:
    """Upsample a grid to pixels bilinearly, then sharpen it along the image's edges with a guided filter.

    Parameters
    ----------
    values : ndarray
        (h, w, K) (or (h, w)) grid values: features or class probabilities, cell (i, j) centred on pixel
        ((i + 0.5)·stride − 0.5, (j + 0.5)·stride − 0.5) as in :class:`~.features.FeatureMap`.
    stride : float
        Pixels of ``image`` per grid cell (≥ 1).
    image : ndarray
        The guide: (H, W) or (H, W, C) image of any real dtype; scaled to [0, 1] grey by :func:`guide_image`.
        The output has its (H, W). uint8 and floats in [0, 1] are scaled alike in every tile; other images are
        stretched between their own percentiles, so for tile-by-tile use pass them already in [0, 1].
    radius : int, optional
        Guided-filter window radius in pixels; default ``max(1, ceil(stride))`` — one grid cell, the width of
        the transition bilinear upsampling leaves at an edge.
    eps : float
        Guided-filter regularisation in grey levels squared (see :func:`guided_filter`).
    probabilities : bool, optional
        Treat ``values`` as class probabilities (last axis): the output is clipped to [0, 1] and renormalised
        to sum to 1 (the filter keeps sums, but its linear fit can overshoot near edges). Default: detected —
        K ≥ 2 values in [0, 1] summing to 1 per cell.

    Returns
    -------
    ndarray
        (H, W, K) float32 (or (H, W) for a 2-D input).

    Examples
    --------
    >>> img = np.zeros((64, 64), np.float32); img[:, 29:] = 1  # an edge inside the second 16-px cell
    >>> grid = np.stack([1 - img[8::16, 8::16], img[8::16, 8::16]], axis=-1)  # (4, 4, 2) class probabilities
    >>> p = guided_upsample(grid, 16, img)
    >>> p[:, 28:30].argmax(-1)[0].tolist(), bool(np.allclose(p.sum(-1), 1))  # the class boundary is the edge
    ([0, 1], True)
    >>> upsample_to_pixels(grid, 16, img.shape)[:, 28:30].argmax(-1)[0].tolist()  # bilinear: 3 px off
    [0, 0]
    """
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"values must be (h, w) or (h, w, K), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("values contain NaN or infinity; guided upsampling needs finite values")
    if not (float(stride) >= 1 and math.isfinite(float(stride))):
        raise ValueError(f"stride must be a number of pixels ≥ 1, got {stride!r}")
    guide = guide_image(image)
    h, w = arr.shape[:2]
    if h * float(stride) < guide.shape[0] - float(stride) or w * float(stride) < guide.shape[1] - float(stride):
        raise ValueError(f"a {h}×{w} grid at stride {float(stride):g} does not cover a {guide.shape[0]}×"
                         f"{guide.shape[1]} image; pass the image the grid was computed from")
    simplex = _is_simplex(arr) if probabilities is None else bool(probabilities)
    r = max(1, math.ceil(float(stride))) if radius is None else radius
    up = upsample_to_pixels(arr, float(stride), guide.shape)
    q = guided_filter(up, guide, r, eps)
    return _to_simplex(q) if simplex and q.ndim == 3 else q
