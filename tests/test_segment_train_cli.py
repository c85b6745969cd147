"""``neuros-cv segment train``: masks with many values are refused or binarised; the default head is the
documented one (the real suite's head settings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.catalog import read_sstem_mask
from neuros.plugins.cv.datasets.io import read_array
from neuros.plugins.cv.datasets.synthetic import make_dataset
from neuros.plugins.cv.experiments.real_suite import RealSuiteConfig
from neuros.plugins.cv.heads import DEFAULT_HEAD, load_head
from neuros.plugins.cv.labels import check_training_masks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two 64² EM images; a disc as 0/255 mask, its anti-aliased (66 grey levels) and 1-bit versions."""
    d = tmp_path_factory.mktemp("train")
    im, _ = make_dataset("em", 2, 64, seed=3, protocol="random")
    yy, xx = np.mgrid[:64, :64]
    fg = np.stack([(yy - 24) ** 2 + (xx - 30) ** 2 < 18**2, (yy - 40) ** 2 + (xx - 36) ** 2 < 16**2])
    for i in range(2):
        Image.fromarray((im[i] * 255).astype(np.uint8)).save(d / f"img{i}.png")
        Image.fromarray(np.where(fg[i], 255, 0).astype(np.uint8)).save(d / f"mask{i}.png")
        Image.fromarray(fg[i]).convert("1").save(d / f"bit{i}.png")
        # Anti-aliased: grey ramps across a few pixels at the object edge (0..255, 66 distinct levels).
        from scipy import ndimage

        dist = ndimage.distance_transform_edt(~fg[i]) - ndimage.distance_transform_edt(fg[i])
        grey = np.clip(127.5 - dist * 40, 0, 255)
        grey = (np.round(grey / 4) * 4).clip(0, 255).astype(np.uint8)
        grey[0, :65] = np.arange(0, 256, 4)[:64]  # every grey level present
        grey[1, :2] = (1, 255)
        Image.fromarray(grey, mode="L").save(d / f"grey{i}.png")
    return d, fg


