"""Resumable blockwise runs: output groups that remember their settings, per-block completion markers, and
running the blocks on a ``distributed`` client with retries, progress and failures reported by block index.

Markers live inside the output group as a uint8 zarr array ``blocks_done/<name>`` with one chunk per block, so
each finished block writes one tiny file of its own (no two workers touch the same file) *after* its results;
an interrupted run leaves exactly the finished blocks marked, and a re-run with the same settings computes only
the others. ``attrs["neuros_cv"]["complete"]`` is false until every block is done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..output import check_not_input

__all__ = [
    "BlockFailures",
    "ProgressFactory",
    "RunReport",
    "check_volume_output",
    "done_indices",
    "finish_output",
    "mark_done",
    "open_output",
    "run_blocks",
]

ProgressFactory = Callable[[int, str], AbstractContextManager[Callable[[str], None]]]
LEDGER = "blocks_done"
DEFAULT_TIMEOUT = 30.0  # seconds without a scheduler / workers before a run gives up
POLL_S = 0.05


class BlockFailures(RuntimeError):
    """Some blocks still failed after their retries; ``indices`` lists them as (z, iy, ix)."""

    def __init__(self, message: str, indices: list[tuple[int, ...]], attempts: list[int]):
        super().__init__(message)
        self.indices = indices
        self.attempts = attempts


@dataclass(frozen=True)
class RunReport:
    """What a run did: blocks in total, computed now, skipped as already written."""

    total: int
    computed: int
    skipped: int
    results: dict = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "computed": self.computed, "skipped": self.skipped}


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _volume_meta(path: Path) -> dict[str, Any]:
    """The ``neuros_cv`` attributes of a zarr group this tool wrote, or ``{}`` for anything else."""
    import zarr

    try:
        meta = zarr.open_group(str(path), mode="r").attrs.asdict().get("neuros_cv", {})
    except Exception:  # not a zarr group at all (zarr raises several types)
        return {}
    return meta if isinstance(meta, dict) and "run" in meta else {}


def _remove_volume_output(path: Path) -> None:
    """Delete the zarr group metadata and the members an earlier run created; other files stay."""
    import zarr

    names = list(zarr.open_group(str(path), mode="r").keys())
    for name in ["zarr.json", ".zattrs", ".zgroup", LEDGER, *names]:
        item = path / name
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        elif item.exists() or item.is_symlink():
            item.unlink()


# zarr's LocalStore writes a chunk to ``<chunk>.<uuid4 hex>.partial`` and renames it; a process killed mid-write
# leaves that temporary behind (zarr never reads it). Only files of exactly this form are ours to remove.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _remove_interrupted_writes(path: Path) -> None:
    """Delete the temporary chunk files an interrupted run left inside the group's own members."""
    import zarr

    for name in zarr.open_group(str(path), mode="r").keys():  # the arrays and the ledger group
        member = path / name
        if member.is_dir() and not member.is_symlink():
            for root, _, files in os.walk(member):
                for f in filter(_PARTIAL.search, files):
                    Path(root, f).unlink()


def check_volume_output(
    out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = ()
) -> tuple[Path, dict[str, Any]]:
    """Refuse an output zarr that is/contains/lies inside an input or holds data neuros-cv did not write.

    Returns the resolved path and the earlier run's ``neuros_cv`` attributes (``{}`` when there is none).
    """
    path = check_not_input(out, inputs)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"out={path} is a file, not a zarr folder; choose another out=")
    meta = _volume_meta(path) if path.is_dir() else {}
    if path.is_dir() and not meta and any(path.iterdir()):
        raise FileExistsError(f"out={path} holds data that neuros-cv did not write (not a neuros-cv volume "
                              "output); refusing to replace it: choose another out=")
    return path, meta


