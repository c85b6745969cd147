"""``neuros-cv volume``: whole volumes on Dask — features, segment, align (zarr in, zarr out) and convert."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .register import add_registration_options, registration_kwargs
from .segment import add_instance_options, instance_index

SUBCOMMANDS = ("features", "segment", "align", "convert")


def _block(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--block takes Y,X or one number, got {text!r}")
    return parts[0], parts[1]


def _chunks(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--chunks takes three positive numbers Z,Y,X, got {text!r}")
    return parts[0], parts[1], parts[2]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _voxel_opts(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help=f"voxel size of the input (e.g. 50 4.6 4.6 for ssTEM); default: {default}")
    p.add_argument("--voxel-unit", default=None, metavar="UNIT",
                   help="unit of --voxel-size: nanometer (nm), micrometer (um), millimeter (mm), … "
                   "(default: the input's)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT.zarr", help="zarr array or OME-Zarr group holding a (z, y, x) volume")
    p.add_argument("--out", required=True, metavar="OUTPUT.zarr", help="output zarr group (resumed if it holds "
                   "an interrupted run with the same settings)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786); default: a LocalCluster on 127.0.0.1")
    p.add_argument("--workers", dest="n_workers", metavar="WORKERS", type=int, default=2,
                   help="LocalCluster worker processes (default 2)")
    p.add_argument("--timeout", type=_positive, default=10.0,
                   help="seconds to wait for --scheduler to answer, and for a lost scheduler or workers mid-run "
                   "before giving up (default 10)")
    p.add_argument("--block", type=_block, default=None, metavar="Y,X",
                   help="block size in pixels, multiples of the backbone's stride (16 for ViT/16, 1 for "
                        "'filterbank[stride=1]'; default: the input chunk rounded up to the stride)")
    p.add_argument("--component", default=None, help="array inside a zarr group (default: OME-Zarr level 0)")
    p.add_argument("--retries", type=int, default=2, help="extra attempts for a failing block (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT.zarr instead of resuming it")
    _voxel_opts(p, "the input's OME-Zarr metadata (a plain zarr array: 1 voxel, no unit)")


def _feature_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--halo", type=int, default=None,
                   help="context pixels around each block, a multiple of the backbone's stride (default: the "
                        "backbone's halo, its receptive field; `volume segment` adds one grid cell)")
    p.add_argument("--level", type=int, default=0, help="OME-Zarr resolution level to read (default 0)")
    p.add_argument("--scaling", choices=("auto", "dtype", "percentile"), default="auto",
                   help="global intensity scaling to [0, 1] (default auto: dtype for uint8, else percentiles)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "volume",
        help="whole volumes on Dask: blockwise features, segmentation, alignment; TIFF/NIfTI → zarr",
        description="Process a zarr / OME-Zarr volume block by block on dask.distributed (a LocalCluster on "
        "this machine, or --scheduler ADDRESS), writing results to OME-Zarr (axes, units and voxel sizes that "
        "napari, Fiji and ome-zarr read). Each block is marked done after its data is written: re-running the "
        "same command after an interruption computes only the missing blocks. A block that still fails after "
        "its retries is reported by its (z, iy, ix) index; a scheduler that cannot be reached, or is lost "
        "mid-run, is one error line within --timeout.",
        epilog="examples:\n  neuros-cv volume convert stack.tif --out em.zarr --levels 3 --voxel-size 50 4.6 4.6 "
        "--voxel-unit nm\n"
        "  neuros-cv volume features em.zarr --out feats.zarr --backbone filterbank\n"
        "  neuros-cv volume segment em.zarr --head myhead/ --out labels.zarr\n"
        "  neuros-cv volume align em.zarr --out aligned.zarr --scheduler tcp://10.0.0.5:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vs = p.add_subparsers(dest="volume_command", metavar="ACTION", required=True)
    f = vs.add_parser("features", help="dense patch features of every section → OME-Zarr image (c, z, y/16, x/16)")
    _common(f)
    _feature_opts(f)
    f.add_argument("--backbone", default="vit-small", help="registered backbone (default vit-small)")
    f.add_argument("--weights", default=None, help="backbone weights: placeholder, random, pretrained, auto")
    s = vs.add_parser("segment", help="apply a saved segmentation head blockwise → OME-Zarr label image (z, y, x)")
    _common(s)
    _feature_opts(s)
    s.add_argument("--head", required=True, help="folder of a saved head (its backbone and weights are used)")
    s.add_argument("--probabilities", action="store_true",
                   help="also write probabilities: OME-Zarr image probabilities/0 (K, z, y, x) float32")
    add_instance_options(s, "also write instances/0 (z, y, x): an OME-Zarr label image of the objects of class "
                         "value CLASS (uint32), labelled per block, then merged across block borders and numbered "
                         "1..n over the volume; --min-size applies to the merged objects")
    a = vs.add_parser("align",
                      help="align sections by translations (pairs in parallel, blockwise shift) → OME-Zarr image")
    _common(a)
    add_registration_options(a)
    a.add_argument("--register-level", type=int, default=0,
                   help="OME-Zarr level to register on, shifts scaled to full resolution (default 0)")
    a.add_argument("--order", type=int, choices=(0, 1), default=1, help="interpolation order (default 1)")
    c = vs.add_parser("convert", help="TIFF stack / folder of TIFFs / NIfTI → OME-Zarr")
    c.add_argument("input", metavar="INPUT", help="multi-page TIFF, folder of 2-D TIFFs, or .nii/.nii.gz")
    c.add_argument("--out", required=True, metavar="OUTPUT.zarr", help="OME-Zarr group to write")
    c.add_argument("--chunks", type=_chunks, default=(1, 512, 512), metavar="Z,Y,X", help="default 1,512,512")
    c.add_argument("--levels", type=int, default=1, help="resolution levels, each halving y and x (default 1)")
    c.add_argument("--overwrite", action="store_true", help="replace OUTPUT.zarr")
    _voxel_opts(c, "the NIfTI header's, or a TIFF's ImageJ/resolution tags; else 1 voxel, no unit")
    p.set_defaults(func=run)


def _raise_interrupt(signum, frame):  # SIGTERM (e.g. a batch system's time limit) → a clean shutdown
    raise KeyboardInterrupt


LEDGERS = {"features": "features", "segment": "labels", "align": "aligned"}


def _interrupted(cmd: str, out: str) -> str:
    """What an interrupted run leaves behind, truthfully: finished blocks in ``out``, or nothing."""
    from ..scale.resume import done_indices

    path = Path(out).expanduser()
    prefix = f"neuros-cv volume {cmd}: interrupted; "
    if not path.exists():
        return prefix + f"nothing was written ({path} was not created)"
    try:
        n = len(done_indices(path, LEDGERS[cmd]))
    except Exception:  # not (yet) an output of this command: say so, never claim blocks
        return prefix + f"no finished blocks were written to {path}"
    if n == 0:
        return prefix + f"no block had finished; {path} holds no results yet (re-run the same command to start)"
    return prefix + f"{n} finished block{'s' * (n != 1)} kept in {path} — re-run the same command to resume"


def run(args: argparse.Namespace) -> int:
    from ._progress import progress_callback

    cmd = args.volume_command
    if cmd == "convert":
        from ..scale.zarr_io import convert_to_zarr

        if args.levels < 1:
            raise ValueError(f"--levels must be >= 1, got {args.levels}")
        from ..scale.ome import read_geometry

        out = convert_to_zarr(args.input, args.out, chunks=args.chunks, levels=args.levels, overwrite=args.overwrite,
                              voxel_size=args.voxel_size, voxel_unit=args.voxel_unit,
                              inputs=[args.input])
        geo = read_geometry(out)
        note = "" if any(geo.units) else " (no physical size known: pass --voxel-size Z Y X --voxel-unit UNIT)"
        print(f"converted {args.input} → {out} (OME-Zarr; voxel size z × y × x = {geo.describe()}){note}")
        return 0

    from ..scale import dask_client, volume_align, volume_features, volume_segment
    from ..scale.cluster import probe_scheduler, quiet_distributed
    from ..scale.features import plan_blocks
    from ..scale.models import worker_backbone, worker_head
    from ..scale.ome import read_geometry
    from ..scale.resume import check_volume_output
    from ..scale.segment import head_backbone
    from ..scale.zarr_io import open_volume

    # Bad input, an --out that is an input or not ours, and an unreachable --scheduler fail here, before models
    # are built or a cluster starts.
    check_volume_output(args.out, [args.input, *([args.head] if cmd == "segment" else [])])
    arr = open_volume(args.input, getattr(args, "level", 0), args.component)
    read_geometry(args.input, getattr(args, "level", 0), args.component).with_voxel_size(args.voxel_size,
                                                                                           args.voxel_unit)
    if args.scheduler:
        probe_scheduler(args.scheduler, args.timeout)
    if cmd == "features":
        plan_blocks(arr, worker_backbone(args.backbone, args.weights), args.block, args.halo)
    elif cmd == "segment":
        hd = worker_head(args.head)
        instance_index(hd.classes_, args.instances, args=args)
        bb = worker_backbone(head_backbone(hd))
        plan_blocks(arr, bb, args.block, args.halo, extra=int(bb.stride) + hd.context_px)
    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with quiet_distributed(), dask_client(args.scheduler, n_workers=args.n_workers,
                                              timeout=args.timeout) as client:
            common = dict(block=args.block, component=args.component, retries=args.retries,
                          overwrite=args.overwrite, progress=progress_callback, timeout=args.timeout,
                          voxel_size=args.voxel_size, voxel_unit=args.voxel_unit)
            if cmd == "features":
                rec = volume_features(args.input, args.out, client, backbone=args.backbone, weights=args.weights,
                                      halo=args.halo, scaling=args.scaling, level=args.level, **common)
            elif cmd == "segment":
                rec = volume_segment(args.input, args.out, client, args.head, halo=args.halo, scaling=args.scaling,
                                     level=args.level, save_proba=args.probabilities, instances=args.instances,
                                     instance_method=args.instance_method,
                                     instance_threshold=args.instance_threshold, min_size=args.min_size, **common)
            else:
                kw = registration_kwargs(args)
                backbone, weights = kw.pop("backbone"), kw.pop("weights")
                rec = volume_align(args.input, args.out, client, backbone=backbone, weights=weights,
                                   register_level=args.register_level, order=args.order, **kw, **common)
    except KeyboardInterrupt:
        print(_interrupted(cmd, args.out), file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    summary = {k: rec[k] for k in ("backbone", "weights", "total", "computed", "skipped", "voxel_size", "voxel_unit",
                                   "instance_merge") if k in rec}
    print(f"volume {cmd} → {Path(args.out)}: {json.dumps(summary)}")
    return 0
