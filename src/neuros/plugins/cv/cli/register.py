"""``neuros-cv register A B``: the translation between two images, in pixels, with a confidence score."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FINE = ("structure", "intensity")


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """Read one image file through :func:`~neuros.plugins.cv.datasets.io.read_array` (TIFF, PNG/JPEG, NIfTI,
    HDF5, zarr, ``.npy``); a missing file is a one-line error naming ``what``."""
    from ..datasets.io import read_array

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist or is not a file")
    return read_array(p)


def add_registration_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``register`` and ``align``."""
    p.add_argument(
        "--backbone",
        default=None,
        help="features for the coarse step: a registered backbone (filterbank, vit-small, …; see "
        "`neuros-cv backbones`); default: built-in contrast-invariant structure channels",
    )
    p.add_argument("--weights", default=None, help="backbone weights: placeholder, random, pretrained, auto")
    p.add_argument("--max-shift", type=float, default=None, help="largest |dy|, |dx| in pixels to consider")
    p.add_argument(
        "--min-overlap", type=float, default=0.25, help="smallest overlapping fraction of the image (default 0.25)"
    )
    p.add_argument(
        "--fine",
        choices=FINE,
        default="structure",
        help="full-resolution channels: structure (contrast-invariant, default) or intensity (same contrast)",
    )


def registration_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of register_translation/align_stack from the shared options."""
    if args.weights is not None and args.backbone is None:
        raise ValueError("--weights needs --backbone (e.g. --backbone vit-small --weights random)")
    return {
        "backbone": args.backbone,
        "weights": args.weights,
        "max_shift": args.max_shift,
        "min_overlap": args.min_overlap,
        "fine": args.fine,
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="translation between two images (dy dx score)",
        description="Estimate the translation (dy, dx) in pixels such that B ≈ np.roll(A, (dy, dx), axis=(0, 1)), "
        "coarse to fine and to sub-pixel accuracy, and print `dy dx score` (score in [0, 1]; low means "
        "unreliable: flat, textureless or non-overlapping images). The backbone and weights used go to stderr, "
        "or into the --json record.",
        epilog="example: neuros-cv register section00.tif section01.tif --json",
    )
    p.add_argument("image_a", metavar="A", help="reference image (TIFF, PNG, JPEG or .npy)")
    p.add_argument("image_b", metavar="B", help="moving image, same height and width as A")
    add_registration_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON record instead of `dy dx score`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..registration import register_translation

    kw = registration_kwargs(args)
    a = read_image(args.image_a, "A")
    b = read_image(args.image_b, "B")
    t = register_translation(a, b, **kw)
    if args.json:
        rec = {"a": str(args.image_a), "b": str(args.image_b), **t.as_dict()}
        print(json.dumps(rec))
    else:
        print(f"{t.dy:.4f} {t.dx:.4f} {t.score:.4f}")
        print(f"neuros-cv register: backbone={t.backbone} weights={t.weights} method={t.method}", file=sys.stderr)
    return 0
