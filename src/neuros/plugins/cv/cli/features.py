"""``neuros-cv features IMAGE... --backbone ID --out DIR``: dense features of images, saved with metadata.

Writes one ``<stem>.npz`` (``features`` (h, w, C) float32, ``stride``, ``image_shape``) or ``<stem>.npy``
per input and a ``features.json`` naming the backbone, the weights actually used and the preprocessing — all
into ``--out`` at once (nothing half-written on error).

3-D inputs follow the rule of every command (``datasets.io.image_slices``): an (H, W, 3|4) array is one colour
image, any other 3-D stack is cut into 2-D slices along ``--axis`` (default 0). A stack gives one file whose
``features`` is (n_slices, h, w, C), slice k being the k-th index along ``--axis``; its ``.npz`` also holds
``slice_axis`` and ``input_shape``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from .._validation import as_image
from ..backbones.base import lookup
from ..backbones.spec import BackboneSpec, non_default_options, option_defaults
from ..datasets.io import expand_paths, image_slices, is_single_image, read_array
from ..output import atomic_output_dir, check_output_dir, dumps_json
from ._batch import Batch, add_skip_errors
from ._progress import note_placeholder, progress_callback, stderr_console
from .register import add_download, download_kwargs

SCHEMA = "neuros-cv/features/1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="extract dense backbone features of images into .npz/.npy files",
        description=(
            "Extract dense patch features of each IMAGE (TIFF, PNG/JPEG, NIfTI, HDF5/zarr or .npy; 2-D, "
            "channel-last, or a 3-D stack cut into slices along --axis) with a backbone and write them into --out "
            "with a features.json naming the weights actually used. A stack gives one file with features of shape "
            "(n_slices, h, w, C). "
            "Example: neuros-cv features em/*.tif --backbone vit-small --weights auto --out feats/"
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--key", help="dataset inside HDF5/zarr inputs")
    p.add_argument("--axis", type=int,
                   help="cut 3-D inputs into slices along this axis (default: RGB when the last axis is 3 or 4, "
                   "else 0)")
    p.add_argument("--backbone", default="vit-small",
                   help="registered id, hub id, local folder or spec such as 'vit-small@random(seed=3)[scale=2]' "
                   "(default vit-small)")
    p.add_argument("--weights",
                   help="auto (default), placeholder, random, random(seed=N), pretrained or pretrained:<path>")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("npz", "npy"), default="npz", help="one .npz (default) or .npy per image")
    p.add_argument("--layers", type=int, nargs="+", help="ViT blocks to return (e.g. -4 -1); default the last")
    p.add_argument("--layer-reduce", choices=("concat", "mean"), default="concat", help="combine --layers")
    p.add_argument("--stage", type=int, default=2, help="ConvNeXt stage 0-3 (default 2, stride 16)")
    p.add_argument("--scale", type=float, default=1.0, help="resize images by this factor first (2 = finer)")
    p.add_argument("--tile", type=int, help="tile images larger than this many pixels (multiple of 16)")
    p.add_argument("--overlap", type=int, default=64, help="context pixels per tile side (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="images or tiles per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    p.add_argument("--l2", action="store_true", help="L2-normalise every feature vector")
    p.add_argument("--no-norm", action="store_true", help="skip the model's final LayerNorm")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_skip_errors(p)
    add_download(p)
    p.set_defaults(func=run)


def _spec(args: argparse.Namespace) -> tuple[BackboneSpec, dict[str, Any]]:
    """The backbone spec (``--backbone`` name or spec string, ``--weights`` and the flags that change the
    features) and the execution options (tiling, batch size, device, dtype, download) to build it with."""
    spec = BackboneSpec.parse(args.backbone)
    if spec.parts:  # fused: --weights fills the parts that name none; execution options go to the parts that take them
        download_kwargs(args, spec.name)  # --download: one-line error (it is for one DINOv3 backbone)
        flags = {"layers": args.layers, "layer_reduce": args.layer_reduce, "stage": args.stage, "scale": args.scale,
                 "l2": args.l2, "norm": not args.no_norm}
        spec.with_options(**non_default_options({k: v for k, v in flags.items() if v is not None},
                                                option_defaults("vit-small")))  # a DINOv3 flag: one-line error
        extras = dict(tile=args.tile, batch_size=args.batch_size, device=args.device, dtype=args.dtype)
        return spec.with_weights(args.weights or "auto"), extras
    if lookup(spec.name).family != "dinov3":
        download_kwargs(args, spec.name)  # --download with a non-DINOv3 backbone: one-line error
        return spec, {}
    if args.weights and spec.weights is not None and args.weights != spec.weights:
        raise ValueError(f"--backbone {args.backbone} names weights {spec.weights!r} but --weights is "
                         f"{args.weights!r}; give the weights once")
    flags = {"layers": args.layers, "layer_reduce": args.layer_reduce, "stage": args.stage, "scale": args.scale,
             "l2": args.l2, "norm": not args.no_norm}
    given = non_default_options({k: v for k, v in flags.items() if v is not None}, option_defaults(spec.name))
    spec = spec.with_weights(args.weights or spec.weights or "auto").with_options(**given)
    extras = dict(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
                  dtype=args.dtype, **download_kwargs(args, spec.name))
    return spec, extras


def _stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.name.split(".")[0] or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n}")
    return out


def _read(path: Path, args: argparse.Namespace) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """The input's shape and its 2-D slices, each checked (NaN/inf, size) before any model loads."""
    array = read_array(path, key=args.key)
    slices = image_slices(array, axis=args.axis)
    for k, sl in enumerate(slices):
        as_image(sl, "image" if len(slices) == 1 else f"slice {k}")
    return tuple(array.shape), slices


