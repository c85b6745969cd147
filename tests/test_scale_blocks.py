"""Block geometry, zarr readers/converters and bad input of ``neuros-cv volume`` (no cluster needed)."""

from __future__ import annotations

import socket
import time

import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.scale.blocks import axis_extents, check_geometry, iter_blocks
from neuros.plugins.cv.scale.cluster import connect
from neuros.plugins.cv.scale.zarr_io import convert_to_zarr, open_volume


@pytest.mark.parametrize(("shape", "block", "halo"), [((2, 100, 120), (32, 48), 16), ((1, 70, 33), (64, 64), 0)])
def test_blocks_partition_the_volume_and_stay_on_the_patch_grid(shape, block, halo):
    cover = np.zeros(shape, dtype=int)
    for b in iter_blocks(shape, block, halo):
        cover[b.z, slice(*b.core_y), slice(*b.core_x)] += 1
        assert b.read_y[0] <= b.core_y[0] and b.core_y[1] <= b.read_y[1] <= shape[1]
        assert (b.core_y[0] - b.read_y[0]) % 16 == 0 and (b.core_x[0] - b.read_x[0]) % 16 == 0
        assert b.read_y[1] - b.read_y[0] >= min(16, shape[1])  # a short last block still reads a full patch
    assert (cover == 1).all()


def test_axis_extents_clip_halo_at_the_edges():
    ext = axis_extents(100, 32, 16)
    np.testing.assert_array_equal(ext[:, 0], [0, 32, 64, 96])
    np.testing.assert_array_equal(ext[:, 2], [0, 16, 48, 80])
    np.testing.assert_array_equal(ext[:, 3], [48, 80, 100, 100])


@pytest.mark.parametrize(
    ("block", "halo", "match"),
    [((32, 32), 64, "chunking too small for the halo"), ((30, 32), 0, "multiple of the 16-px"),
     ((32, 32), 8, "halo must be")],
)
def test_bad_geometry_is_one_clear_line(block, halo, match):
    with pytest.raises(ValueError, match=match) as e:
        check_geometry((128, 128), block, halo)
    assert "\n" not in str(e.value)


def test_missing_zarr_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_volume(tmp_path / "nope.zarr")


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["volume", "features", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuros-cv volume: error:") and "does not exist" in err and "\n" not in err
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(1, 64, 64), chunks=(1, 32, 32), dtype="uint8")
    z[:] = 1
    rc = main(["volume", "features", str(tmp_path / "in.zarr"), "--out", str(tmp_path / "o.zarr"),
               "--backbone", "filterbank", "--block", "32"])
    assert rc == 2
    assert "chunking too small for the halo" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_scheduler_that_does_not_answer_fails_within_timeout(tmp_path, capsys):
    addr = f"tcp://127.0.0.1:{_dead_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"cannot reach a Dask scheduler at .*: connection refused"):
        connect(addr, timeout=1.5)
    assert time.perf_counter() - t0 < 15
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(1, 32, 32), chunks=(1, 32, 32), dtype="uint8")
    z[:] = 0
    rc = main(["volume", "features", str(tmp_path / "in.zarr"), "--out", str(tmp_path / "o.zarr"),
               "--scheduler", addr, "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"neuros-cv volume: error: cannot reach a Dask scheduler at {addr}: ")
    assert err.count("\n") == 1
    with pytest.raises(ValueError, match="not an address"):
        connect("not a scheduler", timeout=1)


def test_tiff_stack_to_ome_zarr_with_levels(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 65535, size=(3, 40, 36), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", vol, photometric="minisblack")
    convert_to_zarr(tmp_path / "stack.tif", tmp_path / "s.zarr", chunks=(2, 16, 16), levels=2)
    np.testing.assert_array_equal(open_volume(tmp_path / "s.zarr")[...], vol)
    low = open_volume(tmp_path / "s.zarr", level=1)[...]
    assert low.shape == (3, 20, 18)
    np.testing.assert_allclose(low, vol.reshape(3, 20, 2, 18, 2).mean(axis=(2, 4)).astype(np.uint16), atol=1)
    folder = tmp_path / "sections"
    folder.mkdir()
    for i, sec in enumerate(vol):
        tifffile.imwrite(folder / f"s{i:02d}.tif", sec)
    convert_to_zarr(folder, tmp_path / "f.zarr")
    np.testing.assert_array_equal(open_volume(tmp_path / "f.zarr")[...], vol)
    with pytest.raises(FileExistsError):
        convert_to_zarr(folder, tmp_path / "f.zarr")


def test_nifti_to_zarr_puts_k_first(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)  # (i, j, k) = (x, y, z)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0])), tmp_path / "v.nii.gz")
    convert_to_zarr(tmp_path / "v.nii.gz", tmp_path / "v.zarr")
    arr = open_volume(tmp_path / "v.zarr")
    np.testing.assert_array_equal(arr[...], data.transpose(2, 1, 0))
    g = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    scale = g.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([2.0, 0.6, 0.5])


def test_group_without_multiscales_needs_a_component(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", shape=(1, 16, 16), dtype="uint8")
    g.create_array("b", shape=(1, 16, 16), dtype="uint8")
    with pytest.raises(ValueError, match="name one with component="):
        open_volume(tmp_path / "g.zarr")
    assert open_volume(tmp_path / "g.zarr", component="b").shape == (1, 16, 16)
    with pytest.raises(ValueError, match=r"expected a \(z, y, x\) volume"):
        zarr.create_array(str(tmp_path / "two.zarr"), shape=(16, 16), dtype="uint8")
        open_volume(tmp_path / "two.zarr")


def test_tiff_with_sections_as_planes_of_one_page(tmp_path):
    vol = np.arange(3 * 20 * 18, dtype=np.uint8).reshape(3, 20, 18)
    tifffile.imwrite(tmp_path / "rgbish.tif", vol, photometric="rgb", planarconfig="separate")
    convert_to_zarr(tmp_path / "rgbish.tif", tmp_path / "r.zarr")
    np.testing.assert_array_equal(open_volume(tmp_path / "r.zarr")[...], vol)


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 50, b"II*\x00" + b"\xff" * 8])
def test_convert_names_a_damaged_tiff_in_one_line(content, tmp_path, capsys):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(content)
    assert main(["volume", "convert", str(bad), "--out", str(tmp_path / "c.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuros-cv volume: error: ") and err.count("\n") == 1
    assert str(bad) in err and "not a valid TIFF" in err
    assert not (tmp_path / "c.zarr").exists()
    folder = tmp_path / "sections"
    folder.mkdir()
    tifffile.imwrite(folder / "s00.tif", np.zeros((16, 16), dtype=np.uint8))
    (folder / "s01.tif").write_bytes(content)
    assert main(["volume", "convert", str(folder), "--out", str(tmp_path / "f.zarr")]) == 2
    err = capsys.readouterr().err
    assert str(folder / "s01.tif") in err and "not a valid TIFF" in err and err.count("\n") == 1
    assert not (tmp_path / "f.zarr").exists()
