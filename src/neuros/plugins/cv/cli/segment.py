"""``neuros-cv segment``: train a segmentation head on your images and masks, and predict pixel masks.

``segment train --images ... --masks ... --backbone SPEC --head KIND --out head/`` extracts features, fits the
head and saves it (weights + head.json with the backbone spec: name, weights, options). ``segment predict --head
head/ INPUT... --out masks/`` rebuilds that backbone from the spec, predicts a pixel mask per input and writes
them all at once: a palette PNG for a 2-D image (values = class values, classes visible in any viewer), a TIFF
for a stack and a NIfTI with the input's affine and header for a NIfTI input — volumes in the input's axis order.
``segment evaluate --head head/ --images ... --masks ...`` prints pixel Dice/IoU per class with bootstrap
CIs. Inputs: TIFF (stacks are cut into slices), PNG/JPEG, NIfTI, HDF5 and zarr (``--key`` names the dataset).

Pixel work (issue #12): a backbone of stride < 16 (``filterbank[stride=1]``, ``filterbank[patch_size=1]``, a
dense ViT, a fused ``A+B`` spec) trains, predicts and evaluates through :class:`~..dense.TiledFeatures`, so
memory is bounded by one ``--tile``, not by the image; at stride <= 4 the training table is a per-class
sample (``--max-samples-per-class``, default :data:`DEFAULT_PIXEL_SAMPLES`). Sparse scribble masks:
``--unlabelled V`` (neither trained nor scored). ``--instances CLASS`` writes or scores objects of one class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.markup import escape

from .._validation import as_image
from ..backbones.base import Backbone, lookup
from ..backbones.spec import BackboneSpec, takes_weights
from ..datasets.io import (
    expand_paths,
    file_format,
    image_slices,
    nifti_suffix,
    output_name,
    overlay_preview,
    read_array,
    read_mask,
    stack_slices,
    write_image,
    write_mask,
    write_nifti,
    write_probabilities,
)
from ..dense import DEFAULT_TILE, TiledFeatures
from ..heads import DEFAULT_HEAD, DEFAULT_PIXEL_HEAD, CrossFitHead, head_class, list_heads, load_head, make_head
from ..heads.base import SegmentationHead
from ..heads.decision import fit_tuned
from ..labels import DEFAULT_MAX_CLASSES, RULES, check_training_masks, mask_targets
from ..output import atomic_output_dir, atomic_write_text, check_output_dir, check_output_file, dumps_json
from ._batch import Batch, add_skip_errors
from ._progress import note_placeholder, progress_callback
from .register import add_download, download_kwargs

__all__ = ["DEFAULT_PIXEL_SAMPLES", "TILED_BELOW_STRIDE", "add_instance_options", "add_parser", "instance_index",
           "instance_labels", "run"]

#: Default per-class training budget at stride <= 4 (``--max-samples-per-class``): a 4096² image at stride 1 has
#: 16 M labelled positions; 100 k per class (the ilastik recipe samples ~200 k pixels in all) train as well and
#: keep the table at 3 classes × 100 k × 66 float32 features ≈ 80 MB.
DEFAULT_PIXEL_SAMPLES = 100_000
#: Backbones with a stride below this many pixels are computed tile by tile (``dense.TiledFeatures``).
TILED_BELOW_STRIDE = 16

AXIS_HELP = "cut 3-D inputs into slices along this axis (default: RGB when the last axis is 3 or 4, else 0)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="train a segmentation head on images + masks, or predict masks",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="fit a head and save it to --out")
    t.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    t.add_argument("--masks", nargs="+", required=True, metavar="PATH", help="mask files or folders (same order)")
    t.add_argument("--backbone", default="vit-small",
                   help="backbone name (see `neuros-cv backbones`) or spec, e.g. 'vit-small@random(seed=3)[scale=2]' "
                        "(options that change the features in brackets; docs/backbones.md); the stride is part of "
                        "the spec ('filterbank[stride=1]' for per-pixel features); fused backbones as 'A+B'")
    t.add_argument("--weights", help="DINOv3 weights: placeholder, random, random(seed=N), pretrained, auto")
    t.add_argument("--head", default=None, choices=list_heads(),
                   help=f"head kind (default {DEFAULT_HEAD.kind} on patch features, {DEFAULT_PIXEL_HEAD.kind} at "
                   "stride <= 4, the best measured on each; docs/segmentation.md)")
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
    t.add_argument("--seed", type=int, default=0, help="random seed of the head (and of the sampled table)")
    t.add_argument("--unlabelled", type=int, metavar="V",
                   help="sparse (scribble) masks: pixels equal to V are neither trained on nor a class "
                        "(e.g. 0 when only strokes are painted)")
    t.add_argument("--max-samples-per-class", type=_budget, metavar="N",
                   help="train on at most N labelled positions per class, a sample reproducible from --seed, or "
                        f"'all' (default: {DEFAULT_PIXEL_SAMPLES} at stride <= 4, else all)")
    t.add_argument("--n-components", type=int, metavar="K",
                   help="reduce the features to K principal components first (PCA stored with the head)")
    t.add_argument("--tune-holdout", type=_holdout, metavar="N",
                   help="choose per-class decision offsets on N held-out images (a count, or a fraction such as "
                        "0.25), then refit on every image and store them with the head (training runs twice)")
    t.add_argument("--cross-fit", type=int, metavar="K",
                   help="train K copies of the head, each without one of K folds of the images (contiguous), average "
                        "their probabilities and tune decision offsets on their out-of-fold predictions (K fits)")
    _tile_option(t)
    q = actions.add_parser(
        "predict", help="predict pixel masks with a saved head",
        description="Predict a pixel mask per INPUT with a saved head and write them all into --out at once: "
        "<name>.png for a 2-D image (a palette PNG: values are the class values, class 0 black, others in "
        "bright colours), <name>.tif for a stack and <name>.nii.gz for a NIfTI input (the input's affine and "
        "header); volumes keep the input's axis order whatever --axis cut them along.",
        epilog="example: neuros-cv segment predict --head head/ scans/*.nii.gz --axis 2 --out masks/ "
        "--probabilities --preview")
    q.add_argument("--head", required=True, help="folder written by `segment train`")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    q.add_argument("--key", help="dataset inside HDF5/zarr inputs")
    q.add_argument("--axis", type=int, help=AXIS_HELP)
    q.add_argument("--out", required=True, help="folder for the masks")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.add_argument("--probabilities", action="store_true",
                   help="also write <name>_proba.tif: float32 class probabilities per pixel, one channel per "
                   "class (ImageJ hyperstack: (K, H, W) axes CYX, stacks (Z, K, H, W) ZCYX); <name>_proba.nii.gz "
                   "with classes as the 4th axis for NIfTI inputs")
    add_instance_options(q, "also write <name>_instances.tif: uint32 objects of class value CLASS (0 = none, "
                         "1..n; a stack's slices numbered on, never reusing an id)")
    _tile_option(q)
    q.add_argument("--preview", action="store_true",
                   help="also write <name>_preview.png: the image with the mask overlaid (volumes: middle slice)")
    add_skip_errors(q)
    add_download(q)
    e = actions.add_parser(
        "evaluate", help="score a saved head on images with known masks (pixel Dice/IoU with CIs)",
        description="Predict each image with a saved head and compare with its mask: pixel Dice and IoU per "
        "foreground class, mean foreground Dice (F1) and accuracy, pooled over all images, with percentile "
        "bootstrap 95 percent CIs over images (each slice of a stack counts as one image). Mask values must be "
        "classes the head knows.",
        epilog="example: neuros-cv segment evaluate --head head/ --images test/raw --masks test/labels "
        "--out scores.json")
    e.add_argument("--head", required=True, help="folder written by `segment train`")
    e.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    e.add_argument("--masks", nargs="+", required=True, metavar="PATH", help="mask files or folders (same order)")
    e.add_argument("--key", help="dataset inside HDF5/zarr image files")
    e.add_argument("--mask-key", help="dataset inside HDF5/zarr mask files")
    e.add_argument("--axis", type=int, help=AXIS_HELP)
    e.add_argument("--out", help="also write the scores (per class, per image, CIs) to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    ebin = e.add_mutually_exclusive_group()
    ebin.add_argument("--threshold", type=float, metavar="T",
                      help="binarise masks as `segment train --threshold T` did: foreground where mask > T")
    ebin.add_argument("--classes", type=int, nargs="+", metavar="V",
                      help="keep these mask values as `segment train --classes` did; others become 0")
    e.add_argument("--unlabelled", type=int, metavar="V",
                   help="sparse truth: pixels equal to V are not scored (neither truth nor error)")
    add_instance_options(e, "also score objects of class value CLASS: true objects = connected components of the "
                         "mask, predicted ones as `segment predict --instances`; precision, recall, F1 and mean "
                         "matched IoU at IoU >= 0.5 (needs dense masks)")
    _tile_option(e)
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    add_skip_errors(e)
    add_download(e)
    p.set_defaults(func=run)


def _budget(text: str) -> int | str:
    """``--max-samples-per-class``: a positive integer or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of positions or 'all', got {text!r}")
    return value