def _tiles(backbone: Any, shape: tuple[int, ...]) -> int:
    n_tiles = getattr(backbone, "n_tiles", None)
    return int(n_tiles(shape)) if n_tiles is not None else 1


def _extract(backbone: Any, slices: list[np.ndarray], counts: list[int], batch_size: int,
             tick: Any, label: str) -> list[Any]:
    """Features of the slices, batched; the progress advances per tile (tiled images) or per image."""
    done = [0]

    def on_tiles(n: int) -> None:
        done[0] += n
        tick(escape(f"{label} (tiles)"), n)

    if hasattr(backbone, "progress"):
        backbone.progress = on_tiles
    try:
        maps: list[Any] = []
        for i in range(0, len(slices), batch_size):
            maps += backbone.extract_batch(slices[i : i + batch_size])
            whole = sum(c for c in counts[i : i + batch_size] if c == 1)
            done[0] += whole
            tick(escape(label), whole)
        return maps
    except BaseException:
        tick(escape(f"skipped {label}"), sum(counts) - done[0])  # keep the total honest
        raise
    finally:
        if hasattr(backbone, "progress"):
            backbone.progress = None


def _record(path: Path, file: str, shape: tuple[int, ...], maps: list[Any], axis: int | None) -> dict[str, Any]:
    fm = maps[0]
    rec = {"image": str(path), "file": file, "image_shape": list(fm.image_shape), "grid_shape": list(fm.grid_shape),
           "feature_dim": fm.feature_dim, "stride": fm.stride, "weights": fm.weights,
           "spec": None if fm.spec is None else str(fm.spec), "meta": fm.meta}
    if not is_single_image(shape, axis):
        rec.update(input_shape=list(shape), slice_axis=0 if axis is None else int(axis) % 3, n_slices=len(maps))
    return rec


def _save(tmp: Path, stem: str, fmt: str, maps: list[Any], rec: dict[str, Any]) -> None:
    stack = "n_slices" in rec
    feats = np.stack([fm.features for fm in maps]) if stack else maps[0].features
    if fmt == "npy":
        np.save(tmp / f"{stem}.npy", feats)
        return
    extra = {"slice_axis": np.int64(rec["slice_axis"]), "input_shape": np.asarray(rec["input_shape"])} if stack else {}
    np.savez(tmp / f"{stem}.npz", features=feats, stride=np.float32(maps[0].stride),
             image_shape=np.asarray(maps[0].image_shape), **extra)


def run(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, args.overwrite, args.images)  # fail before computing anything
    paths = expand_paths(args.images)
    batch = Batch(args.skip_errors)
    inputs = []
    for path, stem in zip(paths, _stems(paths), strict=True):  # read everything before the model loads
        ok, res = batch.run(path, _read, path, args)
        if ok and res is not None:
            inputs.append((path, stem, *res))
    batch.check_some_left(len(inputs), "features")
    spec, extras = _spec(args)
    backbone = spec.build(**extras)
    info = backbone.describe()
    stderr_console.print(escape(f"backbone {backbone.name}: weights = {backbone.weights} (spec {backbone.spec})"),
                         soft_wrap=True)
    note_placeholder(backbone.name, backbone.weights)
    counts = [[_tiles(backbone, sl.shape) for sl in slices] for _, _, _, slices in inputs]
    records, arrays = [], []
    with progress_callback(sum(map(sum, counts)), escape(f"features[{backbone.name}]")) as tick:
        for (path, stem, shape, slices), cnt in zip(inputs, counts, strict=True):
            ok, maps = batch.run(path, _extract, backbone, slices, cnt, args.batch_size, tick, path.name)
            if ok and maps:
                rec = _record(path, f"{stem}.{args.format}", shape, maps, args.axis)
                records.append(rec)
                arrays.append((stem, maps, rec))
    batch.check_some_left(len(records), "features")
    with atomic_output_dir(out, overwrite=args.overwrite, inputs=args.images, command="features") as tmp:
        for stem, maps, rec in arrays:
            _save(tmp, stem, args.format, maps, rec)
        doc = {"schema": SCHEMA, "backbone": info, "weights": backbone.weights,
               "backbone_spec": backbone.spec.to_dict(), "images": records,
               "skipped": [{"file": f, "reason": r} for f, r in batch.skipped]}
        (tmp / "features.json").write_text(dumps_json(doc), encoding="utf-8")
    status = batch.finish("features")
    n_maps = sum(len(m) for _, m, _ in arrays)
    print(f"wrote features of {len(records)} input(s) ({n_maps} image(s)) to {out} (weights: {backbone.weights})")
    return status
