"""Weights of the torch heads (MLP, conv decoder) as one safetensors file: the network plus its input scaling.

No pickle: ``net.*`` tensors are the state dict, ``mean``/``scale`` the per-channel standardisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def save_net(path: Path, net: Any, mean: np.ndarray, scale: np.ndarray) -> None:
    """Write ``net``'s state dict and the input standardisation to the safetensors file ``path``."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    tensors["mean"] = torch.from_numpy(np.ascontiguousarray(mean))
    tensors["scale"] = torch.from_numpy(np.ascontiguousarray(scale))
    save_file(tensors, str(path))


def load_net(path: Path, net: Any) -> tuple[np.ndarray, np.ndarray]:
    """Load ``path`` into ``net`` (built with the saved shapes), set it to eval; returns ``(mean, scale)``."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    mean, scale = t.pop("mean").numpy(), t.pop("scale").numpy()
    net.load_state_dict({k[4:]: v for k, v in t.items()})
    net.eval()
    return mean, scale


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, restoring the previous count after.

    Training a small network on mini-batches (1024 rows × tens of channels) is dominated by per-operation
    overhead, which a second thread only adds to: the MLP head's fit on 210 k rows took 39 s on one thread and
    87 s on two on this 2-core machine (benchmarks/bench_pixel.py, docs/benchmarks.md), and one thread never
    spins against other work.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
