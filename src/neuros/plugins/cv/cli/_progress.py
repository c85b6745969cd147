"""A rich progress bar on stderr that experiments drive through a plain ``callback(message)``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_callback", "stderr_console"]

stderr_console = Console(stderr=True)


@contextlib.contextmanager
def progress_callback(total: int, title: str) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(message)``: each call moves the bar one step and shows ``message``."""
    with Progress(
        TextColumn("[bold]{task.fields[title]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=stderr_console,
        transient=False,
    ) as prog:
        task = prog.add_task("", total=total, title=title)

        def advance(message: str) -> None:
            prog.update(task, advance=1, description=message)

        yield advance
