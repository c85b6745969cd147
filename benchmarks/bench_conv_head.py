"""Issue 12's accuracy goal: ssTEM at full resolution, the conv decoder head against pixel classifiers.

Train on sections 00–07, test on 08–13 (1024² each, masks 0 other / 1 membrane / 2 mitochondria), Dice per
class pooled over the test sections (``metrics.score_images``). Every row uses the same stride-1 filter-bank
features (``backbones.filterbank.pixel_features`` at ``--sigmas``, wrapped as stride-1 ``FeatureMap``s):

- ``conv``: :class:`~neuros.plugins.cv.heads.conv.ConvDecoderHead` on the whole training maps;
- ``hgb``: scikit-learn ``HistGradientBoostingClassifier`` on ``--samples`` class-balanced sampled pixels;
- ``rf``: a 100-tree random forest on the same sample (the ilastik recipe's classifier);
- ``mlp``: the pixel default head (class-balanced MLP, 70 k pixels per class, as ``bench_pixel.py``);

and two baselines on the raw sections, not on these features:

- ``ilastik``: :class:`~neuros.plugins.cv.classical.IlastikRecipe` (``multiscale_basic_features`` σ 1–16 + a
  100-tree forest on 200 k pixels);
- ``patch``: the real suite's patch row (``filterbank`` 16-px cells + the default balanced logistic head,
  upsampled to pixels).

Tuning uses a validation split inside the training sections (``--train 0-6 --test 7``); the test sections are
read only for the final report. Times are wall-clock seconds on this machine (feature extraction separate).

    nice -n 10 .venv/bin/python benchmarks/bench_conv_head.py [--rows conv,hgb,rf] [--steps 600] [--json out.json]
    .venv/bin/python benchmarks/bench_conv_head.py --rows conv,mlp,ilastik,patch --cross-fit 4 --tta on  # issue 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine
from neuros.plugins.cv.backbones.filterbank import WEIGHTS, pixel_features
from neuros.plugins.cv.datasets.catalog import load_sstem
from neuros.plugins.cv.features import FeatureMap
from neuros.plugins.cv.heads import CrossFitHead, fit_tuned, tune_offsets
from neuros.plugins.cv.heads.conv import ConvDecoderHead
from neuros.plugins.cv.metrics import confusion, score_images

CLASSES = ("other", "membrane", "mitochondria")


def sections(text: str) -> list[int]:
    """``"0-7"`` → [0..7]; ``"8,10"`` → [8, 10]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def stride1_map(image: np.ndarray, sigmas: tuple[float, ...]) -> FeatureMap:
    """The unpooled filter bank of one image as a stride-1 FeatureMap."""
    feats = pixel_features(image, sigmas)
    return FeatureMap(feats, 1.0, image.shape, "filterbank", WEIGHTS, {"sigmas": list(sigmas)})


def load(secs: list[int], sigmas: tuple[float, ...], cache: Path | None = None
         ) -> tuple[list[FeatureMap], list[np.ndarray], float]:
    """Stride-1 maps and masks of ``secs`` and the extraction time (features read from ``cache`` if there)."""
    data = load_sstem(sections=secs, downsample=1)
    maps, t_total = [], 0.0
    for s, img in zip(secs, data.images, strict=True):
        path = None if cache is None else cache / f"{'_'.join(map(str, sigmas))}-{s:02d}.npy"
        if path is not None and path.is_file():
            feats = np.load(path)
            maps.append(FeatureMap(feats, 1.0, img.shape, "filterbank", WEIGHTS, {"sigmas": list(sigmas)}))
            continue
        t0 = time.perf_counter()
        maps.append(stride1_map(img, sigmas))
        t_total += time.perf_counter() - t0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, maps[-1].features)
    return maps, list(data.masks), t_total


