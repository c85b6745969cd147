"""Tiny random DINOv3 models saved with ``save_pretrained``: real transformers networks, seconds to build.

Other test modules import :func:`make_tiny_vit` / :func:`make_tiny_convnext`, or use the session fixtures
``tiny_vit_dir`` / ``tiny_convnext_dir`` (defined in ``tests/conftest.py``) that call them once. The other
layouts a DINOv3 checkpoint comes in are written here too: Meta's original state dict
(:func:`meta_state_dict`), a timm-mirror folder (:func:`save_timm_folder`) and a Hugging Face cache entry
(:func:`hf_cache_snapshot`), all offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TINY_CONVNEXT",
    "TINY_VIT",
    "features_of",
    "hf_cache_snapshot",
    "make_tiny_convnext",
    "make_tiny_vit",
    "meta_rope_periods",
    "meta_state_dict",
    "save_timm_folder",
    "small_image",
]

# A ViT with the released checkpoints' token layout (CLS + 4 registers) and patch 16, but 2 blocks of width 32.
TINY_VIT: dict[str, Any] = dict(
    patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_register_tokens=4, layerscale_value=1.0, use_gated_mlp=False, hidden_act="gelu",
)
# A ConvNeXt with the released stage strides (4/8/16/32), one block per stage; layer scale 1 (not the
# init 1e-6) so that the blocks, and their 7×7 receptive fields, matter as in trained checkpoints.
TINY_CONVNEXT: dict[str, Any] = dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], layer_scale_init_value=1.0)


def _save(model: Any, path: str | Path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def make_tiny_vit(path: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny random ``DINOv3ViTModel`` (``TINY_VIT`` updated by ``overrides``) and save it to ``path``."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DINOv3ViTModel(DINOv3ViTConfig(**{**TINY_VIT, **overrides})).eval()
    return _save(model, path)


def make_tiny_convnext(path: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny random ``DINOv3ConvNextModel`` and save it to ``path``."""
    import torch
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DINOv3ConvNextModel(DINOv3ConvNextConfig(**{**TINY_CONVNEXT, **overrides})).eval()
    return _save(model, path)


def meta_rope_periods(head_dim: int, base: float = 100.0) -> Any:
    """RoPE periods as Meta's ``RopePositionEmbedding`` computes them: ``base ** (2i / (head_dim / 2))``."""
    import torch

    n = head_dim // 4
    return base ** (2 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))


def meta_state_dict(model: Any, periods: Any = None) -> dict[str, Any]:
    """A transformers ``DINOv3ViTModel``'s weights under Meta's original names, wrapped as in the releases.

    Written by hand from Meta's module names (``storage_tokens``, fused ``attn.qkv`` with a masked key bias,
    ``ls1/ls2.gamma``, ``mlp.fc1/fc2`` or SwiGLU ``mlp.w1/w2/w3``, ``rope_embed.periods``), independent of the
    converter under test. ``periods`` defaults to :func:`meta_rope_periods` of the model's head dimension.
    """
    import torch

    cfg = model.config
    sd = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    if periods is None:
        periods = meta_rope_periods(cfg.hidden_size // cfg.num_attention_heads, cfg.rope_theta)
    meta = {"cls_token": sd["embeddings.cls_token"], "storage_tokens": sd["embeddings.register_tokens"],
            "mask_token": sd["embeddings.mask_token"][0], "rope_embed.periods": periods,
            "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
            "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
            "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"]}
    mlp = (("mlp.gate_proj", "mlp.w1"), ("mlp.up_proj", "mlp.w2"), ("mlp.down_proj", "mlp.w3")) if cfg.use_gated_mlp \
        else (("mlp.up_proj", "mlp.fc1"), ("mlp.down_proj", "mlp.fc2"))
    for i in range(cfg.num_hidden_layers):
        a, b = f"layer.{i}.", f"blocks.{i}."
        q, k, v = (sd[f"{a}attention.{x}_proj.weight"] for x in "qkv")
        meta[f"{b}attn.qkv.weight"] = torch.cat([q, k, v])
        qb, vb = sd[f"{a}attention.q_proj.bias"], sd[f"{a}attention.v_proj.bias"]
        meta[f"{b}attn.qkv.bias"] = torch.cat([qb, torch.zeros_like(qb), vb])
        meta[f"{b}attn.qkv.bias_mask"] = torch.ones(3 * qb.numel())
        for src, dst in (("attention.o_proj", "attn.proj"), ("norm1", "norm1"), ("norm2", "norm2"), *mlp):
            meta[f"{b}{dst}.weight"], meta[f"{b}{dst}.bias"] = sd[f"{a}{src}.weight"], sd[f"{a}{src}.bias"]
        meta[f"{b}ls1.gamma"], meta[f"{b}ls2.gamma"] = sd[f"{a}layer_scale1.lambda1"], sd[f"{a}layer_scale2.lambda1"]
    return {"teacher": {f"backbone.{k}": v.contiguous() for k, v in meta.items()}}


def save_timm_folder(path: str | Path, state_dict: dict[str, Any], architecture: str, tag: str,
                     **config: Any) -> Path:
    """A timm-mirror folder: ``model.safetensors`` and timm's ``config.json`` (``config`` adds keys to it)."""
    import json

    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out / "model.safetensors"))
    cfg = {"architecture": architecture, "num_classes": 0, "global_pool": "avg",
           "pretrained_cfg": {"tag": tag, "num_classes": 0, "license": "dinov3-license"}, **config}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def hf_cache_snapshot(cache: str | Path, repo_id: str, revision: str = "0123456789abcdef") -> Path:
    """The snapshot folder of ``repo_id`` in a Hugging Face hub cache (``models--org--name/snapshots/<rev>``),
    with ``refs/main`` pointing at it; the caller fills the folder."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


def small_image() -> np.ndarray:
    """A fixed 32×48 random image (not a multiple of the patch size: padding is exercised)."""
    return np.random.default_rng(0).random((32, 48)).astype(np.float32)


def features_of(backbone) -> np.ndarray:
    """The features of :func:`small_image` from ``backbone``."""
    return backbone.extract(small_image()).features


def block_vs_whole(bb, image: np.ndarray, core: tuple[int, int, int, int], halo: int) -> float:
    """Largest difference between the core cells of a block read with ``halo`` and the whole image's cells."""
    y0, y1, x0, x1 = core
    s = int(bb.stride)
    whole = bb.extract(image).features
    ry0, rx0 = max(0, y0 - halo), max(0, x0 - halo)
    part = bb.extract(image[ry0 : y1 + halo, rx0 : x1 + halo]).features
    oy, ox = (y0 - ry0) // s, (x0 - rx0) // s
    got = part[oy : oy + (y1 - y0) // s, ox : ox + (x1 - x0) // s]
    return float(np.abs(got - whole[y0 // s : y1 // s, x0 // s : x1 // s]).max())
