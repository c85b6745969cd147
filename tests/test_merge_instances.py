"""Merging blockwise instance labels (``scale.merge_instances``): pieces labelled block by block and merged
equal connected components of the whole array exactly (same ids, raster order), for objects that cross a border
twice, meet at a block corner, touch only diagonally, or are small in every block but not in total."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuros.plugins.cv.instances import label_instances
from neuros.plugins.cv.scale.merge_instances import (
    block_tables,
    border_pairs,
    merge_blocks,
    merge_table,
    relabel,
)


def blockwise(mask: np.ndarray, block: tuple[int, int], connectivity: int = 1, min_size: int = 0) -> np.ndarray:
    """Connected components of each block on its own (``label_instances``), ids offset by block number."""
    vol = mask[None] if mask.ndim == 2 else mask
    out = np.zeros(vol.shape, np.uint32)
    by, bx = block
    n = 0
    for z in range(vol.shape[0]):
        for y0 in range(0, vol.shape[1], by):
            for x0 in range(0, vol.shape[2], bx):
                sl = (z, slice(y0, y0 + by), slice(x0, x0 + bx))
                local = label_instances(vol[sl], method="components", connectivity=connectivity, min_size=min_size)
                out[sl] = np.where(local > 0, local + n * by * bx, 0)
                n += 1
    return out[0] if mask.ndim == 2 else out


def whole(mask: np.ndarray, connectivity: int = 1, min_size: int = 0) -> np.ndarray:
    """The reference: components of every whole section, numbered on through the sections in raster order."""
    vol = mask[None] if mask.ndim == 2 else mask
    out, offset = np.zeros(vol.shape, np.uint32), 0
    for z, section in enumerate(vol):
        lab = label_instances(section, method="components", connectivity=connectivity, min_size=min_size)
        out[z] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    return out[0] if mask.ndim == 2 else out


def test_u_shaped_object_crossing_a_border_twice_is_one_object():
    mask = np.zeros((16, 16), bool)
    mask[3:13, 2] = mask[3:13, 6] = True  # two arms across the border y = 8 ...
    mask[12, 2:7] = True  # ... joined only below it
    mask[1:4, 10:14] = True  # and an object that touches no border
    pieces = blockwise(mask, (8, 8))
    assert len(np.unique(pieces[:8, :8])) - 1 == 2  # the arms are two pieces in the upper block
    merged = merge_blocks(pieces, (8, 8))
    np.testing.assert_array_equal(merged, whole(mask))
    assert set(np.unique(merged)) == {0, 1, 2}
    # The same across a vertical border (x = 8): the U on its side.
    np.testing.assert_array_equal(merge_blocks(blockwise(mask.T, (8, 8)), (8, 8)), whole(mask.T))


def test_object_spanning_four_blocks_at_a_corner():
    yy, xx = np.mgrid[:20, :20]
    mask = (yy - 9.5) ** 2 + (xx - 9.5) ** 2 <= 16  # a disc centred on the corner of four 10 × 10 blocks
    pieces = blockwise(mask, (10, 10))
    assert len(np.unique(pieces)) - 1 == 4
    merged = merge_blocks(pieces, (10, 10))
    np.testing.assert_array_equal(merged, mask.astype(np.uint32))


@pytest.mark.parametrize("connectivity", [1, 2])
def test_diagonal_contact_across_a_border_follows_connectivity(connectivity):
    mask = np.zeros((12, 12), bool)
    mask[4:6, 5] = mask[6:8, 6] = True  # diagonal step across the border y = 6 (not at a corner)
    mask[4:6, 1] = mask[6, 0] = True  # and another one towards the left
    mask[5, 9:11] = mask[6, 11] = True  # diagonal contact at the corner of four blocks (6 × 9 blocks: x = 9)
    mask[6:8, 7:9] = False
    pieces = blockwise(mask, (6, 9), connectivity)
    merged = merge_blocks(pieces, (6, 9), connectivity=connectivity)
    ref = whole(mask, connectivity)
    np.testing.assert_array_equal(merged, ref)
    assert ref.max() == (3 if connectivity == 2 else 6)


def test_min_size_applies_to_the_merged_object():
    mask = np.zeros((10, 10), bool)
    mask[3:6, 4:6] = True  # 6 px: 2 + 4 in the blocks above and below y = 4
    mask[8, 8:11] = True  # 2 px in a block of its own
    pieces = blockwise(mask, (4, 10))
    merged = merge_blocks(pieces, (4, 10), min_size=5)
    np.testing.assert_array_equal(merged, whole(mask, min_size=5))
    assert merged.max() == 1 and (merged > 0).sum() == 6
    # Dropping small pieces block by block would have lost it.
    assert merge_blocks(blockwise(mask, (4, 10), min_size=5), (4, 10)).max() == 0


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("block", [(7, 7), (16, 5), (3, 64)])
def test_random_blobs_equal_whole_sections(block, connectivity):
    rng = np.random.default_rng(sum(block) + connectivity)
    noise = ndi.gaussian_filter(rng.standard_normal((3, 48, 56)), sigma=(0, 2, 2))
    mask = noise > 0.15
    pieces = blockwise(mask, block, connectivity)
    merged = merge_blocks(pieces, block, min_size=6, connectivity=connectivity)
    np.testing.assert_array_equal(merged, whole(mask, connectivity, min_size=6))
    assert merged.max() > 20


def test_tables_and_relabel():
    region = np.array([[0, 5, 5, 0],  # the row above the block (y0 - 1), from the column left of it (x0 - 1) on
                       [7, 9, 0, 0],
                       [7, 9, 9, 0]], np.uint32)
    ids, first, sizes, pairs = block_tables(region, top=True, left=True, origin=(1, 10, 20), shape=(2, 30, 40))
    np.testing.assert_array_equal(ids, [9])
    np.testing.assert_array_equal(first, [(1 * 30 + 10) * 40 + 20])
    np.testing.assert_array_equal(sizes, [3])
    assert {tuple(p) for p in pairs} == {(5, 9), (7, 9)}
    np.testing.assert_array_equal(border_pairs([0, 5, 0], [5, 0, 6], connectivity=2), [[5, 6]])
    assert border_pairs([0, 5, 0], [5, 0, 6]).shape == (0, 2)
    ids, new = merge_table(np.array([9, 5, 7]), np.array([50, 10, 40]), np.array([3, 1, 1]), pairs)
    np.testing.assert_array_equal(ids, [5, 7, 9])
    np.testing.assert_array_equal(new, [1, 1, 1])
    np.testing.assert_array_equal(relabel(np.array([[0, 9], [5, 7]]), ids, new), [[0, 1], [1, 1]])


def test_inconsistent_tables_are_one_line_errors():
    with pytest.raises(ValueError, match="same length"):
        border_pairs([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="connectivity must be 1"):
        border_pairs([1], [2], connectivity=3)
    with pytest.raises(ValueError, match="no block holds"):
        merge_table(np.array([1, 2]), np.array([0, 1]), np.array([1, 1]), np.array([[1, 3]]))
    with pytest.raises(ValueError, match="unique and non-zero"):
        merge_table(np.array([1, 1]), np.array([0, 1]), np.array([1, 1]), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="not in the merge table"):
        relabel(np.array([[4]]), np.array([1, 2]), np.array([1, 2]))