def open_output(
    out: str | os.PathLike[str],
    run: dict[str, Any],
    arrays: dict[str, dict[str, Any]],
    ledgers: dict[str, tuple[int, ...]],
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
):
    """Create the output zarr group, or reopen it to resume a run with the same settings.

    Parameters
    ----------
    out : path-like
        Output zarr group.
    run : dict
        The run's settings (JSON-serialisable); a re-run resumes only if they are identical.
    arrays : dict
        ``name -> dict(shape=, chunks=, dtype=, fill_value=)`` arrays to create.
    ledgers : dict
        ``name -> block-grid shape`` completion-marker arrays to create.
    overwrite : bool
        Replace an existing output of an earlier neuros-cv run instead of resuming / refusing. A folder that
        neuros-cv did not write is never replaced, and files other than the run's own stay.
    inputs : sequence of path-like
        The run's inputs: ``out`` may not be, contain or lie inside any of them.

    Returns
    -------
    (zarr.Group, bool)
        The group (read-write) and whether an existing run is being resumed.
    """
    import zarr

    path, meta = check_volume_output(out, inputs)
    run = _canonical(run)
    if path.exists() and not overwrite and meta:
        if meta.get("run") != run:
            old = meta.get("run", {})
            diff = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
            raise FileExistsError(
                f"out={path} holds a run with different settings ({', '.join(diff)}); "
                "pass overwrite=True to start again or use another out="
            )
        _remove_interrupted_writes(path)
        return zarr.open_group(str(path), mode="r+"), True
    if meta:  # overwrite our own earlier run: remove only what it wrote
        _remove_volume_output(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"out={path}: folder {path.parent} does not exist")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    for name, spec in arrays.items():
        group.create_array(name, **spec)
    done = group.create_group(LEDGER)
    for name, grid in ledgers.items():
        # One chunk per block, uncompressed: a marker is one byte, written (by zarr) to a temporary file renamed
        # into place, so a killed writer leaves no marker, only a ``.partial`` file (removed when the run resumes).
        done.create_array(name, shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0, compressors=None)
    group.attrs["neuros_cv"] = {"run": run, "complete": False}
    return group, False


def ledger_path(out: str | os.PathLike[str], name: str) -> str:
    return str(Path(out) / LEDGER / name)


def done_indices(out: str | os.PathLike[str], name: str) -> set[tuple[int, ...]]:
    """Indices of the blocks marked done in ledger ``name``."""
    import zarr

    arr = zarr.open_array(ledger_path(out, name), mode="r")
    return {tuple(int(v) for v in i) for i in np.argwhere(arr[...] > 0)}


def mark_done(out: str | os.PathLike[str], name: str, index: Sequence[int]) -> None:
    """Mark block ``index`` done (call after its results are written)."""
    import zarr

    arr = zarr.open_array(ledger_path(out, name), mode="r+")
    arr[tuple(int(i) for i in index)] = 1


def finish_output(group, **summary: Any) -> None:
    """Record the run as complete, with a summary, in the group's attributes."""
    meta = dict(group.attrs.asdict().get("neuros_cv", {}))
    meta.update(complete=True, **_canonical(summary))
    group.attrs["neuros_cv"] = meta


def _attempts(client, keys: list[str]) -> list[int]:
    """How many times the scheduler sent each key to a worker (1 + retries used), from its task story."""

    def count(dask_scheduler, keys):  # runs on the scheduler
        out = []
        for k in keys:
            ts = dask_scheduler.tasks.get(k)
            blame = ts.exception_blame.key if ts is not None and ts.exception_blame is not None else k
            story = dask_scheduler.story(blame)  # the task that raised: the block's or one reading its input
            out.append(sum(1 for ev in story if len(ev) > 2 and ev[0] == blame and ev[2] == "processing"))
        return out

    try:
        return list(client.run_on_scheduler(count, keys=keys))
    except Exception:  # the story is diagnostics only
        return [-1] * len(keys)


