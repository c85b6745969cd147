"""Scheduler faults and interrupts of ``neuros-cv volume``: every failure ends within ``--timeout`` with one line.

Everything runs on 127.0.0.1: an HTTP server and a socket that accepts but never answers stand in for wrong
addresses; real ``dask scheduler`` / ``dask worker`` processes are killed mid-run; a real CLI run with its own
LocalCluster gets SIGINT like a terminal's Ctrl-C (sent to the whole process group).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import distributed.comm.addressing  # imported up front: the timings below are the probe's own
import distributed.protocol  # noqa: F401
import numpy as np
import pytest
import zarr

from neuros.plugins.cv.cli import build_parser, main
from neuros.plugins.cv.cli.volume import _interrupted
from neuros.plugins.cv.scale import volume_features
from neuros.plugins.cv.scale.cluster import SchedulerError, probe_scheduler
from neuros.plugins.cv.scale.features import section_features
from neuros.plugins.cv.scale.models import worker_backbone

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TIMEOUT = 3.0  # --timeout for the runs below
PREFIX = "neuros-cv volume: error: cannot reach a Dask scheduler at tcp://127.0.0.1:"


@pytest.fixture
def http_port():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
def refused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port  # closed again: nothing listens there


def _volume(path: Path, z: int = 16, size: int = 128, seed: int = 4) -> tuple[Path, np.ndarray]:
    vol = (np.random.default_rng(seed).random((z, size, size)) * 255).astype(np.uint8)
    a = zarr.create_array(str(path), shape=vol.shape, chunks=(1, 32, 32), dtype=vol.dtype)
    a[...] = vol
    return path, vol


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "neuros.plugins.cv.cli", "volume", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def _markers(out: Path) -> int:
    """Finished blocks: marker chunks, not the ``.partial`` temporary a writer killed mid-write leaves behind."""
    root = out / "blocks_done" / "features" / "c"
    return sum(not f.endswith(".partial") for _, _, files in os.walk(root) for f in files) if root.exists() else 0


def _error_lines(stderr: str) -> list[str]:
    """stderr without progress lines (a bar or periodic line: "features … 12/256 …")."""
    progress = re.compile(r"\b\d+\s*/\s*\d+\b")
    return [ln for ln in stderr.splitlines()
            if ln.strip() and (ln.startswith("neuros-cv") or not progress.search(ln))]


# --- before the run: wrong addresses -------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["http", "silent"])
def test_cli_against_a_port_that_is_not_a_scheduler_ends_with_one_line(kind, http_port, silent_port, tmp_path):
    """Used to hang for > 10 minutes (HTTP server) with no output."""
    port = http_port if kind == "http" else silent_port
    src, _ = _volume(tmp_path / "in.zarr", z=1, size=32)
    t0 = time.monotonic()
    proc = subprocess.run(
        _cli("features", str(src), "--out", str(tmp_path / "o.zarr"), "--weights", "placeholder",
             "--scheduler", f"tcp://127.0.0.1:{port}", "--timeout", str(TIMEOUT)),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=100,
    )
    elapsed = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{PREFIX}{port}: ") and "sent nothing in 3 s" in lines[0]
    assert not (tmp_path / "o.zarr").exists()
    print(f"{kind}: {elapsed:.1f} s including interpreter start-up")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["http", "silent", "refused"])
def test_probe_fails_within_the_timeout_naming_the_reason(kind, http_port, silent_port, refused_port, tmp_path,
                                                          capsys):
    port = {"http": http_port, "silent": silent_port, "refused": refused_port}[kind]
    addr = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(SchedulerError) as e:
        probe_scheduler(addr, timeout=TIMEOUT)
    assert time.monotonic() - t0 < TIMEOUT + 2
    reason = {"http": "sent nothing in 3 s", "silent": "sent nothing in 3 s", "refused": "connection refused"}[kind]
    assert reason in e.value.reason and "\n" not in str(e.value)
    src, _ = _volume(tmp_path / "in.zarr", z=1, size=32)
    build_parser()  # imports every sub-command first, so the time below is the CLI's own
    t0 = time.monotonic()
    rc = main(["volume", "features", str(src), "--out", str(tmp_path / "o.zarr"), "--weights", "placeholder",
               "--scheduler", addr, "--timeout", str(TIMEOUT)])
    assert time.monotonic() - t0 < TIMEOUT + 5
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"{PREFIX}{port}: ") and reason in err and err.count("\n") == 1


def test_http_reply_is_recognised_not_read_as_a_frame_length():
    """A server that speaks first with an HTTP status line (Dask read it as a 3 EiB frame: MemoryError)."""

    def serve(sock: socket.socket) -> None:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            time.sleep(0.5)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        threading.Thread(target=serve, args=(s,), daemon=True).start()
        with pytest.raises(SchedulerError, match="an HTTP server answered, not a Dask scheduler"):
            probe_scheduler(f"tcp://127.0.0.1:{s.getsockname()[1]}", timeout=TIMEOUT)


def test_probe_accepts_a_real_scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        hello = probe_scheduler(cluster.scheduler_address, timeout=TIMEOUT)
    assert "pickle-protocol" in hello


# --- during the run: a real scheduler and worker, killed --------------------------------------------------------


@contextlib.contextmanager
def _scheduler(tmp_path: Path):
    info = tmp_path / "scheduler.json"
    proc = subprocess.Popen(
        [PY, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(info)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the file is written in one go, but give the writer a moment
        yield proc, json.loads(info.read_text())["address"]
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _worker(address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
         "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())


def _as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C at its default, as a shell in a terminal starts a command. A test runner
    started in the background (``nohup … &``, some CI systems) ignores SIGINT, and an ignored signal stays
    ignored across exec: the CLI would then never see the Ctrl-C this file sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_until_markers(cmd: list[str], out: Path, n: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 120
    while _markers(out) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    return proc


def _reference(vol: np.ndarray) -> np.ndarray:
    bb = worker_backbone("vit-small", "placeholder")
    return np.stack([section_features(s, bb, 0.0, 255.0) for s in vol])


def _resume_and_check(src: Path, out: Path, vol: np.ndarray, done: int) -> None:
    """A fresh (threaded) cluster finishes the rest, to the same features as an uninterrupted run."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        rec = volume_features(src, out, client, backbone="vit-small", weights="placeholder")
    assert rec["resumed"] and rec["skipped"] >= done and rec["computed"] == 256 - rec["skipped"]
    assert zarr.open_group(str(out), mode="r").attrs["neuros_cv"]["complete"] is True
    np.testing.assert_array_equal(np.moveaxis(zarr.open_group(str(out), mode="r")["features"][...], 0, -1),
                                  _reference(vol))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("victim", ["worker", "scheduler", pytest.param("stopped", marks=pytest.mark.slow)])
