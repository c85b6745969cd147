"""DINOv3 backbones: the released variants by short id, and ``DINOv3Backbone``.

The report's ids (``vit-small``, ``cnx-tiny``, …) map to Hugging Face hub ids. ``weights`` chooses what runs:
``"placeholder"`` (the report's stand-in), ``"random"`` (the real architecture, seeded random init),
``"pretrained"`` (real weights from a local folder or the Hugging Face cache) or ``"auto"`` (pretrained
when present, else placeholder). Every :class:`FeatureMap` names the weights used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import as_image
from ..features import FeatureMap
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, SAT493M_MEAN, SAT493M_STD, prepare
from .base import Backbone, register_backbone
from .placeholder import placeholder_features

__all__ = ["VARIANTS", "DINOv3Backbone", "Variant"]

WEIGHT_MODES = ("auto", "pretrained", "random", "placeholder")


@dataclass(frozen=True)
class Variant:
    """A released DINOv3 checkpoint.

    ``feature_dim`` is the dimension of the dense features we return by default: the ViT embedding
    dimension, or for ConvNeXt the channels of the stride-16 stage (so its grid matches ViT/16 grids).
    ``embed_dim`` is the model's final (pooled) dimension.
    """

    model_id: str
    hub_id: str
    arch: str  # "vit" | "convnext"
    feature_dim: int
    embed_dim: int
    params_m: float
    pretrain: str  # "LVD-1689M" | "SAT-493M"
    patch_size: int = 16

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.pretrain == "SAT-493M":
            return SAT493M_MEAN, SAT493M_STD
        return IMAGENET_MEAN, IMAGENET_STD


_V = Variant
VARIANTS: dict[str, Variant] = {
    v.model_id: v
    for v in (
        _V("vit-small", "facebook/dinov3-vits16-pretrain-lvd1689m", "vit", 384, 384, 21.6, "LVD-1689M"),
        _V("vit-small-plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m", "vit", 384, 384, 28.7, "LVD-1689M"),
        _V("vit-base", "facebook/dinov3-vitb16-pretrain-lvd1689m", "vit", 768, 768, 85.7, "LVD-1689M"),
        _V("vit-large", "facebook/dinov3-vitl16-pretrain-lvd1689m", "vit", 1024, 1024, 300.0, "LVD-1689M"),
        _V("vit-huge-plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m", "vit", 1280, 1280, 840.0, "LVD-1689M"),
        _V("vit-7b", "facebook/dinov3-vit7b16-pretrain-lvd1689m", "vit", 4096, 4096, 6716.0, "LVD-1689M"),
        _V("vit-large-sat", "facebook/dinov3-vitl16-pretrain-sat493m", "vit", 1024, 1024, 300.0, "SAT-493M"),
        _V("vit-7b-sat", "facebook/dinov3-vit7b16-pretrain-sat493m", "vit", 4096, 4096, 6716.0, "SAT-493M"),
        _V("cnx-tiny", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m", "convnext", 384, 768, 27.8, "LVD-1689M"),
        _V("cnx-small", "facebook/dinov3-convnext-small-pretrain-lvd1689m", "convnext", 384, 768, 49.5, "LVD-1689M"),
        _V("cnx-base", "facebook/dinov3-convnext-base-pretrain-lvd1689m", "convnext", 512, 1024, 87.6, "LVD-1689M"),
        _V("cnx-large", "facebook/dinov3-convnext-large-pretrain-lvd1689m", "convnext", 768, 1536, 197.9, "LVD-1689M"),
    )
}


class DINOv3Backbone(Backbone):
    """A DINOv3 backbone with the report's interface.

    Parameters
    ----------
    model_id : str
        A short id from :data:`VARIANTS` (``"vit-small"``, ``"cnx-tiny"``, …).
    weights : {"auto", "pretrained", "random", "placeholder"}
        Which weights to run; see the module docstring.
    device, dtype : str or None
        Torch device and dtype for the real model (unused by the placeholder).

    Examples
    --------
    >>> import numpy as np
    >>> bb = DINOv3Backbone("vit-small", weights="placeholder")
    >>> bb.embed(np.zeros((2, 64, 48))).shape
    (2, 12, 384)
    >>> bb.grid_shape
    (4, 3)
    """

    def __init__(
        self,
        model_id: str = "vit-small",
        weights: str = "auto",
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
        if model_id not in VARIANTS:
            from .base import lookup

            lookup(model_id)  # raises UnknownBackboneError with suggestions
        self.model_id = model_id
        self.variant = VARIANTS[model_id]
        self.name = model_id
        self.patch_size = self.variant.patch_size
        self.feature_dim = self.variant.feature_dim
        self.device = device
        self.dtype = dtype
        if weights in ("auto", "placeholder"):
            self.weights = "placeholder"
        else:
            raise NotImplementedError(f"weights={weights!r} is not available yet")

    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense patch features of one image (padded, not cropped, to the 16-pixel grid)."""
        arr = as_image(image, min_size=self.patch_size)
        padded = prepare(arr, self.patch_size)
        feats = placeholder_features(padded, self.model_id, self.feature_dim, self.patch_size)
        return self._remember(
            FeatureMap(feats, float(self.patch_size), arr.shape[:2], self.name, self.weights)
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(hub_id=self.variant.hub_id, arch=self.variant.arch, pretrain=self.variant.pretrain)
        return d


def _factory(model_id: str):
    def build(**kw: Any) -> DINOv3Backbone:
        return DINOv3Backbone(model_id, **kw)

    return build


for _v in VARIANTS.values():
    register_backbone(
        _v.model_id,
        _factory(_v.model_id),
        summary=f"DINOv3 {_v.arch.upper()} ({_v.pretrain})",
        family="dinov3",
        hub_id=_v.hub_id,
        feature_dim=_v.feature_dim,
        params_m=_v.params_m,
        patch_size=_v.patch_size,
    )
