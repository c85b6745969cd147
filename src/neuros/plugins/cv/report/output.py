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

__all__ = [
    "OutputExistsError",
    "atomic_output_dir",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "dumps_json",
]


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


def check_output_file(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Fail early if the file ``out`` exists (unless ``overwrite``) or its folder cannot be written."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"--out {path} exists; pass --overwrite to replace it")
    check_output_dir(path.parent if str(path.parent) else ".", overwrite=True)  # writable folder, never emptied
    return path


def atomic_write_text(out: str | os.PathLike[str], text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to a temporary file beside ``out`` and rename it into place (never half a file)."""
    path = check_output_file(out, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