def _holdout(text: str) -> int | float:
    """``--tune-holdout``: a count of images (``2``) or a fraction of them (``0.25``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or a fraction, got {text!r}") from None
    if value <= 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a whole number of images (>= 1) or a fraction in (0, 1), "
                                         f"got {text!r}")
    return int(value) if value >= 1 else value


def _tile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, metavar="PX",
                   help=f"backbones of stride < {TILED_BELOW_STRIDE}: compute features in tiles of PX² pixels plus "
                        f"the backbone's halo, so memory is bounded by a tile (default {DEFAULT_TILE})")


def add_instance_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--instances CLASS`` and its settings (``instances.label_instances``), shared with ``volume segment``."""
    p.add_argument("--instances", type=int, metavar="CLASS", help=what)
    p.add_argument("--instance-method", choices=("watershed", "components"), default="watershed",
                   help="objects by a seeded watershed of the distance transform, which splits touching objects "
                        "(default), or by connected components")
    p.add_argument("--instance-threshold", type=float, default=0.5, metavar="T",
                   help="an object pixel has probability >= T of CLASS (default 0.5)")
    p.add_argument("--min-size", type=int, default=0, metavar="PX",
                   help="drop objects smaller than PX pixels (default 0: keep all)")


def instance_labels(proba: np.ndarray, index: int, args: argparse.Namespace) -> np.ndarray:
    """uint32 objects (0 = none, 1..n) of class ``index`` in one (H, W, K) probability image."""
    from ..instances import label_instances

    return label_instances(proba, cls=index, method=args.instance_method, threshold=args.instance_threshold,
                           min_size=args.min_size)


