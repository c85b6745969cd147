"""``neuros-cv adapt IMAGE... --backbone B --weights W --out adapted/``: teach a DINOv3 ViT the lab's own images.

Self-distillation (DINO + iBOT + KoLeo, optionally DINOv3's Gram anchoring; :mod:`neuros.plugins.cv.adapt`) on
crops sampled on the fly from the inputs (TIFF stacks, NIfTI with ``--axis``, zarr/OME-Zarr, HDF5, PNG/JPEG,
folders; never a whole volume in memory). Checkpoints go to ``--checkpoint-dir`` (default ``<out>.checkpoints``)
every ``--checkpoint-every`` steps; running the same command again resumes from the newest one exactly. The
result is a transformers folder with ``adapt.json`` (base weights, data, steps, seed, losses, versions) that
``--weights pretrained:<out>`` loads everywhere, and that every output then names as adapted weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from ..adapt.api import build_adapter, data_record, default_checkpoint_dir
from ..adapt.crops import open_images
from ..adapt.export import LORA_SAVE, export_adapted
from ..adapt.train import CENTERINGS, TRAIN_MODES, AdaptConfig
from ..output import check_output_dir
from ._batch import Batch, add_skip_errors, one_line
from ._progress import progress_callback, stderr_console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a DINOv3 ViT to your own unlabelled images (self-supervised; writes a weights folder)",
        description=(
            "Continue DINOv3's self-distillation (DINO + iBOT + KoLeo; --gram-weight adds Gram anchoring) on your "
            "own unlabelled IMAGEs and write the adapted backbone as a transformers folder with a provenance file "
            "(adapt.json); use it anywhere with --weights pretrained:<out>. Crops are read on the fly. "
            "Example: neuros-cv adapt sections/ --backbone vit-small --weights pretrained --train lora "
            "--steps 2000 --out adapted/"
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (unlabelled)")
    p.add_argument("--out", required=True, help="output folder (the adapted weights)")
    p.add_argument("--backbone", default="vit-small",
                   help="registered DINOv3 ViT id or local folder (default vit-small)")
    p.add_argument("--weights", default="pretrained",
                   help="start from: pretrained (default), pretrained:<path>, random or random(seed=N) (from scratch)")
    p.add_argument("--key", help="dataset inside HDF5/zarr inputs (OME-Zarr: level 0 by default)")
    p.add_argument("--axis", type=int, help="slice 3-D inputs along this axis (default 0)")
    p.add_argument("--train", choices=TRAIN_MODES, default="full",
                   help="what is trained: full (default), last-k blocks, or lora adapters (peft)")
    p.add_argument("--last-k", type=int, default=2, help="blocks trained with --train last-k (default 2)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-save", choices=LORA_SAVE, default="merged",
                   help="LoRA: merge the adapters into the weights (default) or keep them in separate files")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=8, help="images (regions) per step (default 8)")
    p.add_argument("--global-size", type=int, default=224, help="global crop side, px (default 224)")
    p.add_argument("--local-size", type=int, default=96, help="local crop side, px (default 96)")
    p.add_argument("--n-local", type=int, default=6, help="local crops per image (default 6)")
    p.add_argument("--region", type=int, help="side of the region crops are cut from (default 2 × --global-size)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--momentum", type=float, default=0.996, help="teacher EMA momentum at the start (default 0.996)")
    p.add_argument("--out-dim", type=int, default=4096, help="prototypes of the DINO/iBOT heads (default 4096)")
    p.add_argument("--centering", choices=CENTERINGS, default="sinkhorn",
                   help="teacher targets: sinkhorn (Sinkhorn-Knopp, DINOv2/v3; default) or center (DINO's running "
                        "centre, which collapsed in short CPU runs)")
    p.add_argument("--ibot-weight", type=float, default=1.0, help="iBOT loss weight (default 1)")
    p.add_argument("--koleo-weight", type=float, default=0.1, help="KoLeo weight (default 0.1)")
    p.add_argument("--gram-weight", type=float, default=0.0,
                   help="Gram anchoring weight (DINOv3; default 0 = off), anchored to the start weights")
    p.add_argument("--gram-refresh", type=int, default=0,
                   help="refresh the Gram teacher from the EMA teacher every N steps (default 0 = never)")
    p.add_argument("--seed", type=int, default=0, help="seed of crops, masks and heads (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda (bf16 autocast on cuda)")
    p.add_argument("--checkpoint-dir", help="checkpoint folder (default <out>.checkpoints beside --out)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps (default 100)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes (a time budget)")
    p.add_argument("--overwrite", action="store_true", help="replace what an earlier adapt wrote in --out")
    add_skip_errors(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> AdaptConfig:
    return AdaptConfig(steps=args.steps, batch_size=args.batch_size, global_size=args.global_size,
                       local_size=args.local_size, n_local=args.n_local, region=args.region, train=args.train,
                       last_k=args.last_k, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank, lr=args.lr,
                       momentum=args.momentum, out_dim=args.out_dim, ibot_weight=args.ibot_weight,
                       koleo_weight=args.koleo_weight, centering=args.centering, gram_weight=args.gram_weight,
                       gram_refresh=args.gram_refresh, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out = check_output_dir(args.out, args.overwrite, args.images)  # fail before reading or training anything
    batch = Batch(args.skip_errors)

    def skip(path: Path, e: Exception) -> None:
        if not batch.skip_errors:
            raise ValueError(one_line(path, e)) from None
        batch.skipped.append((str(path), one_line(path, e)))

    sources = open_images(args.images, args.axis, args.key, on_error=skip)
    adapter, base = build_adapter(args.backbone, args.weights, sources, cfg, args.device)
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else default_checkpoint_dir(out)
    resumed = None if args.no_resume else adapter.resume(ckpt)
    n_slices = sum(s.n_slices for s in sources)
    stderr_console.print(escape(
        f"adapt {args.backbone} from {base['weights']} on {n_slices} slice(s) of {len(sources)} file(s); "
        f"training {cfg.train}, {cfg.steps} steps on {adapter.device}"
        + (f"; resumed at step {adapter.step} from {resumed}" if resumed else "")), soft_wrap=True)
    with progress_callback(cfg.steps, escape(f"adapt[{args.backbone}]")) as tick:
        if adapter.step:
            tick(f"resumed at step {adapter.step}", adapter.step)

        def show(rec: dict[str, float]) -> None:
            tick(f"loss {rec['loss']:.3f} (dino {rec['dino']:.3f}, ibot {rec['ibot']:.3f}) · "
                 f"{rec['images_per_s']:.1f} img/s")

        max_s = None if args.max_minutes is None else 60.0 * args.max_minutes
        adapter.run(ckpt, args.checkpoint_every, show, max_s)
    path = export_adapted(adapter, out, base, data_record(sources, args.axis, args.key), args.lora_save,
                          args.overwrite, args.images)
    status = batch.finish("adapt")
    last = adapter.history[-1]["loss"] if adapter.history else float("nan")
    print(f"wrote adapted weights ({adapter.step} steps, final loss {last:.3f}) to {path}; use them with "
          f"--weights pretrained:{path} (checkpoints in {ckpt})")
    return status
