"""The report's deterministic stand-in for a DINOv3 backbone: :class:`PlaceholderBackbone`.

``DINOv3Backbone(model_id, weights="placeholder")`` — or ``weights="auto"`` on a machine without the weights —
returns one. Each 16×16 patch's pixels (after scaling to [0, 1] and replication to RGB) are mapped to a C-dimensional
vector by a fixed random projection seeded by a stable hash of the model id. It is *not* a pretrained model:
every output that uses it says ``weights="placeholder"`` and carries :data:`PLACEHOLDER_NOTE`, the one text
that explains what the placeholder is (:func:`placeholder_notice` is the terminal line of a CLI).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from .grid import DENSE_DEFAULTS, GridBackbone
from .resolve import variant_for
from .variants import Variant
from .weights import WeightsNotFoundError

__all__ = [
    "PLACEHOLDER_NOTE",
    "PLACEHOLDER_STAND_IN",
    "PLACEHOLDER_WEIGHTS",
    "PlaceholderBackbone",
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


class PlaceholderBackbone(GridBackbone):
    """The placeholder for DINOv3 variant ``model_id``: its feature dimension and 16-px grid, no network.

    Its features depend only on the pixels (after ``scaling``, ``channels`` and ``scale``) and the model id,
    so its spec is ``<model_id>@placeholder`` with at most those three options and the dense ones (``stride``,
    ``shifts``, ``upsample``: the same grids as the network's, so ``vit-small@placeholder[stride=4]`` runs
    offline); each cell sees only its own patch, so blocks need no halo (at ``scale`` 1, not upsampled).
    Usually built by :class:`~.dinov3.DINOv3Backbone`, which also checks the network options this class ignores.

    Parameters
    ----------
    model_id : str
        A DINOv3 short id, hub id or checkpoint folder (it seeds the projection and sets ``feature_dim``).
    variant : Variant, optional
        Its architecture, when already resolved.
    scale, scaling, channels, stride, shifts, upsample, tile, overlap, batch_size
        As for :class:`~.dinov3.DINOv3Backbone`.
    note : str, optional
        Why the placeholder runs (``weights="auto"`` found no weights); shown by :meth:`describe`.

    Examples
    --------
    >>> bb = PlaceholderBackbone("vit-small")
    >>> bb.extract(np.zeros((40, 32))).grid_shape, bb.weights, bb.halo
    ((3, 2), 'placeholder', 0)
    """

    weights = PLACEHOLDER_WEIGHTS
    #: The placeholder reads only the pixels: the DINOv3 options that shape a network do not apply.
    spec_defaults: ClassVar[dict[str, Any]] = {"scale": 1.0, "scaling": "auto", "channels": None,
                                               **DENSE_DEFAULTS}

    def __init__(self, model_id: str = "vit-small", variant: Variant | None = None, *, scale: float = 1.0,
                 scaling: str = "auto", channels: tuple[int, int, int] | None = None, stride: float | None = None,
                 shifts: int = 1, upsample: str = "bilinear", tile: int | None = None, overlap: int = 64,
                 batch_size: int = 8, note: str | None = None) -> None:
        super().__init__()
        variant = variant_for(model_id) if variant is None else variant
        if not variant.feature_dim:
            raise WeightsNotFoundError(
                f"{model_id}: the placeholder needs a known variant; no weights for this hub id here"
            )
        self.feature_dim = variant.feature_dim
        self._init_grid(model_id, variant, grid_step=variant.patch_size, scale=scale, scaling=scaling,
                        channels=channels, tile=tile, overlap=overlap, batch_size=batch_size, stride=stride,
                        shifts=shifts, upsample=upsample)
        self.note = note

    @property
    def receptive_field(self) -> float:
        """One patch (plus what resizing by ``scale`` mixes in, and what upsampling a dense grid blends in),
        in input pixels; shift-and-stitch centres each cell's patch on the cell, adding nothing."""
        return self.native_stride + 2 * self._resize_margin() + self._dense_margin()

    def _min_size(self) -> int:
        return max(1, int(np.ceil(self.patch_size / self.scale)))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([placeholder_features(im, self.variant.model_id, self.feature_dim, self.patch_size)
                         for im in batch])

    def _meta(self) -> dict[str, Any]:
        return {"arch": self.variant.arch, "scale": self.scale, "preprocessing": self._preprocessing()}

    def describe(self) -> dict[str, Any]:
        """As every backbone's, plus what the placeholder is (``stand_in`` and the ``placeholder`` note)."""
        d = super().describe()
        d.update(stand_in=PLACEHOLDER_STAND_IN, placeholder=PLACEHOLDER_NOTE)
        return d
