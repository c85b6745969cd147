"""``neuros-cv warp``: saved transforms (ours and ANTs') applied to images and label maps, NIfTI in scanner space."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.transforms import DisplacementField, LinearTransform, save_transform

nib = pytest.importorskip("nibabel")
tifffile = pytest.importorskip("tifffile")


def _oblique(shape, angles, zooms, shift) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = LinearTransform.rigid(angles).matrix @ np.diag(zooms)
    aff[:3, 3] = shift
    return aff


def test_label_volume_goes_into_the_fixed_scanner_space(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = (ndimage.gaussian_filter(rng.random((28, 30, 24)), 3) * 40).astype(np.uint16) % 5
    fixed = rng.random((26, 32, 22)).astype(np.float32)
    nib.save(nib.Nifti1Image(labels, _oblique(labels.shape, (0.1, 0, 0.2), (1.0, 1.1, 1.3), (-10, 5, 2))),
             str(tmp_path / "moving_labels.nii.gz"))
    fixed_aff = _oblique(fixed.shape, (0, -0.15, 0.05), (1.2, 0.9, 1.0), (3, -4, 8))
    nib.save(nib.Nifti1Image(fixed, fixed_aff), str(tmp_path / "fixed.nii.gz"))
    t = LinearTransform.rigid((0.05, -0.1, 0.08), shift=(1.5, 2.0, -1.0), center=(13, 16, 11))
    save_transform(t, tmp_path / "t.tfm", fixed=tmp_path / "fixed.nii.gz", moving=tmp_path / "moving_labels.nii.gz")
    out = tmp_path / "labels_in_fixed.nii.gz"
    assert main(["warp", str(tmp_path / "moving_labels.nii.gz"), "--transform", str(tmp_path / "t.tfm"),
                 "--fixed", str(tmp_path / "fixed.nii.gz"), "--out", str(out)]) == 0
    assert "nearest (labels)" in capsys.readouterr().err
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, fixed_aff, atol=1e-5)
    got = np.asarray(img.dataobj)
    assert got.dtype == np.uint16 and got.shape == fixed.shape
    np.testing.assert_array_equal(got, t.apply_labels(labels, fixed.shape))
    # an existing --out is refused in one line, before any work
    assert main(["warp", str(tmp_path / "moving_labels.nii.gz"), "--transform", str(tmp_path / "t.tfm"),
                 "--fixed", str(tmp_path / "fixed.nii.gz"), "--out", str(out)]) != 0
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_ants_transform_chains_warp_labels_as_ants_does(tmp_path):
    ants = pytest.importorskip("ants")
    rng = np.random.default_rng(1)
    base = ndimage.gaussian_filter(rng.random((96, 96)), 3).astype(np.float32)
    base = (base - base.min()) / np.ptp(base)
    labels = (base > 0.55).astype(np.uint8) + (base > 0.7).astype(np.uint8)
    truth = LinearTransform.rigid(0.08, shift=(2.0, -1.5), center=(48, 48)) @ DisplacementField(
        np.stack([ndimage.gaussian_filter(rng.standard_normal((96, 96)), 10) * 20 for _ in range(2)]))
    fixed = truth.apply(base)
    tifffile.imwrite(tmp_path / "fixed.tif", fixed)
    tifffile.imwrite(tmp_path / "labels.tif", labels)

    def img(a):  # ANTsPy's from_numpy puts physical x on axis 0: transpose so x is our last axis
        return ants.from_numpy(np.ascontiguousarray(a.T.astype(np.float32)))

    reg = ants.registration(fixed=img(fixed), moving=img(base), type_of_transform="SyN", random_seed=0)
    assert len(reg["fwdtransforms"]) == 2  # [warp, affine]
    theirs = ants.apply_transforms(fixed=img(fixed), moving=img(labels), transformlist=reg["fwdtransforms"],
                                   interpolator="nearestNeighbor").numpy().T
    args = ["warp", str(tmp_path / "labels.tif"), "--fixed", str(tmp_path / "fixed.tif"),
            "--out", str(tmp_path / "ours.tif")]
    for f in reg["fwdtransforms"]:
        args += ["--transform", f]
    assert main(args) == 0
    ours = tifffile.imread(tmp_path / "ours.tif")
    assert ours.dtype == np.uint8
    assert (ours == theirs).mean() > 0.99  # nearest-neighbour ties at label edges may differ by a pixel


def test_bad_warp_inputs_are_one_line_errors(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((20, 20), np.float32))
    save_transform(LinearTransform.identity(3), tmp_path / "t3.tfm")
    base = ["warp", str(tmp_path / "a.tif"), "--fixed", str(tmp_path / "a.tif")]
    assert main([*base, "--transform", str(tmp_path / "missing.tfm"), "--out", str(tmp_path / "o.tif")]) != 0
    assert "missing.tfm does not exist" in capsys.readouterr().err
    assert main([*base, "--transform", str(tmp_path / "t3.tfm"), "--out", str(tmp_path / "o.tif")]) != 0
    err = capsys.readouterr().err
    assert "t3.tfm is a 3-D transform but the image is 2-D" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()
