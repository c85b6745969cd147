"""Block and halo geometry for blockwise processing of (z, y, x) volumes: pure functions, no I/O.

A volume is cut into blocks of one section (z) by ``block`` pixels in y and x. Each block reads its *core*
plus a *halo* on every side, clipped at the volume's edges (never padded: an edge block sees the same border as
a whole-section run, so bounded-receptive-field backbones agree exactly there too). Blocks and halos are
multiples of the backbone's feature grid step (its ``stride``: 16 px for ViT/16, 8 at ``scale=2``, …), so every
block's grid is a sub-grid of the whole section's grid and its features can be cropped out of the halo'd result
without resampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Block", "axis_extents", "check_geometry", "iter_blocks", "n_blocks"]


@dataclass(frozen=True)
class Block:
    """One unit of work: section ``z``, core pixels ``core_y``/``core_x``, read region ``read_y``/``read_x``.

    ``index`` is the block's (z, iy, ix) position in the block grid (what failures are reported by).
    """

    index: tuple[int, int, int]
    core_y: tuple[int, int]
    core_x: tuple[int, int]
    read_y: tuple[int, int]
    read_x: tuple[int, int]

    @property
    def z(self) -> int:
        return self.index[0]

    @property
    def core_shape(self) -> tuple[int, int]:
        return (self.core_y[1] - self.core_y[0], self.core_x[1] - self.core_x[0])

    def inner(self) -> tuple[slice, slice]:
        """Slices of the core inside the read region (pixels)."""
        oy, ox = self.core_y[0] - self.read_y[0], self.core_x[0] - self.read_x[0]
        return (slice(oy, oy + self.core_shape[0]), slice(ox, ox + self.core_shape[1]))

    def inner_grid(self, patch: int) -> tuple[slice, slice]:
        """Slices of the core's patch-grid cells inside the read region's grid."""
        oy, ox = (self.core_y[0] - self.read_y[0]) // patch, (self.core_x[0] - self.read_x[0]) // patch
        gy, gx = self.out_grid(patch)
        return (slice(oy, oy + gy.stop - gy.start), slice(ox, ox + gx.stop - gx.start))

    def out_grid(self, patch: int) -> tuple[slice, slice]:
        """Slices of the core's patch-grid cells in the whole section's grid (ceil at the far edge)."""
        return (
            slice(self.core_y[0] // patch, -(-self.core_y[1] // patch)),
            slice(self.core_x[0] // patch, -(-self.core_x[1] // patch)),
        )


def check_geometry(shape_yx: tuple[int, int], block: tuple[int, int], halo: int, patch: int = 16) -> None:
    """Raise a one-line ``ValueError`` unless blocks and halo fit the patch grid and each other.

    Blocks must be positive multiples of ``patch``; the halo a non-negative multiple of ``patch`` no larger
    than a block (a block whose halo reaches past its neighbours would re-read a 5×5 neighbourhood: make the
    blocks larger instead).
    """
    by, bx = (int(b) for b in block)
    if halo < 0 or halo % patch:
        raise ValueError(f"halo must be a non-negative multiple of the {patch}-px feature grid, got {halo} px")
    for name, b in (("y", by), ("x", bx)):
        if b <= 0 or b % patch:
            raise ValueError(f"block {name} size must be a positive multiple of the {patch}-px feature grid, got {b}")
    if halo > min(by, bx):
        raise ValueError(
            f"chunking too small for the halo: blocks of {by}×{bx} px cannot carry a {halo}-px halo; "
            f"use blocks of at least {halo} px (rechunk the zarr or pass block=) or a smaller halo="
        )
    h, w = (int(s) for s in shape_yx)
    if h < patch or w < patch:
        raise ValueError(f"sections of {h}×{w} px are smaller than one {patch}-px patch")


def axis_extents(n: int, block: int, halo: int, patch: int = 16) -> np.ndarray:
    """Core and read extents along one axis as an (n_blocks, 4) array: core start/stop, read start/stop.

    The read region is the core plus ``halo`` on each side, clipped to [0, n). A last core shorter than one
    patch with no halo still reads one full patch before it, so its border padding matches a whole-section run.
    """
    starts = np.arange(0, n, block)
    stops = np.minimum(starts + block, n)
    pre = np.where((stops - starts < patch) & (halo < patch), patch, halo)
    read_start = np.maximum(starts - pre, 0)
    read_stop = np.minimum(stops + halo, n)
    return np.stack([starts, stops, read_start, read_stop], axis=1)


def n_blocks(shape_zyx: tuple[int, int, int], block: tuple[int, int]) -> tuple[int, int, int]:
    """Blocks per axis (z, y, x)."""
    z, h, w = shape_zyx
    return (int(z), -(-int(h) // int(block[0])), -(-int(w) // int(block[1])))


def iter_blocks(
    shape_zyx: tuple[int, int, int], block: tuple[int, int], halo: int, patch: int = 16
) -> Iterator[Block]:
    """Every block of a (z, y, x) volume in (z, iy, ix) order."""
    ey = axis_extents(shape_zyx[1], block[0], halo, patch)
    ex = axis_extents(shape_zyx[2], block[1], halo, patch)
    for z in range(shape_zyx[0]):
        for iy, (cy0, cy1, ry0, ry1) in enumerate(ey.tolist()):
            for ix, (cx0, cx1, rx0, rx1) in enumerate(ex.tolist()):
                yield Block((z, iy, ix), (cy0, cy1), (cx0, cx1), (ry0, ry1), (rx0, rx1))
