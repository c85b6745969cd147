"""From any image to model input: intensity scaling, channels, normalisation and padding to the patch grid.

Pure NumPy functions; the DINOv3 path converts the result to a torch tensor at the last moment. We do our own
preprocessing instead of transformers' image processors because those (a) resize to 224² (b) always multiply
by 1/255, mis-scaling float and 16-bit input, and (c) need torchvision, which does not import beside the
pinned CPU torch wheel.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._validation import as_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAT493M_MEAN",
    "SAT493M_STD",
    "grid_shape_for",
    "normalize",
    "pad_to_multiple",
    "prepare",
    "rescale",
    "scaled_shape",
    "to_float01",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Statistics of the satellite pre-training set (SAT-493M), from the DINOv3 release.
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)

Scaling = Literal["auto", "dtype", "percentile", "minmax", "none"]


def to_float01(
    image: np.ndarray,
    scaling: Scaling = "auto",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Scale an image's intensities to float32 in [0, 1].

    Parameters
    ----------
    image : ndarray
        (H, W) or (H, W, C) image of any real dtype.
    scaling : {"auto", "dtype", "percentile", "minmax", "none"}
        ``"auto"``: uint8 and bool are divided by their maximum; other integer types (16-bit EM, MRI) and
        floats outside [0, 1] are scaled robustly between the given percentiles; floats already in [0, 1]
        are kept. ``"dtype"``: divide integers by their dtype maximum, keep floats. ``"percentile"``: robust
        scaling always. ``"minmax"``: (x - min) / (max - min). ``"none"``: cast only.
    percentiles : (float, float)
        Lower and upper percentiles for robust scaling; values outside are clipped.

    Returns
    -------
    ndarray of float32
        Same shape as ``image``. A constant image maps to zeros.
    """
    arr = np.asarray(image)
    if scaling not in ("auto", "dtype", "percentile", "minmax", "none"):
        raise ValueError(f"scaling must be auto/dtype/percentile/minmax/none, got {scaling!r}")
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if scaling == "none":
        return arr.astype(np.float32)
    is_int = np.issubdtype(arr.dtype, np.integer)
    if scaling == "dtype" or (scaling == "auto" and arr.dtype == np.uint8):
        if is_int:
            info = np.iinfo(arr.dtype)
            return ((arr.astype(np.float32) - info.min) / float(info.max - info.min)).astype(np.float32)
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    arr = arr.astype(np.float32)
    if scaling == "auto" and not is_int and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr
    if scaling == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
    else:
        lo, hi = (float(v) for v in np.percentile(arr, [lo_p, hi_p]))
        if hi <= lo:  # a nearly constant image: fall back to the full range
            lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_rgb(image: np.ndarray, channels: tuple[int, int, int] | None = None) -> np.ndarray:
    """Return an (H, W, 3) array from a greyscale or multi-channel image.

    Rule: (H, W) and (H, W, 1) are replicated to 3 channels; (H, W, 2) becomes (c0, c1, mean(c0, c1));
    (H, W, 3) is kept; (H, W, 4) is treated as RGBA and the alpha channel dropped; more than 4 channels use
    the first three. ``channels`` picks three channel indices explicitly instead.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    if channels is not None:
        idx = tuple(int(i) for i in channels)
        if len(idx) != 3 or min(idx) < 0 or max(idx) >= c:
            raise ValueError(f"channels must be three indices in [0, {c - 1}], got {channels}")
        return arr[:, :, list(idx)]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        return np.concatenate([arr, arr.mean(axis=2, keepdims=True).astype(arr.dtype)], axis=2)
    return arr[:, :, :3]


def normalize(
    image: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> np.ndarray:
    """Subtract the per-channel mean and divide by the std of an (H, W, 3) float image."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return ((np.asarray(image, dtype=np.float32) - m) / s).astype(np.float32)


def grid_shape_for(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch-grid shape of an image after padding up to a multiple of ``patch_size`` (ceil division)."""
    return (-(-int(height) // patch_size), -(-int(width) // patch_size))


def pad_to_multiple(image: np.ndarray, multiple: int, mode: str = "reflect") -> np.ndarray:
    """Pad the bottom and right of an image so both sides are multiples of ``multiple``.

    Images whose sides are not multiples of the patch size are padded, never cropped: the last row/column of
    patches then straddles the border, and :class:`~neuros.plugins.cv.features.FeatureMap` keeps the original
    ``image_shape`` so pixel-level outputs are cropped back. ``"reflect"`` falls back to ``"edge"`` when the
    image is too small to reflect.
    """
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return arr
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "edge"
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode=mode)


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H, W) of an image after resizing by ``scale`` (rounded, at least one pixel)."""
    return (max(1, round(height * scale)), max(1, round(width * scale)))


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize an (H, W, C) float image by ``scale`` (bilinear; antialiased when shrinking).

    Features are only as fine as the input is large: ``scale=2`` doubles the feature-grid resolution
    (each feature then covers 8×8 source pixels with a /16 model), ``scale=0.5`` halves the cost.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    arr = np.asarray(image, dtype=np.float32)
    if scale == 1:
        return arr
    import torch
    import torch.nn.functional as F

    h, w = scaled_shape(arr.shape[0], arr.shape[1], scale)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=scale < 1)
    return out[0].permute(1, 2, 0).numpy()


def prepare(
    image: np.ndarray,
    patch_size: int,
    scaling: Scaling = "auto",
    channels: tuple[int, int, int] | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Validate, scale to [0, 1], convert to RGB, resize by ``scale`` and pad to the patch grid.

    Returns an (H', W', 3) float32 array in [0, 1] with H', W' multiples of ``patch_size``. Normalisation
    (mean/std) is left to the model side, where it runs on the batch tensor.
    """
    arr = as_image(image, min_size=1)
    rgb = rescale(to_rgb(to_float01(arr, scaling), channels), scale)
    return pad_to_multiple(rgb, patch_size)