def instance_index(classes: np.ndarray, value: int | None, flag: str = "--instances",
                   args: argparse.Namespace | None = None) -> int | None:
    """The column of class value ``value`` among a head's ``classes``; a one-line error if it is none of them
    (or, given ``args``, if ``--instance-threshold`` / ``--min-size`` are out of range)."""
    if value is None:
        return None
    if args is not None and not 0.0 <= args.instance_threshold <= 1.0:
        raise ValueError(f"--instance-threshold must lie in [0, 1], got {args.instance_threshold:g}")
    if args is not None and args.min_size < 0:
        raise ValueError(f"--min-size must be >= 0 pixels, got {args.min_size}")
    hit = np.flatnonzero(np.asarray(classes) == int(value))
    if hit.size == 0:
        raise ValueError(f"{flag} {value} is not a class of the head (its classes: {np.asarray(classes).tolist()}); "
                         "give one of those values")
    return int(hit[0])


def _tiled(bb: Backbone) -> bool:
    return float(bb.stride) < TILED_BELOW_STRIDE


def _feature_sources(bb: Backbone, images: list[np.ndarray], tile: int) -> list:
    """Features of ``images``: lazily tiled below stride 16 (memory of one tile), else whole maps in a batch."""
    if _tiled(bb):
        return [TiledFeatures(bb, im, tile=tile) for im in images]
    return bb.extract_batch(images)


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
    spec = _train_spec(args.backbone, args.weights)
    img_paths, mask_paths = expand_paths(args.images), expand_paths(args.masks)
    if len(img_paths) != len(mask_paths):
        raise ValueError(f"{len(img_paths)} image files but {len(mask_paths)} mask files; give one mask per image")
    if args.unlabelled is not None and args.classes and args.unlabelled in args.classes:
        listed = " ".join(map(str, args.classes))
        raise ValueError(f"--unlabelled {args.unlabelled} is also listed in --classes {listed}; the unlabelled "
                         "value is no class: drop it from --classes or pick another --unlabelled")
    if args.cross_fit is not None and args.tune_holdout is not None:
        raise ValueError("--cross-fit tunes decision offsets on every image out of fold; drop --tune-holdout")
    bb = spec.build()
    if args.head is None:  # the best measured head for the features' resolution
        args.head = DEFAULT_PIXEL_HEAD.kind if float(bb.stride) <= 4 else DEFAULT_HEAD.kind
    class_weight = _class_weight(args.head, args.balanced)
    note_placeholder(bb.name, bb.weights)
    # the default budget is for heads that sample a table of positions; the conv head reads whole maps (an
    # explicit --max-samples-per-class still reaches it, and it refuses it in one line)
    sampled = head_class(args.head).samples_positions or args.max_samples_per_class is not None
    budget = _sampling_budget(args.max_samples_per_class, bb) if sampled else None
    steps = 2 * len(img_paths) + 1
    with progress_callback(steps, "segment train") as tick:
        images = _read_slices(img_paths, args.key, args.axis, tick)
        masks = _read_slices(mask_paths, args.mask_key, args.axis, tick, reader=read_mask)
        all_images, all_masks, mask_names = [], [], []
        for (ip, ims), (mp, ms) in zip(images, masks, strict=True):
            if len(ims) != len(ms):
                raise ValueError(f"{ip.name} has {len(ims)} slice(s) but its mask {mp.name} has {len(ms)}")
            for k, (im, m) in enumerate(zip(ims, ms, strict=True)):
                as_image(im, f"image {ip.name}" if len(ims) == 1 else f"image {ip.name}[{k}]")
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
        if args.unlabelled is not None:
            _check_scribbles(all_masks, mask_names, [im.shape[:2] for im in all_images], bb, args)
        maps = _feature_sources(bb, all_images, args.tile)
        head = make_head(args.head, seed=args.seed, label_rule=args.label_rule, class_weight=class_weight,
                         unlabelled=args.unlabelled, max_samples_per_class=budget, n_components=args.n_components)
        if args.cross_fit is not None:
            head = CrossFitHead(head, folds=args.cross_fit).fit(maps, all_masks)
        elif args.tune_holdout is None:
            head.fit(maps, all_masks)
        else:
            fit_tuned(head, maps, all_masks, holdout=args.tune_holdout)
        tick("fitted")
    head.save(out, overwrite=args.overwrite, inputs=inputs)
    table = f"{head.n_train_patches_} positions at stride {float(bb.stride):g}" + (
        f", at most {budget} per class" if budget else "")
    extra = "".join([f", unlabelled value {args.unlabelled}" if args.unlabelled is not None else "",
                     f", PCA to {args.n_components} components" if args.n_components else "",
                     _offsets_note(head)])
    print(f"Trained a {args.head} head (class_weight={head.class_weight}, label rule {head.label_rule}{extra}) on "
          f"{len(all_images)} image(s) ({table}) with {bb.name} [{bb.weights}] "
          f"(backbone spec {bb.spec}), "
          f"classes {head.classes_.tolist()}; saved to {out}")
    return 0


