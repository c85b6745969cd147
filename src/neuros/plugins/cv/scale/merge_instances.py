"""Merging blockwise instance labels into the objects of whole sections: pure functions on NumPy arrays.

Blockwise labelling (:mod:`neuros.plugins.cv.scale.segment`) labels every block of a section on its own, with
ids unique over the volume, so an object cut by a block border comes out as one *piece* per block. The merge
joins pieces that touch across a border and renumbers the result:

1. :func:`block_tables` — per block, from its own pixels plus the one pixel line above and the one to its left
   (the two lines on either side of its top and left borders): the ids it holds, their sizes and first pixels
   (raster order), and the id pairs that touch across those borders (:func:`border_pairs`, under the same
   connectivity as :func:`~neuros.plugins.cv.instances.label_instances`: 4-neighbours, or 8 with the diagonal
   neighbours across the border).
2. :func:`merge_table` — union of the touching pieces (connected components of the pair graph,
   ``scipy.sparse.csgraph.connected_components``), ``min_size`` applied to the merged objects' total size,
   and the survivors renumbered ``1..n`` in raster (z, y, x) order of their first pixel.
3. :func:`relabel` — one block's pieces replaced by their object ids.

Every block's top and left borders together cover every internal border, diagonals at block corners included
(each block's top border line spans its columns plus the one to its left, and likewise for its left border), so
pieces of one connected object are always joined. Memory: one block plus the id tables.

For connected components (``method="components"``) blockwise labelling followed by this merge equals
labelling the whole section at once (``scipy.ndimage.label`` numbers objects in raster order too); for a
watershed, the pieces that touch across a border are joined — no object is cut by a border, but two objects
that the watershed of a whole section would separate can be one object where they meet at a border.
:func:`merge_blocks` runs the three steps on an in-memory array (the reference the Dask path is tested against).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["BlockTables", "block_tables", "border_pairs", "merge_blocks", "merge_table", "relabel"]

BlockTables = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # ids, first pixel, sizes, (n, 2) pairs


def _check_connectivity(connectivity: int) -> int:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")
    return int(connectivity)


def border_pairs(before: np.ndarray, after: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The id pairs that touch across a border between two adjacent parallel pixel lines.

    Parameters
    ----------
    before, after : ndarray, shape (n,)
        The labels of the last pixel line before the border and the first one after it (same length, aligned).
    connectivity : {1, 2}
        1: a pixel touches the one facing it; 2: also the facing pixel's two neighbours along the line
        (diagonal contact).

    Returns
    -------
    ndarray, shape (m, 2)
        Unique ``(before_id, after_id)`` pairs of different non-zero ids (0 is background), sorted.
    """
    a, b = np.asarray(before).ravel(), np.asarray(after).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two lines of a border must have the same length, got {a.size} and {b.size}")
    left, right = [a], [b]
    if _check_connectivity(connectivity) == 2:
        left += [a[:-1], a[1:]]
        right += [b[1:], b[:-1]]
    u, v = np.concatenate(left), np.concatenate(right)
    keep = (u != 0) & (v != 0) & (u != v)
    pairs = np.stack([u[keep], v[keep]], axis=1)
    return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


def block_tables(region: np.ndarray, top: bool, left: bool, origin: Sequence[int], shape: Sequence[int],
                 connectivity: int = 1) -> BlockTables:
    """Ids, sizes, first pixels and border pairs of one block's pieces.

    Parameters
    ----------
    region : ndarray, shape (h + top, w + left)
        The block's labels, with the pixel row above it (when ``top``) and the pixel column to its left (when
        ``left``) prepended: read as ``labels[z, y0 - top:y1, x0 - left:x1]``.
    top, left : bool
        Whether the block has a neighbour above / to the left (an internal border there).
    origin : (z, y0, x0)
        The block's first pixel in the volume.
    shape : (Z, H, W)
        The volume's shape (for the raster index of first pixels).
    connectivity : {1, 2}
        As in :func:`border_pairs`.

    Returns
    -------
    ids, first, sizes, pairs
        The block's non-zero ids (sorted), the raster index ``(z * H + y) * W + x`` of each one's first pixel,
        each one's pixel count, and the ``(n, 2)`` id pairs touching across its top and left borders.
    """
    region = np.asarray(region)
    if region.ndim != 2:
        raise ValueError(f"region must be a 2-D block of labels, got shape {region.shape}")
    ty, lx = int(bool(top)), int(bool(left))
    core = region[ty:, lx:]
    ids, first, sizes = np.unique(core, return_index=True, return_counts=True)
    nz = ids != 0
    ids, first, sizes = ids[nz], first[nz], sizes[nz]
    z, y0, x0 = (int(v) for v in origin)
    _, h, w = (int(v) for v in shape)
    ry, rx = np.divmod(first.astype(np.int64), core.shape[1])  # raster order inside a block is raster order
    first = (z * h + y0 + ry) * w + x0 + rx
    pairs = [np.zeros((0, 2), region.dtype)]
    if ty:
        pairs.append(border_pairs(region[0], region[1], connectivity))
    if lx:
        pairs.append(border_pairs(region[:, 0], region[:, 1], connectivity))
    return ids, first, sizes.astype(np.int64), np.concatenate(pairs)


