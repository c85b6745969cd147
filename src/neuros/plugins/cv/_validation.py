"""Input checks shared by every public function.

Each check raises ``TypeError`` or ``ValueError`` with a one-line message that names the argument and says
what to fix; the CLI turns these into one-line errors with a non-zero exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["as_image", "as_image_list", "check_mask", "check_positive_int"]


def as_image(image: Any, name: str = "image", min_size: int = 1) -> np.ndarray:
    """Validate one image and return it as an ndarray (H×W or H×W×C, any real dtype).

    Parameters
    ----------
    image : array_like
        A 2-D greyscale image or a 3-D channel-last image.
    name : str
        The argument name used in error messages.
    min_size : int
        The smallest allowed height and width in pixels (e.g. the patch size).

    Raises
    ------
    TypeError
        When ``image`` is not numeric.
    ValueError
        When ``image`` is empty, has the wrong number of dimensions, contains NaN/inf, or is smaller than
        ``min_size`` on either side.
    """
    if image is None:
        raise TypeError(f"{name} is None; expected a 2-D (H, W) or 3-D (H, W, C) array")
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); expected a 2-D (H, W) or 3-D (H, W, C) image")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be 2-D (H, W) or 3-D channel-last (H, W, C), got {arr.ndim}-D shape {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] > 64:
        raise ValueError(
            f"{name} has shape {arr.shape}: the last axis ({arr.shape[2]}) looks spatial, not channels; "
            "pass one 2-D slice at a time or move channels last"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf pixel(s); replace or mask them before extraction")
    h, w = arr.shape[:2]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} is {h}×{w} pixels, smaller than one {min_size}×{min_size} patch")
    return arr


def as_image_list(images: Any, name: str = "images", min_size: int = 1) -> list[np.ndarray]:
    """Validate a batch of images: a list/tuple of arrays, a (B, H, W) or a (B, H, W, C) array.

    A single 2-D array is accepted as a batch of one.
    """
    if images is None:
        raise TypeError(f"{name} is None; expected a list of images or a (B, H, W[, C]) array")
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            seq: Sequence[Any] = [images]
        elif images.ndim in (3, 4):
            seq = list(images)
        else:
            raise ValueError(
                f"{name} must be (H, W), (B, H, W) or (B, H, W, C), got {images.ndim}-D shape {images.shape}"
            )
    elif isinstance(images, (list, tuple)):
        seq = images
    else:
        raise TypeError(f"{name} must be a list of arrays or an ndarray, got {type(images).__name__}")
    if len(seq) == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    return [as_image(im, f"{name}[{i}]", min_size=min_size) for i, im in enumerate(seq)]


def check_mask(mask: Any, image_shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Validate an integer/boolean label mask that must match an image's height and width."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be a numeric label array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN/inf; labels must be integers")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} holds non-integer labels; masks must contain integer class ids")
        arr = arr.astype(np.int64)
    if arr.shape != tuple(image_shape[:2]):
        raise ValueError(f"{name} shape {arr.shape} does not match image shape {tuple(image_shape[:2])}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); class ids must be >= 0")
    return arr


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