def _offsets_note(head: SegmentationHead) -> str:
    """What ``--tune-holdout`` chose, for the training summary line (empty without it)."""
    d = getattr(head, "decision_", None)
    if d is None:
        return ""
    offsets = [round(v, 2) for v in d["offsets"]]
    if "folds" in d:  # a cross-fitted head
        gain = d["mean_dice_out_of_fold"]
        return (f", {len(d['folds'])} cross-fitted copies (held out {d['folds']}), decision offsets {offsets} tuned "
                f"out of fold (mean Dice {gain['argmax']:.3f} -> {gain['tuned']:.3f})")
    gain = d["mean_dice_held_out"]
    return (f", decision offsets {offsets} tuned on held-out image(s) "
            f"{d['held_out_images']} (mean Dice {gain['argmax']:.3f} -> {gain['tuned']:.3f})")


def _sampling_budget(requested: int | str | None, bb: Backbone) -> int | None:
    """``--max-samples-per-class``: as given (``all``: no cap), else :data:`DEFAULT_PIXEL_SAMPLES` at stride <= 4."""
    if requested == "all":
        return None
    if requested is None:
        return DEFAULT_PIXEL_SAMPLES if float(bb.stride) <= 4 else None
    return int(requested)


def _check_scribbles(masks: list[np.ndarray], names: list[str], shapes: list[tuple[int, int]], bb: Backbone,
                     args: argparse.Namespace) -> None:
    """Sparse masks, before any feature is computed: every mask holds a stroke, every class a cell at the stride."""
    v = int(args.unlabelled)
    for m, name in zip(masks, names, strict=True):
        if not (np.asarray(m) != v).any():
            raise ValueError(f"mask {name} holds no labelled pixel (every pixel is --unlabelled {v}); paint strokes "
                             "of the classes in it or leave the image out")
    targets, classes = mask_targets(masks, shapes, round(float(bb.stride)), args.label_rule, unlabelled=v)
    present = np.unique(np.concatenate([t[t >= 0] for t in targets]))
    missing = np.setdiff1d(np.arange(len(classes)), present)
    if missing.size:
        raise ValueError(f"class(es) {classes[missing].tolist()} have no labelled position at the backbone's stride "
                         f"{float(bb.stride):g} (their strokes are outvoted in every {round(float(bb.stride))}-px "
                         "cell); paint longer strokes of them or use a finer stride, e.g. 'filterbank[stride=1]'")


