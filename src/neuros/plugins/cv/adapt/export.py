"""Writing an adapted backbone: a transformers folder (``config.json`` + ``model.safetensors``) with the
provenance file :data:`~neuros.plugins.cv.backbones.weights.ADAPTED_FILE`, which ``weights="pretrained:<dir>"``
loads like any checkpoint and which every output of that backbone then names (``describe()["adapted"]``, each
feature map's ``meta["adapted"]``, a ``note``).

LoRA runs are written merged (the adapters folded into the weights: an ordinary checkpoint) or kept separately
(the base weights as ``model.safetensors`` beside peft's ``adapter_config.json`` + ``adapter_model.safetensors``;
the loader merges them when it loads the folder).
"""

from __future__ import annotations

import copy
import datetime as _dt
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backbones.weights import ADAPTED_FILE, ADAPTED_SCHEMA
from ..output import atomic_output_dir, dumps_json
from .train import Adapter

__all__ = ["LORA_SAVE", "export_adapted", "provenance", "versions"]

LORA_SAVE = ("merged", "separate")


def versions() -> dict[str, str | None]:
    """Versions of what trained the weights: neuros-cv, torch, transformers, peft, Python."""
    import torch
    import transformers

    from .. import __version__

    try:
        import peft

        peft_v: str | None = peft.__version__
    except ImportError:
        peft_v = None
    return {"neuros_cv": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft_v, "python": platform.python_version()}


def provenance(adapter: Adapter, base: Mapping[str, Any], data: Mapping[str, Any], lora_save: str | None
               ) -> dict[str, Any]:
    """The provenance record: base weights, data, steps, seed, losses, versions."""
    hist = adapter.history
    last = hist[-1] if hist else {}
    ips = [h["images_per_s"] for h in hist[1:]] or [h["images_per_s"] for h in hist]
    return {
        "schema": ADAPTED_SCHEMA,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base_backbone": base.get("backbone"), "base_weights": base.get("weights"),
        "base_describe": base.get("describe"),
        "train": adapter.cfg.train, "lora_save": lora_save,
        "steps": adapter.step, "steps_planned": adapter.cfg.steps, "seed": adapter.cfg.seed,
        "device": str(adapter.device), "train_seconds": adapter.seconds,
        "images_per_s_median": float(sorted(ips)[len(ips) // 2]) if ips else None,
        "final_loss": last.get("loss"), "n_images": data.get("n_slices"),
        "data": dict(data), "config": adapter.cfg.to_dict(),
        "recipe": "DINO self-distillation (Caron et al. 2021) + iBOT masked patches (Zhou et al. 2022) + KoLeo "
                  "(DINOv2, Oquab et al. 2024)" + (" + Gram anchoring (DINOv3, Siméoni et al. 2025)"
                                                   if adapter.cfg.gram_weight > 0 else ""),
        "losses": [{k: v for k, v in h.items()} for h in hist],
        "versions": versions(),
    }


def _plain_model(backbone: Any) -> Any:
    """The teacher as a plain transformers model (LoRA merged into a copy)."""
    if hasattr(backbone, "merge_and_unload"):
        return copy.deepcopy(backbone).merge_and_unload()
    return backbone


def export_adapted(adapter: Adapter, out: str | Path, base: Mapping[str, Any], data: Mapping[str, Any],
                   lora_save: str = "merged", overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Write the teacher backbone of ``adapter`` into ``out`` (all at once: nothing half-written).

    Parameters
    ----------
    adapter : Adapter
        A trained adapter (its EMA teacher is exported, as DINO does).
    out : path
        Output folder; refused when it holds files neuros-cv did not write (see :mod:`~neuros.plugins.cv.output`).
    base, data : mapping
        What the run started from (``backbone``, ``weights``, ``describe``) and what it read.
    lora_save : {"merged", "separate"}
        For LoRA runs: fold the adapters into the weights, or keep them in peft's own files beside the base.
    overwrite : bool
        Replace the files of an earlier ``adapt`` run in ``out``.
    inputs : sequence of paths
        The training inputs (``out`` may not be, contain or lie inside one).

    Returns
    -------
    Path
        The folder, loadable with ``weights="pretrained:<out>"``.
    """
    if lora_save not in LORA_SAVE:
        raise ValueError(f"lora_save must be one of {', '.join(LORA_SAVE)}, got {lora_save!r}")
    teacher = adapter.teacher_model()
    is_lora = hasattr(teacher, "merge_and_unload")
    with atomic_output_dir(out, overwrite=overwrite, inputs=inputs, command="adapt") as tmp:
        if is_lora and lora_save == "separate":
            base_model = copy.deepcopy(teacher).unload()
            base_model.save_pretrained(tmp)
            teacher.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
        else:
            _plain_model(teacher).save_pretrained(tmp)
        rec = provenance(adapter, base, data, lora_save if is_lora else None)
        (tmp / ADAPTED_FILE).write_text(dumps_json(rec), encoding="utf-8")
    return Path(out).resolve()
