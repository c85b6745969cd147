"""Blockwise segmentation of a zarr volume with a trained head (:mod:`neuros.plugins.cv.heads`) on Dask.

Each block computes features of its halo'd region with the head's own backbone (rebuilt from the spec in its
``head.json``: name, weights and every option that changes the features), asks the head for pixel-level
class probabilities (grid probabilities upsampled bilinearly), crops the core and writes labels (and,
optionally, the probabilities). The halo is the backbone's own (``Backbone.halo``) plus one grid cell (its
``stride``), since bilinear upsampling near a block's edge uses the neighbouring cell; with it, blocks equal
:func:`section_probabilities` on whole sections exactly for bounded-receptive-field backbones.
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
from .models import worker_backbone, worker_head
from .ome import ome_name, read_geometry, relative_source, write_image_metadata, write_label_metadata
from .resume import DEFAULT_TIMEOUT, ProgressFactory, finish_output, open_output, run_blocks
from .zarr_io import open_volume

__all__ = ["head_backbone", "section_probabilities", "volume_segment"]

LABELS = "0"  # the label image's level 0 ("labels" is the name NGFF reserves for a group of label images)
PROBA = "probabilities/0"  # an OME-Zarr image of its own inside the label image's group


def head_backbone(head: Any) -> BackboneSpec:
    """The spec of the backbone a head was trained on (from its ``head.json``), to build it on the workers."""
    spec = getattr(head, "backbone_spec_", None)
    if spec is None:
        raise ValueError("this head was fitted on a patch matrix and names no backbone; fit it on feature maps "
                         "(SegmentationHead.fit(feature_maps, masks) or `neuros-cv segment train`)")
    return spec


def section_probabilities(section: np.ndarray, backbone: Any, head: Any, lo: float, hi: float) -> np.ndarray:
    """Pixel-level class probabilities (H, W, K) of one whole (or halo'd) section."""
    return head.predict_proba(backbone.extract(scale_intensity(section, lo, hi)), level="pixel")


@dataclass(frozen=True)
class _SegmentTask:
    out: str
    head: str
    backbone: BackboneSpec
    lo: float
    hi: float
    save_proba: bool


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
    labels[sl] = np.asarray(head.classes_)[core.argmax(axis=2)].astype(labels.dtype)
    if task.save_proba:  # (K, z, y, x): OME-NGFF axis order
        group[PROBA][(slice(None), *sl)] = np.moveaxis(core, -1, 0).astype(np.float32)
    mark_done(task.out, "labels", block.index)
    return block.index


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
    (by, bx), halo = plan_blocks(arr, bb, block, halo, extra=step)
    x = da.from_zarr(arr)
    lo, hi = intensity_range(x, scaling)
    z, h, w = arr.shape
    classes = np.asarray(hd.classes_)
    run = {
        "task": "segment", "input": str(Path(src).expanduser().resolve()), "component": arr.path, "shape": [z, h, w],
        "head": str(head_dir), "head_kind": getattr(hd, "kind", type(hd).__name__), "classes": classes.tolist(),
        "backbone": bb.name, "weights": bb.weights, "backbone_spec": str(spec),
        "block": [by, bx], "halo": halo, "intensity_range": [lo, hi],
        "probabilities": bool(save_proba), "layout": "ome-0.5",
    }
    arrays = {LABELS: {"shape": (z, h, w), "chunks": (1, by, bx), "dtype": _label_dtype(classes), "fill_value": 0,
                         "dimension_names": ("z", "y", "x")}}
    if save_proba:
        k = len(classes)
        arrays[PROBA] = {"shape": (k, z, h, w), "chunks": (k, 1, by, bx), "dtype": "float32", "fill_value": 0.0,
                         "dimension_names": ("c", "z", "y", "x")}
    group, resumed = open_output(out, run, arrays, {"labels": n_blocks(arr.shape, (by, bx))}, overwrite,
                                 inputs=[src, head_dir])
    name = ome_name(out)
    write_image_metadata(group, name, [(LABELS, geometry)])
    write_label_metadata(group, classes.tolist(), relative_source(src, out))
    if save_proba:
        write_image_metadata(group["probabilities"], f"{name} probabilities", [("0", geometry)], channels=True)
    blocks = list(iter_blocks(arr.shape, (by, bx), halo, step))
    todo = pending_blocks(out, "labels", blocks)
    task = _SegmentTask(str(Path(out).expanduser().resolve()), str(head_dir), spec, lo, hi, bool(save_proba))
    fn = dask.delayed(_segment_block, pure=False)
    tasks = [(b.index, fn(x[b.z, slice(*b.read_y), slice(*b.read_x)], b, task)) for b in todo]
    report = run_blocks(client, tasks, total=len(blocks), retries=retries, progress=progress, title="segment",
                        timeout=timeout)
    finish_output(group, blocks=report.as_dict())
    return {**run, "output": str(out), "resumed": resumed, "voxel_size": list(geometry.scale),
            "voxel_unit": geometry.units[-1], **report.as_dict()}
