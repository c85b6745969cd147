"""Dense feature maps: the one type every task consumes, and upsampling back to pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - annotation only: backbones import this module
    from .backbones.spec import BackboneSpec

__all__ = ["FeatureMap", "upsample_to_pixels"]


@dataclass(frozen=True)
class FeatureMap:
    """A grid of feature vectors computed from one image.

    Attributes
    ----------
    features : ndarray, shape (h, w, C), float32
        One C-dimensional vector per grid cell, row-major.
    stride : float
        Input-image pixels per grid step: 16 for DINOv3 ViT/16 (``16 / scale`` when the image was rescaled), any
        of 8, 4, 2, 1 for denser grids (``filterbank[stride=1]`` is per pixel; see docs/backbones.md, "Feature
        maps at any stride"). Cell (i, j) covers pixels [i·s, (i+1)·s) × [j·s, (j+1)·s), centred on
        ((i + 0.5)·s − 0.5, (j + 0.5)·s − 0.5).
    image_shape : (int, int)
        (H, W) of the source image before any padding; the grid covers ``ceil(H / stride)`` rows.
    backbone : str
        Name of the backbone that produced the features (e.g. ``"vit-small"``).
    weights : str
        The weights actually used: ``"placeholder"``, ``"random(seed=0)"`` or ``"pretrained:<source>"``.
    meta : dict
        Anything else worth recording (layers, normalisation, tiling).
    spec : BackboneSpec or None
        The identity of the backbone that made the features (name, weights, options that change them; see
        :mod:`~neuros.plugins.cv.backbones.spec`). A head refuses maps whose spec differs from its own. None
        for maps built by hand (a head then checks name, weights, dimension and stride only).
    """

    features: np.ndarray
    stride: float
    image_shape: tuple[int, int]
    backbone: str
    weights: str
    meta: dict[str, Any] = field(default_factory=dict)
    spec: BackboneSpec | None = None

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(f"features must be (h, w, C), got shape {self.features.shape}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(h, w) of the feature grid."""
        return (int(self.features.shape[0]), int(self.features.shape[1]))

    @property
    def feature_dim(self) -> int:
        """Number of channels C."""
        return int(self.features.shape[2])

    def flat(self) -> np.ndarray:
        """Features as an (h·w, C) matrix in row-major grid order (the report's (N, C) layout)."""
        return self.features.reshape(-1, self.features.shape[2])

    def to_pixels(self, values: np.ndarray | None = None) -> np.ndarray:
        """Bilinearly upsample ``values`` (h, w[, K]; default: the features) to the source image's pixels (the
        identity at stride 1). For edges that follow the image use :func:`~.guided.guided_upsample`."""
        return upsample_to_pixels(self.features if values is None else values, self.stride, self.image_shape)


def upsample_to_pixels(values: np.ndarray, stride: float, image_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a grid (h, w) or (h, w, K) to pixel resolution, cropped to ``image_shape``.

    Grid cell (i, j) is centred on pixel ((i + 0.5)·stride - 0.5, (j + 0.5)·stride - 0.5), matching how
    patches tile the (padded) image. Vectorised through ``torch.nn.functional.interpolate``; no Python loop
    over pixels.

    Parameters
    ----------
    values : ndarray
        (h, w) or (h, w, K) grid values (e.g. class logits or probabilities).
    stride : float
        Pixels per grid step.
    image_shape : (int, int)
        Output (H, W); must not exceed the grid extent ``(h·stride, w·stride)`` by more than one stride.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(values)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"values must be (h, w) or (h, w, K), got shape {np.shape(values)}")
    h, w, _ = arr.shape
    height, width = int(image_shape[0]), int(image_shape[1])
    out_h, out_w = max(round(h * stride), height), max(round(w * stride), width)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))[None]
    with torch.inference_mode():
        up = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False)
    out = up[0, :, :height, :width].permute(1, 2, 0).numpy()
    return out[:, :, 0] if squeeze else out
