"""Progress on stderr that experiments drive through a plain ``callback(message)``.

On a terminal it is a rich progress bar. When stderr is not a terminal (``nohup``, Slurm or cron logs, a pipe)
a bar cannot redraw itself, so a plain line is printed instead — when the work starts, every
``NEUROS_CV_PROGRESS_INTERVAL`` seconds (default 10) while it runs, and when it ends::

    features[vit-small]: 12/40 (30%) elapsed 0:00:21 ETA 0:00:49 - tile of section03.tif
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["INTERVAL_ENV", "progress_callback", "stderr_console"]

stderr_console = Console(stderr=True)
INTERVAL_ENV = "NEUROS_CV_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _PlainProgress:
    """Counts steps and prints one line per interval (from a daemon thread) to ``sys.stderr``."""

    def __init__(self, total: int, title: str, interval: float) -> None:
        self.total, self.title, self.interval = max(int(total), 0), Text.from_markup(title).plain, interval
        self.done, self.message = 0, ""
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neuros-cv-progress", daemon=True)

    def line(self) -> str:
        with self._lock:
            done, message = self.done, self.message
        elapsed = time.monotonic() - self.start
        pct = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        eta = _clock(elapsed / done * (self.total - done)) if 0 < done < self.total else "-"
        tail = f" - {Text.from_markup(message).plain}" if message else ""
        return f"{self.title}: {done}/{self.total}{pct} elapsed {_clock(elapsed)} ETA {eta}{tail}"

    def emit(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def advance(self, message: str, n: int = 1) -> None:
        with self._lock:
            self.done += int(n)
            self.message = message

    def __enter__(self) -> _PlainProgress:
        self.emit()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.emit()


@contextlib.contextmanager
def progress_callback(total: int, title: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(message, n=1)``: each call moves the progress ``n`` steps and shows ``message``.

    ``title`` and ``message`` may hold rich markup (escape file names with ``rich.markup.escape``). On a
    terminal a rich bar is drawn; otherwise plain lines go to stderr at a steady interval (module docstring).
    """
    if not stderr_console.is_terminal:
        with _PlainProgress(total, title, _interval()) as plain:
            yield plain.advance
        return
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

        def advance(message: str, n: int = 1) -> None:
            prog.update(task, advance=n, description=message)

        yield advance


def note_placeholder(name: str, weights: object) -> None:
    """Say on stderr, in one line, when ``name`` ran the placeholder rather than a network (never silently)."""
    from ..backbones.placeholder import is_placeholder, placeholder_notice

    if is_placeholder(weights):
        stderr_console.print(escape(placeholder_notice(name)), soft_wrap=True, style="yellow")
