"""Outputs other tools open: NIfTI in → NIfTI out (affine, header, axis order), palette masks that viewers show,
probability maps, overlay previews, ``segment evaluate``, and NIfTI outputs of ``register`` / ``align``."""

from __future__ import annotations

import json
import os

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from neuros.plugins.cv.backbones.base import get_backbone
from neuros.plugins.cv.backbones.weights import missing_weights_message
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.io import image_slices, read_array
from neuros.plugins.cv.heads import load_head, make_head
from neuros.plugins.cv.metrics import score_images
from neuros.plugins.cv.output import MARKER


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """A real NIfTI: nilearn's MNI152 template, subsampled (3, 3, 6) with its affine scaled to match."""
    datasets = pytest.importorskip("nilearn.datasets")
    t = datasets.load_mni152_template(resolution=2)
    data = np.asarray(t.dataobj, dtype=np.float32)[::3, ::3, ::6]
    affine = t.affine @ np.diag([3.0, 3.0, 6.0, 1.0])
    path = tmp_path_factory.mktemp("nifti") / "mni152.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def head_dir(mni, tmp_path_factory):
    """A filterbank head trained (in process) to find brain tissue in the template's axial slices."""
    vol = read_array(mni)
    slices = image_slices(vol, axis=2)
    masks = [(s > 0.3 * vol.max()).astype(np.uint8) for s in slices]
    head = make_head("logistic", class_weight="balanced").fit(get_backbone("filterbank").extract_batch(slices), masks)
    return head.save(tmp_path_factory.mktemp("head") / "head")


def _predict_in_process(head_dir, slices):
    head = load_head(head_dir)
    bb = head.backbone_spec_.build()
    return head, bb, head.predict(bb.extract_batch(slices)), head.predict_proba(bb.extract_batch(slices))


def test_nifti_in_nifti_out_keeps_affine_header_and_axis_order(mni, head_dir, tmp_path):
    out = tmp_path / "masks"
    assert main(["segment", "predict", "--head", str(head_dir), str(mni), "--axis", "2", "--out", str(out),
                 "--probabilities", "--preview"]) == 0
    src = nib.load(mni)
    mask_img = nib.load(out / "mni152.nii.gz")
    assert mask_img.shape == src.shape  # the input's axis order, not (slices, x, y)
    np.testing.assert_allclose(mask_img.affine, src.affine)
    assert mask_img.header.get_zooms() == src.header.get_zooms()
    assert mask_img.get_data_dtype() == np.uint8 and mask_img.header.get_intent()[0] == "label"
    head, _, labels, probas = _predict_in_process(head_dir, image_slices(read_array(mni), axis=2))
    expected = np.stack(labels, axis=2)  # slice k of axis 2 ↔ axis-2 index k
    mask = np.asarray(mask_img.dataobj)
    np.testing.assert_array_equal(mask, expected)
    assert 0.05 < (mask == 1).mean() < 0.95  # the head found brain and background
    proba_img = nib.load(out / "mni152_proba.nii.gz")
    assert proba_img.shape == (*src.shape, len(head.classes_)) and proba_img.get_data_dtype() == np.float32
    np.testing.assert_allclose(proba_img.affine, src.affine)
    proba = np.asarray(proba_img.dataobj)
    np.testing.assert_allclose(proba, np.stack(probas, axis=2), atol=1e-6)
    np.testing.assert_array_equal(head.classes_[proba.argmax(axis=3)], mask)
    preview = iio.imread(out / "mni152_preview.png")
    assert preview.shape == (*src.shape[:2], 3) and preview.dtype == np.uint8


