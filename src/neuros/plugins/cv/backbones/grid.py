"""What every patch-grid backbone of the DINOv3 family shares: preprocessing, padding, tiling and batching.

:class:`GridBackbone` turns images into padded [0, 1] RGB model inputs (:func:`~..preprocess.prepare`), cuts
large ones into overlapping tiles, batches equal shapes and wraps the grids its subclass's :meth:`_forward`
returns into :class:`~..features.FeatureMap` objects. :class:`~.dinov3.DINOv3Backbone` (a network) and
:class:`~.placeholder.PlaceholderBackbone` (a fixed random projection of patch pixels) fill in ``_forward``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from .._validation import as_image_list, check_positive_int
from ..features import FeatureMap
from ..preprocess import prepare, scaled_shape
from ..tiling import batched, stitch, tiles
from .base import Backbone
from .variants import Variant

__all__ = ["GridBackbone"]


class GridBackbone(Backbone):
    """A backbone whose features sit on a regular grid of ``grid_step`` model-input pixels.

    Subclasses call :meth:`_init_grid` from their ``__init__`` and implement :meth:`_forward` (a batch of
    padded inputs → feature grids) and :meth:`_meta`.
    """

    model_id: str
    variant: Variant

    def _init_grid(self, model_id: str, variant: Variant, *, grid_step: int, scale: float, scaling: str,
                   channels: tuple[int, int, int] | None, tile: int | None, overlap: int, batch_size: int) -> None:
        """Set and check what the grid needs; ``grid_step`` is the feature stride in model-input pixels."""
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.model_id, self.variant, self.name = model_id, variant, model_id
        self.patch_size = variant.patch_size
        self.note: str | None = None
        self.scale = float(scale)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.scaling, self.channels = scaling, channels
        self._stride = int(grid_step)
        self._pad = max(self.patch_size, self._stride)
        self.tile, self.overlap = tile, int(overlap)
        if tile is not None:
            check_positive_int(tile, "tile")
            for nm, v in (("tile", tile), ("overlap", overlap)):
                if v % self._pad:
                    raise ValueError(f"{nm}={v} must be a multiple of {self._pad} (the model's grid stride)")
            if tile <= 2 * overlap:
                raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
        # Called with the number of tiles after each batch of tiles of a tiled image (progress bars).
        self.progress: Callable[[int], None] | None = None

    @property
    def stride(self) -> float:
        """Input pixels per grid cell: the model's grid step divided by ``scale``."""
        return self._stride / self.scale

    def _resize_margin(self) -> float:
        """Input pixels per side that resizing by ``scale`` mixes in (bilinear: one pixel, or ``1/scale`` when
        shrinking with antialiasing); 0 at scale 1."""
        return 0.0 if self.scale == 1 else float(np.ceil(max(1.0, 1.0 / self.scale)))

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Feature grids (B, h, w, C) float32 of a batch of padded [0, 1] RGB images (B, H', W', 3)."""

    @abstractmethod
    def _meta(self) -> dict[str, Any]:
        """The FeatureMap ``meta`` shared by every map of one call."""

    def _min_size(self) -> int:
        """The smallest image side accepted."""
        return 1

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return prepare(image, self._pad, self.scaling, self.channels, self.scale)

    def _preprocessing(self) -> dict[str, Any]:
        return {"scaling": self.scaling, "channels": self.channels, "scale": self.scale, "pad_to": self._pad,
                "padding": "reflect, bottom/right"}

    def _tiled(self, padded: np.ndarray) -> np.ndarray:
        """Features of one padded image, tile by tile; activations never exceed a batch of tiles."""
        hp, wp = padded.shape[:2]
        out = np.empty((hp // self._stride, wp // self._stride, self.feature_dim), dtype=np.float32)
        all_tiles = tiles((hp, wp), int(self.tile), self.overlap, self._pad)
        for group in batched(all_tiles, self.batch_size):
            grids = self._forward(np.stack([padded[t.y0 : t.y1, t.x0 : t.x1] for t in group]))
            for t, g in zip(group, grids, strict=True):
                stitch(out, t, g, self._stride)
            if self.progress is not None:
                self.progress(len(group))
        return out

    def n_tiles(self, shape: tuple[int, ...]) -> int:
        """How many tiles an image of ``shape`` (H, W[, C]) is cut into: 1 when it is not tiled.

        A tiled image reports each batch of its tiles to :attr:`progress` while it is extracted.
        """
        h, w = scaled_shape(int(shape[0]), int(shape[1]), self.scale)
        padded = (-(-h // self._pad) * self._pad, -(-w // self._pad) * self._pad)
        if not self._needs_tiling(padded):
            return 1
        return len(tiles(padded, int(self.tile), self.overlap, self._pad))

    def _needs_tiling(self, shape: tuple[int, ...]) -> bool:
        return self.tile is not None and (shape[0] > self.tile or shape[1] > self.tile)

    def extract_batch(self, images: Any) -> list[FeatureMap]:
        """Dense features of several images (a list, or a (B, H, W[, C]) array), batched by padded size."""
        arrs = as_image_list(images, min_size=self._min_size())
        prepped = [self._prepare(a) for a in arrs]
        grids: list[np.ndarray | None] = [None] * len(arrs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepped):
            if self._needs_tiling(p.shape):
                grids[i] = self._tiled(p)
            else:
                groups.setdefault(p.shape, []).append(i)
        for idx in groups.values():
            for chunk in range(0, len(idx), self.batch_size):
                part = idx[chunk : chunk + self.batch_size]
                feats = self._forward(np.stack([prepped[i] for i in part]))
                for i, f in zip(part, feats, strict=True):
                    grids[i] = f
        stride = float(self._stride) / self.scale
        meta, spec = self._meta(), self.spec
        maps = []
        for a, g, p in zip(arrs, grids, prepped, strict=True):
            tiled = self._needs_tiling(p.shape)
            m = dict(meta, tiled=tiled, **({"tile": self.tile, "overlap": self.overlap} if tiled else {}))
            maps.append(FeatureMap(np.ascontiguousarray(g), stride, tuple(a.shape[:2]), self.name, self.weights, m,
                                   spec))
        self._remember(maps[-1])
        return maps

    def extract(self, image: np.ndarray) -> FeatureMap:
        """Dense features of one image (padded, not cropped, to the grid; see ``extract_batch``)."""
        if isinstance(image, np.ndarray) and image.ndim == 4:
            raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got 4-D shape {image.shape}; "
                             "use extract_batch for a batch")
        if isinstance(image, (list, tuple)):
            raise TypeError("extract takes one image array; use extract_batch for a list")
        if isinstance(image, np.ndarray) and image.ndim not in (2, 3):
            raise ValueError(f"image must be 2-D (H, W) or 3-D (H, W, C), got {image.ndim}-D shape {image.shape}")
        return self.extract_batch([image])[0]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(hub_id=self.variant.hub_id, arch=self.variant.arch, pretrain=self.variant.pretrain)
        if self.note:
            d["note"] = self.note
        return d
