"""Cross-fitted heads (heads.crossfit): copies trained without their fold, averaged, offsets tuned out of fold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.dense import TiledFeatures
from neuros.plugins.cv.heads import CrossFitHead, load_head, make_head, tune_offsets
from neuros.plugins.cv.labels import encode_masks

KW = {"class_weight": "balanced", "max_samples_per_class": 300, "seed": 1}


def _em(n: int = 4, size: int = 80):
    from neuros.plugins.cv.datasets.synthetic import make_image

    out = [make_image("em", size, seed=s) for s in range(n)]
    return [im for im, _ in out], [m.astype(np.int64) for _, m in out]


@pytest.fixture(scope="module")
def em():
    images, masks = _em()
    bb = get_backbone("filterbank[stride=1,sigmas=[1,2,4]]")
    return images, masks, [TiledFeatures(bb, im, tile=64) for im in images], bb


def test_each_copy_misses_its_fold_and_the_offsets_are_tuned_out_of_fold(em):
    images, masks, maps, _ = em
    head = CrossFitHead(make_head("logistic", **KW), folds=2).fit(maps, masks)
    assert head.folds_ == [[0, 1], [2, 3]] and len(head.members_) == 2  # contiguous folds, KFold without shuffle
    for member, held in zip(head.members_, head.folds_, strict=True):
        rest = [i for i in range(4) if i not in held]
        alone = make_head("logistic", **KW).fit([maps[i] for i in rest], [masks[i] for i in rest])
        np.testing.assert_array_equal(member.predict_proba(maps[0]), alone.predict_proba(maps[0]))
    # the offsets are tune_offsets on the out-of-fold predictions, pooled over every training image
    proba, truth = [], []
    for member, held in zip(head.members_, head.folds_, strict=True):
        proba += member.predict_proba([maps[i] for i in held])
        truth += encode_masks([masks[i] for i in held], [images[i].shape for i in held], classes=head.classes_)[0]
    want, before, after = tune_offsets(proba, truth)
    np.testing.assert_array_equal(head.decision_offsets_, want)
    assert head.decision_["mean_dice_out_of_fold"] == {"argmax": before, "tuned": after}
    # prediction: the copies' mean probabilities, decided with the offsets (set here to ones that move decisions)
    mean = (head.members_[0].predict_proba(maps[1]) + head.members_[1].predict_proba(maps[1])) / 2
    np.testing.assert_allclose(head.predict_proba(maps[1]), mean, rtol=1e-6)
    head.decision_offsets_ = np.array([0.0, -1.0], dtype=np.float32)
    expect = head.classes_[(np.log(np.clip(mean, 1e-7, None)) + head.decision_offsets_).argmax(-1)]
    assert not np.array_equal(expect, head.classes_[mean.argmax(-1)])
    np.testing.assert_array_equal(head.predict(maps[1]), expect)
    assert head.fitted_kind == "crossfit(logistic)" and head.unlabelled is None and head.class_weight == "balanced"
    untuned = CrossFitHead(make_head("logistic", **KW), folds=2, tune=False).fit(maps, masks)
    assert getattr(untuned, "decision_offsets_", None) is None
    np.testing.assert_array_equal(untuned.predict(maps[1]), head.classes_[mean.argmax(-1)])


def test_saves_loads_clones_and_is_reproducible(em, tmp_path):
    _, masks, maps, _ = em
    head = CrossFitHead(make_head("logistic", **KW), folds=2).fit(maps, masks)
    head.save(tmp_path / "cf")
    meta = json.loads((tmp_path / "cf" / "head.json").read_text())
    assert meta["kind"] == "crossfit" and meta["params"]["head"]["kind"] == "logistic"
    assert meta["members"] == ["member-0", "member-1"] and meta["held_out_folds"] == [[0, 1], [2, 3]]
    assert all(f"member-{i}/head.json" in meta["files"] for i in range(2))
    loaded = load_head(tmp_path / "cf")
    assert isinstance(loaded, CrossFitHead) and loaded.folds_ == head.folds_
    np.testing.assert_array_equal(loaded.predict(maps[2]), head.predict(maps[2]))
    np.testing.assert_array_equal(loaded.decision_offsets_, head.decision_offsets_)
    copy = clone(head)
    assert copy.get_params(deep=False)["folds"] == 2 and not hasattr(copy, "members_")
    again = copy.fit(maps, masks)
    np.testing.assert_array_equal(again.predict(maps[2]), head.predict(maps[2]))
    assert "head__seed" in head.get_params() and "head__seed" not in repr(head)


def test_conv_copies_save_their_weights(tmp_path):
    images, masks = _em(n=2, size=64)
    bb = get_backbone("filterbank[stride=1,sigmas=[1,2]]")
    maps = [bb.extract(im) for im in images]
    conv = make_head("conv", channels=8, dilations=(1, 2), trunk_stride=2, steps=3, crop=32, batch_size=2,
                     tta=False)
    head = CrossFitHead(conv, folds=2).fit(maps, masks)
    head.save(tmp_path / "cf")
    assert (tmp_path / "cf" / "member-1" / "conv.safetensors").is_file()
    np.testing.assert_allclose(load_head(tmp_path / "cf").predict_proba(maps[0]), head.predict_proba(maps[0]),
                               rtol=1e-5, atol=1e-6)


def test_errors_are_one_line(em):
    _, masks, maps, _ = em
    with pytest.raises(ValueError, match="folds=5 needs at least 5 training images, got 4"):
        CrossFitHead(make_head("logistic"), folds=5).fit(maps, masks)
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="folds must be an integer >= 2"):
            CrossFitHead(make_head("logistic"), folds=bad).fit(maps, masks)
    with pytest.raises(ValueError, match="needs a head to copy"):
        CrossFitHead(None).fit(maps, masks)
    only_first = [m.copy() for m in masks]
    for m in only_first[:2]:  # a class 2 labelled in images 0-1 only: the copy trained on 2-3 never sees it
        m[:6, :6] = 2
    with pytest.raises(ValueError, match="every class must be labelled outside each fold"):
        CrossFitHead(make_head("logistic"), folds=2).fit(maps, only_first)


def test_segment_train_cross_fit_cli(tmp_path, capsys, em_tiffs):
    from neuros.plugins.cv.cli import main

    images, _, ims, ms = em_tiffs(3, 72)
    base = ["segment", "train", "--images", *ims, "--masks", *ms, "--backbone", "filterbank[stride=1]",
            "--head", "logistic", "--balanced"]
    assert main([*base, "--cross-fit", "3", "--out", str(tmp_path / "head")]) == 0
    assert "3 cross-fitted copies (held out [[0], [1], [2]])" in capsys.readouterr().out
    head = load_head(tmp_path / "head")
    assert isinstance(head, CrossFitHead) and head.decision_offsets_.shape == (len(head.classes_),)
    assert main(["segment", "predict", "--head", str(tmp_path / "head"), ims[0], "--out", str(tmp_path / "pred")]) == 0
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "pred" / "im0.png"))
    bb = get_backbone("filterbank[stride=1]")
    np.testing.assert_array_equal(written, head.predict(TiledFeatures(bb, images[0])))
    assert main([*base, "--cross-fit", "2", "--tune-holdout", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "drop --tune-holdout" in capsys.readouterr().err
    assert main([*base, "--cross-fit", "1", "--out", str(tmp_path / "bad")]) == 2  # the head's own check
    assert "folds must be an integer >= 2, got 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_segment_train_conv_head_at_stride_1_through_the_cli(tmp_path, monkeypatch, capsys, em_tiffs):
    """The pixel sampling budget is for table heads: `--head conv` at stride 1 trains without a flag (it used to be
    refused with max_samples_per_class), and an explicit budget is still refused in one line."""
    import neuros.plugins.cv.cli.segment as seg
    from neuros.plugins.cv.cli import main

    real = seg.make_head
    monkeypatch.setattr(seg, "make_head", lambda kind, **kw: real(kind, **(
        {**kw, "steps": 3, "crop": 32, "batch_size": 2, "channels": 8, "dilations": (1, 2)} if kind == "conv" else kw)))
    _, _, ims, ms = em_tiffs(2, 64)
    base = ["segment", "train", "--images", *ims, "--masks", *ms, "--backbone", "filterbank[stride=1]", "--head",
            "conv"]
    assert main([*base, "--cross-fit", "2", "--out", str(tmp_path / "conv")]) == 0
    head = load_head(tmp_path / "conv")
    assert head.fitted_kind == "crossfit(conv)" and head.members_[0].max_samples_per_class is None
    assert main([*base, "--max-samples-per-class", "500", "--out", str(tmp_path / "bad")]) == 2
    assert "max_samples_per_class does not apply" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_context_px_is_the_decoders_reach_for_blockwise_halos():
    """`volume segment` adds a head's own reach to the backbone halo: 0 for table heads, the decoder's for conv."""
    images, masks = _em(n=2, size=64)
    bb = get_backbone("filterbank[stride=1,sigmas=[1,2]]")
    maps = [bb.extract(im) for im in images]
    conv = make_head("conv", channels=8, dilations=(1, 2), trunk_stride=2, steps=2, crop=32, batch_size=2, tta=False)
    assert conv.fit(maps, masks).context_px == conv.halo > 0
    assert make_head("logistic").fit(maps, masks).context_px == 0
    assert CrossFitHead(clone(conv), folds=2).fit(maps, masks).context_px == conv.halo
