"""Running napari without a screen (CI, servers, the tests): Qt on a private virtual X server.

napari draws its canvas with OpenGL. Qt's ``offscreen`` platform runs widgets without a display, but its GL
context has no drawable: adding an image layer fails without an X display, and with one the canvas renders
black, so ``viewer.screenshot`` shows nothing. :func:`ensure_headless` therefore starts a private ``Xvfb``
(Debian package ``xvfb``, which ``make setup`` installs where apt-get exists, with the ``libxcb-*`` libraries
Qt's ``xcb`` platform loads) on a display number Xvfb picks itself (``-displayfd``: parallel test workers never
collide), points ``DISPLAY`` at it and selects ``QT_QPA_PLATFORM=xcb``; Mesa renders the canvas in software.
Without Xvfb it falls back to ``QT_QPA_PLATFORM=offscreen`` (widgets only). The server is stopped by the kernel
when this process ends (``PR_SET_PDEATHSIG``, after Qt has closed its connection). Call it before the first Qt
application is made.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys

__all__ = ["ensure_headless"]

_SERVER: subprocess.Popen | None = None


def ensure_headless(size: str = "1280x1024x24") -> str | None:
    """Set up headless Qt with GL; returns the private ``DISPLAY`` started (None: no Xvfb, ``offscreen`` used).

    Idempotent: a second call reuses the server of the first.
    """
    global _SERVER
    if _SERVER is not None and _SERVER.poll() is None:
        return os.environ.get("DISPLAY")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        return None
    read, write = os.pipe()
    _SERVER = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", size, "-nolisten", "tcp"],
                               pass_fds=(write,), preexec_fn=_die_with_parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    with os.fdopen(read, "rb") as f:
        while not number.endswith(b"\n"):
            chunk = f.read(1)
            if not chunk:
                break
            number += chunk
    if not number.strip():
        _SERVER.terminate()
        _SERVER = None
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        return None
    os.environ["DISPLAY"] = f":{int(number.strip())}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    if not sys.platform.startswith("linux"):
        atexit.register(_stop)
    return os.environ["DISPLAY"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG = 1)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _stop() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.terminate()
        try:
            _SERVER.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _SERVER.kill()
        _SERVER = None
