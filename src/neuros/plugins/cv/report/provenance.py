"""What a reviewer needs to reproduce a number: versions, machine, command, time."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

__all__ = ["provenance", "versions"]

_PACKAGES = ("neuros-cv", "numpy", "scipy", "scikit-learn", "scikit-image", "torch", "transformers")


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers (``"absent"`` when not installed)."""
    out = {"python": platform.python_version()}
    for name in (*_PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Versions, machine and timings: the part of ``results.json`` that may differ between runs."""
    return {
        "versions": versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings_s": {k: round(v, 4) for k, v in (timings or {}).items()},
    }
