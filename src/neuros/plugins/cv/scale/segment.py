"""Blockwise segmentation of a zarr volume with a trained head (:mod:`neuros.plugins.cv.heads`) on Dask.

Each block computes features of its halo'd region with the head's own backbone (rebuilt from the spec in its
``head.json``: name, weights and every option that changes the features), asks the head for pixel-level
class probabilities (grid probabilities upsampled bilinearly; at stride 1 the grid is the pixels), crops the
core and writes labels (and, optionally, the probabilities and instance labels of one class). The halo is the
backbone's own (``Backbone.halo``) plus one grid cell (its ``stride``), since bilinear upsampling near a
block's edge uses the neighbouring cell, plus the head's own reach (``head.context_px``: a conv decoder's
±136 px at its defaults, 0 for the table heads); with it, blocks equal :func:`section_probabilities` on whole sections
— and ``head.predict_proba(TiledFeatures(backbone, section))`` — exactly for bounded-receptive-field
backbones (the filter bank at any stride). Below stride 16 a block's own features are computed tile by tile
(:class:`~neuros.plugins.cv.dense.TiledFeatures`), so a large block never holds a whole pixel-level map.

Instance labels (``instances=CLASS``) are computed per block on the block's core probabilities
(:func:`~neuros.plugins.cv.instances.label_instances`, without ``min_size``) into a scratch array
``instance_pieces`` (ids offset by block number × block pixels). Once every block is written — in a resumed
run too — a merge pass (:mod:`~neuros.plugins.cv.scale.merge_instances`, on the Dask cluster, memory of one
block plus the id tables) joins the pieces that touch across block borders (the pixel lines on either side of
each border, under the labelling's connectivity), drops objects below ``min_size`` pixels in total, numbers the
objects ``1..n`` in raster (z, y, x) order of their first pixel into ``instances/0`` and removes the scratch
array. With ``method="components"`` the result equals ``label_instances`` of each whole section (ids numbered on
through the sections); with the watershed, pieces touching across a border are joined, so no object is cut by a
border (but objects the watershed of a whole section would split may meet there as one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.spec import BackboneSpec
from .blocks import Block, iter_blocks, n_blocks
from .features import grid_step, intensity_range, pending_blocks, plan_blocks, scale_intensity
from .merge_instances import block_tables, merge_table, relabel
from .models import worker_backbone, worker_head
from .ome import ome_name, read_geometry, relative_source, write_image_metadata, write_label_metadata
from .resume import DEFAULT_TIMEOUT, ProgressFactory, finish_output, open_output, run_blocks
from .zarr_io import open_volume

__all__ = ["INSTANCE_METHODS", "block_instances", "head_backbone", "merge_pieces", "section_probabilities",
           "volume_segment"]

LABELS = "0"  # the label image's level 0 ("labels" is the name NGFF reserves for a group of label images)
PROBA = "probabilities/0"  # an OME-Zarr image of its own inside the label image's group
INSTANCES = "instances/0"  # an OME-Zarr label image of its own inside the label image's group
PIECES = "instance_pieces"  # per-block instance ids until the merge pass has written INSTANCES (then removed)
INSTANCE_METHODS = ("watershed", "components")
#: Below this stride a block's features are computed tile by tile (``dense.TiledFeatures``).
TILED_BELOW_STRIDE = 16


def head_backbone(head: Any) -> BackboneSpec:
    """The spec of the backbone a head was trained on (from its ``head.json``), to build it on the workers."""
    spec = getattr(head, "backbone_spec_", None)
    if spec is None:
        raise ValueError("this head was fitted on a patch matrix and names no backbone; fit it on feature maps "
                         "(SegmentationHead.fit(feature_maps, masks) or `neuros-cv segment train`)")
    return spec


def section_probabilities(section: np.ndarray, backbone: Any, head: Any, lo: float, hi: float) -> np.ndarray:
    """Pixel-level class probabilities (H, W, K) of one whole (or halo'd) section.

    Below stride 16 the features are :class:`~neuros.plugins.cv.dense.TiledFeatures` (memory of one tile; equal
    to the whole map for the filter bank), else one whole feature map.
    """
    image = scale_intensity(section, lo, hi)
    if float(backbone.stride) < TILED_BELOW_STRIDE:
        from ..dense import TiledFeatures

        return head.predict_proba(TiledFeatures(backbone, image), level="pixel")
    return head.predict_proba(backbone.extract(image), level="pixel")


@dataclass(frozen=True)
class InstanceSettings:
    """Which class becomes objects and how (see :func:`~neuros.plugins.cv.instances.label_instances`)."""

    index: int
    method: str = "watershed"
    threshold: float = 0.5
    min_size: int = 0  # applied by the merge pass, to whole objects
    connectivity: int = 1


def block_instances(proba: np.ndarray, settings: InstanceSettings, offset: int, dtype: str) -> np.ndarray:
    """Pieces of objects in one block's core probabilities (H, W, K): ids 1..n shifted by ``offset`` (0 stays 0).

    ``min_size`` is not applied here (an object cut by a border may be small in every block): the merge pass
    applies it to the merged objects.
    """
    from ..instances import label_instances

    local = label_instances(proba, cls=settings.index, method=settings.method, threshold=settings.threshold,
                            connectivity=settings.connectivity)
    out = local.astype(dtype)
    out[local > 0] += np.asarray(offset, dtype=dtype)
    return out


@dataclass(frozen=True)
class _SegmentTask:
    out: str
    head: str
    backbone: BackboneSpec
    lo: float
    hi: float
    save_proba: bool
    instances: InstanceSettings | None = None
    grid: tuple[int, int, int] = (1, 1, 1)  # blocks per axis (z, y, x): a block's number for its id offset
    block_pixels: int = 0
    piece_dtype: str = "uint32"


def _segment_block(region: np.ndarray, block: Block, task: _SegmentTask) -> tuple[int, int, int]:
    """Runs on a worker: probabilities and labels of one block's core, written, then marked done."""
    import zarr

    from .resume import mark_done

    head = worker_head(task.head)
    proba = section_probabilities(region, worker_backbone(task.backbone), head, task.lo, task.hi)
    core = proba[block.inner()]
    group = zarr.open_group(task.out, mode="r+")
    sl = (block.z, slice(*block.core_y), slice(*block.core_x))
    labels = group[LABELS]
    labels[sl] = head.decide(core).astype(labels.dtype)
    if task.save_proba:  # (K, z, y, x): OME-NGFF axis order
        group[PROBA][(slice(None), *sl)] = np.moveaxis(core, -1, 0).astype(np.float32)
    if task.instances is not None:
        z, iy, ix = block.index
        number = (z * task.grid[1] + iy) * task.grid[2] + ix
        group[PIECES][sl] = block_instances(core, task.instances, number * task.block_pixels, task.piece_dtype)
    mark_done(task.out, "labels", block.index)
    return block.index


def _piece_tables(out: str, block: Block, shape: tuple[int, int, int], connectivity: int) -> tuple[np.ndarray, ...]:
    """Runs on a worker: ids, sizes, first pixels and border pairs of one block's pieces
    (:func:`~neuros.plugins.cv.scale.merge_instances.block_tables`; reads the block plus one line above and left)."""
    import zarr

    pieces = zarr.open_array(str(Path(out) / PIECES), mode="r")
    (y0, y1), (x0, x1) = block.core_y, block.core_x
    top, left = y0 > 0, x0 > 0
    region = pieces[block.z, y0 - top:y1, x0 - left:x1]
    return block_tables(region, top, left, (block.z, y0, x0), shape, connectivity)


def _write_objects(out: str, block: Block, ids: np.ndarray, new: np.ndarray) -> tuple[int, int, int]:
    """Runs on a worker: one block's pieces replaced by their merged object ids in ``instances/0``."""
    import zarr

    group = zarr.open_group(out, mode="r+")
    sl = (block.z, slice(*block.core_y), slice(*block.core_x))
    target = group[INSTANCES]
    target[sl] = relabel(group[PIECES][sl], ids, new, target.dtype)
    return block.index


def merge_pieces(client, out: str, blocks: list[Block], shape: tuple[int, int, int], settings: InstanceSettings,
                 *, retries: int = 2, progress: ProgressFactory | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Merge the per-block pieces of ``out``'s ``instance_pieces`` into objects written to ``instances/0``.

    Two passes of Dask tasks, one per block: the first returns each block's id tables and border pairs (small),
    which the client unions (:func:`~neuros.plugins.cv.scale.merge_instances.merge_table`: touching pieces
    joined, ``min_size`` applied to whole objects, objects numbered ``1..n`` in raster order); the second
    rewrites each block with its own slice of the table. Idempotent: ``instance_pieces`` is only read, so an
    interrupted merge is simply run again.

    Returns
    -------
    dict
        ``{"merged": "across block borders", "connectivity", "pieces", "objects"}`` for the output's metadata.
    """
    import dask

    tables_fn = dask.delayed(_piece_tables, pure=False)
    tasks = [(b.index, tables_fn(out, b, shape, settings.connectivity)) for b in blocks]
    found = run_blocks(client, tasks, total=len(blocks), retries=retries, progress=progress,
                       title="instances: borders", timeout=timeout, gather=True).results
    tables = [found[b.index] for b in blocks]
    ids, new = merge_table(*(np.concatenate([t[k] for t in tables]) for k in range(4)), min_size=settings.min_size)
    write_fn = dask.delayed(_write_objects, pure=False)
    tasks = [(b.index, write_fn(out, b, t[0], new[np.searchsorted(ids, t[0])])) for b, t in zip(blocks, tables,
                                                                                                strict=True)]
    run_blocks(client, tasks, total=len(blocks), retries=retries, progress=progress, title="instances: relabel",
               timeout=timeout)
    return {"merged": "across block borders", "connectivity": settings.connectivity, "pieces": int(ids.size),
            "objects": int(new.max()) if new.size else 0}


def _instance_settings(classes: np.ndarray, value: int | None, method: str, threshold: float,
                       min_size: int, connectivity: int = 1) -> InstanceSettings | None:
    """Checked instance settings (one-line errors before any block runs), or None without ``instances``."""
    if value is None:
        return None
    hit = np.flatnonzero(classes == int(value))
    if hit.size == 0:
        raise ValueError(f"instances={value} is not a class of the head (its classes: {classes.tolist()}); "
                         "give one of those values")
    if method not in INSTANCE_METHODS:
        raise ValueError(f"instance_method must be one of {', '.join(INSTANCE_METHODS)}, got {method!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"instance_threshold must lie in [0, 1], got {threshold!r}")
    if int(min_size) < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    if connectivity not in (1, 2):
        raise ValueError(f"instance_connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")
    return InstanceSettings(int(hit[0]), method, float(threshold), int(min_size), int(connectivity))


def _label_dtype(classes: np.ndarray) -> str:
    for dt in ("uint8", "uint16", "int32", "int64"):
        info = np.iinfo(dt)
        if classes.min() >= info.min and classes.max() <= info.max:
            return dt
    return "int64"


def volume_segment(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    client,
    head: str | os.PathLike[str],
    *,
    block: int | tuple[int, int] | None = None,
    halo: int | None = None,
    scaling: str = "auto",
    level: int = 0,
    component: str | None = None,
    save_proba: bool = False,
    instances: int | None = None,
    instance_method: str = "watershed",
    instance_threshold: float = 0.5,
    min_size: int = 0,
    instance_connectivity: int = 1,
    retries: int = 2,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    voxel_size: tuple[float, float, float] | None = None,
    voxel_unit: str | None = None,
) -> dict[str, Any]:
    """Segment every section of a zarr volume with a saved head, blockwise on a Dask cluster.

    Parameters
    ----------
    src, out, client
        As in :func:`~neuros.plugins.cv.scale.features.volume_features`; ``out`` is an OME-Zarr label image
        (``image-label`` metadata, ``source`` pointing to the input): array ``0`` (z, y, x) holds the head's
        class values at the input's voxel size and, with ``save_proba``, an OME-Zarr image ``probabilities`` whose
        array ``probabilities/0`` is (K, z, y, x) float32 (axes c, z, y, x).
    head : path-like
        A folder written by ``SegmentationHead.save``; its backbone spec (name, weights, options) makes the
        features.
    instances : int, optional
        A class value of the head: also write ``instances/0`` (z, y, x), an OME-Zarr label image of its objects
        (uint32; uint64 for volumes of 2³² voxels or more). Objects are labelled per block, then merged across
        block borders (:func:`merge_pieces`) and numbered ``1..n`` over the volume in raster (z, y, x) order of
        their first pixel; ``min_size`` applies to the merged objects. With ``instance_method="components"``
        each section equals ``label_instances`` of the whole section (ids numbered on through the sections);
        with the watershed, pieces that touch across a border are one object (none is cut by a border).
    instance_method, instance_threshold, min_size, instance_connectivity
        ``method``, ``threshold``, ``min_size`` and ``connectivity`` of
        :func:`~neuros.plugins.cv.instances.label_instances` (the merge joins pieces under the same
        connectivity: 1 = 4-neighbours, 2 = 8-neighbours).
    block, halo, scaling, level, component, retries, overwrite, progress, timeout, voxel_size, voxel_unit
        As in :func:`~neuros.plugins.cv.scale.features.volume_features`; the default halo is the backbone's
        plus one grid cell (for the bilinear upsampling of probabilities).

    Returns
    -------
    dict
        The run's record.
    """
    import dask
    import dask.array as da

    head_dir = Path(head).expanduser().resolve()
    hd = worker_head(str(head_dir))
    spec = head_backbone(hd)
    bb = worker_backbone(spec)
    arr = open_volume(src, level, component)
    geometry = read_geometry(src, level, component).with_voxel_size(voxel_size, voxel_unit)
    step = grid_step(bb)
    (by, bx), halo = plan_blocks(arr, bb, block, halo, extra=step + hd.context_px)  # + a decoder head's reach
    x = da.from_zarr(arr)
    lo, hi = intensity_range(x, scaling)
    z, h, w = arr.shape
    classes = np.asarray(hd.classes_)
    settings = _instance_settings(classes, instances, instance_method, instance_threshold, min_size,
                                  instance_connectivity)
    grid = n_blocks(arr.shape, (by, bx))
    piece_dtype = "uint32" if int(np.prod(grid)) * by * bx < 2**32 else "uint64"
    inst_dtype = "uint32" if z * h * w < 2**32 else "uint64"  # at most one object per voxel
    run = {
        "task": "segment", "input": str(Path(src).expanduser().resolve()), "component": arr.path, "shape": [z, h, w],
        "head": str(head_dir), "head_kind": getattr(hd, "kind", type(hd).__name__), "classes": classes.tolist(),
        "backbone": bb.name, "weights": bb.weights, "backbone_spec": str(spec),
        "block": [by, bx], "halo": halo, "intensity_range": [lo, hi],
        "probabilities": bool(save_proba), "layout": "ome-0.5",
        "instances": None if settings is None else {"class": int(instances), "method": settings.method,
                                                    "threshold": settings.threshold, "min_size": settings.min_size,
                                                    "connectivity": settings.connectivity,
                                                    "merged": "across block borders"},
    }
    arrays = {LABELS: {"shape": (z, h, w), "chunks": (1, by, bx), "dtype": _label_dtype(classes), "fill_value": 0,
                         "dimension_names": ("z", "y", "x")}}
    if save_proba:
        k = len(classes)
        arrays[PROBA] = {"shape": (k, z, h, w), "chunks": (k, 1, by, bx), "dtype": "float32", "fill_value": 0.0,
                         "dimension_names": ("c", "z", "y", "x")}
    if settings is not None:
        arrays[INSTANCES] = {"shape": (z, h, w), "chunks": (1, by, bx), "dtype": inst_dtype, "fill_value": 0,
                             "dimension_names": ("z", "y", "x")}
        arrays[PIECES] = {"shape": (z, h, w), "chunks": (1, by, bx), "dtype": piece_dtype, "fill_value": 0,
                          "dimension_names": ("z", "y", "x")}
    group, resumed = open_output(out, run, arrays, {"labels": grid}, overwrite, inputs=[src, head_dir])
    name = ome_name(out)
    write_image_metadata(group, name, [(LABELS, geometry)])
    write_label_metadata(group, classes.tolist(), relative_source(src, out))
    if save_proba:
        write_image_metadata(group["probabilities"], f"{name} probabilities", [("0", geometry)], channels=True)
    if settings is not None:
        write_image_metadata(group["instances"], f"{name} instances", [("0", geometry)])
        write_label_metadata(group["instances"], None, relative_source(src, Path(out) / "instances"))
    blocks = list(iter_blocks(arr.shape, (by, bx), halo, step))
    todo = pending_blocks(out, "labels", blocks)
    out_path = str(Path(out).expanduser().resolve())
    task = _SegmentTask(out_path, str(head_dir), spec, lo, hi, bool(save_proba), settings, grid, by * bx,
                        piece_dtype)
    fn = dask.delayed(_segment_block, pure=False)
    tasks = [(b.index, fn(x[b.z, slice(*b.read_y), slice(*b.read_x)], b, task)) for b in todo]
    report = run_blocks(client, tasks, total=len(blocks), retries=retries, progress=progress, title="segment",
                        timeout=timeout)
    summary: dict[str, Any] = {"blocks": report.as_dict()}
    if settings is not None:  # every block is written (run_blocks raised otherwise): merge, unless done before
        merged = group.attrs.asdict()["neuros_cv"].get("instance_merge")
        if merged is None:
            merged = merge_pieces(client, out_path, blocks, (z, h, w), settings, retries=retries, progress=progress,
                                  timeout=timeout)
        summary["instance_merge"] = merged
    finish_output(group, **summary)  # the merge is recorded before its pieces go: a re-run skips it
    if settings is not None and PIECES in group:
        del group[PIECES]
    return {**run, "output": str(out), "resumed": resumed, "voxel_size": list(geometry.scale),
            "voxel_unit": geometry.units[-1], **report.as_dict(),
            **{k: v for k, v in summary.items() if k != "blocks"}}
