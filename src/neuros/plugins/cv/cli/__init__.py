"""``neuros-cv``: the command-line entry point.

Each sub-command lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``; this module
only assembles them and turns expected errors into one line on stderr and a non-zero exit (no traceback).

Library errors name Python arguments (``pass overwrite=True``, ``order=2 must be 0 or 1``); on the command
line, :func:`cli_message` rewrites every such ``name=`` that is a flag of the sub-command to the flag itself
(``pass --overwrite``, ``--order 2 must be 0 or 1``), so a flag's ``dest`` is the library argument it feeds.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

__all__ = ["cli_message", "main"]

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


# `name=` or `name=value` standing alone (start of message, after a space or a backtick): not `random(seed=3)`,
# not `[scale=2,l2=true]`, not `NEUROS_CV_WEIGHTS=...`.
_ARGUMENT = re.compile(r"(?<![^\s`])([a-z_][a-z0-9_]*)=(True\b|False\b)?")


def _flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, list[argparse.Action]]:
    """``dest -> actions`` of the parser that ran and its parents (the sub-command's own flags win)."""
    found: dict[str, list[argparse.Action]] = {}
    node: argparse.ArgumentParser | None = parser
    while node is not None:
        sub = None
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(args, action.dest, None) or "")
            elif action.option_strings and action.dest != "help":
                found.setdefault(action.dest, []).insert(0, action)
        node = sub
    return found


def _long(action: argparse.Action, negative: bool = False) -> str:
    """The action's long option (its ``--no-...`` form when ``negative``)."""
    opts = [o for o in action.option_strings if o.startswith("--no-") == negative] or action.option_strings
    return next((o for o in opts if o.startswith("--")), opts[0])


def _switch(action: argparse.Action, literal: str) -> str | None:
    """The switch that sets ``action.dest`` to ``literal`` (``"True"``/``"False"``), if there is one."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return _long(action, negative=literal == "False")
    return _long(action) if str(action.const) == literal else None


def cli_message(message: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``message`` with every Python argument that is a flag of the command that ran written as the flag.

    ``overwrite=True`` becomes ``--overwrite``, ``order=2`` ``--order 2``, ``max_classes= 16``
    ``--max-classes 16`` and a bare ``block=`` ``--block``; names that are not flags of this command, and
    ``name=`` inside other text (``random(seed=3)``, ``[scale=2]``), stay as they are.

    Parameters
    ----------
    message : str
        An error message from library code.
    parser : argparse.ArgumentParser
        The top-level parser (:func:`build_parser`).
    args : argparse.Namespace
        What it parsed: picks the sub-command (and its action) whose flags apply.

    Returns
    -------
    str
        The message as a command-line user should read it.
    """
    flags = _flags(parser, args)

    def swap(m: re.Match[str]) -> str:
        name, literal = m.group(1), m.group(2)
        actions = flags.get(name)
        if not actions:
            return m.group(0)
        switches = [a for a in actions if a.nargs == 0]
        valued = [a for a in actions if a.nargs != 0]
        if literal and switches:
            return _switch(switches[0], literal) or m.group(0)
        after = message[m.end() : m.end() + 1]
        if literal or (after and not after.isspace() and after not in ",;:.)"):  # a value follows
            return f"{_long(valued[0])} {literal or ''}" if valued else m.group(0)
        return _long((valued or switches)[0])

    return _ARGUMENT.sub(swap, message)


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
        msg = cli_message(msg, parser, args)
        print(f"neuros-cv {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
