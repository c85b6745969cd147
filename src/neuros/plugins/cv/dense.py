"""Features of one image computed tile by tile, on demand: what pixel-level work (stride 1-4) runs on.

A stride-1 feature map of a 4096² image at 64 channels is 4 GiB; a head never needs it whole. It needs the
features at a few hundred thousand sampled training positions (:meth:`TiledFeatures.take`) and, to predict,
one tile at a time (:meth:`TiledFeatures.tiles`). :class:`TiledFeatures` describes the features of one image
made by one backbone — stride, grid, spec, weights, like a :class:`~.features.FeatureMap` — and computes them
only tile by tile, so memory is bounded by one tile (plus its halo), never by the image.

Each tile is extracted from the image window ``core ± halo`` (``halo`` = the backbone's, rounded up to the
stride; clipped at the image border, where the backbone pads as it does for the whole image) and cropped to its
core, so for a backbone whose :attr:`~.backbones.base.Backbone.halo` is exact (the filter bank) tiles equal the
whole-image map bit for bit; for a ViT (global attention) they approximate it, as tiling does everywhere
(docs/scaling.md). This module knows backbones only by duck typing (``extract``, ``stride``, ``halo``,
``spec``, ``name``, ``weights``, ``feature_dim``), so it sits on the ground floor beside ``features``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import as_image
from .features import FeatureMap

__all__ = ["DEFAULT_TILE", "TiledFeatures", "as_feature_source"]

#: Tile side in pixels: a 1024² tile of 64 float32 channels is 256 MiB.
DEFAULT_TILE = 1024


@dataclass(frozen=True)
class _Tile:
    """Grid rows/cols of one tile's core and the pixel window it is extracted from."""

    rows: slice
    cols: slice
    y0: int
    y1: int
    x0: int
    x1: int


