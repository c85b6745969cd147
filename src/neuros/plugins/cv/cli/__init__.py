"""``neuros-cv``: the command-line entry point.

Each sub-command lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``; this module
only assembles them and turns expected errors into one line on stderr and a non-zero exit (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Every public module in this package is a sub-command; these come first in `--help`, the rest by name.
FIRST = ("bench", "backbones")


def _commands() -> list[str]:
    import pkgutil

    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return [c for c in FIRST if c in found] + sorted(set(found) - set(FIRST))

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="neuros-cv",
        description="neurOS cv: DINOv3 features, segmentation, registration and reports for EM, MRI and histology.",
    )
    parser.add_argument("--version", action="version", version=f"neuros-cv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _commands():
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("neuros-cv: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"neuros-cv {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