def test_stack_masks_keep_the_input_axis_order(mni, head_dir, tmp_path):
    vol = read_array(mni)
    tifffile.imwrite(tmp_path / "vol.tif", (vol / vol.max() * 255).astype(np.uint8), photometric="minisblack")
    out = tmp_path / "masks"
    assert main(["segment", "predict", "--head", str(head_dir), str(tmp_path / "vol.tif"), "--axis", "1",
                 "--out", str(out), "--probabilities"]) == 0
    mask = tifffile.imread(out / "vol.tif")
    assert mask.shape == vol.shape  # cut along axis 1, put back along axis 1
    u8 = tifffile.imread(tmp_path / "vol.tif")
    _, _, labels, _ = _predict_in_process(head_dir, image_slices(u8, axis=1))
    np.testing.assert_array_equal(mask, np.stack(labels, axis=1))
    with tifffile.TiffFile(out / "vol_proba.tif") as tf:  # ImageJ hyperstack: Z, class channel, Y, X
        assert tf.series[0].axes == "ZCYX" and tf.series[0].shape == (vol.shape[0], 2, *vol.shape[1:])
        assert tf.series[0].dtype == np.float32


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    """2-D EM-like images with 0/1 masks, and a head trained on them with the CLI."""
    from neuros.plugins.cv.datasets.synthetic import make_dataset

    d = tmp_path_factory.mktemp("em")
    im, m = make_dataset("em", 4, 64, seed=3, protocol="random")
    u8 = (im * 255).astype(np.uint8)
    for i in range(4):
        iio.imwrite(d / f"img{i}.png", u8[i])
        iio.imwrite(d / f"mask{i}.png", (m[i] > 0).astype(np.uint8))
    assert main(["segment", "train", "--images", *(str(d / f"img{i}.png") for i in range(3)), "--masks",
                 *(str(d / f"mask{i}.png") for i in range(3)), "--backbone", "filterbank", "--balanced",
                 "--out", str(d / "head")]) == 0
    return d


def test_2d_masks_are_palette_pngs_that_show_their_classes(em, tmp_path):
    out = tmp_path / "pred"
    assert main(["segment", "predict", "--head", str(em / "head"), str(em / "img3.png"), "--out", str(out),
                 "--probabilities", "--preview"]) == 0
    with Image.open(out / "img3.png") as im:
        assert im.mode == "P"  # a palette image: values are the classes…
        values = np.asarray(im)
        rgb = np.asarray(im.convert("RGB"))  # …and what a viewer shows
    assert set(np.unique(values)) == {0, 1}
    np.testing.assert_array_equal(read_array(out / "img3.png"), values)
    np.testing.assert_array_equal(iio.imread(out / "img3.png", mode="P"), values)
    assert (rgb[values == 0] == 0).all()  # background black
    assert rgb[values == 1].max(axis=1).min() >= 200  # class 1 bright, not the 1/255 grey that looks black
    _, _, labels, probas = _predict_in_process(em / "head", [read_array(em / "img3.png")])
    np.testing.assert_array_equal(values, labels[0])
    with tifffile.TiffFile(out / "img3_proba.tif") as tf:  # one float32 channel per class
        assert tf.series[0].axes == "CYX" and tf.series[0].dtype == np.float32
        proba = tf.asarray()
    assert proba.shape == (2, 64, 64)
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.moveaxis(proba, 0, -1), probas[0], atol=1e-6)
    preview = iio.imread(out / "img3_preview.png")
    assert preview.shape == (64, 64, 3)
    fg = values == 1
    assert (preview[fg, 0].astype(int) - preview[fg, 2]).mean() > 20  # class 1 tinted red
    assert (preview[~fg, 0] == preview[~fg, 2]).all()  # background left grey


