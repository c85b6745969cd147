"""Per-file errors in batch commands: name the file, and with ``--skip-errors`` go on and list what was skipped.

Without ``--skip-errors`` the first bad file stops the command with one line that starts with the file's path
(``nan.tif: image contains 100 NaN/inf pixel(s) ...``) and nothing is written. With it, each bad file is
skipped with its reason, the others are processed and written, the skipped files are listed on stderr at the
end, and the command exits with :data:`EXIT_SKIPPED`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["EXIT_SKIPPED", "Batch", "add_skip_errors"]

EXIT_SKIPPED = 3
T = TypeVar("T")
# What a bad input file raises (KeyError: a missing HDF5/zarr dataset; MemoryError: an image too large).
FILE_ERRORS = (ValueError, TypeError, OSError, RuntimeError, KeyError, MemoryError)


def add_skip_errors(p: argparse.ArgumentParser) -> None:
    """The ``--skip-errors`` option, worded the same on every command."""
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help=f"skip input files that fail (listed with their reasons at the end; exit status {EXIT_SKIPPED}) "
        "and write the results of the others; default: stop at the first bad file",
    )


def one_line(path: str | Path, e: BaseException) -> str:
    """``"<path>: <first line of the error>"``, without repeating the path when the message names it."""
    text = str(e).strip().strip("'\"") if str(e).strip() else type(e).__name__
    first = text.splitlines()[0]
    return first if str(path) in first else f"{path}: {first}"


class Batch:
    """Runs one step per input file, turning its errors into one line naming the file (see module docstring)."""

    def __init__(self, skip_errors: bool) -> None:
        self.skip_errors = bool(skip_errors)
        self.skipped: list[tuple[str, str]] = []

    def run(self, path: str | Path, fn: Callable[..., T], *args: Any, **kw: Any) -> tuple[bool, T | None]:
        """``(True, fn(*args, **kw))``, or ``(False, None)`` when it failed and errors are skipped."""
        try:
            return True, fn(*args, **kw)
        except FILE_ERRORS as e:
            msg = one_line(path, e)
            if not self.skip_errors:
                raise ValueError(msg) from None
            self.skipped.append((str(path), msg))
            return False, None

    def finish(self, command: str) -> int:
        """List the skipped files on stderr; the exit status (0, or :data:`EXIT_SKIPPED`)."""
        if not self.skipped:
            return 0
        print(f"neuros-cv {command}: skipped {len(self.skipped)} file(s):", file=sys.stderr)
        for _, msg in self.skipped:
            print(f"  {msg}", file=sys.stderr)
        return EXIT_SKIPPED

    def check_some_left(self, n_ok: int, command: str) -> None:
        """Stop (writing nothing) when every input was skipped."""
        if n_ok == 0 and self.skipped:
            self.finish(command)
            raise ValueError(f"every input failed ({len(self.skipped)} skipped, listed above); nothing written")