def merge_table(
    ids: np.ndarray,
    first: np.ndarray,
    sizes: np.ndarray,
    pairs: np.ndarray,
    min_size: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Object ids of pieces: touching pieces joined, small objects dropped, objects numbered in raster order.

    Parameters
    ----------
    ids, first, sizes : ndarray, shape (n,)
        Every piece's id (unique, non-zero), the raster index of its first pixel and its pixel count (the
        concatenated :func:`block_tables` of all blocks).
    pairs : ndarray, shape (m, 2)
        Ids of pieces that touch (all of them in ``ids``).
    min_size : int
        Objects with fewer pixels in total (over all their pieces) become 0.

    Returns
    -------
    ids, new : ndarray
        The piece ids sorted, and each one's object id: ``1..k`` numbered by the raster order of the objects'
        first pixels (the numbering of ``scipy.ndimage.label``), 0 for dropped objects; ``new`` is uint64.

    Raises
    ------
    ValueError
        Repeated or zero piece ids, a pair naming an unknown id, or a negative ``min_size``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if int(min_size) < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    ids, first, sizes = np.asarray(ids).ravel(), np.asarray(first, np.int64).ravel(), np.asarray(sizes).ravel()
    if not ids.size == first.size == sizes.size:
        raise ValueError(f"ids, first and sizes must have one entry per piece, got {ids.size}, {first.size}, "
                         f"{sizes.size}")
    order = np.argsort(ids, kind="stable")
    ids, first, sizes = ids[order], first[order], sizes[order].astype(np.int64)
    if ids.size and (ids[0] == 0 or np.any(ids[1:] == ids[:-1])):
        raise ValueError("piece ids must be unique and non-zero (0 is background)")
    n = ids.size
    pairs = np.asarray(pairs).reshape(-1, 2)
    if pairs.size:
        ij = np.searchsorted(ids, pairs.ravel()).clip(max=max(n - 1, 0))
        if n == 0 or np.any(ids[ij] != pairs.ravel()):
            raise ValueError("a touching pair names a piece id that no block holds")
        ij = ij.reshape(-1, 2)
        graph = coo_matrix((np.ones(len(ij), np.int8), (ij[:, 0], ij[:, 1])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.arange(n)
    n_comp = int(comp.max()) + 1 if n else 0
    total = np.zeros(n_comp, np.int64)
    np.add.at(total, comp, sizes)
    start = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(start, comp, first)
    kept = np.flatnonzero(total >= int(min_size))
    kept = kept[np.argsort(start[kept], kind="stable")]
    number = np.zeros(n_comp, np.uint64)
    number[kept] = np.arange(1, kept.size + 1, dtype=np.uint64)
    return ids, number[comp]


def relabel(labels: np.ndarray, ids: np.ndarray, new: np.ndarray, dtype: str | np.dtype = np.uint32) -> np.ndarray:
    """``labels`` with every non-zero id ``ids[i]`` replaced by ``new[i]`` (``ids`` sorted; 0 stays 0)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype)
    nz = labels != 0
    values = labels[nz]
    if values.size:
        pos = np.searchsorted(ids, values).clip(max=max(len(ids) - 1, 0))
        if len(ids) == 0 or np.any(ids[pos] != values):
            raise ValueError("labels hold an id that is not in the merge table")
        out[nz] = new[pos].astype(dtype, copy=False)
    return out


def _block_slices(shape: Sequence[int], block: Sequence[int]) -> Iterable[tuple[int, int, int, int]]:
    h, w = int(shape[-2]), int(shape[-1])
    by, bx = (int(b) for b in block)
    if by <= 0 or bx <= 0:
        raise ValueError(f"block must be two positive sizes (y, x), got {tuple(block)}")
    for y0 in range(0, h, by):
        for x0 in range(0, w, bx):
            yield y0, min(y0 + by, h), x0, min(x0 + bx, w)


def merge_blocks(pieces: np.ndarray, block: Sequence[int], min_size: int = 0, connectivity: int = 1,
                 dtype: str | np.dtype = np.uint32) -> np.ndarray:
    """Merge an in-memory array of blockwise labels (z, y, x) or (y, x) cut into blocks of ``block`` (y, x).

    The blocks' ids must be unique over the whole array. Returns the merged objects numbered ``1..n`` in raster
    order (as the Dask path of ``volume segment`` writes them).
    """
    arr = np.asarray(pieces)
    vol = arr[None] if arr.ndim == 2 else arr
    if vol.ndim != 3:
        raise ValueError(f"pieces must be (y, x) or (z, y, x) labels, got shape {arr.shape}")
    tables = []
    for z in range(vol.shape[0]):
        for y0, y1, x0, x1 in _block_slices(vol.shape, block):
            top, left = y0 > 0, x0 > 0
            region = vol[z, y0 - top:y1, x0 - left:x1]
            tables.append(block_tables(region, top, left, (z, y0, x0), vol.shape, connectivity))
    ids, first, sizes, pairs = (np.concatenate([t[k] for t in tables]) for k in range(4))
    ids, new = merge_table(ids, first, sizes, pairs, min_size)
    out = relabel(vol, ids, new, dtype)
    return out[0] if arr.ndim == 2 else out
