"""From pixel masks to patch labels (the report's majority rule, and the foreground fraction)."""

from __future__ import annotations

import numpy as np

from .preprocess import pad_to_multiple

__all__ = ["patch_fractions", "patch_labels"]


def patch_fractions(mask: np.ndarray, patch: int = 16, n_classes: int | None = None) -> np.ndarray:
    """Per-patch class fractions of an integer mask: (h, w, K), with padding (bottom/right) not counted.

    The mask is padded like the image (to a multiple of ``patch``); padded pixels get weight 0, so a border
    patch's fractions refer to its real pixels only. Vectorised with one reshape and ``np.eye`` indexing.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    m = m.astype(np.int64)
    k = int(m.max()) + 1 if n_classes is None else int(n_classes)
    if m.size and (m.max() >= k):
        raise ValueError(f"mask has label {int(m.max())} but n_classes={k}")
    valid = pad_to_multiple(np.ones_like(m, dtype=np.float32), patch, mode="constant")
    valid[m.shape[0] :, :] = 0
    valid[:, m.shape[1] :] = 0
    mp = pad_to_multiple(m, patch, mode="edge")
    h, w = mp.shape[0] // patch, mp.shape[1] // patch
    onehot = np.eye(k, dtype=np.float32)[mp] * valid[:, :, None]
    sums = onehot.reshape(h, patch, w, patch, k).sum(axis=(1, 3))
    count = valid.reshape(h, patch, w, patch).sum(axis=(1, 3))
    return sums / np.maximum(count, 1)[:, :, None]


def patch_labels(mask: np.ndarray, patch: int = 16, rule: str = "majority", threshold: float = 0.5) -> np.ndarray:
    """Patch labels (h, w) from a pixel mask.

    ``rule="majority"`` (the report's protocol, binary masks): a patch is foreground when *more than* half of
    its pixels are foreground. ``rule="fraction"``: foreground when its fraction exceeds ``threshold``.
    ``rule="argmax"``: the most frequent class (multi-class masks).
    """
    fr = patch_fractions(mask, patch)
    if rule == "argmax":
        return fr.argmax(axis=2).astype(np.int64)
    fg = 1.0 - fr[:, :, 0]
    if rule == "majority":
        return (fg > 0.5).astype(np.int64)
    if rule == "fraction":
        return (fg > float(threshold)).astype(np.int64)
    raise ValueError(f"rule must be 'majority', 'fraction' or 'argmax', got {rule!r}")
