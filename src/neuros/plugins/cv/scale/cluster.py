"""A ``dask.distributed`` client: a ``LocalCluster`` on loopback by default, or an existing scheduler.

Connecting to ``--scheduler`` never hangs: :func:`probe_scheduler` first opens a plain socket (with the timeout)
and checks that the peer greets like a Dask server (a scheduler sends its handshake as soon as it accepts a
connection), so a refused port, an unresolvable or unroutable host, an HTTP server and a port that accepts but
never answers are each one :class:`SchedulerError` within the timeout; the ``Client`` itself is then created
with a hard deadline too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

__all__ = ["SchedulerError", "SchedulerWatch", "connect", "dask_client", "probe_scheduler", "quiet_distributed"]

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$|^[\w.\-\[\]:]+:\d+$")
# A Dask handshake is a few dozen bytes; anything claiming more than this is not one (an HTTP reply's
# "HTTP/1.0" read as a frame length is 3 EiB, which is what made Dask itself try to allocate 3.07 EiB).
_MAX_HANDSHAKE = 1 << 16
_RESUME = "re-run the same command to resume (finished blocks are kept)"
_HINT = "check the address and that a Dask scheduler runs there (`dask scheduler`), or leave out scheduler="


class SchedulerError(ConnectionError):
    """No usable Dask scheduler (refused, wrong protocol, no answer, lost mid-run, no workers): one line."""

    def __init__(self, address: str, reason: str, hint: str = _HINT):
        super().__init__(f"cannot reach a Dask scheduler at {address}: {reason}; {hint}")
        self.address = address
        self.reason = reason


def _normalise(address: str) -> str:
    if not isinstance(address, str) or not _ADDRESS.match(address.strip()):
        raise ValueError(f"scheduler={address!r} is not an address like tcp://host:8786")
    address = address.strip()
    return address if "://" in address else f"tcp://{address}"


def _host_port(address: str) -> tuple[str, int]:
    from distributed.comm.addressing import get_address_host_port

    try:
        return get_address_host_port(address)
    except ValueError as e:
        raise ValueError(f"scheduler={address!r} is not an address like tcp://host:8786 ({e})") from None


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(len(buf))
        buf += chunk
    return bytes(buf)


def _read_handshake(sock: socket.socket, address: str, deadline: float, timeout: float) -> dict:
    """Read and decode the handshake a Dask server sends on accepting a connection."""
    from distributed.protocol import loads
    from distributed.protocol.utils import unpack_frames

    try:
        head = _recv_exactly(sock, 8, deadline)
    except TimeoutError:
        raise SchedulerError(address, f"the port accepted the connection but sent nothing in {timeout:g} s "
                             "(a Dask scheduler greets at once; is this another service, or a firewall?)") from None
    except EOFError as e:
        raise SchedulerError(address, f"the port closed the connection after {e.args[0]} bytes "
                             "(not a Dask scheduler)") from None
    (size,) = struct.unpack("<Q", head)
    if not 0 < size <= _MAX_HANDSHAKE:
        text = head.decode("ascii", "replace")
        what = "an HTTP server" if text.startswith("HTTP/") else f"something that is not Dask (it sent {text!r})"
        raise SchedulerError(address, f"{what} answered, not a Dask scheduler")
    try:
        msg = loads(unpack_frames(_recv_exactly(sock, size, deadline)))
    except TimeoutError:
        raise SchedulerError(address, f"its greeting did not arrive within {timeout:g} s") from None
    except Exception as e:  # malformed frames: some other binary protocol
        raise SchedulerError(address, f"it does not speak Dask's protocol ({type(e).__name__})") from None
    if not isinstance(msg, dict) or "pickle-protocol" not in msg:
        raise SchedulerError(address, "it does not speak Dask's protocol (no handshake)")
    return msg


def probe_scheduler(address: str, timeout: float = 10.0) -> dict:
    """Check within ``timeout`` seconds that a Dask server listens at ``address``; return its handshake.

    Plain ``tcp://`` addresses are checked fully (connect, then read and decode the greeting a Dask server
    sends first); for ``tls://`` only the TCP connection is checked, other protocols are not probed.

    Raises
    ------
    SchedulerError
        One line naming the address and the reason (refused, unresolvable, no answer, not Dask).
    ValueError
        ``address`` is not an address.
    """
    address = _normalise(address)
    scheme = address.split("://", 1)[0]
    if scheme not in ("tcp", "tls"):
        return {}
    host, port = _host_port(address)
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout= must be > 0 seconds, got {timeout:g}")
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise SchedulerError(address, f"cannot resolve host {host!r} ({e.strerror or e})") from None
    except ConnectionRefusedError:
        raise SchedulerError(address, "connection refused (nothing listens on that port)") from None
    except TimeoutError:
        raise SchedulerError(address, f"no answer within {timeout:g} s (host down or unroutable, "
                             "or a firewall drops the connection)") from None
    except OSError as e:
        raise SchedulerError(address, e.strerror or str(e) or type(e).__name__) from None
    with sock:
        if scheme == "tcp":
            return _read_handshake(sock, address, deadline, timeout)
    return {}


def connect(address: str, timeout: float = 10.0):
    """A ``Client`` connected to the scheduler at ``address``, or :class:`SchedulerError` within ``timeout`` s.

    ``address`` is ``tcp://host:port`` or ``host:port``. The address is probed first
    (:func:`probe_scheduler`); the ``Client`` is then created in a helper thread with a hard deadline, and
    any error it raises (including Dask's own misreads of a foreign protocol) becomes one ``SchedulerError``.
    """
    from distributed import Client

    address = _normalise(address)
    t0 = time.monotonic()
    probe_scheduler(address, timeout)
    left = max(float(timeout) - (time.monotonic() - t0), 1.0)
    box: dict = {}
    gave_up = threading.Event()

    def make() -> None:
        try:
            client = Client(address, timeout=left, set_as_default=False)
        except BaseException as e:  # MemoryError, comm errors, TimeoutError: all reported below
            box["error"] = e
            return
        if gave_up.is_set():  # connected after the caller gave up: do not leave it open
            with contextlib.suppress(Exception):
                client.close(timeout=1)
            return
        box["client"] = client

    worker = threading.Thread(target=make, name="neuros-cv-connect", daemon=True)
    worker.start()
    worker.join(left + 2.0)
    if worker.is_alive() or not box:
        gave_up.set()
        raise SchedulerError(address, f"the scheduler did not complete the connection within {timeout:g} s")
    if "error" in box:
        e = box["error"]
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SchedulerError(address, f"{type(e).__name__}{': ' + text if text else ''}") from None
    return box["client"]


_LOGGERS = ("distributed", "distributed.client", "distributed.nanny", "distributed.worker", "distributed.scheduler",
            "distributed.core", "distributed.comm", "distributed.deploy", "distributed.process",
            "asyncio")  # asyncio: "Task exception was never retrieved" of Dask's abandoned gathers


@contextlib.contextmanager
def quiet_distributed(level: int = logging.CRITICAL) -> Iterator[None]:
    """Silence ``distributed``'s loggers in this process while inside (the CLI reports failures as one line)."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old, strict=True):
            lg.setLevel(lv)


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored, so a terminal's Ctrl-C (sent to the whole process group)
    reaches only this process, which then shuts the cluster down in order (no tracebacks from workers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    timeout: float = 10.0,
    memory_limit: str | int = "auto",
) -> Iterator:
    """Yield a ``distributed.Client``; close it (and the cluster this started) on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler. Default: start a ``LocalCluster`` of worker *processes* on 127.0.0.1,
        its dashboard on a free loopback port (each worker runs its own copy of the model, single-threaded:
        distributed sets ``OMP_NUM_THREADS=1`` for worker processes). The workers ignore SIGINT: Ctrl-C
        interrupts this process, which closes them.
    n_workers, threads_per_worker, memory_limit
        LocalCluster settings (ignored with ``scheduler``).
    timeout : float
        Seconds to wait for the scheduler to answer.

    Raises
    ------
    SchedulerError
        ``scheduler`` cannot be reached or is not a Dask scheduler (within ``timeout`` seconds).
    """
    if scheduler:
        client = connect(scheduler, timeout)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=max(float(timeout), 1.0))
        return
    from distributed import Client, LocalCluster

    if int(n_workers) < 1:
        raise ValueError(f"n_workers= must be >= 1, got {n_workers}")
    with _workers_ignore_sigint():
        cluster = LocalCluster(
            n_workers=int(n_workers),
            threads_per_worker=int(threads_per_worker),
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",  # a free port on the loopback host: never clashes with another cluster
            memory_limit=memory_limit,
            # CRITICAL, not ERROR: a worker whose heartbeat races the scheduler's shutdown (Ctrl-C, or the end
            # of a run) logs "Failed to communicate with scheduler during heartbeat" with a 30-line traceback
            # at ERROR from its own process, where quiet_distributed() cannot reach; failures that matter
            # reach this process (task errors, the SchedulerWatch) and are reported in one line
            silence_logs=logging.CRITICAL,
        )
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    try:
        yield client
    finally:
        with quiet_distributed():  # closing workers mid-task logs tracebacks nobody needs
            client.close()
            cluster.close()


