"""Section alignment of a zarr volume on Dask: pairwise translations in parallel, then a blockwise shift.

1. Every neighbouring pair (z-1, z) is registered by
   :func:`~neuros.plugins.cv.registration.register_translation` as its own task (optionally on a coarser
   OME-Zarr level, shifts scaled back to full resolution); the pairwise shifts are summed along z (the
   ``reference="previous"`` scheme of :func:`~neuros.plugins.cv.registration.align_stack`) and stored in the
   output's attributes, so a resumed run does not register again.
2. The aligned volume is written block by block: each output block reads only the input region its pixels
   come from (plus a 1-px margin for interpolation) and resamples it with :func:`shift_region`, which equals
   ``registration.shift_image`` on the whole section for orders 0 and 1 (order 3's spline prefilter is global,
   so it is not offered blockwise).

Shift convention: section ``z`` ≈ the reference frame rolled by ``shifts[z]``; the aligned section is the input
moved by ``-shifts[z]``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from .blocks import Block, iter_blocks, n_blocks
from .features import pending_blocks, resolve_block
from .models import worker_backbone
from .ome import ome_name, read_geometry, write_image_metadata
from .resume import DEFAULT_TIMEOUT, ProgressFactory, finish_output, mark_done, open_output, run_blocks
from .zarr_io import open_volume

__all__ = ["accumulate_shifts", "read_extent", "shift_region", "volume_align"]

ORDERS = (0, 1)
#: Output blocks are multiples of this many pixels (chunk-friendly; the shift step reads no feature grid).
BLOCK_GRID = 16


def accumulate_shifts(pairwise: np.ndarray) -> np.ndarray:
    """Positions relative to section 0 from pairwise shifts (row z: section z-1 → z; row 0 ignored)."""
    pw = np.asarray(pairwise, dtype=np.float64).reshape(-1, 2).copy()
    pw[0] = 0.0
    return np.cumsum(pw, axis=0)


def read_extent(core: tuple[int, int], shift: float, n: int, margin: int = 1) -> tuple[int, int]:
    """Input rows (or columns) an output core [start, stop) needs when moved by ``-shift``, clipped to [0, n)."""
    lo = core[0] + math.floor(shift) - margin
    hi = core[1] - 1 + math.ceil(shift) + margin + 1
    return max(lo, 0), min(hi, n)


def shift_region(
    region: np.ndarray | None,
    region_origin: tuple[int, int],
    core_origin: tuple[int, int],
    core_shape: tuple[int, int],
    shift: tuple[float, float],
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Output pixels ``out[y, x] = input[y + sy, x + sx]`` of a core, from the input region that holds them.

    ``region`` starts at ``region_origin`` of the section (None or empty: the core maps outside the section),
    the core at ``core_origin``. Samples outside the section get ``fill``, as in
    :func:`~neuros.plugins.cv.registration.shift_image`. Returns float32.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be 0 or 1 for blockwise alignment, got {order}")
    if region is None or region.size == 0:
        return np.full(core_shape, fill, dtype=np.float32)
    offset = (core_origin[0] + shift[0] - region_origin[0], core_origin[1] + shift[1] - region_origin[1])
    return ndi.affine_transform(
        np.asarray(region, dtype=np.float32), np.ones(2), offset=offset, output_shape=tuple(core_shape),
        order=order, mode="constant", cval=float(fill), prefilter=False,
    )


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _pair_task(a: np.ndarray, b: np.ndarray, backbone: str | None, weights: str | None,
               factor: tuple[float, float], kw: dict[str, Any]) -> tuple[float, float, float, str, str]:
    """Runs on a worker: register section b to section a (at some level), shifts in full-resolution pixels."""
    from ..registration import register_translation

    bb = None if backbone is None else worker_backbone(backbone, weights)
    t = register_translation(a, b, backbone=bb, **kw)
    return (t.dy * factor[0], t.dx * factor[1], t.score, t.backbone, t.weights)


@dataclass(frozen=True)
class _ShiftTask:
    out: str
    order: int
    fill: float


def _shift_block(region: np.ndarray | None, block: Block, origin: tuple[int, int], shift: tuple[float, float],
                 task: _ShiftTask) -> tuple[int, int, int]:
    """Runs on a worker: one aligned output block, written, then marked done."""
    import zarr

    arr = zarr.open_array(str(Path(task.out) / "aligned"), mode="r+")
    out = shift_region(region, origin, (block.core_y[0], block.core_x[0]), block.core_shape, shift, task.order,
                       task.fill)
    arr[block.z, slice(*block.core_y), slice(*block.core_x)] = _cast(out, np.dtype(arr.dtype))
    mark_done(task.out, "aligned", block.index)
    return block.index


def volume_align(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    client,
    *,
    backbone: str | None = None,
    weights: str | None = None,
    register_level: int = 0,
    block: int | tuple[int, int] | None = None,
    order: int = 1,
    fill: float = 0.0,
    component: str | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    voxel_size: tuple[float, float, float] | None = None,
    voxel_unit: str | None = None,
    **register_kw: Any,
) -> dict[str, Any]:
    """Align the sections of a zarr volume by translations, on a Dask cluster, into ``out``.

    Parameters
    ----------
    src, out, client
        As in :func:`~neuros.plugins.cv.scale.features.volume_features`; ``out`` is an OME-Zarr image:
        ``aligned`` (z, y, x) in the input's dtype and voxel size and, in ``attrs["neuros_cv"]``, the
        per-section ``shifts`` and pairwise registrations.
    backbone, weights : str, optional
        Coarse-step features for ``register_translation`` (None: its built-in structure channels).
    register_level : int
        OME-Zarr level to register on (shifts are scaled by the level's downsampling); 0: full resolution.
    block : int or (int, int), optional
        Output block size (y, x); default: the input chunk rounded up to 16.
    order : {0, 1}
        Interpolation order of the shift.
    fill : float
        Value for pixels moved in from outside the section.
    component, retries, overwrite, progress, timeout, voxel_size, voxel_unit
        As in :func:`~neuros.plugins.cv.scale.features.volume_features`.
    **register_kw
        Passed to ``register_translation`` (``max_shift``, ``min_overlap``, ``upsample``, …).

    Returns
    -------
    dict
        The run's record, with ``shifts`` (z, 2) and pairwise scores.
    """
    import dask
    import dask.array as da

    if order not in ORDERS:
        raise ValueError(f"order= must be 0 or 1 for blockwise alignment, got {order}")
    arr = open_volume(src, 0, component)
    geometry = read_geometry(src, 0, component).with_voxel_size(voxel_size, voxel_unit)
    z, h, w = arr.shape
    if z < 2:
        raise ValueError(f"input has {z} section(s); alignment needs at least two")
    low = arr if register_level == 0 else open_volume(src, register_level, component)
    factor = (h / low.shape[1], w / low.shape[2])
    by, bx = resolve_block(arr, block, BLOCK_GRID)
    if by <= 0 or bx <= 0 or by % BLOCK_GRID or bx % BLOCK_GRID:
        raise ValueError(f"block must be positive multiples of {BLOCK_GRID} px, got {by}×{bx}")
    bname = None if backbone in (None, "none", "structure") else backbone
    if bname is not None:
        worker_backbone(bname, weights)  # fail early on a bad name
    run = {
        "task": "align", "input": str(Path(src).expanduser().resolve()), "component": arr.path, "shape": [z, h, w],
        "backbone": bname or "structure", "weights_arg": weights, "register_level": int(register_level),
        "block": [by, bx], "order": int(order), "fill": float(fill),
        "register_kw": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(register_kw.items())},
    }
    group, resumed = open_output(
        out, run, {"aligned": {"shape": (z, h, w), "chunks": (1, by, bx), "dtype": arr.dtype, "fill_value": 0,
                               "dimension_names": ("z", "y", "x")}},
        {"aligned": n_blocks(arr.shape, (by, bx))}, overwrite, inputs=[src],
    )
    write_image_metadata(group, ome_name(out), [("aligned", geometry)])
    meta = group.attrs.asdict()["neuros_cv"]
    xl = da.from_zarr(low)
    if "shifts" not in meta:
        pair = dask.delayed(_pair_task, pure=False)
        tasks = [((k, 0, 0), pair(xl[k - 1], xl[k], bname, weights, factor, register_kw)) for k in range(1, z)]
        rep = run_blocks(client, tasks, total=z - 1, retries=retries, progress=progress, title="register pairs",
                        timeout=timeout, gather=True)
        res = [rep.results[(k, 0, 0)] for k in range(1, z)]
        pairwise = np.array([[0.0, 0.0]] + [[r[0], r[1]] for r in res])
        meta.update(
            shifts=accumulate_shifts(pairwise).tolist(), pairwise=pairwise.tolist(),
            scores=[1.0] + [float(r[2]) for r in res], registration={"backbone": res[0][3], "weights": res[0][4]},
        )
        group.attrs["neuros_cv"] = meta
    shifts = np.asarray(meta["shifts"], dtype=np.float64)
    x = da.from_zarr(arr)
    blocks = list(iter_blocks(arr.shape, (by, bx), 0, BLOCK_GRID))
    todo = pending_blocks(out, "aligned", blocks)
    task = _ShiftTask(str(Path(out).expanduser().resolve()), int(order), float(fill))
    fn = dask.delayed(_shift_block, pure=False)
    tasks = []
    for b in todo:
        sy, sx = (float(v) for v in shifts[b.z])
        ry, rx = read_extent(b.core_y, sy, h), read_extent(b.core_x, sx, w)
        region = x[b.z, slice(*ry), slice(*rx)] if ry[0] < ry[1] and rx[0] < rx[1] else None
        tasks.append((b.index, fn(region, b, (ry[0], rx[0]), (sy, sx), task)))
    report = run_blocks(client, tasks, total=len(blocks), retries=retries, progress=progress, title="shift",
                        timeout=timeout)
    finish_output(group, blocks=report.as_dict())
    return {**run, "output": str(out), "resumed": resumed, "shifts": shifts.tolist(),
            "voxel_size": list(geometry.scale), "voxel_unit": geometry.units[-1],
            "scores": meta["scores"], "registration": meta["registration"], **report.as_dict()}
