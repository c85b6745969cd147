"""The released DINOv3 checkpoints: one table (:data:`VARIANTS`) from the report's short ids to hub ids,
architectures (transformers config values) and facts for listings. Pure data: no weights, no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, SAT493M_MEAN, SAT493M_STD

__all__ = ["LVD", "SAT", "VARIANTS", "VIT_BASE", "Variant", "by_hub", "by_timm_arch", "convnext_receptive_field",
           "count_params", "vit_config"]

_VIT_BASE = dict(
    patch_size=16, num_register_tokens=4, layerscale_value=1.0, layer_norm_eps=1e-5, rope_theta=100.0,
    query_bias=True, key_bias=False, value_bias=True, proj_bias=True, mlp_bias=True, pos_embed_rescale=2.0,
)


def _vit(hidden: int, inter: int, layers: int, heads: int, gated: bool = False) -> dict[str, Any]:
    act = dict(use_gated_mlp=True, hidden_act="silu") if gated else dict(use_gated_mlp=False, hidden_act="gelu")
    return dict(_VIT_BASE, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, **act)


def _cnx(depths: list[int], hidden: list[int]) -> dict[str, Any]:
    return dict(depths=depths, hidden_sizes=hidden)


@dataclass(frozen=True)
class Variant:
    """A released DINOv3 checkpoint.

    ``feature_dim`` is the dimension of the dense features we return by default: the ViT embedding
    dimension, or for ConvNeXt the channels of the stride-16 stage (so its grid matches ViT/16 grids).
    ``embed_dim`` is the model's final (pooled) dimension. ``config`` holds the transformers config values
    of the release (from the official conversion scripts), so ``weights="random"`` builds the true network.
    """

    model_id: str
    hub_id: str
    arch: str  # "vit" | "convnext"
    feature_dim: int
    embed_dim: int
    params_m: float
    pretrain: str  # "LVD-1689M" | "SAT-493M"
    timm_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    patch_size: int = 16

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.pretrain == "SAT-493M":
            return SAT493M_MEAN, SAT493M_STD
        return IMAGENET_MEAN, IMAGENET_STD

    @property
    def hub_ids(self) -> tuple[str, ...]:
        """Where weights may be found: the official repo, then its ungated timm mirror."""
        return tuple(h for h in (self.hub_id, self.timm_id) if h)

    def hf_config(self) -> Any:
        """The transformers config of this release."""
        from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig

        cls = DINOv3ViTConfig if self.arch == "vit" else DINOv3ConvNextConfig
        return cls(**self.config)


_V = Variant
_LVD, _SAT = "LVD-1689M", "SAT-493M"
VARIANTS: dict[str, Variant] = {
    v.model_id: v
    for v in (
        _V("vit-small", "facebook/dinov3-vits16-pretrain-lvd1689m", "vit", 384, 384, 21.6, _LVD,
           "timm/vit_small_patch16_dinov3.lvd1689m", _vit(384, 1536, 12, 6)),
        _V("vit-small-plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m", "vit", 384, 384, 28.7, _LVD,
           "timm/vit_small_plus_patch16_dinov3.lvd1689m", _vit(384, 1536, 12, 6, gated=True)),
        _V("vit-base", "facebook/dinov3-vitb16-pretrain-lvd1689m", "vit", 768, 768, 85.7, _LVD,
           "timm/vit_base_patch16_dinov3.lvd1689m", _vit(768, 3072, 12, 12)),
        _V("vit-large", "facebook/dinov3-vitl16-pretrain-lvd1689m", "vit", 1024, 1024, 303.1, _LVD,
           "timm/vit_large_patch16_dinov3.lvd1689m", _vit(1024, 4096, 24, 16)),
        _V("vit-huge-plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m", "vit", 1280, 1280, 840.6, _LVD,
           "timm/vit_huge_plus_patch16_dinov3.lvd1689m", _vit(1280, 5120, 32, 20, gated=True)),
        _V("vit-7b", "facebook/dinov3-vit7b16-pretrain-lvd1689m", "vit", 4096, 4096, 6716.4, _LVD,
           "timm/vit_7b_patch16_dinov3.lvd1689m", _vit(4096, 8192, 40, 32, gated=True)),
        _V("vit-large-sat", "facebook/dinov3-vitl16-pretrain-sat493m", "vit", 1024, 1024, 303.1, _SAT,
           "timm/vit_large_patch16_dinov3.sat493m", _vit(1024, 4096, 24, 16)),
        _V("vit-7b-sat", "facebook/dinov3-vit7b16-pretrain-sat493m", "vit", 4096, 4096, 6716.4, _SAT,
           "timm/vit_7b_patch16_dinov3.sat493m", _vit(4096, 8192, 40, 32, gated=True)),
        _V("cnx-tiny", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m", "convnext", 384, 768, 27.8, _LVD,
           "timm/convnext_tiny.dinov3_lvd1689m", _cnx([3, 3, 9, 3], [96, 192, 384, 768])),
        _V("cnx-small", "facebook/dinov3-convnext-small-pretrain-lvd1689m", "convnext", 384, 768, 49.5, _LVD,
           "timm/convnext_small.dinov3_lvd1689m", _cnx([3, 3, 27, 3], [96, 192, 384, 768])),
        _V("cnx-base", "facebook/dinov3-convnext-base-pretrain-lvd1689m", "convnext", 512, 1024, 87.6, _LVD,
           "timm/convnext_base.dinov3_lvd1689m", _cnx([3, 3, 27, 3], [128, 256, 512, 1024])),
        _V("cnx-large", "facebook/dinov3-convnext-large-pretrain-lvd1689m", "convnext", 768, 1536, 196.2, _LVD,
           "timm/convnext_large.dinov3_lvd1689m", _cnx([3, 3, 27, 3], [192, 384, 768, 1536])),
    )
}
#: A variant by any of its hub ids (official repo or timm mirror).
by_hub = {h: v for v in VARIANTS.values() for h in v.hub_ids}
#: A variant by its timm architecture name and whether it is a SAT-493M release.
by_timm_arch = {(v.timm_id.split("/")[1].split(".")[0], v.pretrain == _SAT): v
                for v in VARIANTS.values() if v.timm_id}
LVD, SAT, VIT_BASE, vit_config = _LVD, _SAT, _VIT_BASE, _vit


def count_params(variant: Variant) -> int:
    """Parameters of a variant's network, counted on the meta device (no memory, any size)."""
    import torch
    from transformers import DINOv3ConvNextModel, DINOv3ViTModel

    cls = DINOv3ViTModel if variant.arch == "vit" else DINOv3ConvNextModel
    with torch.device("meta"):
        model = cls(variant.hf_config())
    return sum(p.numel() for p in model.parameters())



def convnext_receptive_field(depths: list[int] | tuple[int, ...], stage: int) -> int:
    """Width in model-input pixels of the window one cell of ConvNeXt stage ``stage`` depends on.

    The stem is a 4×4 convolution with stride 4; each block a 7×7 depthwise convolution (the rest of a block is
    per position: LayerNorm over channels, pointwise layers); each later stage starts with a 2×2 stride-2
    convolution. Every layer of kernel ``k`` at grid step ``j`` widens the window by ``(k - 1)·j``.

    Examples
    --------
    >>> convnext_receptive_field([3, 3, 9, 3], 2)  # ConvNeXt-T's stride-16 stage
    1096
    """
    rf, step = 4, 4
    for s in range(int(stage) + 1):
        if s > 0:
            rf += step  # 2×2 downsampling at the current step
            step *= 2
        rf += int(depths[s]) * 6 * step
    return rf
