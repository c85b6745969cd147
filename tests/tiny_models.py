"""Tiny random DINOv3 models saved with ``save_pretrained``: real transformers networks, seconds to build.

Other test modules import :func:`make_tiny_vit` / :func:`make_tiny_convnext`, or use the session fixtures
``tiny_vit_dir`` / ``tiny_convnext_dir`` (defined in ``tests/conftest.py``) that call them once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TINY_CONVNEXT", "TINY_VIT", "make_tiny_convnext", "make_tiny_vit"]

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
