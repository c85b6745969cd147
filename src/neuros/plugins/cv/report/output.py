"""Writing results safely: all files of a run appear together or not at all.

A run writes into a hidden temporary folder next to ``--out`` and renames it into place when every file is
written; on any error the temporary folder is removed and an existing ``--out`` is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["OutputExistsError", "atomic_output_dir", "check_output_dir", "dumps_json"]


class OutputExistsError(FileExistsError):
    """``--out`` exists and is not empty, and overwriting was not asked for."""


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys are *not* used, to keep the schema's order; floats as repr."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def check_output_dir(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Fail early (before any computation) if ``out`` cannot be written or would be clobbered."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"--out {path} exists and is not empty; pass --overwrite to replace it")
    parent = path.parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"cannot create --out {path}: {p} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.probe-", dir=parent):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to --out {path}: {e.strerror or e}") from None
    return path


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``, on failure it vanishes."""
    path = check_output_dir(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
