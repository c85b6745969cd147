"""``neuros-cv warp``: apply saved transforms to images or label maps — the moving image's masks into the fixed
image's space.

Transforms are files that map fixed points to moving points: ITK linear transforms (``.tfm``, ``.txt``,
``.mat`` — ANTs' ``0GenericAffine.mat``) and displacement fields (``.nii.gz`` — ANTs' ``1Warp.nii.gz``), from
``neuros-cv register --model``/``align --model`` or from ANTs. Several ``--transform`` files chain in the order
given, the first applied first to a fixed point (the order of ANTs' ``fwdtransforms``). NIfTI files are placed
by their headers (scanner space); other images are plain arrays. The output lies on ``--fixed``'s grid, and is
NIfTI with its header when ``--fixed`` is NIfTI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warp",
        help="apply saved transforms to images or label maps",
        description="Resample each INPUT (a moving image or label map) onto the grid of --fixed through the "
        "--transform files (ITK .tfm/.txt/.mat, ANTs warps .nii.gz; chained in the order given, the first "
        "applied first to a fixed point). Label maps (integer images) use nearest neighbour so no new labels "
        "appear; images use linear interpolation unless --order says otherwise.",
        epilog="example: neuros-cv warp moving_labels.nii.gz --transform 0GenericAffine.mat --fixed t1.nii.gz "
        "--out labels_in_t1.nii.gz",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="moving images or label maps (TIFF, PNG, NIfTI, .npy)")
    p.add_argument("--transform", action="append", required=True, metavar="FILE",
                   help="transform file (repeat to chain; the first is applied first to fixed points)")
    p.add_argument("--fixed", required=True, metavar="REF", help="image whose grid (and NIfTI header) to warp onto")
    p.add_argument("--out", required=True, help="output file (one INPUT) or folder (several)")
    p.add_argument("--order", type=int, choices=(0, 1, 3), default=None,
                   help="interpolation: 0 nearest, 1 linear, 3 cubic (default: 0 for integer label maps, 1 otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (files this tool wrote)")
    p.set_defaults(func=run)


def _geometry(path: Path, ndim: int):
    from ..datasets.io import file_format_or_none
    from ..transforms import index_geometry, nifti_geometry

    return nifti_geometry(path) if file_format_or_none(path) == "nifti" and ndim == 3 else index_geometry(ndim)


def _chain(files: list[str], fixed_geo, moving_geo, shape: tuple[int, ...]):
    """The index-space transform of fixed → moving: each file between the fixed space and the next."""
    from ..transforms import CompositeTransform, load_transform

    parts = []
    for i, f in enumerate(files):
        moving = moving_geo if i == len(files) - 1 else fixed_geo  # intermediate points stay in fixed space
        parts.append(load_transform(f, fixed=fixed_geo, moving=moving, shape=shape))
    dims = {t.ndim for t in parts}
    if dims != {len(shape)}:
        raise ValueError(f"--transform files are {sorted(dims)}-D but --fixed is {len(shape)}-D")
    return parts[0] if len(parts) == 1 else CompositeTransform(parts)


def run(args: argparse.Namespace) -> int:
    from ..datasets.io import file_format, file_format_or_none, write_image
    from ..output import atomic_output_dir, check_output_file
    from .register import check_nifti_out, read_image

    inputs = [Path(p) for p in args.inputs]
    out = Path(args.out)
    every = [*args.inputs, args.fixed, *args.transform]
    for t in args.transform:
        if not Path(t).is_file():
            raise FileNotFoundError(f"--transform {t} does not exist or is not a file")
    single = len(inputs) == 1
    if single:  # fail before any work
        target = check_output_file(out, args.overwrite, every)
        check_nifti_out(target, args.fixed)
        if file_format(target) not in ("nifti", "tiff", "png", "npy"):
            raise ValueError(f"--out {target}: write the warped image as .nii.gz, .tif, .png or .npy")
    fixed = read_image(args.fixed, "--fixed")
    fixed_nifti = file_format_or_none(Path(args.fixed)) == "nifti"
    ndim = 3 if fixed_nifti and fixed.ndim >= 3 else 2
    shape = tuple(fixed.shape[:ndim])
    fixed_geo = _geometry(Path(args.fixed), ndim)
    desc = f"neuros-cv warp onto {Path(args.fixed).name}"
    like = args.fixed if fixed_nifti else None

    def warp(src: Path) -> tuple[np.ndarray, int]:
        moving = read_image(src, "INPUT")
        if moving.ndim < ndim:
            raise ValueError(f"{src} is {moving.ndim}-D but --fixed is {ndim}-D")
        transform = _chain(args.transform, fixed_geo, _geometry(src, ndim), shape)
        labels = np.issubdtype(moving.dtype, np.integer) or moving.dtype == bool
        order = args.order if args.order is not None else (0 if labels else 1)
        warped = transform.apply(moving, shape, order=order)
        if labels and order:  # keep a label map's dtype even when interpolated on request
            info = np.iinfo(np.uint8 if moving.dtype == bool else moving.dtype)
            warped = np.clip(np.round(warped), info.min, info.max).astype(moving.dtype)
        return warped, order

    jobs: list[tuple[Path, int]] = []
    if single:
        warped, order = warp(inputs[0])
        write_image(target, warped, like=like, description=desc)
        jobs.append((inputs[0], order))
        written = [target]
    else:
        ext = ".nii.gz" if fixed_nifti else ".tif"
        written = []
        with atomic_output_dir(out, overwrite=args.overwrite, inputs=every, command="warp") as tmp:
            for src in inputs:
                warped, order = warp(src)
                name = src.name.split(".")[0] + ext
                write_image(tmp / name, warped, like=like, description=desc)
                jobs.append((src, order))
                written.append(out / name)
    for (src, order), dst in zip(jobs, written, strict=True):
        kind = "nearest (labels)" if order == 0 else ("linear" if order == 1 else "cubic")
        print(f"neuros-cv warp: {src} → {dst} ({kind}, {len(args.transform)} transform(s))", file=sys.stderr)
    return 0
