"""Decision offsets tuned on held-out images (heads.decision): the search, the procedure, saving, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.dense import TiledFeatures
from neuros.plugins.cv.heads import fit_tuned, load_head, make_head, tune_offsets
from neuros.plugins.cv.heads.decision import DEFAULT_GRID


def test_offsets_undo_a_known_prior_shift():
    """Posteriors of a rare class inflated by e^1.5: the search finds -1.5 and recovers every decision."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 200, 200, 3)) * 2.0
    logits[..., 2] -= 2.0                               # class 2 is rare
    true_p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    truth = true_p.argmax(-1)                           # the decisions the unshifted posteriors make
    shifted = true_p * np.array([1.0, 1.0, np.exp(1.5)])
    shifted /= shifted.sum(-1, keepdims=True)
    offsets, before, after = tune_offsets(list(shifted), list(truth))
    assert offsets.dtype == np.float32 and offsets.shape == (3,) and offsets[0] == 0
    assert offsets[1] == pytest.approx(0.0) and offsets[2] == pytest.approx(-1.5)
    assert before < 0.95 and after == pytest.approx(1.0)
    # unlabelled pixels (-1) are not scored: hide every class-2 pixel and class 2 can only be wrong
    hidden = np.where(truth == 2, -1, truth)
    far, _, after_far = tune_offsets(list(shifted), list(hidden), shrink=False)
    assert far[2] == min(DEFAULT_GRID) and after_far > after - 0.05  # the search pushes it as far as the grid goes
    # ... where the last steps change almost nothing: the one-standard-error rule steps back towards zero
    near, _, after_near = tune_offsets(list(shifted), list(hidden))
    assert min(DEFAULT_GRID) < near[2] < 0 and near[1] == far[1] and after_near > after_far - 0.01


def test_shrink_keeps_a_clear_optimum_and_leaves_a_flat_one():
    """A score flat for class-1 offsets in [-2, -0.5]: the search stops at -2, the rule steps back to -0.5."""
    rng = np.random.default_rng(1)
    truth = [rng.integers(0, 2, size=(60, 60)) for _ in range(3)]
    proba = []
    for t in truth:
        p1 = np.where(t == 1, 0.9, 0.1)  # positives survive offsets down to log(0.1 / 0.9) ≈ -2.2
        p1[:3] = np.where(t[:3] == 1, 0.9, 0.6)  # negatives called positive unless offset < log(0.4 / 0.6) ≈ -0.4
        proba.append(np.stack([1 - p1, p1], -1))
    far, _, after_far = tune_offsets(proba, truth, shrink=False)
    near, _, after = tune_offsets(proba, truth)
    assert far[1] == -2.0 and near[1] == -0.5 and after == after_far == 1.0
    # a prior shift is not flat: every step towards zero loses on every image, so nothing moves
    logits = rng.normal(size=(3, 80, 80, 3)) * 2.0
    logits[..., 2] -= 2.0
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    lab = p.argmax(-1)
    shifted = p * np.array([1.0, 1.0, np.exp(1.5)])
    shifted /= shifted.sum(-1, keepdims=True)
    np.testing.assert_array_equal(tune_offsets(list(shifted), list(lab))[0], [0.0, 0.0, -1.5])


def _em_images(n: int = 4, size: int = 96):
    from neuros.plugins.cv.datasets.synthetic import make_image

    out = [make_image("em", size, seed=s) for s in range(n)]
    return [im for im, _ in out], [m.astype(np.int64) for _, m in out]


def test_fit_tuned_refits_on_all_images_and_every_path_applies_the_offsets(tmp_path):
    images, masks = _em_images()
    bb = get_backbone("filterbank[stride=1,sigmas=[1,2,4]]")
    maps = [TiledFeatures(bb, im, tile=64) for im in images]
    kw = {"class_weight": "balanced", "max_samples_per_class": 400, "seed": 1}
    head = fit_tuned(make_head("logistic", **kw), maps, masks, holdout=1)
    plain = make_head("logistic", **kw).fit(maps, masks)  # refit=True: the same fit as without tuning
    np.testing.assert_array_equal(head.predict_proba(maps[0]), plain.predict_proba(maps[0]))
    d = head.decision_
    assert len(d["held_out_images"]) == 1 and d["refit"] is True
    assert d["mean_dice_held_out"]["tuned"] >= d["mean_dice_held_out"]["argmax"]
    assert np.any(head.decision_offsets_ != 0), "balanced weights on a rare class: some offset must move"
    proba = head.predict_proba(maps[0])
    shifted = head.classes_[(np.log(np.clip(proba, 1e-7, None)) + head.decision_offsets_).argmax(-1)]
    np.testing.assert_array_equal(head.predict(maps[0]), shifted)        # the tiled stride-1 path
    np.testing.assert_array_equal(head.decide(proba), shifted)
    assert not np.array_equal(shifted, plain.predict(maps[0])), "the offsets change some decisions here"
    head.save(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    assert meta["decision"]["offsets"] == [float(v) for v in head.decision_offsets_]
    loaded = load_head(tmp_path / "head")
    np.testing.assert_array_equal(loaded.predict(maps[0]), shifted)
    again = fit_tuned(make_head("logistic", **kw), maps, masks, holdout=1)  # reproducible from the seed
    np.testing.assert_array_equal(again.decision_offsets_, head.decision_offsets_)
    refit = make_head("logistic", **kw).fit(maps, masks)
    assert getattr(refit, "decision_offsets_", None) is None  # a plain fit has none (and fit() clears them)


def test_fit_tuned_errors_are_one_line():
    images, masks = _em_images(n=1)
    fm = get_backbone("filterbank").extract(images[0])
    with pytest.raises(ValueError, match="images to train on and images to hold out: 1 training"):
        fit_tuned(make_head("logistic"), [fm], masks, holdout=1)
    for bad in (0, 1.5, True):  # 1.5 images is neither a count nor a fraction: refused, not rounded
        with pytest.raises(ValueError, match="holdout must be a positive number"):
            fit_tuned(make_head("logistic"), [fm, fm], masks * 2, holdout=bad)


def test_segment_train_tune_holdout_cli(tmp_path, capsys, em_tiffs):
    from neuros.plugins.cv.cli import main

    images, _, ims, ms = em_tiffs(3, 80)
    rc = main(["segment", "train", "--images", *ims, "--masks", *ms, "--backbone", "filterbank[stride=1]",
               "--head", "logistic", "--balanced", "--tune-holdout", "1", "--out", str(tmp_path / "head")])
    assert rc == 0
    assert "decision offsets" in capsys.readouterr().out
    head = load_head(tmp_path / "head")
    assert head.decision_["held_out_images"] and head.decision_offsets_.shape == (len(head.classes_),)
    assert main(["segment", "predict", "--head", str(tmp_path / "head"), ims[0], "--out", str(tmp_path / "pred")]) == 0
    written = tifffile.imread(tmp_path / "pred" / "im0.tif") if (tmp_path / "pred" / "im0.tif").exists() else None
    if written is None:
        from PIL import Image

        written = np.asarray(Image.open(tmp_path / "pred" / "im0.png"))
    bb = get_backbone("filterbank[stride=1]")
    np.testing.assert_array_equal(written, head.predict(TiledFeatures(bb, images[0])))
    with pytest.raises(SystemExit):
        main(["segment", "train", "--images", *ims, "--masks", *ms, "--tune-holdout", "1.5", "--out",
              str(tmp_path / "bad")])