def _class_weight(kind: str, balanced: bool | None) -> str | None:
    """``--balanced``/``--no-balanced``, or by default the documented setting where the head supports it."""
    supported = head_class(kind).supports_class_weight
    if balanced is None:
        return DEFAULT_HEAD.class_weight if supported else None
    if balanced and not supported:
        raise ValueError(f"the {kind} head has no class weights; drop --balanced (or choose another --head)")
    return "balanced" if balanced else None


def _train_spec(backbone: str, weights: str | None) -> BackboneSpec:
    """The spec ``--backbone`` (a name or a spec string) and ``--weights`` ask for, checked before any work."""
    spec = BackboneSpec.parse(backbone)
    if spec.parts:  # fused 'A+B': --weights fills the parts that take weights and name none
        for part in spec.parts:
            lookup(part.name)
        if weights and not any(takes_weights(part.name) for part in spec.parts):
            raise ValueError(f"--weights applies to DINOv3 backbones; {spec.name!r} has none")
        return spec.with_weights(weights)
    lookup(spec.name)  # unknown names: one line with close matches
    if weights:
        if not takes_weights(spec.name):
            raise ValueError(f"--weights applies to DINOv3 backbones, not {spec.name!r}")
        if spec.weights is not None and spec.weights != weights:
            raise ValueError(f"--backbone {backbone} names weights {spec.weights!r} but --weights is {weights!r}; "
                             "give the weights once")
        spec = spec.with_weights(weights)
    return spec


def _backbone_for(head: SegmentationHead, args: argparse.Namespace) -> Backbone:
    """The backbone the head was trained on, rebuilt from the spec in its head.json."""
    spec = getattr(head, "backbone_spec_", None)
    if spec is None:
        raise ValueError(f"the head in {args.head} was fitted on a patch matrix and names no backbone; train it "
                         "with `neuros-cv segment train` or SegmentationHead.fit(feature_maps, masks)")
    bb = spec.build(**download_kwargs(args, spec.name))
    note_placeholder(bb.name, bb.weights)
    return bb


