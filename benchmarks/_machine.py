"""Machine description printed with every benchmark result."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """One line: CPU model, cores, memory, Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch

        tv = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        tv = ""
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}{tv}"
