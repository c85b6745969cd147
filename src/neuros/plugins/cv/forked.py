"""Run one call in a forked child process and read its result back: parallel Python without the GIL.

``register`` runs the consistency check's reverse registration beside the forward one. Both are thousands of
small NumPy / torch operations; on threads they hand the GIL back and forth at every operation, and two
threads took *longer* than one thread doing both (a 2-D structure-level evaluation: 1.1 ms alone, 4.3 ms for
two on two threads). A child forked from the process already holds the images, the pyramids and the imported
modules (copy-on-write: ~23 ms to fork a 0.8 GB process), runs the call on its own core, and sends back the
pickled result through a pipe.

Written here rather than with :mod:`multiprocessing` because the callable is a closure over the caller's
state (no pickling of the work, only of the answer) and the child must leave through ``os._exit`` at once.
Linux only (``fork`` after threads is unsafe on macOS, absent on Windows): elsewhere, or if the fork fails,
the call runs in the caller's process when its result is asked for, with the same answer.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ForkedCall", "can_fork"]

T = TypeVar("T")


def can_fork() -> bool:
    """Whether :class:`ForkedCall` runs its call in a child process here (Linux with ``os.fork``)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class ForkedCall(Generic[T]):
    """``fn()`` started in a forked child process; :meth:`result` returns its value.

    An exception raised by ``fn`` in the child, a child that dies (killed, out of memory) or one that does not
    answer in time is not trusted: :meth:`result` then calls ``fn()`` in this process, so the caller gets the
    same value or the same exception as without the child. Use as a context manager: leaving the block before
    :meth:`result` kills and reaps the child.
    """

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.pid: int | None = None
        self.fd = -1
        if not can_fork():
            return
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return
        if pid == 0:  # the child: compute, write, leave without running the parent's exit handlers
            code = 1
            try:
                os.close(r)
                payload = pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(w, "wb") as out:
                    out.write(payload)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.fd = pid, r

    def result(self, timeout: float | None = None) -> T:
        """The call's value: from the child if it succeeded, else computed here — also when ``timeout`` seconds
        pass without an answer (the child is killed: one that waits for ever on a lock another thread of this
        process held when it forked costs this much, never a hang)."""
        if self.pid is None:
            return self.fn()
        import select

        data = b""
        try:
            if select.select([self.fd], [], [], timeout)[0]:
                with os.fdopen(self.fd, "rb") as src:
                    data = src.read()
                self.fd = -1
        finally:
            if self.fd >= 0:  # timed out (or interrupted): the child goes
                self.close()
            else:
                _, status = os.waitpid(self.pid, 0)
                self.pid = None
        if data and os.waitstatus_to_exitcode(status) == 0:
            return pickle.loads(data)
        return self.fn()

    def close(self) -> None:
        """Kill and reap the child if its result was not read."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ForkedCall[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
