"""``neuros-cv segment``: train a segmentation head on your images and masks, and predict pixel masks.

``segment train --images ... --masks ... --backbone NAME --head KIND --out head/`` extracts features, fits the
head and saves it (weights + head.json naming the backbone and weights). ``segment predict --head head/
INPUT... --out masks/`` rebuilds that backbone, predicts a pixel mask per input and writes them all at once
(PNG for 2-D images, TIFF for stacks). Inputs: TIFF (stacks are cut into slices), PNG/JPEG, NIfTI, HDF5 and
zarr (``--key`` names the dataset).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..backbones.base import get_backbone, lookup
from ..datasets.io import expand_paths, image_slices, read_array, read_mask, write_mask
from ..heads import DEFAULT_HEAD, head_class, list_heads, load_head, make_head
from ..labels import DEFAULT_MAX_CLASSES, RULES, check_training_masks
from ..report.output import atomic_output_dir, check_output_dir
from ._progress import progress_callback

__all__ = ["add_parser", "run"]

AXIS_HELP = "cut 3-D inputs into slices along this axis (default: RGB when the last axis is 3 or 4, else 0)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="train a segmentation head on images + masks, or predict masks",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="fit a head and save it to --out")
    t.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    t.add_argument("--masks", nargs="+", required=True, metavar="PATH", help="mask files or folders (same order)")
    t.add_argument("--backbone", default="vit-small", help="backbone name (see `neuros-cv backbones`)")
    t.add_argument("--weights", help="DINOv3 weights: placeholder, random, pretrained, auto")
    t.add_argument("--head", default=DEFAULT_HEAD.kind, choices=list_heads(),
                   help=f"head kind (default {DEFAULT_HEAD.kind})")
    t.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="weight classes equally in training (default: on, as in the documented results, for "
                        "every head but knn; --no-balanced for the unweighted loss)")
    t.add_argument("--label-rule", default=DEFAULT_HEAD.label_rule, choices=RULES,
                   help=f"patch label rule (default {DEFAULT_HEAD.label_rule})")
    binar = t.add_mutually_exclusive_group()
    binar.add_argument("--threshold", type=float, metavar="T",
                       help="binarise masks: foreground where mask > T (1-bit masks as they are); "
                            "e.g. 127 for anti-aliased 8-bit masks")
    binar.add_argument("--classes", type=int, nargs="+", metavar="V",
                       help="keep these mask values as classes; every other value becomes background 0")
    t.add_argument("--max-classes", type=int, default=DEFAULT_MAX_CLASSES, metavar="N",
                   help=f"refuse masks with more distinct values than this unless --threshold/--classes is "
                        f"given (default {DEFAULT_MAX_CLASSES})")
    t.add_argument("--key", help="dataset inside HDF5/zarr image files")
    t.add_argument("--mask-key", help="dataset inside HDF5/zarr mask files")
    t.add_argument("--axis", type=int, help=AXIS_HELP)
    t.add_argument("--out", required=True, help="folder for the trained head")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    t.add_argument("--seed", type=int, default=0, help="random seed of the head")
    q = actions.add_parser("predict", help="predict pixel masks with a saved head")
    q.add_argument("--head", required=True, help="folder written by `segment train`")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    q.add_argument("--key", help="dataset inside HDF5/zarr inputs")
    q.add_argument("--axis", type=int, help=AXIS_HELP)
    q.add_argument("--out", required=True, help="folder for the masks")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def _read_slices(paths: list[Path], key: str | None, axis: int | None, tick,
                 reader=read_array) -> list[tuple[Path, list[np.ndarray]]]:
    out = []
    for p in paths:
        out.append((p, image_slices(reader(p, key=key), axis=axis)))
        tick(f"read {p.name}")
    return out


def _train(args: argparse.Namespace) -> int:
    inputs = [*args.images, *args.masks]
    out = check_output_dir(args.out, args.overwrite, inputs)
    lookup(args.backbone)
    opts = {"weights": args.weights} if args.weights else {}
    if opts and lookup(args.backbone).family != "dinov3":
        raise ValueError(f"--weights applies to DINOv3 backbones, not {args.backbone!r}")
    img_paths, mask_paths = expand_paths(args.images), expand_paths(args.masks)
    if len(img_paths) != len(mask_paths):
        raise ValueError(f"{len(img_paths)} image files but {len(mask_paths)} mask files; give one mask per image")
    class_weight = _class_weight(args.head, args.balanced)
    bb = get_backbone(args.backbone, **opts)
    steps = 2 * len(img_paths) + len(img_paths) + 1
    with progress_callback(steps, "segment train") as tick:
        images = _read_slices(img_paths, args.key, args.axis, tick)
        masks = _read_slices(mask_paths, args.mask_key, args.axis, tick, reader=read_mask)
        all_images, all_masks, mask_names = [], [], []
        for (ip, ims), (mp, ms) in zip(images, masks, strict=True):
            if len(ims) != len(ms):
                raise ValueError(f"{ip.name} has {len(ims)} slice(s) but its mask {mp.name} has {len(ms)}")
            for k, (im, m) in enumerate(zip(ims, ms, strict=True)):
                if m.ndim != 2:
                    raise ValueError(f"mask {mp.name} is a colour image (shape {m.shape}); masks are "
                                     "single-channel label images (save it as greyscale)")
                if m.shape != im.shape[:2]:
                    raise ValueError(f"mask {mp.name}[{k}] shape {m.shape} does not match image {ip.name} "
                                     f"shape {im.shape[:2]}")
            all_images += ims
            all_masks += ms
            mask_names += [mp.name] if len(ms) == 1 else [f"{mp.name}[{k}]" for k in range(len(ms))]
        all_masks = check_training_masks(all_masks, mask_names, threshold=args.threshold, classes=args.classes,
                                         max_classes=args.max_classes, cli=True)
        maps = []
        for ip, ims in images:
            maps += bb.extract_batch(ims)
            tick(f"features {ip.name}")
        head = make_head(args.head, seed=args.seed, label_rule=args.label_rule,
                         class_weight=class_weight)
        head.fit(maps, all_masks)
        head.backbone_options_ = opts
        tick("fitted")
    head.save(out, overwrite=args.overwrite, inputs=inputs)
    print(f"Trained a {args.head} head (class_weight={head.class_weight}, label rule {head.label_rule}) on "
          f"{len(all_images)} image(s) ({head.n_train_patches_} patches) with {bb.name} [{bb.weights}], "
          f"classes {head.classes_.tolist()}; saved to {out}")
    return 0


def _class_weight(kind: str, balanced: bool | None) -> str | None:
    """``--balanced``/``--no-balanced``, or by default the documented setting where the head supports it."""
    supported = head_class(kind).supports_class_weight
    if balanced is None:
        return DEFAULT_HEAD.class_weight if supported else None
    if balanced and not supported:
        raise ValueError(f"the {kind} head has no class weights; drop --balanced (or choose another --head)")
    return "balanced" if balanced else None


def _predict(args: argparse.Namespace) -> int:
    head = load_head(args.head)
    out = check_output_dir(args.out, args.overwrite)
    paths = expand_paths(args.inputs)
    names = [p.name.split(".")[0] for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"inputs share output name(s) {', '.join(dup)}; predict them into separate folders")
    bb = get_backbone(head.backbone_, **head.backbone_options_)
    with progress_callback(len(paths), "segment predict") as tick, atomic_output_dir(out, args.overwrite) as tmp:
        for p, name in zip(paths, names, strict=True):
            slices = image_slices(read_array(p, key=args.key), axis=args.axis)
            labels = head.predict(bb.extract_batch(slices))
            stack = np.stack(labels)
            if len(slices) == 1 and stack.max() < 256:
                write_mask(tmp / f"{name}.png", stack[0])
            else:
                # Slices are stacked on axis 0 whatever --axis cut them from.
                write_mask(tmp / f"{name}.tif", stack if len(slices) > 1 else stack[0])
            tick(f"predicted {p.name}")
    print(f"Wrote {len(paths)} mask file(s) to {out} ({head.kind} head, {head.backbone_} [{head.weights_}])")
    return 0


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _predict(args)