def _checked_slices(image: np.ndarray, axis: int | None) -> list[np.ndarray]:
    """2-D slices of an input, each checked for NaN/inf and emptiness (``Batch`` puts the file name first)."""
    slices = image_slices(image, axis=axis)
    for k, sl in enumerate(slices):
        as_image(sl, "image" if len(slices) == 1 else f"slice {k}")
    return slices


def _predict_one(p: Path, name: str, tmp: Path, head: SegmentationHead, bb: Backbone,
                 args: argparse.Namespace) -> list[str]:
    """Predict one input and write its files into ``tmp``; the names written (none left on failure)."""
    image = read_array(p, key=args.key)
    slices = _checked_slices(image, args.axis)
    index = instance_index(head.classes_, args.instances)
    labels, probas, objects, n_objects = [], [], [], 0
    for fm in _feature_sources(bb, slices, args.tile):
        proba = head.predict_proba(fm)
        labels.append(head.decide(proba))
        if args.probabilities:
            probas.append(proba)
        if index is not None:  # ids run on over a stack's slices: one id, one object
            obj = instance_labels(proba, index, args)
            objects.append(np.where(obj > 0, obj + np.uint32(n_objects), 0).astype(np.uint32))
            n_objects += int(obj.max())
    mask = stack_slices(labels, args.axis, image.shape)
    nifti = file_format(p) == "nifti"
    if nifti:
        mask_file = f"{name}{nifti_suffix(p)}"
    else:
        mask_file = f"{name}.png" if mask.ndim == 2 and mask.max() < 256 else f"{name}.tif"
    jobs = [(mask_file, lambda f: write_mask(f, mask, like=p if nifti else None))]
    if args.probabilities:
        proba_file = f"{name}_proba{nifti_suffix(p) if nifti else '.tif'}"
        stacked = stack_slices(probas, args.axis, image.shape)
        jobs.append((proba_file, lambda f: write_probabilities(f, stacked, like=p if nifti else None,
                                                               classes=head.classes_.tolist())))
    if index is not None:
        inst = stack_slices(objects, args.axis, image.shape).astype(np.uint32)
        inst_file = f"{name}_instances{nifti_suffix(p) if nifti else '.tif'}"
        jobs.append((inst_file, lambda f: _write_instances(f, inst, like=p if nifti else None)))
    if args.preview:
        mid = len(slices) // 2
        jobs.append((f"{name}_preview.png", lambda f: write_image(f, overlay_preview(slices[mid], labels[mid]))))
    written: list[str] = []
    try:
        for fname, write in jobs:
            write(tmp / fname)
            written.append(fname)
    except BaseException:
        for fname in written:
            (tmp / fname).unlink(missing_ok=True)
        raise
    return written


def _write_instances(path: Path, labels: np.ndarray, like: Path | None) -> None:
    """uint32 instance labels: NIfTI beside a NIfTI input, else a plain (Z)YX TIFF (Fiji, napari, tifffile)."""
    if like is not None:
        write_nifti(path, labels, like=like, intent="label", description="neuros-cv instance labels")
        return
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(labels, dtype=np.uint32), photometric="minisblack",
                     metadata={"axes": "YX" if labels.ndim == 2 else "ZYX"})


def _predict(args: argparse.Namespace) -> int:
    head = load_head(args.head)
    instance_index(head.classes_, args.instances, args=args)  # before any work
    inputs = [*args.inputs, args.head]
    out = check_output_dir(args.out, args.overwrite, inputs)
    paths = expand_paths(args.inputs)
    names = [output_name(p) for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"inputs share output name(s) {', '.join(dup)}; predict them into separate folders")
    bb = _backbone_for(head, args)
    batch, n_files, n_ok = Batch(args.skip_errors), 0, 0
    with (progress_callback(len(paths), "segment predict") as tick,
          atomic_output_dir(out, args.overwrite, inputs, "segment predict") as tmp):
        for p, name in zip(paths, names, strict=True):
            ok, files = batch.run(p, _predict_one, p, name, tmp, head, bb, args)
            n_ok += ok
            n_files += len(files or [])
            tick(escape(f"{'predicted' if ok else 'skipped'} {p.name}"))
        batch.check_some_left(n_ok, "segment predict")
    status = batch.finish("segment predict")
    print(f"Wrote {n_files} file(s) for {n_ok} input(s) to {out} ({head.kind} head, {head.backbone_} "
          f"[{head.weights_}])")
    return status