def test_losing_the_worker_or_the_scheduler_mid_run_is_one_line_then_resumes(victim, tmp_path):
    src, vol = _volume(tmp_path / "in.zarr")
    out = tmp_path / "f.zarr"
    with _scheduler(tmp_path) as (sched, address):
        worker = _worker(address)
        try:
            cmd = _cli("features", str(src), "--out", str(out), "--weights", "placeholder", "--scheduler", address,
                       "--timeout", str(TIMEOUT))
            proc = _run_until_markers(cmd, out, 3)
            if victim == "stopped":  # alive but silent: the connection stays open, nothing answers
                sched.send_signal(signal.SIGSTOP)
            else:
                (worker if victim == "worker" else sched).kill()
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=60)
            elapsed = time.monotonic() - t0
        finally:
            worker.kill()
            worker.wait(timeout=30)
    lines = _error_lines(err)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"neuros-cv volume: error: cannot reach a Dask scheduler at {address}: ")
    reason = {"worker": "has had no workers for 3 s mid-run", "scheduler": "was lost mid-run",
              "stopped": "stopped answering mid-run"}[victim]
    assert reason in lines[0] and "blocks finished" in lines[0]
    assert elapsed < TIMEOUT + 15, elapsed  # the watchdog's timeout, the ping interval, and the shutdown
    done = _markers(out)
    assert 3 <= done < 256
    _resume_and_check(src, out, vol, done)


# --- Ctrl-C ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_ctrl_c_with_a_local_cluster_is_one_line_exit_130_and_resumes(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: workers used to print 33 traceback lines."""
    src, vol = _volume(tmp_path / "in.zarr")
    out = tmp_path / "f.zarr"
    cmd = _cli("features", str(src), "--out", str(out), "--weights", "placeholder", "--workers", "1")
    proc = _run_until_markers(cmd, out, 3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = _error_lines(err)
    assert proc.returncode == 130 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    done = _markers(out)
    assert lines[0].startswith("neuros-cv volume features: interrupted; ")
    assert f"finished blocks kept in {out}" in lines[0] and int(lines[0].split("; ")[1].split()[0]) <= done
    _resume_and_check(src, out, vol, done)


def test_interrupt_message_tells_the_truth(tmp_path):
    out = tmp_path / "never.zarr"
    assert "nothing was written" in _interrupted("features", str(out)) and not out.exists()
    from neuros.plugins.cv.scale.resume import mark_done, open_output

    open_output(out, {"x": 1}, {}, {"features": (1, 2, 2)})
    msg = _interrupted("features", str(out))
    assert "no block had finished" in msg and "kept" not in msg
    mark_done(out, "features", (0, 1, 1))
    assert "1 finished block kept in" in _interrupted("features", str(out))
    (tmp_path / "foreign").mkdir()
    assert "kept" not in _interrupted("features", str(tmp_path / "foreign"))


def test_a_write_killed_midway_is_not_a_finished_block_and_its_temporary_goes_on_resume(tmp_path):
    """zarr writes each chunk to ``<chunk>.<uuid>.partial`` then renames it: SIGKILL in between leaves the temporary.

    It once made this file's marker count one block ahead of the resume's (``skipped 3 >= done 4``).
    """
    import uuid

    from neuros.plugins.cv.scale.resume import done_indices, mark_done, open_output

    out = tmp_path / "o.zarr"
    arrays = {"features": dict(shape=(1, 4, 4), chunks=(1, 2, 2), dtype="float32", fill_value=0.0)}
    open_output(out, {"x": 1}, arrays, {"features": (1, 2, 2)})
    mark_done(out, "features", (0, 0, 0))
    marker = out / "blocks_done" / "features" / "c" / "0" / "1" / "1"
    marker.parent.mkdir(parents=True, exist_ok=True)
    left = [marker.with_suffix(f".{uuid.uuid4().hex}.partial"),  # the marker, killed between write and rename
            out / "features" / "c" / "0" / "1" / f"1.{uuid.uuid4().hex}.partial"]  # a block's results, likewise
    for f in left:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"\x01")
    users = [out / "features" / "notes.partial", tmp_path / f"x.{uuid.uuid4().hex}.partial"]
    for f in users:
        f.write_text("not ours")
    assert done_indices(out, "features") == {(0, 0, 0)} and _markers(out) == 1
    _, resumed = open_output(out, {"x": 1}, arrays, {"features": (1, 2, 2)})
    assert resumed and not any(f.exists() for f in left) and all(f.exists() for f in users)
    assert done_indices(out, "features") == {(0, 0, 0)}
