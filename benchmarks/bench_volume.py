"""Blockwise volume features on dask.distributed: throughput for 1 and 2 workers vs the same code in one process.

A synthetic EM-like volume (``make_dataset("em")`` texture; each section a crop moved by a random walk plus
fresh noise, uint8) is written to zarr with (1, 512, 512) chunks. Then, in the same run:

* **baseline**: one process, one BLAS/torch thread: read the whole array, :func:`section_features` on each
  whole section (the same per-section code the blocks run), write the features to zarr with the same chunks;
* **blockwise**: ``volume_features`` on a ``LocalCluster`` of 1 and of 2 worker processes (one thread each),
  writing to zarr; cluster start-up is timed separately.

Reported: megavoxels/s, speed-up of 2 workers over 1, overhead of 1 worker over the one-process baseline, and
each worker's peak resident memory (``ru_maxrss``). Timings are of this machine under its load at the time.

Usage: python benchmarks/bench_volume.py [--shape 32,2048,2048] [--backbone vit-small --weights placeholder]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB. Not ``ru_maxrss``: Linux carries that across the
    fork+exec that starts a worker, so every worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (Linux ``clear_refs``); False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """EM-like serial sections: crops of one synthetic EM texture on a random walk, each with fresh noise."""
    from neuros.plugins.cv.datasets.synthetic import make_dataset

    z, h, w = shape
    pad = 64
    base = np.asarray(make_dataset("em", 1, size=max(h, w) + 2 * pad, seed=seed)[0][0], dtype=np.float32)
    rng = np.random.default_rng(seed)
    walk = np.clip(np.cumsum(rng.integers(-3, 4, size=(z, 2)), axis=0), -pad, pad)
    vol = np.empty(shape, dtype=np.uint8)
    for k in range(z):  # a loop over sections, not pixels
        sec = base[pad + walk[k, 0] : pad + walk[k, 0] + h, pad + walk[k, 1] : pad + walk[k, 1] + w]
        sec = sec + rng.normal(0, 0.05, size=sec.shape).astype(np.float32)
        vol[k] = np.clip(sec * 255, 0, 255).astype(np.uint8)
    return vol


def baseline(src: Path, dst: Path, backbone: str, weights: str | None, block: int) -> tuple[float, float]:
    """Seconds to read the whole volume, compute whole-section features of every section in this process
    (1 thread) and write them to zarr; and the peak RSS in MiB."""
    import torch
    import zarr
    from threadpoolctl import threadpool_limits

    from neuros.plugins.cv.scale.features import intensity_range, section_features
    from neuros.plugins.cv.scale.models import worker_backbone
    from neuros.plugins.cv.scale.zarr_io import open_volume

    arr = open_volume(src)
    bb = worker_backbone(backbone, weights)
    lo, hi = intensity_range(arr[0:1])  # warm-up (and import) outside the timing
    section_features(arr[0], bb, lo, hi)
    torch.set_num_threads(1)
    _reset_peak_rss()
    with threadpool_limits(1):
        t0 = time.perf_counter()
        vol = arr[...]  # the whole array in memory
        lo, hi = intensity_range(vol)
        feats = np.stack([section_features(sec, bb, lo, hi) for sec in vol])
        # Written to zarr with the blockwise run's chunks, so both pay for compressing and writing features.
        chunks = (1, block // 16, block // 16, feats.shape[3])
        out = zarr.create_array(str(dst), shape=feats.shape, chunks=chunks, dtype="float32")
        out[...] = feats
        return time.perf_counter() - t0, _peak_rss_mib()


def blockwise(src: Path, out: Path, n_workers: int, backbone: str, weights: str | None, block: int) -> dict:
    from neuros.plugins.cv.scale import dask_client, volume_features

    t0 = time.perf_counter()
    with dask_client(n_workers=n_workers, threads_per_worker=1) as client:
        startup = time.perf_counter() - t0
        # Warm each worker (imports, model build) on a tiny run so the timing is steady-state throughput.
        client.run(lambda: __import__("neuros.plugins.cv.scale.models", fromlist=["x"]).worker_backbone(
            backbone, weights))
        t1 = time.perf_counter()
        rec = volume_features(src, out, client, backbone=backbone, weights=weights, block=block)
        seconds = time.perf_counter() - t1
        peaks = client.run(_peak_rss_mib)
    return {"workers": n_workers, "seconds": seconds, "startup_s": startup, "blocks": rec["total"],
            "halo": rec["halo"], "weights": rec["weights"], "peak_rss_mib": sorted(peaks.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="32,2048,2048", help="Z,Y,X (default 32,2048,2048)")
    p.add_argument("--backbone", default="vit-small")
    p.add_argument("--weights", default="placeholder")
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    weights = None if args.weights in ("", "none") else args.weights
    tmp = Path(tempfile.mkdtemp(prefix="bench_volume-"))
    try:
        import zarr

        t0 = time.perf_counter()
        vol = make_volume(shape)
        src = tmp / "em.zarr"
        arr = zarr.create_array(str(src), shape=shape, chunks=(1, 512, 512), dtype="uint8")
        arr[...] = vol
        del vol
        print(f"volume {shape} uint8 written to zarr in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        mvox = np.prod(shape) / 1e6
        peak_reset = _reset_peak_rss()
        base_s, base_rss = baseline(src, tmp / "base.zarr", args.backbone, weights, args.block)
        runs = [blockwise(src, tmp / f"out{n}.zarr", n, args.backbone, weights, args.block) for n in (1, 2)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "machine": machine(), "shape": list(shape), "megavoxels": mvox, "backbone": args.backbone,
        "weights": runs[0]["weights"], "block": args.block,
        "baseline": {"seconds": base_s, "mvox_per_s": mvox / base_s, "peak_rss_mib_process": base_rss,
                     "peak_reset": peak_reset},
        "runs": [{**r, "mvox_per_s": mvox / r["seconds"]} for r in runs],
        "speedup_2_over_1": runs[0]["seconds"] / runs[1]["seconds"],
        "overhead_1_worker_over_baseline": runs[0]["seconds"] / base_s,
    }
    print(f"machine: {res['machine']}")
    print(f"volume {shape[0]}×{shape[1]}×{shape[2]} ({mvox:.0f} Mvox), backbone {args.backbone} "
          f"(weights {res['weights']}), blocks {args.block}² + halo {runs[0]['halo']} px\n")
    print("| run | seconds | Mvox/s | peak RSS per worker (MiB) |\n|---|---|---|---|")
    print(f"| one process, whole array, 1 thread (baseline) | {base_s:.1f} | {mvox / base_s:.1f} | "
          f"{base_rss:.0f} (this process{'' if res['baseline']['peak_reset'] else ', incl. volume generation'}) |")
    for r in res["runs"]:
        print(f"| blockwise, {r['workers']} worker(s) × 1 thread ({r['blocks']} blocks) | {r['seconds']:.1f} | "
              f"{r['mvox_per_s']:.1f} | {', '.join(f'{m:.0f}' for m in r['peak_rss_mib'])} |")
    print(f"\nspeed-up 2 vs 1 worker: {res['speedup_2_over_1']:.2f}×; overhead of 1 worker vs baseline: "
          f"{res['overhead_1_worker_over_baseline']:.2f}× the time; cluster start-up "
          f"{runs[0]['startup_s']:.1f} s / {runs[1]['startup_s']:.1f} s (not included)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