class TiledFeatures:
    """The feature map of ``image`` by ``backbone``, computed one tile at a time.

    Parameters
    ----------
    backbone : Backbone
        Any registered backbone (``extract(image) -> FeatureMap``); its ``stride`` and ``halo`` set the tiling.
    image : ndarray
        (H, W) or (H, W, C) image, validated here (NaN/inf, empty, too many dimensions: one-line errors).
    tile : int
        Core tile side in pixels (rounded up to a multiple of the stride). An image no larger than one tile is
        extracted whole, once, and kept.

    Attributes
    ----------
    stride, grid_shape, image_shape, feature_dim, spec, backbone, weights
        As on :class:`~.features.FeatureMap` (``backbone`` is the backbone's name).
    image : ndarray
        The validated image (a guide for image-guided upsampling).

    Examples
    --------
    >>> from neuros.plugins.cv.backbones import get_backbone
    >>> tf = TiledFeatures(get_backbone("filterbank"), np.zeros((40, 40), np.float32), tile=32)
    >>> tf.grid_shape, tf.n_tiles
    ((3, 3), 4)
    """

    def __init__(self, backbone: Any, image: np.ndarray, tile: int = DEFAULT_TILE) -> None:
        self.source = backbone
        self.image = as_image(image)
        self.stride = float(backbone.stride)
        step = round(self.stride)
        if step < 1 or abs(step - self.stride) > 1e-9:
            raise ValueError(f"tiled features need an integer stride, got {self.stride:g} from {backbone.name}")
        if int(tile) < 1:
            raise ValueError(f"tile must be a positive number of pixels, got {tile}")
        self._step = step
        self.tile = int(math.ceil(int(tile) / step) * step)
        self.halo = int(math.ceil(float(getattr(backbone, "halo", 0)) / step) * step)
        self.image_shape = (int(self.image.shape[0]), int(self.image.shape[1]))
        self.grid_shape = (-(-self.image_shape[0] // step), -(-self.image_shape[1] // step))
        self.backbone, self.weights = backbone.name, backbone.weights
        self.feature_dim = int(backbone.feature_dim)
        self.spec = backbone.spec
        self._tiles = self._plan()
        #: The last tile computed (index, core map): repeated reads of one tile (``meta`` and then ``take`` in a
        #: head's fit, every call on a one-tile image) compute it once; never more than one tile is kept.
        self._last: tuple[int, FeatureMap] | None = None

    # ------------------------------------------------------------------ layout
    def _plan(self) -> list[_Tile]:
        h, w = self.image_shape
        out = []
        for y in range(0, h, self.tile):
            for x in range(0, w, self.tile):
                cy1, cx1 = min(y + self.tile, h), min(x + self.tile, w)
                out.append(_Tile(slice(y // self._step, -(-cy1 // self._step)),
                                 slice(x // self._step, -(-cx1 // self._step)),
                                 max(y - self.halo, 0), min(cy1 + self.halo, h),
                                 max(x - self.halo, 0), min(cx1 + self.halo, w)))
        return out

    @property
    def n_tiles(self) -> int:
        """Number of tiles the image is computed in."""
        return len(self._tiles)

    @property
    def meta(self) -> dict[str, Any]:
        """The backbone's record of how features were made (``FeatureMap.meta`` of the first tile)."""
        return self._extract(0).meta

    # ------------------------------------------------------------------ extraction
    def release(self) -> None:
        """Forget the cached tile (see ``_last``): a head calls this once it has read an image's features, so a
        list of many images never holds more than the tile being computed."""
        self._last = None

    def _extract(self, k: int) -> FeatureMap:
        """The core of tile ``k`` as a FeatureMap (whole-image grid rows ``rows``, cols ``cols`` of the tile)."""
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        self._last = None  # at most one tile in memory, the one being computed
        core = self._compute(self._tiles[k])
        self._last = (k, core)
        return core

    def _compute(self, t: _Tile) -> FeatureMap:
        if len(self._tiles) == 1:
            fm = self.source.extract(self.image)
            self._check(fm)
            return fm
        fm = self.source.extract(self.image[t.y0 : t.y1, t.x0 : t.x1])
        self._check(fm)
        r0 = (t.rows.start * self._step - t.y0) // self._step
        c0 = (t.cols.start * self._step - t.x0) // self._step
        nr, nc = t.rows.stop - t.rows.start, t.cols.stop - t.cols.start
        core = fm.features[r0 : r0 + nr, c0 : c0 + nc]
        if core.shape[:2] != (nr, nc):  # pragma: no cover - a backbone whose grid is not ceil(H / stride)
            raise RuntimeError(f"{self.backbone} gave a {fm.grid_shape} grid for a {t.y1 - t.y0}×{t.x1 - t.x0} "
                               f"window; expected ceil(size / {self._step})")
        shape = (min(t.rows.stop * self._step, self.image_shape[0]) - t.rows.start * self._step,
                 min(t.cols.stop * self._step, self.image_shape[1]) - t.cols.start * self._step)
        return FeatureMap(np.ascontiguousarray(core), fm.stride, shape, fm.backbone, fm.weights,
                          {**fm.meta, "tile": [t.rows.start * self._step, t.cols.start * self._step]}, fm.spec)

    def _check(self, fm: FeatureMap) -> None:
        if abs(float(fm.stride) - self.stride) > 1e-9 or fm.feature_dim != self.feature_dim:
            raise RuntimeError(f"{self.backbone} returned stride {fm.stride:g} / {fm.feature_dim} channels, "
                               f"but reports stride {self.stride:g} / {self.feature_dim}")

    def tiles(self) -> Iterator[tuple[slice, slice, FeatureMap]]:
        """Each tile's whole-image grid ``rows``, ``cols`` and its core :class:`FeatureMap`, row-major."""
        for k, t in enumerate(self._tiles):
            yield t.rows, t.cols, self._extract(k)

    def take(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Features (n, C) float32 at grid positions ``(rows[i], cols[i])``; computes only the tiles needed."""
        r, c = np.asarray(rows, dtype=np.int64).ravel(), np.asarray(cols, dtype=np.int64).ravel()
        if r.shape != c.shape:
            raise ValueError(f"rows and cols differ in length: {r.size} vs {c.size}")
        if r.size and (r.min() < 0 or c.min() < 0 or r.max() >= self.grid_shape[0] or c.max() >= self.grid_shape[1]):
            raise ValueError(f"positions outside the {self.grid_shape} feature grid")
        out = np.empty((r.size, self.feature_dim), dtype=np.float32)
        cells = self.tile // self._step
        n_cols = -(-self.image_shape[1] // self.tile)
        which = (r // cells) * n_cols + c // cells
        for k in np.unique(which):  # a loop over tiles, not positions
            t = self._tiles[int(k)]
            sel = np.flatnonzero(which == k)
            out[sel] = self._extract(int(k)).features[r[sel] - t.rows.start, c[sel] - t.cols.start]
        return out

    def materialise(self) -> FeatureMap:
        """The whole feature map as one :class:`FeatureMap` (memory: the whole image; for small images)."""
        if len(self._tiles) == 1:
            return self._extract(0)
        feats = np.empty((*self.grid_shape, self.feature_dim), dtype=np.float32)
        meta: dict[str, Any] = {}
        for rows, cols, fm in self.tiles():
            feats[rows, cols] = fm.features
            meta = {k: v for k, v in fm.meta.items() if k != "tile"}
        return FeatureMap(feats, self.stride, self.image_shape, self.backbone, self.weights, meta, self.spec)

    def __repr__(self) -> str:
        return (f"TiledFeatures({self.spec}, image {self.image_shape[0]}×{self.image_shape[1]}, stride "
                f"{self.stride:g}, {self.n_tiles} tile(s) of {self.tile} px + halo {self.halo})")


def as_feature_source(item: Any) -> FeatureMap | TiledFeatures:
    """``item`` if it is a FeatureMap or TiledFeatures, else a one-line TypeError."""
    if isinstance(item, (FeatureMap, TiledFeatures)):
        return item
    raise TypeError(f"expected a FeatureMap or TiledFeatures, got {type(item).__name__}")
