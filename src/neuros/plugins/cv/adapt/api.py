"""``adapt(...)``: the Python equivalent of ``neuros-cv adapt`` — open the images, build the backbone through the
registry, train (resuming from the newest checkpoint), export the adapted folder with its provenance."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..backbones.registry import get_backbone
from ..output import check_output_dir
from .crops import MultiCropSampler, SliceSource, open_images
from .export import export_adapted
from .train import AdaptConfig, Adapter

__all__ = ["adapt", "build_adapter", "data_record", "default_checkpoint_dir"]


def default_checkpoint_dir(out: str | os.PathLike[str]) -> Path:
    """Where checkpoints go by default: a folder beside ``out`` named ``<out>.checkpoints``."""
    p = Path(out).expanduser().resolve()
    return p.with_name(p.name + ".checkpoints")


def data_record(sources: Sequence[SliceSource], axis: int | None, key: str | None) -> dict[str, Any]:
    """What the run read: files, their slice counts and shapes, the intensity ranges."""
    return {"n_files": len(sources), "n_slices": sum(s.n_slices for s in sources), "axis": axis, "key": key,
            "files": [{"path": str(s.path), "n_slices": s.n_slices, "slice_shape": list(s.shape),
                       "intensity_range": [s.lo, s.hi]} for s in sources]}


def build_adapter(backbone: str, weights: str | None, sources: Sequence[SliceSource], config: AdaptConfig,
                  device: str | None = None) -> tuple[Adapter, dict[str, Any]]:
    """The :class:`Adapter` for ``backbone`` with ``weights`` (any registry name / weights string), and a record
    of the base (``backbone``, ``weights`` actually used, ``describe``)."""
    from ..backbones.resolve import resolve_device

    kw: dict[str, Any] = {} if weights is None else {"weights": weights}
    bb = get_backbone(backbone, **kw)
    if getattr(bb, "model", None) is None:
        raise ValueError(f"backbone {backbone!r} with weights {getattr(bb, 'weights', weights)!r} runs no network "
                         "(placeholder or filter bank); give --weights random, random(seed=N), pretrained or "
                         "pretrained:<folder>")
    dev = resolve_device(device)
    sampler = MultiCropSampler(sources, config.batch_size, config.global_size, config.local_size, config.n_local,
                               config.region, config.global_scale, config.local_scale, config.seed)
    mean, std = getattr(bb, "_mean", (0.485, 0.456, 0.406)), getattr(bb, "_std", (0.229, 0.224, 0.225))
    base = {"backbone": backbone, "weights": bb.weights, "describe": bb.describe()}
    return Adapter(bb.model, sampler, config, mean, std, dev), base


def adapt(images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], backbone: str = "vit-small",
          weights: str | None = "pretrained", config: AdaptConfig | None = None, *, axis: int | None = None,
          key: str | None = None, device: str | None = None, checkpoint_dir: str | os.PathLike[str] | None = None,
          checkpoint_every: int = 100, resume: bool = True, lora_save: str = "merged", overwrite: bool = False,
          max_seconds: float | None = None, progress: Callable[[dict[str, float]], None] | None = None,
          stop_after: int | None = None) -> Path | None:
    """Adapt a DINOv3 ViT to ``images`` by self-distillation and write it to ``out``.

    Parameters
    ----------
    images : sequence of paths
        Files or folders (TIFF stacks, PNG/JPEG, NIfTI, HDF5, zarr/OME-Zarr, ``.npy``); read lazily.
    out : path
        The adapted transformers folder (with ``adapt.json``); load it with ``weights="pretrained:<out>"``.
    backbone, weights : str
        The start: any registry name (``vit-small``, a checkpoint folder, …) and weights string (``pretrained``,
        ``pretrained:<path>``, ``random(seed=N)`` to train from scratch).
    config : AdaptConfig, optional
        Recipe and schedule (default :class:`AdaptConfig`).
    axis, key : optional
        Slicing axis of 3-D stacks; dataset inside HDF5/zarr.
    device : str, optional
        ``cpu``/``cuda``/``auto`` (bf16 autocast on CUDA).
    checkpoint_dir : path, optional
        Checkpoints every ``checkpoint_every`` steps (default ``<out>.checkpoints`` beside ``out``).
    resume : bool
        Continue from the newest checkpoint there (exactly) when one exists.
    lora_save : {"merged", "separate"}
        How LoRA runs are written.
    overwrite : bool
        Replace the files of an earlier run in ``out`` (never files neuros-cv did not write).
    max_seconds : float, optional
        Training-time budget; the folder records the steps actually done.
    progress : callable, optional
        Called with each step's record.
    stop_after : int, optional
        Stop (checkpointed, nothing exported) after this step: returns None.

    Returns
    -------
    Path or None
        ``out`` resolved, or None when stopped early by ``stop_after``.
    """
    cfg = config or AdaptConfig()
    items = [str(p) for p in images]
    check_output_dir(out, overwrite, items)  # fail before any training
    sources = open_images(items, axis, key)
    adapter, base = build_adapter(backbone, weights, sources, cfg, device)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(out)
    if resume:
        adapter.resume(ckpt)
    adapter.run(ckpt, checkpoint_every, progress, max_seconds, stop_after)
    if stop_after is not None and adapter.step < cfg.steps and adapter.step >= stop_after:
        return None
    return export_adapted(adapter, out, base, data_record(sources, axis, key), lora_save, overwrite, items)