def _err(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("neuros-cv")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _train(d, masks, out, *extra):
    return main(["segment", "train", "--images", str(d / "img0.png"), str(d / "img1.png"), "--masks",
                 *(str(d / m) for m in masks), "--backbone", "filterbank", "--out", str(out), *extra])


def test_grey_mask_refused_with_count_and_fix(files, tmp_path, capsys):
    d, _ = files
    n = np.unique(read_array(d / "grey0.png")).size
    assert n > 16
    assert _train(d, ["grey0.png", "grey1.png"], tmp_path / "h") == 2
    line = _err(capsys)
    assert f"mask grey0.png has {n} distinct values (more than --max-classes 16)" in line
    assert "--threshold 127" in line and "--classes" in line
    assert not (tmp_path / "h").exists()
    # An image passed as its own mask: ~hundreds of values, refused the same way.
    assert main(["segment", "train", "--images", str(d / "img0.png"), "--masks", str(d / "img0.png"),
                 "--backbone", "filterbank", "--out", str(tmp_path / "h")]) == 2
    assert "img0.png has" in _err(capsys)
    # Raising --max-classes is the explicit opt-in to many classes.
    assert _train(d, ["grey0.png", "grey1.png"], tmp_path / "h", "--max-classes", "300") == 0
    union = np.union1d(read_array(d / "grey0.png"), read_array(d / "grey1.png"))
    assert load_head(tmp_path / "h").classes_.tolist() == union.tolist()


def test_threshold_binarises_and_matches_the_clean_mask(files, tmp_path, capsys):
    d, _ = files
    assert _train(d, ["grey0.png", "grey1.png"], tmp_path / "t", "--threshold", "127") == 0
    assert "classes [0, 1]" in capsys.readouterr().out
    # 1-bit masks keep their foreground under --threshold 127 (True is not > 127 as a number).
    assert _train(d, ["bit0.png", "grey1.png"], tmp_path / "b", "--threshold", "127") == 0
    assert "classes [0, 1]" in capsys.readouterr().out
    # Without it, mixing a 1-bit file with 0/255 labels is refused rather than training 3 classes.
    assert _train(d, ["bit0.png", "mask1.png"], tmp_path / "x") == 2
    assert "mix 1-bit files (bit0.png: 0/1) with label values up to 255 (mask1.png)" in _err(capsys)
    with pytest.raises(SystemExit):  # argparse: the two options exclude each other
        _train(d, ["grey0.png", "grey1.png"], tmp_path / "y", "--threshold", "127", "--classes", "255")
    assert "not allowed with argument" in capsys.readouterr().err


def test_classes_keep_values_rest_is_background(files, tmp_path, capsys):
    d, _ = files
    assert _train(d, ["grey0.png", "grey1.png"], tmp_path / "c", "--classes", "255") == 0
    assert "classes [0, 255]" in capsys.readouterr().out
    grey = [read_array(d / f"grey{i}.png") for i in range(2)]
    kept = check_training_masks(grey, ["a", "b"], classes=[255])
    assert set(np.unique(kept[0])) == {0, 255} and np.array_equal(kept[0] == 255, grey[0] == 255)
    assert _train(d, ["grey0.png", "grey1.png"], tmp_path / "d", "--classes", "254") == 2
    assert "--classes value(s) [254] occur in no mask" in _err(capsys)


def test_non_integer_and_colour_masks_refused(files, tmp_path, capsys):
    d, fg = files
    prob = tmp_path / "prob"
    prob.mkdir()
    for i in range(2):
        tifffile.imwrite(prob / f"p{i}.tif", (fg[i] * 0.8 + 0.1).astype(np.float32))
    args = ["segment", "train", "--images", str(d / "img0.png"), str(d / "img1.png"), "--masks",
            str(prob / "p0.tif"), str(prob / "p1.tif"), "--backbone", "filterbank", "--out", str(tmp_path / "h")]
    assert main(args) == 2
    assert "mask p0.tif holds non-integer values (e.g. 0.1): binarise with --threshold T" in _err(capsys)
    assert main([*args, "--threshold", "0.5"]) == 0
    assert "classes [0, 1]" in capsys.readouterr().out
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert main(["segment", "train", "--images", str(d / "img0.png"), "--masks", str(tmp_path / "rgb.png"),
                 "--backbone", "filterbank", "--out", str(tmp_path / "r")]) == 2
    assert "rgb.png is a colour image" in _err(capsys)
    # 0/1 (or 0..1 probability) masks with a threshold >= 1 would be emptied: refused.
    for zero_one in (fg[0].astype(np.uint8), fg[0] * 0.9):
        with pytest.raises(ValueError, match=r"values in 0\.\.1, all <= threshold= 127, so it would be all"):
            check_training_masks([zero_one], ["m.png"], threshold=127)


def test_palette_png_masks_give_their_indices(files, tmp_path, capsys):
    """Indexed-colour PNG masks (labels shown in colour) train on their indices, not on RGB colours."""
    d, fg = files
    pal = tmp_path / "pal"
    pal.mkdir()
    for i in range(2):
        im = Image.fromarray((fg[i] * 2).astype(np.uint8), mode="P")
        im.putpalette([0, 0, 0, 255, 255, 0, 255, 0, 0] + [0] * 759)
        im.save(pal / f"m{i}.png")
    args = ["segment", "train", "--images", str(d / "img0.png"), str(d / "img1.png"), "--masks",
            str(pal / "m0.png"), str(pal / "m1.png"), "--backbone", "filterbank", "--out", str(tmp_path / "h")]
    assert main(args) == 0
    assert "classes [0, 2]" in capsys.readouterr().out


def test_default_head_is_the_suites_head(files, tmp_path, capsys):
    d, _ = files
    suite = RealSuiteConfig()
    assert (suite.head, suite.class_weight, suite.label_rule) == (
        DEFAULT_HEAD.kind, DEFAULT_HEAD.class_weight, DEFAULT_HEAD.label_rule)
    assert _train(d, ["mask0.png", "mask1.png"], tmp_path / "def") == 0
    assert "class_weight=balanced" in capsys.readouterr().out
    head = load_head(tmp_path / "def")
    assert (head.kind, head.class_weight, head.label_rule) == (suite.head, suite.class_weight, suite.label_rule)
    assert json.loads((tmp_path / "def" / "head.json").read_text())["params"]["class_weight"] == "balanced"
    assert _train(d, ["mask0.png", "mask1.png"], tmp_path / "unb", "--no-balanced") == 0
    assert load_head(tmp_path / "unb").class_weight is None
    # kNN has no class weights: the default leaves them off; asking for them is a one-line error.
    assert _train(d, ["mask0.png", "mask1.png"], tmp_path / "knn", "--head", "knn") == 0
    assert load_head(tmp_path / "knn").class_weight is None
    capsys.readouterr()
    assert _train(d, ["mask0.png", "mask1.png"], tmp_path / "knn2", "--head", "knn", "--balanced") == 2
    assert "knn head has no class weights" in _err(capsys)


def test_real_sstem_mitochondria_masks(sstem_dir, tmp_path, capsys):
    """The published mitochondria PNGs (anti-aliased 8-bit; 1-bit for sections 01/07) via the CLI's checks."""
    raw, mito = sstem_dir / "raw", sstem_dir / "mitochondria"
    assert main(["segment", "train", "--images", str(raw / "00.tif"), str(raw / "01.tif"), "--masks",
                 str(mito / "00.png"), str(mito / "01.png"), "--backbone", "filterbank",
                 "--out", str(tmp_path / "h")]) == 2
    assert "mask 00.png has 36 distinct values (more than --max-classes 16)" in _err(capsys)
    masks = [read_array(mito / f"{s:02d}.png") for s in (0, 1, 7)]
    binary = check_training_masks(masks, ["00", "01", "07"], threshold=127, cli=True)
    for s, b in zip((0, 1, 7), binary, strict=True):
        np.testing.assert_array_equal(b.astype(bool), read_sstem_mask(sstem_dir, "mitochondria", s))
        assert 0.02 < b.mean() < 0.12