def _encode(mask: np.ndarray, head: SegmentationHead, mp: Path, unlabelled: int | None = None) -> np.ndarray:
    """Mask values → class indices 0..K-1 of the head (``unlabelled`` pixels → K, left out of the scores);
    values it does not know are a one-line error."""
    classes = head.classes_
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating) and np.isfinite(m).all() and np.all(m == np.round(m)):
        m = m.astype(np.int64)  # 0.0/1.0 float masks: integer labels stored as floats
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"mask {mp} holds non-integer values ({m.dtype}); masks hold class labels")
    values = np.unique(m)
    if unlabelled is not None:
        values = values[values != unlabelled]
        if values.size == 0:
            raise ValueError(f"mask {mp} holds no labelled pixel (every pixel is --unlabelled {unlabelled}); "
                             "nothing to score in it")
    unknown = np.setdiff1d(values, classes)
    if unknown.size:
        trained = getattr(head, "unlabelled", None)
        hint = (f"; if {trained} marks unlabelled pixels (as in training), pass --unlabelled {trained}"
                if trained is not None and unlabelled is None and trained in unknown else
                "; give masks with the values the head was trained on")
        raise ValueError(f"mask {mp} holds value(s) {unknown[:5].tolist()} that the head does not know (its "
                         f"classes: {classes.tolist()}){hint}")
    encoded = np.searchsorted(classes, m)
    if unlabelled is not None:
        encoded[m == unlabelled] = len(classes)
    return encoded


