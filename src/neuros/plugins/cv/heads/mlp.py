"""A small torch MLP head (one hidden layer, GELU, dropout), trained with Adam on shuffled mini-batches.

Weights are stored as a safetensors file (no pickle), the input standardisation with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..labels import class_weights_per_class
from ._torch_io import load_net, one_torch_thread, save_net
from .base import SegmentationHead

__all__ = ["MLPHead"]

_WEIGHTS = "mlp.safetensors"
#: Rows per forward pass at prediction (bounds the hidden activations to ~64 MiB at 128 units).
PREDICT_ROWS = 131_072


def _network(n_in: int, hidden: int, n_out: int, dropout: float):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))


class MLPHead(SegmentationHead):
    """Standardised features → Linear(C, hidden) → GELU → Dropout → Linear(hidden, K), cross-entropy loss.

    Parameters
    ----------
    hidden : int
        Hidden units.
    epochs, batch_size, lr, weight_decay, dropout
        Adam training settings. ``dropout`` is off by default: on real pixel tables (ssTEM, MRI, nuclei) 0.1
        moved Dice by at most 0.004 either way and made training 29–38 % slower, drawing the dropout mask
        being the costliest step of a mini-batch on CPU (docs/benchmarks.md, ``bench_pixel.py``, session 7).
    label_rule, threshold, class_weight, seed, single_class, unlabelled, max_samples_per_class, n_components
        Keyword-only, common to every head (see :class:`SegmentationHead`).
    """

    kind = "mlp"

    def __init__(self, hidden: int = 128, epochs: int = 30, batch_size: int = 1024, lr: float = 1e-3,
                 weight_decay: float = 1e-4, dropout: float = 0.0,
                 *, label_rule: str = "argmax", threshold: float = 0.5, class_weight: str | None = None,
                 seed: int = 0, single_class: str = "error", unlabelled: int | None = None,
                 max_samples_per_class: int | None = None, n_components: int | None = None) -> None:
        super().__init__(label_rule=label_rule, threshold=threshold, class_weight=class_weight, seed=seed,
                         single_class=single_class, unlabelled=unlabelled,
                         max_samples_per_class=max_samples_per_class, n_components=n_components)
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout

    def _fit_matrix(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        import torch

        gen = torch.Generator().manual_seed(int(self.seed))
        torch.manual_seed(int(self.seed))
        self.mean_ = X.mean(axis=0).astype(np.float32)
        self.scale_ = (X.std(axis=0) + 1e-6).astype(np.float32)
        k = len(self.classes_)
        net = _network(X.shape[1], int(self.hidden), k, float(self.dropout))
        xt = torch.from_numpy((X - self.mean_) / self.scale_)
        yt = torch.from_numpy(y.astype(np.int64))
        w = class_weights_per_class(np.bincount(y, minlength=k), self.class_weight)
        cw = None if w is None else torch.from_numpy(w.astype(np.float32))
        loss_fn = torch.nn.CrossEntropyLoss(weight=cw)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        net.train()
        with one_torch_thread():  # mini-batches this small run faster on one thread (see one_torch_thread)
            for _ in range(int(self.epochs)):
                order = torch.randperm(len(yt), generator=gen)
                for s in range(0, len(yt), int(self.batch_size)):
                    idx = order[s : s + int(self.batch_size)]
                    opt.zero_grad()
                    loss_fn(net(xt[idx]), yt[idx]).backward()
                    opt.step()
        net.eval()
        self.net_ = net

    def _proba_matrix(self, X: np.ndarray) -> np.ndarray:
        import torch

        # In chunks: a stride-1 tile has a million rows, and the hidden layer would hold hidden × 4 bytes each.
        out = np.empty((X.shape[0], len(self.classes_)), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, X.shape[0], PREDICT_ROWS):
                logits = self.net_(torch.from_numpy((X[s : s + PREDICT_ROWS] - self.mean_) / self.scale_))
                out[s : s + PREDICT_ROWS] = torch.softmax(logits, dim=1).numpy()
        return out

    def _save_weights(self, folder: Path) -> list[str]:
        save_net(folder / _WEIGHTS, self.net_, self.mean_, self.scale_)
        return [_WEIGHTS]

    def _load_weights(self, folder: Path) -> None:
        net = _network(int(self.n_components or self.feature_dim_), int(self.hidden), len(self.classes_),
                       float(self.dropout))
        self.mean_, self.scale_ = load_net(folder / _WEIGHTS, net)
        self.net_ = net
