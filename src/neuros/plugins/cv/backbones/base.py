"""The backbone protocol; the registry's names are re-exported from :mod:`.registry`.

A backbone turns an image into a :class:`~neuros.plugins.cv.features.FeatureMap`. Every backbone — DINOv3
variants, the report's placeholder, the classical filter bank — registers in :mod:`.registry`, so listing,
lookup and close-match suggestions for unknown names come from one table (the shape of timm's
``create_model``). This module imports no implementation: each implementation imports it, and the package
``__init__`` imports every implementation.

Besides its features a backbone says how its grid sits on the input — :attr:`Backbone.stride` (input pixels
per grid cell), :attr:`Backbone.receptive_field` (input pixels one cell depends on) and :attr:`Backbone.halo`
(context pixels a block needs on each side so that blockwise features equal whole-image ones) — so blockwise
code (:mod:`neuros.plugins.cv.scale`) asks the backbone instead of guessing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .._validation import as_image_list
from ..features import FeatureMap
from .registry import (
    BackboneEntry,
    UnknownBackboneError,
    backbone_info,
    get_backbone,
    list_backbones,
    lookup,
    register_backbone,
    register_resolver,
)
from .spec import BackboneSpec, non_default_options

__all__ = [
    "Backbone",
    "BackboneEntry",
    "UnknownBackboneError",
    "backbone_info",
    "get_backbone",
    "list_backbones",
    "lookup",
    "register_backbone",
    "register_resolver",
]

#: Context a backbone with a global receptive field (a ViT) gets per block side, in grid cells: blockwise
#: features then only approximate whole-image ones (a compromise between agreement and re-computation; see
#: docs/scaling.md).
GLOBAL_HALO_CELLS = 4


class Backbone(ABC):
    """Base class of all backbones.

    Subclasses implement :meth:`extract` (one image) and set ``name``, ``patch_size``, ``feature_dim`` and
    ``weights``. :meth:`extract_batch` may be overridden to batch the forward pass. A subclass lists the
    ``__init__`` options that change its features, with their defaults, in :attr:`spec_defaults`: they make up
    its :attr:`spec` (see :mod:`.spec`), which every :class:`FeatureMap` it returns carries.
    """

    name: str = "backbone"
    patch_size: int = 16
    feature_dim: int = 0
    weights: str = "unknown"
    #: Identity options (``__init__`` keywords stored as attributes of the same name) and their defaults.
    spec_defaults: ClassVar[dict[str, Any]] = {}
    #: Whether the backbone has a choice of weights (its spec then names them; the filter bank has none).
    takes_weights: ClassVar[bool] = True

    def __init__(self) -> None:
        self._grid_shape: tuple[int, int] | None = None

    @abstractmethod
    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense features of one (H, W) or (H, W, C) image."""

    def extract_batch(self, images: Any) -> list[FeatureMap]:
        """Dense features of several images (a list, or a (B, H, W[, C]) array)."""
        return [self.extract(im) for im in as_image_list(images, min_size=self.patch_size)]

    def embed(self, images: Any) -> np.ndarray:
        """The report's call: patch embeddings of a batch as a (B, N, C) array (N = grid cells, row-major).

        All images must produce the same grid; ``grid_size``/``grid_shape`` then describe it.
        """
        maps = self.extract_batch(images)
        shapes = {fm.grid_shape for fm in maps}
        if len(shapes) != 1:
            raise ValueError(f"embed needs images with one grid shape, got {sorted(shapes)}; use extract()")
        self._grid_shape = maps[0].grid_shape
        return np.stack([fm.flat() for fm in maps])

    def _spec_options(self) -> dict[str, Any]:
        """The identity options that apply to this instance (defaults included); subclasses may drop some."""
        return {k: getattr(self, k) for k in self.spec_defaults}

    @property
    def spec(self) -> BackboneSpec:
        """What identifies this backbone's features: name, weights used and non-default identity options."""
        opts = non_default_options(self._spec_options(), self.spec_defaults)
        return BackboneSpec(self.name, self.weights if self.takes_weights else None, opts)

    def _remember(self, fm: FeatureMap) -> FeatureMap:
        self._grid_shape = fm.grid_shape
        return fm

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(h, w) of the patch grid of the last call."""
        if self._grid_shape is None:
            raise RuntimeError("grid_shape is known after the first embed()/extract() call")
        return self._grid_shape

    @property
    def grid_size(self) -> int:
        """Side of the (square) patch grid of the last call, as the report uses it.

        For non-square grids use :attr:`grid_shape`; this raises to avoid a silently wrong answer.
        """
        h, w = self.grid_shape
        if h != w:
            raise ValueError(f"grid is {h}×{w}, not square; use grid_shape instead of grid_size")
        return h

    # ------------------------------------------------------------------ geometry
    @property
    def stride(self) -> float:
        """Input pixels per feature-grid cell (the grid step); the patch size unless a subclass says otherwise."""
        return float(self.patch_size)

    @property
    def receptive_field(self) -> float:
        """Width in input pixels of the window one grid cell's feature depends on (``math.inf``: global).

        The base class knows nothing of the network, so it says global; bounded backbones override it.
        """
        return math.inf

    @property
    def halo_exact(self) -> bool:
        """Whether a block carrying :attr:`halo` reproduces whole-image features exactly (bounded receptive
        field); False for global attention, where :attr:`halo` is an approximation."""
        return math.isfinite(self.receptive_field)

    @property
    def halo(self) -> int:
        """Context in input pixels a block needs on each side, a whole number of grid cells.

        With a bounded :attr:`receptive_field`: the pixels it reaches beyond a cell's own ``stride`` window,
        ``(receptive_field - stride) / 2``, rounded up to whole cells — blockwise features then equal
        whole-image ones (0 when each cell sees only itself). With a global one (ViT attention):
        :data:`GLOBAL_HALO_CELLS` cells, an approximation (see :attr:`halo_exact`).
        """
        step, rf = self.stride, self.receptive_field
        cells = math.ceil(max(0.0, (rf - step) / 2) / step - 1e-9) if math.isfinite(rf) else GLOBAL_HALO_CELLS
        return math.ceil(cells * step - 1e-9)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: name, weights used, spec, patch size and feature dimension."""
        return {
            "name": self.name,
            "weights": self.weights,
            "spec": str(self.spec),
            "patch_size": self.patch_size,
            "feature_dim": self.feature_dim,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weights={self.weights!r})"