def test_segment_evaluate_prints_and_writes_dice_iou_with_cis(em, tmp_path, capsys):
    out = tmp_path / "scores.json"
    images = [str(em / f"img{i}.png") for i in range(4)]
    masks = [str(em / f"mask{i}.png") for i in range(4)]
    assert main(["segment", "evaluate", "--head", str(em / "head"), "--images", *images, "--masks", *masks,
                 "--n-boot", "200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "class 1: Dice" in text and "IoU" in text
    doc = json.loads(out.read_text())
    _, _, labels, _ = _predict_in_process(em / "head", [read_array(p) for p in images])
    truth = [read_array(p) for p in masks]
    want = score_images(truth, [np.asarray(lab) for lab in labels], 2, class_names=["0", "1"], n_boot=200)
    got = doc["classes"]["1"]
    assert got["dice"] == pytest.approx(want["classes"]["1"]["dice"])
    assert got["iou"] == pytest.approx(want["classes"]["1"]["iou"])
    assert got["dice_ci"] == pytest.approx(want["classes"]["1"]["dice_ci"])
    lo, hi = got["dice_ci"]
    assert lo <= got["dice"] <= hi and f"{got['dice']:.3f}" in text
    assert doc["n_images"] == 4 and len(doc["per_image"]) == 4
    # A mask with values the head never saw is refused in one line naming the mask.
    iio.imwrite(tmp_path / "bad.png", np.full((64, 64), 7, np.uint8))
    assert main(["segment", "evaluate", "--head", str(em / "head"), "--images", images[0], "--masks",
                 str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.png holds value(s) [7]" in err


def _two_d_nifti(path, image, affine):
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), path)
    return path


def test_register_out_keeps_the_fixed_images_affine(tmp_path, capsys):
    from neuros.plugins.cv.datasets.synthetic import make_dataset

    im, _ = make_dataset("mri", 1, 96, seed=2, protocol="random")
    a = im[0].astype(np.float32)
    b = np.roll(a, (5, -3), axis=(0, 1))
    affine = np.array([[0.0, -1.2, 0, 40], [1.2, 0, 0, -30], [0, 0, 3.0, 12], [0, 0, 0, 1]])
    fa = _two_d_nifti(tmp_path / "a.nii.gz", a, affine)
    fb = _two_d_nifti(tmp_path / "b.nii.gz", b, np.eye(4))
    out = tmp_path / "b_on_a.nii.gz"
    assert main(["register", str(fa), str(fb), "--out", str(out)]) == 0
    dy, dx, _ = (float(v) for v in capsys.readouterr().out.split())
    assert (round(dy), round(dx)) == (5, -3)
    moved = nib.load(out)
    np.testing.assert_allclose(moved.affine, affine)
    assert moved.shape == a.shape
    inner = np.asarray(moved.dataobj)[8:-8, 8:-8].ravel()
    after = np.corrcoef(inner, a[8:-8, 8:-8].ravel())[0, 1]
    before = np.corrcoef(b[8:-8, 8:-8].ravel(), a[8:-8, 8:-8].ravel())[0, 1]
    assert after > 0.95 and after > before + 0.2  # B now lies on A (sub-pixel resampled)
    assert main(["register", str(fa), str(fb), "--out", str(tmp_path / "moved.tif")]) == 2
    assert "is NIfTI: name --out .nii.gz" in capsys.readouterr().err


def test_align_nifti_stack_is_nifti_in_its_axis_order(tmp_path):
    from neuros.plugins.cv.datasets.synthetic import make_dataset

    im, _ = make_dataset("em", 1, 96, seed=4, protocol="random")
    shifts = [(0, 0), (3, -2), (5, 1), (2, 4)]
    vol = np.stack([np.roll(im[0], s, axis=(0, 1)) for s in shifts], axis=2).astype(np.float32)  # (x, y, slices)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 5, 7)
    src = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), src)
    out, tr = tmp_path / "aligned.nii.gz", tmp_path / "t.csv"
    assert main(["align", str(src), "--axis", "2", "--out", str(out), "--transforms", str(tr)]) == 0
    img = nib.load(out)
    assert img.shape == vol.shape
    np.testing.assert_allclose(img.affine, affine)
    import csv

    rows = list(csv.DictReader(tr.open()))
    found = [(float(r["dy"]), float(r["dx"])) for r in rows]
    np.testing.assert_allclose(found, shifts, atol=0.5)  # sections were cut along axis 2
    aligned = np.asarray(img.dataobj)
    ref = aligned[10:-10, 10:-10, 0].ravel()
    for k in range(1, 4):  # every slice now sits on slice 0 (inside the borders filled by the shift)
        before = np.corrcoef(vol[10:-10, 10:-10, k].ravel(), ref)[0, 1]
        after = np.corrcoef(aligned[10:-10, 10:-10, k].ravel(), ref)[0, 1]
        assert after > 0.9 and after > before + 0.2
    assert main(["align", str(src), "--axis", "2", "--out", str(tmp_path / "a.tif"),
                 "--transforms", str(tmp_path / "t2.csv")]) == 2


def test_missing_weights_message_names_download_and_the_flag_is_passed(tmp_path, capsys, monkeypatch):
    msg = missing_weights_message("vit-small", "facebook/dinov3-vits16-pretrain-lvd1689m", None)
    assert "download=True" in msg and "--download" not in msg  # the CLI names the flag (test_cli_flag_names)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the download is attempted and fails offline: nothing fetched
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("NEUROS_CV_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    iio.imwrite(tmp_path / "a.png", np.zeros((32, 32), np.uint8))
    rc = main(["features", str(tmp_path / "a.png"), "--backbone", "vit-small", "--weights", "pretrained",
               "--download", "--out", str(tmp_path / "f")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "could not download facebook/dinov3-vits16" in err  # download=True reached the backbone
    assert main(["register", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--download"]) == 2
    assert "--download applies to DINOv3 backbones" in capsys.readouterr().err


def test_written_files_honour_the_umask(em, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "pred"
        assert main(["segment", "predict", "--head", str(em / "head"), str(em / "img3.png"), "--out", str(out),
                     "--probabilities", "--preview"]) == 0
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.name != MARKER}
    finally:
        os.umask(old)
    assert modes == {"img3.png": 0o644, "img3_proba.tif": 0o644, "img3_preview.png": 0o644}
