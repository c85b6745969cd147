"""Real file readers and mask writers: round trips on disk, and one-line errors for bad files."""

from __future__ import annotations

import h5py
import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from neuros.plugins.cv.datasets.io import expand_paths, file_format, image_slices, read_array, write_mask

RNG = np.random.default_rng(0)


def test_roundtrips(tmp_path):
    stack = RNG.integers(0, 255, (3, 32, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_array(tmp_path / "s.tif"), stack)
    iio.imwrite(tmp_path / "a.png", stack[0])
    np.testing.assert_array_equal(read_array(tmp_path / "a.png"), stack[0])
    iio.imwrite(tmp_path / "a.jpg", stack[0])
    assert read_array(tmp_path / "a.jpg").shape == (32, 40)
    vol = RNG.random((10, 12, 4)).astype(np.float32)
    for name in ("v.nii", "v.nii.gz"):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / name)
        np.testing.assert_allclose(read_array(tmp_path / name), vol)
    with h5py.File(tmp_path / "c.hdf", "w") as f:
        f["volumes/raw"] = stack
        f["volumes/labels/neuron_ids"] = stack.astype(np.uint64)
    np.testing.assert_array_equal(read_array(tmp_path / "c.hdf", key="volumes/raw"), stack)
    with pytest.raises(KeyError, match="holds 2 datasets"):
        read_array(tmp_path / "c.hdf")
    with pytest.raises(KeyError, match="no dataset 'raw'"):
        read_array(tmp_path / "c.hdf", key="raw")
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=(2, 16, 16), dtype="u1")
    z[:] = 7
    assert read_array(tmp_path / "a.zarr").sum() == 7 * 512
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", shape=(16, 16), dtype="f4")
    assert read_array(tmp_path / "g.zarr", key="raw").shape == (16, 16)


@pytest.mark.parametrize("name", ["t.tif", "t.nii", "t.nii.gz", "t.png"])
def test_truncated_files_give_one_line_errors(tmp_path, name):
    full = tmp_path / ("full" + name[1:])
    data = RNG.integers(0, 255, (4, 64, 64), dtype=np.uint8)
    if name.endswith(".tif"):
        tifffile.imwrite(full, data, photometric="minisblack")
    elif ".nii" in name:
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), full)
    else:
        iio.imwrite(full, data[0])
    blob = full.read_bytes()
    (tmp_path / name).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        read_array(tmp_path / name)
    assert "\n" not in str(e.value) and name in str(e.value)


def test_unsupported_and_missing(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type"):
        file_format("x.bmp")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_array(tmp_path / "none.tif")
    with pytest.raises(FileNotFoundError, match="no image file"):
        expand_paths([tmp_path])


def test_slices_and_expand(tmp_path):
    assert len(image_slices(np.zeros((5, 8, 8)))) == 5
    assert len(image_slices(np.zeros((8, 8, 3)))) == 1
    assert len(image_slices(np.zeros((8, 8, 3)), axis=2)) == 3  # an explicit axis means a volume
    assert image_slices(np.zeros((8, 8, 6)), axis=2)[0].shape == (8, 8)
    with pytest.raises(ValueError, match="4-D"):
        image_slices(np.zeros((2, 2, 8, 8)))
    for n in ("b.png", "a.tif", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.tif", "b.png"]


def test_write_mask_atomic(tmp_path):
    m = np.arange(12).reshape(3, 4)
    write_mask(tmp_path / "m.png", m)
    np.testing.assert_array_equal(read_array(tmp_path / "m.png"), m)
    write_mask(tmp_path / "big.tif", m * 1000)
    assert read_array(tmp_path / "big.tif").dtype == np.uint16
    with pytest.raises(ValueError, match="8-bit PNG"):
        write_mask(tmp_path / "big.png", m * 1000)
    with pytest.raises(TypeError, match="integer labels"):
        write_mask(tmp_path / "f.png", m * 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "m.png"]  # no temporary left behind
