"""Tiling an image too large for one forward pass, and stitching the tiles' feature grids.

Pure functions on shapes and arrays. Each tile is a window of the (padded) image; only its *core* — the
window minus ``overlap`` pixels of context on each inner side — is kept, and the cores of all tiles cover the
image exactly once. Windows, cores and overlaps are multiples of the feature stride, so every tile's grid is
a sub-grid of the whole-image grid (as napari-convpaint aligns tile padding to the patch grid).

ConvNeXt features of a core match whole-image features once ``overlap`` covers the receptive field. A ViT's
attention is global, so tiled ViT features only *approximate* whole-image features, best away from tile
borders and with a generous overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "axis_windows", "batched", "stitch", "tiles"]


@dataclass(frozen=True)
class Tile:
    """One tile: its window ``[y0:y1, x0:x1]`` of the image and its core, in image pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    core_y0: int
    core_y1: int
    core_x0: int
    core_x1: int


def axis_windows(length: int, tile: int, overlap: int, unit: int) -> list[tuple[int, int, int, int]]:
    """Windows along one axis: ``(start, stop, core_start, core_stop)`` in pixels.

    Parameters
    ----------
    length : int
        Axis length in pixels, a multiple of ``unit``.
    tile : int
        Window length, a multiple of ``unit`` and larger than ``2 * overlap``.
    overlap : int
        Context kept on each inner side of a window, a multiple of ``unit``.
    unit : int
        The feature stride: every boundary is a multiple of it.

    Notes
    -----
    Windows all have length ``min(tile, length)``: a window that would cross the far end is shifted back
    inside the image (its core stays where it is), so tiles of one image can be batched together.
    """
    for name, v in (("length", length), ("tile", tile), ("overlap", overlap)):
        if v % unit:
            raise ValueError(f"{name}={v} must be a multiple of the feature stride {unit}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    if length <= tile:
        return [(0, length, 0, length)]
    out = []
    c0 = 0
    while c0 < length:
        start = max(c0 - overlap, 0)
        if start + tile >= length:  # the last window: shifted inside the image, its core runs to the end
            out.append((length - tile, length, c0, length))
            break
        c1 = start + tile - overlap
        out.append((start, start + tile, c0, c1))
        c0 = c1
    return out


def tiles(shape: tuple[int, int], tile: int, overlap: int, unit: int) -> list[Tile]:
    """All tiles of an (H, W) image, row-major; their cores partition the image."""
    ys = axis_windows(int(shape[0]), tile, overlap, unit)
    xs = axis_windows(int(shape[1]), tile, overlap, unit)
    return [Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1) for y0, y1, cy0, cy1 in ys for x0, x1, cx0, cx1 in xs]


def stitch(out: np.ndarray, tile: Tile, grid: np.ndarray, stride: int) -> None:
    """Write the core of one tile's feature ``grid`` (h, w, C) into the whole-image grid ``out`` in place."""
    gy0, gy1 = tile.core_y0 // stride, tile.core_y1 // stride
    gx0, gx1 = tile.core_x0 // stride, tile.core_x1 // stride
    ly0, lx0 = (tile.core_y0 - tile.y0) // stride, (tile.core_x0 - tile.x0) // stride
    out[gy0:gy1, gx0:gx1] = grid[ly0 : ly0 + gy1 - gy0, lx0 : lx0 + gx1 - gx0]


def batched(items: list[Tile], size: int) -> Iterator[list[Tile]]:
    """Consecutive groups of at most ``size`` tiles."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
