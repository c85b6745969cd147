"""``neuros-cv align STACK``: align a serial-section stack by translations → aligned stack + transforms CSV.

The aligned stack has the input's shape and axis order. A NIfTI stack gives a NIfTI output carrying the input's
affine and header (``--out`` must then end in .nii/.nii.gz); anything else gives a TIFF.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..output import check_output_file, disk_full_error, honour_umask, is_disk_full
from .register import (
    MODELS,
    add_download,
    add_registration_options,
    check_nifti_out,
    read_image,
    registration_kwargs,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


def read_stack(path: str | Path) -> np.ndarray:
    """A stack from a multi-page TIFF / 3-D ``.npy``, or from a folder of 2-D images sorted by name."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        sections = [read_image(f, "section") for f in files]
        shapes = {s.shape for s in sections}
        if len(shapes) != 1:
            raise ValueError(f"sections in {p} differ in shape: {sorted(shapes)}")
        return np.stack(sections)
    return read_image(p, "stack")


def _temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def _writing(out: Path, temporaries: list[Path]) -> Iterator[None]:
    """Writing ``out`` through ``temporaries``: a full disk is the one-line error, and the temporaries are
    removed whatever happens (they were renamed into place on success)."""
    try:
        yield
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(out) from None
        raise
    finally:
        for t in temporaries:
            t.unlink(missing_ok=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "align",
        help="align a serial-section stack (TIFF) by translations",
        description="Register every section of a stack to its neighbour (or to a running reference), accumulate "
        "the translations, and write the aligned stack as a TIFF and the transforms as CSV (one row per "
        "section: dy, dx of the section relative to section 0 — the aligned section is the input moved by "
        "-dy, -dx — the pairwise registration, its score, and the backbone and weights used). Both files "
        "appear together when everything succeeded, or not at all. A NIfTI stack (cut along --axis, e.g. 2 "
        "for axial MRI slices) is written back as NIfTI with its affine and header, in its own axis order.",
        epilog="example: neuros-cv align stack.tif --out aligned.tif --transforms transforms.csv",
    )
    p.add_argument("stack", metavar="STACK",
                   help="multi-page TIFF, NIfTI, HDF5/zarr, 3-D .npy, or a folder of 2-D images")
    p.add_argument("--out", required=True, help="aligned stack: .tif, or .nii/.nii.gz (required for NIfTI input)")
    p.add_argument("--axis", type=int, default=0,
                   help="the section axis of a 3-D stack (default 0; the slice axis of a NIfTI, e.g. 2)")
    p.add_argument("--transforms", required=True,
                   help="transforms: a CSV for the translation model; with --model a folder of one ITK/ANTs "
                   "transform file per section (section 0's grid → section i) plus transforms.csv")
    p.add_argument("--model", choices=(*MODELS, "elastic"), default="translation",
                   help="translation (default), rigid, similarity, affine, or deformable (= elastic): transforms "
                   "found by registering each section to its next --neighbours sections and solving for all "
                   "sections at once (least squares: no drift build-up); deformable adds one diffeomorphic warp "
                   "per section towards its aligned neighbours")
    p.add_argument("--neighbours", type=int, default=2,
                   help="with --model: sections each section is registered to (default 2; 1 = plain chaining)")
    add_registration_options(p)
    add_download(p)
    p.add_argument(
        "--reference",
        choices=("previous", "running"),
        default="previous",
        help="register to the previous section (default) or to a running average of aligned sections",
    )
    p.add_argument("--order", type=int, default=1, choices=(0, 1, 3), help="interpolation order (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def _write_aligned(tmp_out: Path, out: Path, aligned: np.ndarray, source: str, meta: dict) -> None:
    from ..datasets.io import file_format_or_none, write_image

    like = source if file_format_or_none(Path(source)) == "nifti" else None
    if file_format_or_none(out) == "nifti":
        write_image(tmp_out, aligned, like=like, description="neuros-cv align")
        return
    import tifffile

    photometric = "rgb" if aligned.ndim == 4 and aligned.shape[-1] in (3, 4) else "minisblack"
    tifffile.imwrite(tmp_out, aligned, photometric=photometric, description=json.dumps(meta), metadata=None)


def run(args: argparse.Namespace) -> int:
    from ..registration import align_stack
    from ._progress import note_placeholder, progress_callback

    if args.model != "translation":
        return run_model(args)

    out, tr = Path(args.out).expanduser(), Path(args.transforms).expanduser()
    if out.resolve() == tr.resolve():
        raise ValueError("--out and --transforms must be different files")
    out = check_output_file(out, args.overwrite, [args.stack])
    tr = check_output_file(tr, args.overwrite, [args.stack])
    check_nifti_out(out, args.stack)
    kw = registration_kwargs(args)
    vol = read_stack(args.stack)
    if vol.ndim not in (3, 4):
        raise ValueError(f"STACK {args.stack} has shape {vol.shape}; expected (sections, H, W[, C])")
    if not -vol.ndim <= args.axis < min(vol.ndim, 3):
        raise ValueError(f"--axis {args.axis} is out of range for STACK {args.stack} of shape {vol.shape}")
    sections = np.moveaxis(vol, args.axis, 0)
    if sections.shape[0] < 2:
        raise ValueError(f"STACK {args.stack} has {sections.shape[0]} section along axis {args.axis}; a stack needs "
                         "at least two to align")
    with progress_callback(sections.shape[0], "align") as advance:
        aligned, transforms = align_stack(
            sections, reference=args.reference, order=args.order, progress=advance, **kw
        )
    aligned = np.moveaxis(aligned, 0, args.axis)  # the input's axis order
    note_placeholder(str(transforms.backbone), transforms.weights)
    meta = {
        "neuros_cv": "align",
        "source": str(args.stack),
        "axis": args.axis,
        "backbone": transforms.backbone,
        "weights": transforms.weights,
        "reference": transforms.reference,
        "shifts": transforms.shifts.tolist(),
    }
    suffix = ".nii.gz" if out.name.lower().endswith(".nii.gz") else out.suffix
    tmp_out, tmp_tr = _temp_beside(out, suffix), _temp_beside(tr)
    with _writing(out, [tmp_out, tmp_tr]):
        _write_aligned(tmp_out, out, aligned, str(args.stack), meta)
        rows = transforms.rows()
        with open(tmp_tr, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        for t in (tmp_out, tmp_tr):
            honour_umask(t)
        os.replace(tmp_out, out)
        os.replace(tmp_tr, tr)
    print(f"aligned {sections.shape[0]} sections → {out}; transforms → {tr} (backbone={transforms.backbone}, "
          f"weights={transforms.weights})")
    return 0


def _sections(args: argparse.Namespace) -> np.ndarray:
    vol = read_stack(args.stack)
    if vol.ndim != 3:
        raise ValueError(f"STACK {args.stack} has shape {vol.shape}; --model aligns greyscale (sections, H, W) stacks")
    if not -vol.ndim <= args.axis < 3:
        raise ValueError(f"--axis {args.axis} is out of range for STACK {args.stack} of shape {vol.shape}")
    sections = np.moveaxis(vol, args.axis, 0)
    if sections.shape[0] < 2:
        raise ValueError(f"STACK {args.stack} has {sections.shape[0]} section along axis {args.axis}; a stack needs "
                         "at least two to align")
    return sections


def run_model(args: argparse.Namespace) -> int:
    """``align --model``: rigid/similarity/affine/deformable alignment, one transform file per section."""
    from ..output import atomic_output_dir, check_output_dir
    from ..registration_models import align_stack_models
    from ..transforms import CompositeTransform, save_transform
    from ._progress import progress_callback

    model = "deformable" if args.model == "elastic" else args.model
    if args.backbone is not None or args.weights is not None or args.max_shift is not None:
        raise ValueError("--backbone, --weights and --max-shift apply to the translation model")
    if args.reference != "previous":
        raise ValueError("--reference applies to the translation model; --model uses --neighbours")
    if args.neighbours < 1:
        raise ValueError(f"--neighbours must be at least 1, got {args.neighbours}")
    out = check_output_file(Path(args.out).expanduser(), args.overwrite, [args.stack])
    check_nifti_out(out, args.stack)
    check_output_dir(Path(args.transforms).expanduser(), args.overwrite, [args.stack])
    sections = _sections(args)
    n = sections.shape[0]
    n_pairs = sum(min(args.neighbours, n - 1 - i) for i in range(n - 1))
    with progress_callback(n_pairs, f"align --model {model}") as advance:
        aligned, reg = align_stack_models(sections, model, neighbours=args.neighbours, order=args.order,
                                          progress=advance, min_overlap=args.min_overlap)
    shape = sections.shape[1:]
    meta = {"neuros_cv": "align", "source": str(args.stack), "axis": args.axis, "model": model,
            "neighbours": args.neighbours, "transforms": str(args.transforms)}
    suffix = ".nii.gz" if out.name.lower().endswith(".nii.gz") else out.suffix
    tmp_out = _temp_beside(out, suffix)
    rows = []
    # the stack first (to a temporary file), then the transforms folder, then the stack in place: both or none
    with _writing(out, [tmp_out]):
        _write_aligned(tmp_out, out, np.moveaxis(aligned, 0, args.axis), str(args.stack), meta)
        honour_umask(tmp_out)
        with atomic_output_dir(Path(args.transforms).expanduser(), overwrite=args.overwrite, inputs=[args.stack],
                               command="align") as tmp:
            for i, t in enumerate(reg.transforms):
                name = f"section_{i:04d}" + (".nii.gz" if isinstance(t, CompositeTransform) else ".tfm")
                save_transform(t.to_field(shape) if isinstance(t, CompositeTransform) else t, tmp / name)
                pair = [r for a, b, r in reg.pairs if b == i and a == i - 1]
                rows.append({"section": i, "file": name, "model": model,
                             "score_with_previous": f"{pair[0].score:.4f}" if pair else "",
                             "reliable_with_previous": pair[0].reliable if pair else ""})
            with open(tmp / "transforms.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp_out, out)
    unreliable = [i for i, r in enumerate(rows) if r["reliable_with_previous"] is False]
    print(f"aligned {n} sections ({model}) → {out}; transforms → {args.transforms}/ (section 0's grid → section i)")
    if unreliable:
        import sys

        print(f"neuros-cv align: warning: sections {unreliable} registered unreliably to their previous section; "
              "check them in the aligned stack", file=sys.stderr)
    return 0
