"""A ``dask.distributed`` client: a ``LocalCluster`` on loopback by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

__all__ = ["connect", "dask_client"]

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$|^[\w.\-\[\]:]+:\d+$")


def connect(address: str, timeout: float = 10.0):
    """A ``Client`` connected to the scheduler at ``address``; ``ConnectionError`` within ``timeout`` seconds.

    ``address`` is ``tcp://host:port`` or ``host:port``.
    """
    from distributed import Client

    if not isinstance(address, str) or not _ADDRESS.match(address.strip()):
        raise ValueError(f"--scheduler {address!r} is not an address like tcp://host:8786")
    try:
        return Client(address.strip(), timeout=float(timeout), set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConnectionError(
            f"no Dask scheduler answered at {address} within {timeout:g} s ({type(e).__name__})"
        ) from None


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
        Address of a running scheduler. Default: start a ``LocalCluster`` of worker *processes* on 127.0.0.1
        with no dashboard (each worker runs its own copy of the model, single-threaded: distributed sets
        ``OMP_NUM_THREADS=1`` for worker processes).
    n_workers, threads_per_worker, memory_limit
        LocalCluster settings (ignored with ``scheduler``).
    timeout : float
        Seconds to wait for the scheduler to answer.
    """
    if scheduler:
        client = connect(scheduler, timeout)
        try:
            yield client
        finally:
            client.close()
        return
    from distributed import Client, LocalCluster

    if int(n_workers) < 1:
        raise ValueError(f"--workers must be >= 1, got {n_workers}")
    with LocalCluster(
        n_workers=int(n_workers),
        threads_per_worker=int(threads_per_worker),
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit=memory_limit,
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster, set_as_default=False) as client:
        yield client
