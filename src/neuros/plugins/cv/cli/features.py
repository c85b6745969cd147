"""``neuros-cv features IMAGE... --backbone ID --out DIR``: dense features of images, saved with metadata.

Writes one ``<stem>.npz`` (``features`` (h, w, C) float32, ``stride``, ``image_shape``) or ``<stem>.npy``
per image and a ``features.json`` naming the backbone, the weights actually used and the preprocessing — all
into ``--out`` at once (nothing half-written on error).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from ..backbones.base import get_backbone, lookup
from ..report.output import atomic_output_dir, check_output_dir, dumps_json
from ._progress import progress_callback, stderr_console
from .register import read_image

SCHEMA = "neuros-cv/features/1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="extract dense backbone features of images into .npz/.npy files",
        description=(
            "Extract dense patch features of each IMAGE (TIFF, PNG/JPEG or .npy; 2-D or channel-last) with a "
            "backbone and write them into --out with a features.json naming the weights actually used. "
            "Example: neuros-cv features em/*.tif --backbone vit-small --weights auto --out feats/"
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--backbone", default="vit-small", help="registered id, hub id or local folder (default vit-small)")
    p.add_argument("--weights", default="auto",
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
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if lookup(args.backbone).family != "dinov3":
        return {}
    return dict(weights=args.weights, layers=args.layers, layer_reduce=args.layer_reduce, stage=args.stage,
                scale=args.scale, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                device=args.device, dtype=args.dtype, l2=args.l2, norm=not args.no_norm)


def _stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.name.split(".")[0] or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n}")
    return out


def run(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, args.overwrite)  # fail before computing anything
    paths = [Path(p) for p in args.images]
    images = [read_image(p) for p in paths]  # read everything first: a bad file fails before the model loads
    backbone = get_backbone(args.backbone, **_options(args))
    info = backbone.describe()
    stderr_console.print(escape(f"backbone {backbone.name}: weights = {backbone.weights}"), soft_wrap=True)
    records, arrays = [], []
    with progress_callback(len(images), escape(f"features[{backbone.name}]")) as tick:
        for path, stem, image in zip(paths, _stems(paths), images, strict=True):
            fm = backbone.extract(image)
            arrays.append((stem, fm))
            records.append({
                "image": str(path), "file": f"{stem}.{args.format}", "image_shape": list(fm.image_shape),
                "grid_shape": list(fm.grid_shape), "feature_dim": fm.feature_dim, "stride": fm.stride,
                "weights": fm.weights, "meta": fm.meta,
            })
            tick(escape(path.name))
    with atomic_output_dir(out, overwrite=args.overwrite) as tmp:
        for stem, fm in arrays:
            if args.format == "npz":
                np.savez(tmp / f"{stem}.npz", features=fm.features, stride=np.float32(fm.stride),
                         image_shape=np.asarray(fm.image_shape))
            else:
                np.save(tmp / f"{stem}.npy", fm.features)
        doc = {"schema": SCHEMA, "backbone": info, "weights": backbone.weights, "images": records}
        (tmp / "features.json").write_text(dumps_json(doc), encoding="utf-8")
    print(f"wrote features of {len(records)} image(s) to {out} (weights: {backbone.weights})")
    return 0