def balanced_sample(maps: list[FeatureMap], masks: list[np.ndarray], n: int, seed: int) -> tuple[np.ndarray, ...]:
    """About ``n`` training pixels, an equal share per class (all of a class if it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    y_all = np.concatenate([m.ravel() for m in masks])
    idx = []
    for c in np.unique(y_all):
        where = np.flatnonzero(y_all == c)
        idx.append(rng.choice(where, size=min(n // len(CLASSES), where.size), replace=False))
    take = np.sort(np.concatenate(idx))
    X = np.concatenate([fm.flat() for fm in maps])[take]
    return X, y_all[take]


def run_conv(args, train_maps, train_masks, test_maps) -> tuple[list[np.ndarray], float, float, dict]:
    head = ConvDecoderHead(channels=args.channels, dilations=tuple(int(d) for d in args.dilations.split(",")),
                           trunk_stride=args.trunk_stride, steps=args.steps, crop=args.crop,
                           batch_size=args.batch, lr=args.lr, class_weight=args.class_weight, seed=args.seed,
                           augment=args.augment, tta={"on": True, "off": False}.get(args.tta, "auto"))
    t0 = time.perf_counter()
    if args.cross_fit:  # one copy per fold of the training sections, offsets tuned out of fold (heads.crossfit)
        head = CrossFitHead(head, folds=args.cross_fit).fit(train_maps, train_masks)
        print(f"cross-fitted {args.cross_fit} copies (held out {head.folds_}); decision offsets "
              f"{head.decision_['offsets']} tuned out of fold: {head.decision_['mean_dice_out_of_fold']}", flush=True)
    elif args.tune_holdout:  # offsets chosen on held-out training sections, then refit on all (heads.fit_tuned)
        head = fit_tuned(head, train_maps, train_masks, holdout=args.tune_holdout, refit=args.refit)
        print(f"decision offsets {head.decision_['offsets']} tuned on training images "
              f"{head.decision_['held_out_images']}: {head.decision_['mean_dice_held_out']}", flush=True)
    else:
        head.fit(train_maps, train_masks)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.tune:  # also report the test sections under offsets chosen on the tuning sections
        tune_maps, tune_masks, _ = load(sections(args.tune), floats(args.sigmas), args.cache)
        bias, _, _ = tune_offsets([head.predict_proba(fm) for fm in tune_maps], tune_masks)  # heads.decision
        proba = [head.predict_proba(fm) for fm in test_maps]
        args.tuned_pred = [head.classes_[(np.log(np.clip(p, 1e-7, 1.0)) + bias).argmax(axis=-1)] for p in proba]
        args.tuned_bias = bias.tolist()
        pred = [head.classes_[p.argmax(axis=-1)] for p in proba]
    else:
        pred = [head.predict(fm) for fm in test_maps]
    return pred, t_fit, time.perf_counter() - t0, {**head.get_params(deep=False), "head": repr(head),
                                                   "decision": getattr(head, "decision_", None)}


def run_sklearn(kind: str, args, train_maps, train_masks, test_maps) -> tuple[list[np.ndarray], float, float, dict]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    X, y = balanced_sample(train_maps, train_masks, args.samples, args.seed)
    if kind == "hgb":
        model = HistGradientBoostingClassifier(max_iter=200, random_state=args.seed)
    else:
        model = RandomForestClassifier(n_estimators=100, n_jobs=args.threads, random_state=args.seed)
    t0 = time.perf_counter()
    model.fit(X, y)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = [model.predict(fm.flat()).reshape(fm.image_shape).astype(np.uint8) for fm in test_maps]
    return pred, t_fit, time.perf_counter() - t0, {"samples": int(y.size), **model.get_params()}


def run_mlp(args, train_maps, train_masks, test_maps) -> tuple[list[np.ndarray], float, float, dict]:
    from neuros.plugins.cv.heads import make_head

    head = make_head("mlp", seed=args.seed, class_weight="balanced", max_samples_per_class=70_000)
    t0 = time.perf_counter()
    head.fit(train_maps, train_masks)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = head.predict(test_maps)
    return pred, t_fit, time.perf_counter() - t0, head.get_params(deep=False)


def run_baseline(kind: str, args) -> tuple[list[np.ndarray], float, float, dict]:
    """The ilastik recipe or the patch row, on the raw sections (they make their own features: timed)."""
    train = load_sstem(sections=sections(args.train), downsample=1)
    test = load_sstem(sections=sections(args.test), downsample=1)
    if kind == "ilastik":
        from neuros.plugins.cv.classical import IlastikRecipe

        model = IlastikRecipe(n_estimators=100, max_pixels=200_000, n_jobs=-1, seed=args.seed)
        t0 = time.perf_counter()
        model.fit(list(train.images), list(train.masks))
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = [model.predict(im) for im in test.images]
        return pred, t_fit, time.perf_counter() - t0, {"n_estimators": 100, "max_pixels": 200_000}
    from neuros.plugins.cv.backbones import get_backbone
    from neuros.plugins.cv.heads import DEFAULT_HEAD, make_head

    bb = get_backbone("filterbank")
    head = make_head(DEFAULT_HEAD.kind, seed=args.seed, class_weight=DEFAULT_HEAD.class_weight)
    t0 = time.perf_counter()
    head.fit([bb.extract(im) for im in train.images], list(train.masks))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = head.predict([bb.extract(im) for im in test.images], level="pixel")
    return pred, t_fit, time.perf_counter() - t0, {"backbone": "filterbank", **head.get_params(deep=False)}


def main(argv: list[str] | None = None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="0-7", help="training sections (default 0-7)")
    p.add_argument("--test", default="8-13", help="test sections (default 8-13; use a training section to tune)")
    p.add_argument("--rows", default="conv,hgb,rf",
                   help="comma-separated: conv, hgb, rf, mlp on the filter bank; ilastik, patch as baselines")
    p.add_argument("--sigmas", default="0.7,1,2,4,8,16", help="filter-bank scales")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--dilations", default="1,2,4,8,16")
    p.add_argument("--trunk-stride", type=int, default=4)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                   help="random rotations/flips of the training windows (default off, as the head)")
    p.add_argument("--tta", choices=("auto", "on", "off"), default="auto",
                   help="conv: average the 8 symmetries at prediction (auto, the head's default: filter bank only)")
    p.add_argument("--tune-holdout", type=int, default=0, metavar="N",
                   help="conv: choose decision offsets on N held-out training sections, then refit on all of them "
                        "(heads.fit_tuned; the test sections are never seen)")
    p.add_argument("--cross-fit", type=int, default=0, metavar="K",
                   help="conv: K copies, each trained without one fold of the training sections, probabilities "
                        "averaged, decision offsets tuned on the out-of-fold predictions (heads.CrossFitHead)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="with --tune-holdout: refit on every training section after tuning (default), or keep the "
                        "head fitted without the held-out sections (--no-refit)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--class-weight", default="balanced", type=lambda s: None if s == "none" else s)
    p.add_argument("--tune", default="", help="conv: also choose per-class decision offsets on these sections "
                   "(neither trained nor tested, e.g. 6-7 with --train 0-5) and report the test with them")
    p.add_argument("--samples", type=int, default=200_000, help="pixels sampled for hgb/rf (class-balanced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--cache", type=Path, help="keep extracted features here (float32 .npy) to rerun quickly")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sigmas = floats(args.sigmas)
    train_maps, train_masks, t_feat_train = load(sections(args.train), sigmas, args.cache)
    test_maps, test_masks, t_feat_test = load(sections(args.test), sigmas, args.cache)
    print(f"features: {train_maps[0].feature_dim} channels (sigmas {sigmas}); extraction {t_feat_train:.0f} s "
          f"train, {t_feat_test:.0f} s test", flush=True)
    rows = []
    for kind in args.rows.split(","):
        if kind in ("ilastik", "patch"):
            pred, t_fit, t_pred, params = run_baseline(kind, args)
        else:
            runner = {"conv": run_conv, "mlp": run_mlp}.get(kind, lambda *a, k=kind: run_sklearn(k, *a))
            pred, t_fit, t_pred, params = runner(args, train_maps, train_masks, test_maps)
        scores = score_images(test_masks, pred, 3, CLASSES, n_boot=200, seed=0)
        row = {"row": kind, "membrane": scores["classes"]["membrane"]["dice"],
               "mitochondria": scores["classes"]["mitochondria"]["dice"],
               "membrane_ci": scores["classes"]["membrane"]["dice_ci"],
               "mitochondria_ci": scores["classes"]["mitochondria"]["dice_ci"],
               "train_s": t_fit, "predict_s": t_pred, "params": params,
               "confusion": sum(confusion(t, q, 3) for t, q in zip(test_masks, pred, strict=True)).tolist()}
        rows.append(row)
        if kind == "conv" and args.tune:
            t = score_images(test_masks, args.tuned_pred, 3, CLASSES, n_boot=200, seed=0)
            rows.append({"row": "conv + offsets tuned on " + args.tune, "bias": args.tuned_bias,
                         "membrane": t["classes"]["membrane"]["dice"],
                         "mitochondria": t["classes"]["mitochondria"]["dice"],
                         "membrane_ci": t["classes"]["membrane"]["dice_ci"],
                         "mitochondria_ci": t["classes"]["mitochondria"]["dice_ci"]})
            print(f"| conv + offsets {args.tuned_bias} | {rows[-1]['membrane']:.3f} | "
                  f"{rows[-1]['mitochondria']:.3f} |", flush=True)
        print(f"| {kind} | {row['membrane']:.3f} | {row['mitochondria']:.3f} | {t_fit:.0f} | {t_pred:.0f} |",
              flush=True)
    out = {"machine": machine(), "train": sections(args.train), "test": sections(args.test),
           "sigmas": list(sigmas), "feature_s": {"train": t_feat_train, "test": t_feat_test}, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
