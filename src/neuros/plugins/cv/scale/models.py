"""Models on workers: built once per worker process and reused by every block it runs.

Each ``distributed`` worker process imports this module once; the ``lru_cache`` then keeps one backbone per
:class:`~neuros.plugins.cv.backbones.spec.BackboneSpec` and one head per folder for the life of the worker, so a
run of 10 000 blocks loads the model once per worker, not once per block.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from ..backbones.spec import BackboneSpec, as_spec

__all__ = ["default_halo", "worker_backbone", "worker_head"]

PATCH = 16
# ViT attention is global: no halo makes blocks exact. 64 px (4 patches) of context is a compromise between
# agreement with whole-section features and re-computation (see docs/scaling.md).
VIT_HALO = 64


def worker_backbone(spec: BackboneSpec | str, weights: str | None = None):
    """The backbone of ``spec`` (a :class:`BackboneSpec`, or a name or spec string with optional ``weights``),
    built on first use in this process and cached."""
    return _built(as_spec(spec, weights))


@lru_cache(maxsize=4)
def _built(spec: BackboneSpec):
    return spec.build()


@lru_cache(maxsize=4)
def worker_head(path: str):
    """The segmentation head saved in ``path``, loaded on first use in this process and cached."""
    from ..heads import load_head

    return load_head(path)


def default_halo(backbone: Any, patch: int = PATCH) -> int:
    """The halo (pixels, a multiple of ``patch``) that covers ``backbone``'s receptive field beyond a patch.

    Uses the backbone's ``receptive_field`` (pixels) when it declares one; the placeholder's receptive field
    is its own patch (halo 0); ViTs see the whole image, so they get :data:`VIT_HALO` and only approximate
    whole-section features.
    """
    rf = getattr(backbone, "receptive_field", None)  # full width in pixels
    if rf is not None and math.isfinite(float(rf)):
        return math.ceil(float(rf) / 2 / patch) * patch if float(rf) > patch else 0
    sigmas = getattr(backbone, "sigmas", None)
    if sigmas:
        # The filter bank's widest kernel: Gaussians truncated at 4σ, its difference of Gaussians at 1.6·σ_max,
        # plus 2 px for the finite-difference gradients of the structure tensor.
        radius = 4.0 * 1.6 * max(float(s) for s in sigmas) + 2
        return math.ceil(radius / patch) * patch
    if getattr(backbone, "weights", "") == "placeholder":
        return 0
    return VIT_HALO
