"""Aligning a stack layer, without Qt: translations (``registration.align_stack``) or the richer transform models
(``registration_models.align_stack_models``: rigid, similarity, affine, deformable). Returns the aligned stack and
the transforms as plain data for the new layer's ``metadata``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..registration import align_stack
from ..registration_models import MODELS, align_stack_models

__all__ = ["ALIGN_MODELS", "align_layer_data"]

ALIGN_MODELS = MODELS


def align_layer_data(data: Any, model: str = "translation",
                     progress: Callable[[str], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Align a (Z, Y, X) stack; returns the aligned stack and ``{"model", "transforms", ...}`` metadata.

    ``translation`` runs the translation aligner (shifts per section, scores); the other models run the
    transform-model aligner and record each section's transform (matrix and offset for linear models; for
    ``deformable`` the linear part, the displacement field staying in memory under ``"transform_objects"``).
    """
    vol = np.asarray(data)
    if vol.ndim != 3:
        raise ValueError(f"the stack to align must be 3-D (Z, Y, X), got shape {vol.shape}; pick a stack layer")
    if model not in ALIGN_MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(ALIGN_MODELS)}")
    if model == "translation":
        aligned, st = align_stack(vol, progress=progress)
        meta = {"model": "translation", "transforms": st.rows(), "backbone": st.backbone, "weights": st.weights}
        return aligned, meta
    aligned, reg = align_stack_models(vol, model, progress=progress)
    rows = []
    for i, t in enumerate(reg.transforms):
        lin = getattr(t, "matrix", None)
        if lin is None:  # deformable: a composite whose first part is the linear one
            parts = getattr(t, "transforms", [])
            lin_t = next((p for p in parts if hasattr(p, "matrix")), None)
        else:
            lin_t = t
        rows.append({"section": i, "kind": type(t).__name__,
                     "matrix": None if lin_t is None else np.asarray(lin_t.matrix).tolist(),
                     "offset": None if lin_t is None else np.asarray(lin_t.offset).tolist()})
    meta = {"model": model, "transforms": rows, "transform_objects": list(reg.transforms),
            "scores": [float(r.score) for _, _, r in reg.pairs]}
    return aligned.astype(np.float32), meta
