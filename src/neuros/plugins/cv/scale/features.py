"""Blockwise dense features of every section of a zarr volume, on ``dask.distributed``, written to zarr.

Each block is one section's core of ``block`` pixels plus a halo, read as a lazy slice of a ``dask.array``
backed by the input zarr; its features are cropped to the core's cells of the backbone's feature grid (its
``stride``) and written into the output array at the same grid position, then the block is marked done. The
default halo is the backbone's own :attr:`~neuros.plugins.cv.backbones.base.Backbone.halo`: where its receptive
field is bounded (placeholder: one patch, halo 0; filter bank: its Gaussians' reach; ConvNeXt: its stage's
window) the result equals :func:`section_features` on the whole section *exactly*; ViT attention is global, so
ViT features only approximate it (``halo_exact`` is False).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .blocks import Block, check_geometry, iter_blocks, n_blocks
from .models import worker_backbone
from .ome import ome_name, read_geometry, write_image_metadata
from .resume import DEFAULT_TIMEOUT, ProgressFactory, done_indices, finish_output, mark_done, open_output, run_blocks
from .zarr_io import open_volume

__all__ = [
    "grid_step",
    "intensity_range",
    "plan_blocks",
    "scale_intensity",
    "section_features",
    "volume_features",
]

SCALINGS = ("auto", "dtype", "percentile")
SAMPLE_VOXELS = 4_000_000


def intensity_range(
    volume: Any, scaling: str = "auto", percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[float, float]:
    """One (low, high) intensity range for the whole volume, so every block is scaled the same way.

    ``"dtype"``: the integer dtype's range (floats: 0–1). ``"percentile"``: robust percentiles of a strided
    sample of about 4 M voxels. ``"auto"``: ``"dtype"`` for uint8/bool and for floats already in [0, 1],
    otherwise ``"percentile"`` (16-bit EM, MRI). Per-block scaling would make blocks disagree.
    """
    import dask.array as da

    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    x = volume if isinstance(volume, da.Array) else da.asarray(volume)
    dt = np.dtype(x.dtype)
    if scaling == "auto":
        if dt in (np.dtype(np.uint8), np.dtype(bool)):
            scaling = "dtype"
        elif np.issubdtype(dt, np.floating):
            lo, hi = da.compute(x.min(), x.max())
            scaling = "dtype" if lo >= 0 and hi <= 1 else "percentile"
        else:
            scaling = "percentile"
    if scaling == "dtype":
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            return float(info.min), float(info.max)
        return 0.0, 1.0
    step = max(1, int(np.sqrt(x.size / SAMPLE_VOXELS)))
    sample = np.asarray(x[:, ::step, ::step].compute(), dtype=np.float64)
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, (hi if hi > lo else lo + 1.0)


def scale_intensity(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip((image - lo) / (hi - lo), 0, 1)`` as float32: the same pointwise map for every block."""
    out = (np.asarray(image, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def section_features(section: np.ndarray, backbone: Any, lo: float, hi: float) -> np.ndarray:
    """Features (h, w, C) of one whole (or halo'd) section: the function every block runs on its region."""
    return backbone.extract(scale_intensity(section, lo, hi)).features


def grid_step(backbone: Any) -> int:
    """The backbone's feature stride in input pixels as a whole number: the grid blocks and halos align to.

    Raises a one-line ``ValueError`` for a fractional stride (e.g. ``scale=3`` on a /16 model): its cells do not
    start on whole pixels, so blocks could not be cut on the grid.
    """
    stride = float(backbone.stride)
    if stride < 1 or not stride.is_integer():
        raise ValueError(f"backbone {backbone.name!r} has a feature stride of {stride:g} px; blockwise processing "
                         "needs a whole number of pixels (choose a scale that divides its patch size)")
    return int(stride)


@dataclass(frozen=True)
class _FeatureTask:
    out: str
    backbone: str
    weights: str | None
    lo: float
    hi: float
    step: int


def _features_block(region: np.ndarray, block: Block, task: _FeatureTask) -> tuple[int, int, int]:
    """Runs on a worker: features of one block's region, cropped to its core, written, then marked done."""
    import zarr

    feats = section_features(region, worker_backbone(task.backbone, task.weights), task.lo, task.hi)
    gy, gx = block.out_grid(task.step)
    arr = zarr.open_array(str(Path(task.out) / "features"), mode="r+")  # (c, z, y, x): OME-NGFF axis order
    arr[:, block.z, gy, gx] = np.moveaxis(feats[block.inner_grid(task.step)], -1, 0)
    mark_done(task.out, "features", block.index)
    return block.index


def resolve_block(array, block: int | tuple[int, int] | None, step: int = 16) -> tuple[int, int]:
    """Processing block (y, x): given, or the zarr chunk rounded up to the ``step``-px grid."""
    if block is None:
        cy, cx = array.chunks[1], array.chunks[2]
        return (-(-cy // step) * step, -(-cx // step) * step)
    by, bx = (block, block) if np.isscalar(block) else tuple(block)
    return int(by), int(bx)


def plan_blocks(
    array, backbone: Any, block: int | tuple[int, int] | None, halo: int | None, extra: int = 0
) -> tuple[tuple[int, int], int]:
    """Block size and halo for ``array`` and ``backbone`` (default halo: the backbone's ``halo`` + ``extra``
    pixels), checked against each other and the backbone's feature grid (``ValueError`` naming the problem)."""
    step = grid_step(backbone)
    by, bx = resolve_block(array, block, step)
    halo = int(backbone.halo) + extra if halo is None else int(halo)
    check_geometry(array.shape[1:], (by, bx), halo, step)
    return (by, bx), halo


def pending_blocks(out: str | os.PathLike[str], ledger: str, blocks: list[Block]) -> list[Block]:
    """Blocks not yet marked done in ``ledger``."""
    done = done_indices(out, ledger)
    return [b for b in blocks if b.index not in done]


def volume_features(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    client,
    *,
    backbone: str = "vit-small",
    weights: str | None = None,
    block: int | tuple[int, int] | None = None,
    halo: int | None = None,
    scaling: str = "auto",
    level: int = 0,
    component: str | None = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    voxel_size: tuple[float, float, float] | None = None,
    voxel_unit: str | None = None,
) -> dict[str, Any]:
    """Dense features of every section of a zarr volume, blockwise on a Dask cluster, into ``out``.

    Parameters
    ----------
    src : path-like
        Input zarr array / OME-Zarr group holding a (z, y, x) volume.
    out : path-like
        Output zarr group, an OME-Zarr image: ``features`` (C, z, ⌈y/s⌉, ⌈x/s⌉) float32 (axes c, z, y, x), with
        ``s`` the backbone's stride (16 for ViT/16), one chunk per block, with the input's voxel size × s in y
        and x (cells centred (s - 1)/2 input voxels in).
        An existing output of the same run is resumed (finished blocks are skipped).
    client : distributed.Client
        Where the blocks run (see :func:`~neuros.plugins.cv.scale.cluster.dask_client`).
    backbone, weights : str
        A registered backbone and its weights; built once per worker.
    block : int or (int, int), optional
        Block size in y, x (multiples of the backbone's stride). Default: the input's zarr chunk rounded up to it.
    halo : int, optional
        Context read around each block (a multiple of the stride). Default: the backbone's ``halo`` (its receptive
        field where bounded: blocks then equal whole sections exactly; an approximation for ViTs).
    scaling : {"auto", "dtype", "percentile"}
        Global intensity scaling; see :func:`intensity_range`.
    level, component
        Which array of an OME-Zarr / zarr group to read.
    retries : int
        Extra attempts for a failing block before it is reported.
    overwrite : bool
        Replace an existing ``out`` instead of resuming it.
    progress : callable, optional
        Progress factory ``(total, title) -> context manager yielding advance(message)``.
    timeout : float
        Seconds the scheduler may be lost, silent or without workers mid-run before the run stops
        (:class:`~neuros.plugins.cv.scale.cluster.SchedulerError`).
    voxel_size, voxel_unit
        Input voxel size (z, y, x) and unit (e.g. ``"nanometer"``) for the OME-Zarr metadata; default: the
        input's OME-Zarr metadata (a plain zarr input: 1 voxel, no unit).

    Returns
    -------
    dict
        The run's record (backbone, weights, shapes, blocks computed / skipped).
    """
    import dask.array as da

    arr = open_volume(src, level, component)
    geometry = read_geometry(src, level, component).with_voxel_size(voxel_size, voxel_unit)
    bb = worker_backbone(backbone, weights)  # validates the name here; workers build their own copy
    (by, bx), halo = plan_blocks(arr, bb, block, halo)
    step = grid_step(bb)
    x = da.from_zarr(arr)
    lo, hi = intensity_range(x, scaling)
    z, h, w = arr.shape
    gh, gw = -(-h // step), -(-w // step)
    dim = int(bb.feature_dim)
    run = {
        "task": "features", "input": str(Path(src).expanduser().resolve()), "component": arr.path, "shape": [z, h, w],
        "backbone": bb.name, "weights": bb.weights, "block": [by, bx], "halo": halo, "intensity_range": [lo, hi],
        "stride": step, "layout": "czyx",
    }
    group, resumed = open_output(
        out, run,
        {"features": {"shape": (dim, z, gh, gw), "chunks": (dim, 1, by // step, bx // step), "dtype": "float32",
                      "fill_value": 0.0, "dimension_names": ("c", "z", "y", "x")}},
        {"features": n_blocks(arr.shape, (by, bx))},
        overwrite,
        inputs=[src],
    )
    grid = geometry.strided(step, step)
    write_image_metadata(group, ome_name(out), [("features", grid)], channels=True)
    blocks = list(iter_blocks(arr.shape, (by, bx), halo, step))
    todo = pending_blocks(out, "features", blocks)
    task = _FeatureTask(str(Path(out).expanduser().resolve()), backbone, weights, lo, hi, step)
    import dask

    fn = dask.delayed(_features_block, pure=False)
    tasks = [(b.index, fn(x[b.z, slice(*b.read_y), slice(*b.read_x)], b, task)) for b in todo]
    report = run_blocks(client, tasks, total=len(blocks), retries=retries, progress=progress, title="features",
                        timeout=timeout)
    record = {**run, "output": str(out), "features_shape": [dim, z, gh, gw], "resumed": resumed,
              "voxel_size": list(grid.scale), "voxel_unit": grid.units[-1], **report.as_dict()}
    finish_output(group, blocks=report.as_dict())
    return record
