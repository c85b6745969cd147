"""Dataset loaders: the real data available here, and recipes on small on-disk layouts (real files)."""

from __future__ import annotations

import h5py
import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile

from neuros.plugins.cv.datasets.catalog import (
    RECIPES,
    DatasetLayoutError,
    load_dataset,
    load_mni152,
    load_nuclei,
    load_sstem,
)


def _labels(z=2, size=32):
    """Instance labels: four quadrants per slice (so boundaries are the two mid lines)."""
    lab = np.zeros((z, size, size), np.uint32)
    h = size // 2
    lab[:, :h, :h], lab[:, :h, h:], lab[:, h:, :h], lab[:, h:, h:] = 1, 2, 3, 4
    return lab


def test_sstem_real_sections(sstem_dir):
    s = load_sstem(sstem_dir, sections=[0, 13], downsample=4)
    assert len(s.images) == 2 and s.images[0].shape == (256, 256) and s.class_names[1:] == ("membrane", "mitochondria")
    for m in s.masks:
        frac = np.bincount(m.ravel(), minlength=3) / m.size
        assert 0.1 < frac[1] < 0.35 and 0.01 < frac[2] < 0.2  # ≈19 % membrane, ≈7 % mitochondria
    with pytest.raises(DatasetLayoutError, match="section 99"):
        load_sstem(sstem_dir, sections=[99])


def test_mni152_and_nuclei_from_installed_packages():
    pytest.importorskip("nilearn")
    pytest.importorskip("stardist")
    mri = load_mni152(slices=[90], scale=1)
    assert mri.images[0].shape == (197, 233) and set(np.unique(mri.masks[0])) == {0, 1, 2}
    nuc = load_nuclei(tile=256)
    assert len(nuc.images) == 4 and all(0.05 < m.mean() < 0.5 for m in nuc.masks)
    assert nuc.binary().class_names == ("background", "foreground")
    with pytest.raises(ValueError, match="outside"):
        load_mni152(slices=[500])


def test_snemi3d_and_cremi_layouts(tmp_path):
    raw = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    with pytest.raises(DatasetLayoutError, match=r"train-input\.tif"):
        load_dataset("snemi3d", tmp_path)
    tifffile.imwrite(tmp_path / "train-input.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", _labels(), photometric="minisblack")
    s = load_dataset("snemi3d", tmp_path)
    assert len(s.masks) == 2 and s.masks[0][15:17].all() and not s.masks[0][:8, :8].any()
    with h5py.File(tmp_path / "sample_A_20160501.hdf", "w") as f:
        f["volumes/raw"] = raw
        f["volumes/labels/neuron_ids"] = _labels().astype(np.uint64)
    c = load_dataset("cremi", tmp_path, samples=["A"])
    np.testing.assert_array_equal(c.masks[1], s.masks[1])
    with pytest.raises(DatasetLayoutError, match="sample_B"):
        load_dataset("cremi", tmp_path, samples=["B"])


def test_nifti_tcga_allen_layouts(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    vol = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "images" / "s1.nii.gz")
    with pytest.raises(DatasetLayoutError, match="no label volume"):
        load_dataset("oasis3", tmp_path)
    nib.save(nib.Nifti1Image((vol * 4).astype(np.int16), np.eye(4)), tmp_path / "labels" / "s1.nii.gz")
    o = load_dataset("ixi", tmp_path)
    assert len(o.images) == 3 and o.class_names == ("background", "csf", "grey matter", "white matter")
    t = tmp_path / "tcga"
    (t / "tiles").mkdir(parents=True)
    iio.imwrite(t / "tiles" / "x.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"mask of tile x\.png"):
        load_dataset("tcga", t)
    (t / "masks").mkdir()
    iio.imwrite(t / "masks" / "x.png", np.full((32, 32), 255, np.uint8))
    assert load_dataset("tcga", t).masks[0].max() == 1
    with pytest.raises(DatasetLayoutError, match=r"average_template_25\.nrrd"):
        load_dataset("allen", tmp_path)


def test_catalog_errors():
    with pytest.raises(ValueError, match="unknown dataset 'snemi'"):
        load_dataset("snemi")
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("cremi")
    assert {"snemi3d", "cremi", "oasis3", "ixi", "allen", "tcga", "sstem", "mni152", "nuclei"} <= set(RECIPES)
    assert all(r.source and r.layout for r in RECIPES.values())
