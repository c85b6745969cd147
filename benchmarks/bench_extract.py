"""Feature-extraction throughput: our ``extract_batch`` against a bare transformers forward and a naive pipeline.

For real-size ViT-S/16 and ConvNeXt-T (random init, seeded: the architecture, not the weights, sets the
speed) at 224² and 512², three ways to get dense features of the same uint8 RGB images:

- ``bare``  — ``model(pixel_values=x)`` on tensors normalised *before* the clock starts (the floor);
- ``ours``  — ``DINOv3Backbone.extract_batch(images)`` from the raw uint8 images: scaling, channels,
  padding, normalisation, forward, dropping CLS/register tokens, grid reshape, NumPy output;
- ``naive`` — transformers' ``AutoImageProcessor`` + model, as the model card shows. The DINOv3 processors
  need torchvision, which does not import beside the pinned CPU torch here; then the closest honest stand-in
  runs instead and is labelled so: transformers' own NumPy/PIL image transforms (``image_transforms.resize``
  to the image size, ``rescale`` 1/255, ``normalize``), the path its slow processors took, + the same
  forward and token handling.

Repeats are interleaved (bare, ours, naive, bare, …) so other jobs on a shared machine slow all sides alike;
medians are reported, with ratios against ``bare`` measured in the same run. Prints a Markdown section.

    .venv/bin/python benchmarks/bench_extract.py [--repeats 9] [--device auto] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.backbones import DINOv3Backbone

MODELS = ("vit-small", "cnx-tiny")
SIZES = {224: 4, 512: 2}  # image side → images per batch


def _naive_pipeline(model_id: str, bb: DINOv3Backbone, side: int):
    """(label, callable(images) -> features) for the naive processor pipeline or its stand-in."""
    try:  # the hub's processor config is gated; its defaults are the class defaults (resize, 1/255, ImageNet)
        from transformers import AutoImageProcessor, DINOv3ViTImageProcessor

        try:
            proc = AutoImageProcessor.from_pretrained(bb.variant.hub_id, local_files_only=True)
        except OSError:
            proc = DINOv3ViTImageProcessor()
        label = f"{type(proc).__name__} + model"
    except Exception as e:  # torchvision missing
        msg = " ".join(str(e).split())[:90]
        proc, label = None, f"stand-in: transformers.image_transforms + model (processor unavailable: {msg})"
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    model, n_prefix = bb.model, 1 + int(getattr(bb.model.config, "num_register_tokens", 0))
    mean, std = bb._mean, bb._std

    def run(images: list[np.ndarray]) -> np.ndarray:
        if proc is not None:
            x = proc(images=images, return_tensors="pt", size={"height": side, "width": side})["pixel_values"]
        else:
            arrs = [normalize(rescale(resize(im, (side, side), resample=PILImageResampling.BILINEAR,
                                             input_data_format=ChannelDimension.LAST), 1 / 255,
                                      input_data_format=ChannelDimension.LAST), mean, std,
                              input_data_format=ChannelDimension.LAST) for im in images]
            x = torch.from_numpy(np.stack(arrs).astype(np.float32)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            out = model(pixel_values=x.to(bb._device, bb._torch_dtype), output_hidden_states=bb.variant.arch != "vit")
            if bb.variant.arch == "vit":
                t = out.last_hidden_state[:, n_prefix:]
                return t.reshape(t.shape[0], side // 16, side // 16, -1).float().cpu().numpy()
            return out.hidden_states[3].permute(0, 2, 3, 1).float().cpu().numpy()

    return label, run


def bench(model_id: str, side: int, n: int, repeats: int, device: str, dtype: str) -> dict:
    bb = DINOv3Backbone(model_id, weights="random(seed=0)", device=device, dtype=dtype, batch_size=n)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]
    bb.extract_batch(images[:1])  # moves the model to its device/dtype; warm-up
    mean = torch.tensor(bb._mean).view(1, 3, 1, 1)
    std = torch.tensor(bb._std).view(1, 3, 1, 1)
    x = ((torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std)
    x = x.to(bb._device, bb._torch_dtype)
    model = bb.model

    def bare(_):
        with torch.inference_mode():
            out = model(pixel_values=x)
            if bb._device == "cuda":
                torch.cuda.synchronize()
            return out

    def ours(ims):
        return bb.extract_batch(ims)

    label, naive = _naive_pipeline(model_id, bb, side)
    fns = {"bare": bare, "ours": ours, "naive": naive}
    for f in fns.values():  # warm-up
        f(images)
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(repeats):
        for k in order[r % 3:] + order[: r % 3]:  # rotate who goes first, too
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k](images)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)  # CPU seconds of this process: less hit by other jobs
    # Our own work outside the forward (scaling, channels, padding, stacking), timed alone: less noisy than the
    # difference of two noisy wall-clock medians.
    prep = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.stack([bb._prepare(im) for im in images])
        prep.append(time.perf_counter() - t0)
    ours_f = np.stack([fm.features for fm in bb.extract_batch(images)])
    diff = float(np.abs(ours_f - naive(images)).max())  # same resize-free input: features must agree
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  {model_id} {side}²: per-repeat seconds " + "; ".join(
        f"{k} {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()), file=sys.stderr)
    mp = n * side * side / 1e6
    return {"model": model_id, "side": side, "n": n, "naive_label": label, "max_abs_diff_ours_vs_naive": diff,
            **{f"{k}_img_s": n / med[k] for k in med}, **{f"{k}_mp_s": mp / med[k] for k in med},
            "ours_vs_bare": med["bare"] / med["ours"], "ours_vs_naive": med["naive"] / med["ours"],
            "cpu_ours_vs_bare": statistics.median(cpu["bare"]) / statistics.median(cpu["ours"]),
            "cpu_ours_vs_naive": statistics.median(cpu["naive"]) / statistics.median(cpu["ours"]),
            "min_ours_vs_bare": min(times["bare"]) / min(times["ours"]),
            "prep_ms": 1e3 * statistics.median(prep), "prep_share": min(prep) / min(times["bare"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9, help="a multiple of 3 balances the rotation")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    args = ap.parse_args()
    rows = [bench(m, s, SIZES.get(s, 2), args.repeats, args.device, args.dtype)
            for m in args.models for s in args.sizes]
    print(f"Machine: {machine()}; device {args.device}, dtype {args.dtype}, {args.repeats} interleaved repeats "
          "(medians)\n")
    print("| model | size | batch | bare img/s | ours img/s | naive img/s | ours MP/s | ours / bare (wall) | "
          "ours / bare (CPU time) | ours / bare (best wall) | ours / naive (wall) | ours / naive (CPU) | "
          "our preprocessing (ms, share of best bare forward) | max abs diff ours vs naive |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} (random) | {r['side']}² | {r['n']} | {r['bare_img_s']:.2f} | {r['ours_img_s']:.2f} | "
              f"{r['naive_img_s']:.2f} | {r['ours_mp_s']:.3f} | {r['ours_vs_bare']:.3f} | "
              f"{r['cpu_ours_vs_bare']:.3f} | "
              f"{r['min_ours_vs_bare']:.3f} | {r['ours_vs_naive']:.3f} | {r['cpu_ours_vs_naive']:.3f} | "
              f"{r['prep_ms']:.1f} ({100 * r['prep_share']:.1f} %) | {r['max_abs_diff_ours_vs_naive']:.1e} |")
    print(f"\nnaive pipeline: {rows[0]['naive_label']}")


if __name__ == "__main__":
    main()