class SchedulerWatch:
    """Watchdog for a computation: fails with :class:`SchedulerError` once the scheduler has been lost, has
    stopped answering, or has had no workers, for ``timeout`` seconds.

    Call :meth:`check` while waiting for blocks (it pings the scheduler every ``timeout / 3`` s at most) and
    :meth:`progress` whenever a block finishes.
    """

    def __init__(self, client, timeout: float = 10.0, done: int = 0, total: int = 0):
        self.client = client
        self.timeout = max(float(timeout), 0.5)
        self.address = str(getattr(client.scheduler, "address", None) or "the scheduler")
        self.interval = max(self.timeout / 3, 0.2)
        self.done, self.total = done, total
        now = time.monotonic()
        self.last_ok = now
        self.next_ping = now + self.interval
        self.no_workers_since: float | None = None

    def progress(self, n: int = 1) -> None:
        """``n`` more blocks finished: the scheduler and some worker are alive."""
        self.done += n
        self.last_ok = time.monotonic()
        self.no_workers_since = None

    def _where(self) -> str:
        return f"mid-run ({self.done} of {self.total} blocks finished)" if self.total else "mid-run"

    def lost(self) -> SchedulerError:
        """The error for a connection the client has given up on."""
        return SchedulerError(self.address, f"the connection to the scheduler was lost {self._where()}",
                              hint=_RESUME)

    def broken(self, error: BaseException) -> SchedulerError:
        """The error for a scheduler call that failed or timed out (``error``) mid-run."""
        if isinstance(error, TimeoutError):
            reason = f"the scheduler stopped answering {self._where()}: no reply within {self.timeout:g} s"
        else:
            reason = f"the connection to the scheduler was lost {self._where()} ({type(error).__name__})"
        return SchedulerError(self.address, reason, hint=_RESUME)

    def check(self, force: bool = False) -> None:
        """Raise :class:`SchedulerError` if the scheduler or every worker has been gone for ``timeout`` s.

        Pings the scheduler if ``force`` or if the last ping is ``timeout / 3`` s old.
        """
        now = time.monotonic()
        if self.client.status != "running":
            if self.client.status in ("closed", "closing") or now - self.last_ok > self.timeout:
                raise self.lost()
            return
        if now < self.next_ping and not force:
            return
        try:
            workers = self.client.sync(self.client.scheduler.ncores, callback_timeout=self.timeout)
        except Exception as e:  # TimeoutError, CommClosedError, OSError: the scheduler is gone
            raise self.broken(e) from None
        now = time.monotonic()
        self.last_ok, self.next_ping = now, now + self.interval
        if workers:
            self.no_workers_since = None
            return
        self.no_workers_since = self.no_workers_since or now
        if now - self.no_workers_since > self.timeout:
            raise SchedulerError(self.address, f"the scheduler has had no workers for {self.timeout:g} s "
                                 f"{self._where()} (a worker died, or none joined)",
                                 hint="start workers (`dask worker ADDRESS`) or raise timeout=, and re-run the "
                                 "same command: finished blocks are kept")