def run_blocks(
    client,
    tasks: Sequence[tuple[tuple[int, ...], Any]],
    *,
    total: int,
    retries: int = 2,
    progress: ProgressFactory | None = None,
    title: str = "blocks",
    timeout: float = DEFAULT_TIMEOUT,
    gather: bool = False,
) -> RunReport:
    """Compute delayed block tasks on ``client`` (each writes its block and marker); results by index.

    Parameters
    ----------
    client : distributed.Client
    tasks : sequence of (index, dask.delayed)
        Blocks still to do (the caller leaves out those already marked done).
    total : int
        Number of blocks in the whole run (for the report).
    retries : int
        Extra attempts per block before it counts as failed (distributed's ``retries``).
    progress : callable, optional
        ``progress(n, title)`` -> context manager yielding ``advance(message)`` (``cli._progress``'s shape).
    timeout : float
        Seconds the scheduler may be unreachable, silent or without workers before the run stops.
    gather : bool
        Fetch each task's return value into ``RunReport.results`` (default: only count the blocks; their
        results are in the output already).

    Raises
    ------
    SchedulerError
        The scheduler was lost, stopped answering or had no workers for ``timeout`` seconds (blocks finished
        so far stay marked done).
    BlockFailures
        After every other block finished, if some still failed; the message names them by index.
    """
    from concurrent.futures import CancelledError

    from distributed import as_completed

    from .cluster import SchedulerWatch

    indices = [tuple(i) for i, _ in tasks]
    futures = client.compute([d for _, d in tasks], retries=int(retries)) if tasks else []
    by_key = {f.key: i for f, i in zip(futures, indices, strict=True)}
    failed: list[tuple[tuple[int, ...], str, Any]] = []
    results: dict[tuple[int, ...], Any] = {}
    watch = SchedulerWatch(client, timeout, done=total - len(futures), total=total)
    ctx = progress(len(futures), title) if progress is not None and futures else nullcontext(None)
    try:
        with ctx as advance:
            pending = as_completed(futures, loop=client.loop)
            while not pending.is_empty():
                batch = pending.next_batch(block=False)
                if not batch:
                    watch.check()  # SchedulerError once the scheduler or all workers are gone for `timeout` s
                    time.sleep(POLL_S)
                    continue
                for fut in batch:
                    if fut.status == "cancelled":  # the client lost the scheduler and cancelled everything
                        raise watch.lost()
                    idx = by_key[fut.key]
                    ok = fut.status == "finished"
                    try:
                        if ok:
                            value = fut.result(timeout=watch.timeout) if gather else None
                        else:
                            value = fut.exception(timeout=watch.timeout)
                    except TimeoutError:  # its worker died with the result (Dask recomputes it) or all is gone
                        watch.check(force=True)
                        pending.add(fut)
                        continue
                    except (OSError, CancelledError) as e:  # the scheduler went away meanwhile
                        raise watch.broken(e) from None
                    if ok:
                        if gather:
                            results[idx] = value
                        watch.progress()
                        if advance is not None:
                            advance(f"block {idx}")
                        fut.release()
                    else:
                        failed.append((idx, fut.key, value))  # kept until the scheduler says how often it ran
                        if advance is not None:
                            advance(f"block {idx} FAILED")
        failed.sort(key=lambda t: t[0])
        attempts = _attempts(client, [k for _, k, _ in failed]) if failed else []
    finally:
        if client.status == "running":
            for f in futures:
                f.release()
    if failed:
        idx = [i for i, _, _ in failed]
        first = failed[0][2]
        shown = ", ".join(str(i) for i in idx[:10]) + (" …" if len(idx) > 10 else "")
        tries = "/".join(sorted({str(a) for a in attempts if a > 0})) or str(retries + 1)
        raise BlockFailures(
            f"{len(idx)} of {total} blocks failed after {tries} attempts each: blocks (z, iy, ix) {shown}; "
            f"first error: {type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''} "
            "(re-run the same command to retry only unfinished blocks)",
            idx,
            attempts,
        )
    return RunReport(total=total, computed=len(futures), skipped=total - len(futures), results=results)
