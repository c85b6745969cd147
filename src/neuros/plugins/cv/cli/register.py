"""``neuros-cv register A B``: the translation between two images, in pixels, with a confidence score.

With ``--out FILE`` it also writes B moved onto A. A NIfTI A gives a NIfTI output with A's affine and header,
so the result overlays on A in FSLeyes / ITK-SNAP / 3D Slicer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FINE = ("structure", "intensity")
MODELS = ("translation", "rigid", "similarity", "affine", "deformable")


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """Read one image file through :func:`~neuros.plugins.cv.datasets.io.read_array` (TIFF, PNG/JPEG, NIfTI,
    HDF5, zarr, ``.npy``); a missing file is a one-line error naming ``what``."""
    from ..datasets.io import read_array

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist or is not a file")
    return read_array(p)


def add_download(p: argparse.ArgumentParser) -> None:
    """``--download``: let a DINOv3 backbone fetch missing pretrained weights from the Hugging Face Hub."""
    p.add_argument(
        "--download",
        action="store_true",
        help="DINOv3 backbones: download missing pretrained weights from the Hugging Face Hub (the repos are "
        "gated: accept the licence and run `hf auth login` first); default: never use the network",
    )


def download_kwargs(args: argparse.Namespace, backbone: str | None) -> dict:
    """``{"download": True}`` for a DINOv3 ``backbone`` when ``--download`` was given, else ``{}``."""
    if not getattr(args, "download", False):
        return {}
    from ..backbones.base import lookup

    if backbone is None or lookup(backbone).family != "dinov3":
        raise ValueError(f"--download applies to DINOv3 backbones, not {backbone or 'the default features'!r}")
    return {"download": True}


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
    """Keyword arguments of register_translation/align_stack from the shared options.

    With ``--download`` the DINOv3 backbone is built here (allowed to download its weights) and passed on.
    """
    if args.weights is not None and args.backbone is None:
        raise ValueError("--weights needs --backbone (e.g. --backbone vit-small --weights random)")
    backbone, weights = args.backbone, args.weights
    dl = download_kwargs(args, args.backbone)
    if dl:
        from ..backbones.base import get_backbone

        backbone = get_backbone(args.backbone, **({"weights": weights} if weights else {}), **dl)
        weights = None
    return {
        "backbone": backbone,
        "weights": weights,
        "max_shift": args.max_shift,
        "min_overlap": args.min_overlap,
        "fine": args.fine,
    }


def check_nifti_out(out: Path, source: str | Path, flag: str = "--out") -> None:
    """A NIfTI ``source`` must give a NIfTI ``out`` (a TIFF would lose its affine): one-line error otherwise."""
    from ..datasets.io import file_format, file_format_or_none

    if file_format_or_none(Path(source)) == "nifti" and file_format(out) != "nifti":
        raise ValueError(f"{source} is NIfTI: name {flag} .nii.gz (not {out.name}) so the output keeps its "
                         "affine and header")


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
    p.add_argument("image_a", metavar="A", help="reference (fixed) image: TIFF, PNG/JPEG, NIfTI, HDF5/zarr or .npy")
    p.add_argument("image_b", metavar="B", help="moving image (same shape as A for the translation model; any "
                   "shape with --model rigid/similarity/affine/deformable)")
    p.add_argument("--model", choices=MODELS, default="translation",
                   help="transform model (default translation: `dy dx score`); the others print a JSON record "
                   "with the transform, score, overlap, forward/backward consistency and `reliable`")
    p.add_argument("--transform-out", metavar="FILE",
                   help="with --model: save the transform, fixed → moving points, in ANTs'/ITK's convention "
                   "(.tfm/.txt/.mat for linear models; .nii.gz displacement field for deformable) — "
                   "`neuros-cv warp` and ANTs apply it to other images (NIfTI inputs: in scanner space)")
    add_registration_options(p)
    add_download(p)
    p.add_argument("--json", action="store_true", help="print one JSON record instead of `dy dx score`")
    p.add_argument("--out", help="also write B moved onto A to this file (.nii/.nii.gz keeps A's affine and "
                   "header when A is NIfTI; .tif, .png or .npy otherwise)")
    p.add_argument("--order", type=int, default=1, choices=(0, 1, 3),
                   help="interpolation order of --out (default 1; 0 for label images)")
    p.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    if args.model != "translation":
        return run_model(args)
    if args.transform_out:
        raise ValueError("--transform-out needs --model (rigid, similarity, affine or deformable)")

    from ..datasets.io import file_format_or_none, write_image
    from ..output import check_output_file
    from ..registration import register_translation, shift_image

    out = None
    if args.out:
        out = check_output_file(args.out, args.overwrite, [args.image_a, args.image_b])
        check_nifti_out(out, args.image_a)
        if file_format_or_none(out) not in ("nifti", "tiff", "png", "npy"):
            raise ValueError(f"--out {out}: write the moved image as .nii.gz, .tif, .png or .npy")
    a = read_image(args.image_a, "A")
    b = read_image(args.image_b, "B")
    kw = registration_kwargs(args)
    t = register_translation(a, b, **kw)
    from ._progress import note_placeholder

    note_placeholder(str(t.backbone), t.weights)
    if out is not None:
        moved = shift_image(b, (-t.dy, -t.dx), order=args.order)
        if np.issubdtype(b.dtype, np.integer):  # keep the input's dtype (labels stay labels)
            info = np.iinfo(b.dtype)
            moved = np.clip(np.round(moved), info.min, info.max).astype(b.dtype)
        nifti_a = file_format_or_none(Path(args.image_a)) == "nifti"
        desc = json.dumps({"neuros_cv": "register", "moved": str(args.image_b), "onto": str(args.image_a),
                           "dy": t.dy, "dx": t.dx})
        write_image(out, moved, like=args.image_a if nifti_a else None, description=desc[:79] if
                    file_format_or_none(out) == "nifti" else desc)
    if args.json:
        rec = {"a": str(args.image_a), "b": str(args.image_b), **t.as_dict()}
        print(json.dumps(rec))
    else:
        print(f"{t.dy:.4f} {t.dx:.4f} {t.score:.4f}")
        print(f"neuros-cv register: backbone={t.backbone} weights={t.weights} method={t.method}", file=sys.stderr)
    if out is not None:
        print(f"neuros-cv register: B moved onto A written to {out}", file=sys.stderr)
    return 0


def _nifti_3d(path: str | Path, image: np.ndarray) -> bool:
    from ..datasets.io import file_format_or_none

    return file_format_or_none(Path(path)) == "nifti" and image.ndim == 3


def run_model(args: argparse.Namespace) -> int:
    """``register --model``: a transform model through :func:`~..registration_models.register`."""
    import sys

    from ..datasets.io import file_format, file_format_or_none, write_image
    from ..output import check_output_file
    from ..registration_models import register
    from ..transforms import CompositeTransform, DisplacementField, nifti_geometry, save_transform

    if args.backbone is not None or args.weights is not None or args.fine != "structure":
        raise ValueError("--backbone, --weights and --fine apply to the translation model; the transform models "
                         "use the contrast-invariant structure channels")
    inputs = [args.image_a, args.image_b]
    out = tf_out = None
    if args.out:
        out = check_output_file(args.out, args.overwrite, inputs)
        check_nifti_out(out, args.image_a)
        if file_format_or_none(out) not in ("nifti", "tiff", "png", "npy"):
            raise ValueError(f"--out {out}: write the moved image as .nii.gz, .tif, .png or .npy")
    if args.transform_out:
        tf_out = check_output_file(args.transform_out, args.overwrite, inputs)
        nifti = tf_out.name.lower().endswith((".nii", ".nii.gz"))
        if args.model == "deformable" and not nifti:
            raise ValueError(f"--transform-out {tf_out.name}: a deformable transform is a displacement field; "
                             "name it .nii.gz")
        if args.model != "deformable" and (nifti or tf_out.suffix.lower() not in (".tfm", ".txt", ".mat")):
            raise ValueError(f"--transform-out {tf_out.name}: save a linear transform as .tfm, .txt or .mat")
    a = read_image(args.image_a, "A")
    b = read_image(args.image_b, "B")
    if args.max_shift is not None:
        raise ValueError("--max-shift applies to the translation model; the transform models search globally")
    res = register(a, b, model=args.model, min_overlap=args.min_overlap)
    rec = {"a": str(args.image_a), "b": str(args.image_b), **res.as_dict()}
    if tf_out is not None:
        t = res.transform
        if isinstance(t, CompositeTransform):
            t = t.to_field(res.fixed_shape)
        geo_a = nifti_geometry(args.image_a) if _nifti_3d(args.image_a, a) else None
        geo_b = nifti_geometry(args.image_b) if _nifti_3d(args.image_b, b) else None
        save_transform(t, tf_out, fixed=geo_a, moving=geo_b)
        rec["transform_file"] = str(tf_out)
        rec["transform_kind"] = "displacement field" if isinstance(t, DisplacementField) else "linear"
    if out is not None:
        integer = np.issubdtype(b.dtype, np.integer) or b.dtype == bool
        moved = res.transform.apply(b, res.fixed_shape, order=0 if integer and args.order == 1 else args.order)
        if integer:
            info = np.iinfo(np.uint8 if b.dtype == bool else b.dtype)
            moved = np.clip(np.round(moved), info.min, info.max).astype(b.dtype)
        like = args.image_a if file_format_or_none(Path(args.image_a)) == "nifti" else None
        desc = f"neuros-cv register --model {args.model}: {Path(args.image_b).name} onto {Path(args.image_a).name}"
        write_image(out, moved, like=like, description=desc[:79] if file_format(out) == "nifti" else desc)
    print(json.dumps(rec))
    if not res.reliable:
        why = "; ".join(res.reasons) or "low score or overlap"
        print(f"neuros-cv register: warning: unreliable result ({why}); check the pair or the model", file=sys.stderr)
    if out is not None:
        print(f"neuros-cv register: B moved onto A's grid written to {out}", file=sys.stderr)
    return 0
