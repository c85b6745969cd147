"""``register --model``, ``align --model`` and their transform files on real images with known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.pairs import make_pair, target_registration_error
from neuros.plugins.cv.transforms import LinearTransform, load_transform

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("nilearn")


def test_register_model_cross_contrast_pair_and_warp(tmp_path, capsys):
    pair = make_pair("mri-t2", "affine", seed=1)
    tifffile.imwrite(tmp_path / "fixed.tif", pair.fixed)
    tifffile.imwrite(tmp_path / "moving.tif", pair.moving)
    tifffile.imwrite(tmp_path / "labels.tif", pair.moving_labels)
    assert main(["register", str(tmp_path / "fixed.tif"), str(tmp_path / "moving.tif"), "--model", "affine",
                 "--transform-out", str(tmp_path / "t.tfm"), "--out", str(tmp_path / "moved.tif")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["reliable"] and rec["fixed_shape"] == list(pair.fixed.shape) and rec["grid"] == "fixed"
    t = load_transform(tmp_path / "t.tfm")
    assert target_registration_error(t, pair.truth, pair.fixed.shape) < 1.0
    assert tifffile.imread(tmp_path / "moved.tif").shape == pair.fixed.shape  # different sizes: the fixed grid
    assert main(["warp", str(tmp_path / "labels.tif"), "--transform", str(tmp_path / "t.tfm"),
                 "--fixed", str(tmp_path / "fixed.tif"), "--out", str(tmp_path / "labels_on_fixed.tif")]) == 0
    warped = tifffile.imread(tmp_path / "labels_on_fixed.tif")
    assert (warped == pair.fixed_labels).mean() > 0.95


def test_register_model_warns_in_one_line_when_unreliable(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", rng.random((96, 96)).astype(np.float32))
    tifffile.imwrite(tmp_path / "b.tif", rng.random((80, 90)).astype(np.float32))
    assert main(["register", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model", "rigid"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["reliable"] is False
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "unreliable result" in warning[0]
    # flags of the translation model are refused with --model, and vice versa
    assert main(["register", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model", "rigid",
                 "--max-shift", "5"]) != 0
    assert "--max-shift applies to the translation model" in capsys.readouterr().err
    assert main(["register", str(tmp_path / "a.tif"), str(tmp_path / "a.tif"), "--transform-out",
                 str(tmp_path / "t.tfm")]) != 0
    assert "--transform-out needs --model" in capsys.readouterr().err


def test_align_model_recovers_rotated_sections(tmp_path, sstem_dir, capsys):
    from neuros.plugins.cv.datasets.catalog import load_sstem

    base = load_sstem(str(sstem_dir), sections=[4], downsample=4).images[0]  # 256², 18 nm pixels
    truths = [LinearTransform.rigid(a, shift=s, center=(64, 64)) @ LinearTransform.translation((64, 64))
              for a, s in ((0.0, (0, 0)), (0.15, (3, -2)), (-0.1, (-4, 5)))]
    stack = np.stack([t.apply(base, (128, 128)) for t in truths])  # the same tissue, rotated and moved
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    assert main(["align", str(tmp_path / "stack.tif"), "--model", "rigid", "--out", str(tmp_path / "aligned.tif"),
                 "--transforms", str(tmp_path / "transforms")]) == 0
    aligned = tifffile.imread(tmp_path / "aligned.tif")
    inner = np.s_[24:-24, 24:-24]
    for k in (1, 2):
        assert np.abs(aligned[k][inner] - aligned[0][inner]).mean() < 0.4 * np.abs(stack[k][inner] -
                                                                                     stack[0][inner]).mean()
    files = sorted(p.name for p in (tmp_path / "transforms").iterdir() if not p.name.startswith("."))
    assert files == ["section_0000.tfm", "section_0001.tfm", "section_0002.tfm", "transforms.csv"]
    # section i's file maps section 0's grid into section i: compare with the truth relative to section 0
    centre = np.array([[64.0, 64.0]])
    for k in (1, 2):
        t = load_transform(tmp_path / "transforms" / f"section_{k:04d}.tfm")
        truth = truths[k].inverse() @ truths[0]  # section 0's grid → section k
        assert np.linalg.norm(t.map_points(centre) - truth.map_points(centre)) < 1.0
