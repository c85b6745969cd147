"""The report's deterministic stand-in for a DINOv3 backbone.

Each 16×16 patch's pixels (after scaling to [0, 1] and replication to RGB) are mapped to a C-dimensional
vector by a fixed random projection seeded by a stable hash of the model id. It is *not* a pretrained model:
every output that uses it says ``weights="placeholder"`` and carries :data:`PLACEHOLDER_NOTE`, the one text
that explains what the placeholder is (:func:`placeholder_notice` is the terminal line of a CLI).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

__all__ = [
    "PLACEHOLDER_NOTE",
    "PLACEHOLDER_STAND_IN",
    "PLACEHOLDER_WEIGHTS",
    "is_placeholder",
    "placeholder_features",
    "placeholder_notice",
    "stable_seed",
]

PLACEHOLDER_WEIGHTS = "placeholder"
#: What every output says about the placeholder (terminal, report.html, tables.md, results.json, describe()).
PLACEHOLDER_NOTE = (
    "The placeholder is not a model: each 16×16 patch's pixels go through a fixed random projection (seeded by "
    "SHA-256 of the model id), with no network and no learned weights, so scores from it say nothing about "
    "DINOv3. Put real weights on this machine (see `neuros-cv backbones`) to measure DINOv3."
)
#: ``describe()["stand_in"]`` of every placeholder backbone: backbones sharing it are one and the same stand-in
#: (a random linear map of the same patch pixels), whatever model id they were asked for.
PLACEHOLDER_STAND_IN = "random projection of patch pixels"


def is_placeholder(weights: object) -> bool:
    """True when ``weights`` (a backbone's ``weights`` string or a ``describe()`` record) is the placeholder."""
    if isinstance(weights, dict):
        weights = weights.get("weights")
    return weights == PLACEHOLDER_WEIGHTS


def placeholder_notice(name: str) -> str:
    """One terminal line for a backbone ``name`` that runs the placeholder.

    Examples
    --------
    >>> placeholder_notice("vit-large").startswith("vit-large: weights = placeholder. The placeholder is not")
    True
    """
    return f"{name}: weights = placeholder. {PLACEHOLDER_NOTE}"


def stable_seed(text: str) -> int:
    """A 63-bit seed from SHA-256 of ``text``: the same in every process (unlike Python's ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


@lru_cache(maxsize=16)
def _projection(model_id: str, in_dim: int, out_dim: int) -> np.ndarray:
    rng = np.random.default_rng(stable_seed(f"neuros-cv/placeholder/{model_id}"))
    proj = rng.standard_normal((in_dim, out_dim)).astype(np.float32) / np.sqrt(in_dim)
    proj.setflags(write=False)
    return proj


def placeholder_features(padded_rgb01: np.ndarray, model_id: str, feature_dim: int, patch: int = 16) -> np.ndarray:
    """Map each patch of a padded (H, W, 3) [0, 1] image to a ``feature_dim`` vector: (H/p, W/p, C).

    The pixels are centred (x - 0.5) before the projection so that black and white patches differ in sign.
    Fully vectorised: one reshape to (h, w, p·p·3) and one matrix product.
    """
    h_px, w_px, c = padded_rgb01.shape
    h, w = h_px // patch, w_px // patch
    patches = (
        padded_rgb01.reshape(h, patch, w, patch, c).transpose(0, 2, 1, 3, 4).reshape(h, w, patch * patch * c)
    )
    proj = _projection(model_id, patch * patch * c, int(feature_dim))
    return ((patches.astype(np.float32) - 0.5) @ proj).astype(np.float32)