def _evaluate_pair(ip: Path, mp: Path, head: SegmentationHead, bb: Backbone,
                   args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    ims = _checked_slices(read_array(ip, key=args.key), args.axis)
    ms = image_slices(read_mask(mp, key=args.mask_key), axis=args.axis)
    if args.threshold is not None or args.classes:  # the same rule segment train applied to its masks
        ms = check_training_masks(ms, [f"{mp.name}[{k}]" for k in range(len(ms))], threshold=args.threshold,
                                  classes=args.classes, cli=True)
    if len(ims) != len(ms):
        raise ValueError(f"{ip} has {len(ims)} slice(s) but its mask {mp} has {len(ms)}")
    for k, (im, m) in enumerate(zip(ims, ms, strict=True)):
        if m.shape != im.shape[:2]:
            raise ValueError(f"mask {mp}[{k}] shape {m.shape} does not match image {ip} shape {im.shape[:2]}")
    truth = [_encode(m, head, mp, args.unlabelled) for m in ms]
    index = instance_index(head.classes_, args.instances)
    pred, objects = [], []
    for fm, t in zip(_feature_sources(bb, ims, args.tile), truth, strict=True):
        proba = head.predict_proba(fm)
        pred.append(head.decide(proba, index=True))
        if index is not None:
            from ..instances import label_instances
            from ..metrics import match_instances

            true_objects = label_instances(t == index, method="components")
            objects.append(match_instances(true_objects, instance_labels(proba, index, args)))
    return truth, pred, objects


def _pooled_objects(matches: list[dict]) -> dict:
    """Object scores pooled over images: counts summed, then precision, recall, F1 and mean matched IoU."""
    tp, fp, fn = (sum(int(m[k]) for m in matches) for k in ("tp", "fp", "fn"))
    n_true, n_pred = sum(int(m["n_true"]) for m in matches), sum(int(m["n_pred"]) for m in matches)
    iou_sum = sum(float(m["mean_matched_iou"]) * int(m["tp"]) for m in matches)
    return {"tp": tp, "fp": fp, "fn": fn, "n_true": n_true, "n_pred": n_pred,
            "precision": tp / n_pred if n_pred else 0.0, "recall": tp / n_true if n_true else 0.0,
            "f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0,
            "mean_matched_iou": iou_sum / tp if tp else 0.0, "iou_threshold": 0.5}


def _finite(obj: object) -> object:
    """NaN (a class absent from an image) → None, so the JSON is standard."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _ci(v: list[float]) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]"


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import score_images

    head = load_head(args.head)
    inputs = [*args.images, *args.masks, args.head]
    if args.out:
        check_output_file(args.out, args.overwrite, inputs)  # fail before computing anything
    img_paths, mask_paths = expand_paths(args.images), expand_paths(args.masks)
    if len(img_paths) != len(mask_paths):
        raise ValueError(f"{len(img_paths)} image files but {len(mask_paths)} mask files; give one mask per image")
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be at least 1, got {args.n_boot}")
    if args.unlabelled is not None and args.unlabelled in head.classes_:
        raise ValueError(f"--unlabelled {args.unlabelled} is a class of the head (its classes: "
                         f"{head.classes_.tolist()}); pick a value that no class uses")
    if args.unlabelled is not None and args.instances is not None:
        raise ValueError("--instances scores whole objects, which sparse (--unlabelled) masks do not draw; "
                         "evaluate objects on dense masks")
    instance_index(head.classes_, args.instances, args=args)
    bb = _backbone_for(head, args)
    batch, truths, preds, used, matches = Batch(args.skip_errors), [], [], [], []
    with progress_callback(len(img_paths), "segment evaluate") as tick:
        for ip, mp in zip(img_paths, mask_paths, strict=True):
            ok, res = batch.run(ip, _evaluate_pair, ip, mp, head, bb, args)
            if ok and res is not None:
                truths += res[0]
                preds += res[1]
                matches += res[2]
                used.append({"image": str(ip), "mask": str(mp), "n_slices": len(res[0])})
            tick(escape(f"{'scored' if ok else 'skipped'} {ip.name}"))
    batch.check_some_left(len(used), "segment evaluate")
    classes = head.classes_
    scores = score_images(truths, preds, len(classes), class_names=[str(c) for c in classes],
                          n_boot=args.n_boot, seed=args.seed,
                          ignore=None if args.unlabelled is None else len(classes))
    sparse = "" if args.unlabelled is None else f" (labelled pixels only: --unlabelled {args.unlabelled} left out)"
    print(f"{len(used)} image file(s), {scores['n_images']} image(s) scored with {head.kind} head on "
          f"{head.backbone_} [{head.weights_}]{sparse}; 95% bootstrap CIs over images")
    for name, c in scores["classes"].items():
        print(f"class {name}: Dice {c['dice']:.3f} {_ci(c['dice_ci'])}  IoU {c['iou']:.3f} {_ci(c['iou_ci'])}  "
              f"({c['n_pixels']} pixels)")
    print(f"mean foreground Dice (F1) {scores['f1']:.3f} {_ci(scores['f1_ci'])}; pixel accuracy "
          f"{scores['accuracy']:.3f} {_ci(scores['accuracy_ci'])}")
    if args.instances is not None:
        obj = _pooled_objects(matches)
        scores["objects"] = {"class": int(args.instances), "method": args.instance_method,
                             "threshold": args.instance_threshold, "min_size": args.min_size, **obj}
        print(f"objects of class {args.instances} ({args.instance_method}): {obj['n_true']} true, {obj['n_pred']} "
              f"predicted; at IoU >= 0.5 precision {obj['precision']:.3f}, recall {obj['recall']:.3f}, "
              f"F1 {obj['f1']:.3f}, mean matched IoU {obj['mean_matched_iou']:.3f}")
    status = batch.finish("segment evaluate")
    if args.out:
        doc = {"schema": "neuros-cv/evaluate/1", "head": str(args.head), "kind": head.kind,
               "backbone": head.backbone_, "weights": head.weights_, "classes": classes.tolist(),
               "n_boot": args.n_boot, "seed": args.seed, "unlabelled": args.unlabelled, "inputs": used,
               "skipped": [{"file": f, "reason": r} for f, r in batch.skipped], **scores}
        atomic_write_text(args.out, dumps_json(_finite(doc)), overwrite=args.overwrite, inputs=inputs)
        print(f"scores written to {args.out}")
    return status


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "predict": _predict, "evaluate": _evaluate}[args.action](args)
