"""Progress when stderr is not a terminal (nohup, Slurm logs): plain lines at a steady interval with counts,
elapsed time and ETA; ``features`` counts tiles; ``features`` cuts 3-D stacks along ``--axis`` like ``segment``."""

from __future__ import annotations

import re
import time

import numpy as np
import tifffile

from neuros.plugins.cv.backbones.base import get_backbone
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.cli._progress import progress_callback

INTERVAL_ENV = "NEUROS_CV_PROGRESS_INTERVAL"  # seconds between plain progress lines

LINE = re.compile(r"^(?P<title>.+): (?P<done>\d+)/(?P<total>\d+) \(\d+%\) elapsed \d+:\d\d:\d\d ETA (\S+)")


def test_plain_lines_at_a_steady_interval_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0.05")
    with progress_callback(4, "demo") as tick:
        for i in range(4):
            time.sleep(0.12)
            tick(f"step {i}")
    lines = capsys.readouterr().err.strip().splitlines()
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    assert len(lines) >= 6  # the start, one per interval while working, the end
    assert lines[0].startswith("demo: 0/4 (0%)") and lines[-1].startswith("demo: 4/4 (100%)")
    assert lines[-1].endswith("- step 3")
    assert any(m["done"] in "123" and not lines[k].split("ETA ")[1].startswith("-")
               for k, m in enumerate(parsed))  # an ETA once something is done


def test_features_counts_tiles_in_a_log(tmp_path, capsys, monkeypatch):
    r = np.random.default_rng(0)
    for name, size in (("a.tif", 160), ("b.tif", 160), ("c.tif", 48)):
        tifffile.imwrite(tmp_path / name, r.integers(0, 255, (size, size), dtype=np.uint8))
    monkeypatch.setenv(INTERVAL_ENV, "0.01")
    monkeypatch.chdir(tmp_path)
    code = main(["features", "a.tif", "b.tif", "c.tif", "--backbone", "vit-small", "--weights", "placeholder",
                 "--tile", "64", "--overlap", "16", "--batch-size", "2", "--out", "f"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [m for m in map(LINE.match, err.splitlines()) if m]
    # 160 px with 64-px tiles and 16 px of context: 4 windows per axis = 16 tiles; c.tif is one image.
    assert lines[-1]["done"] == lines[-1]["total"] == "33"
    assert bb_tiles((160, 160)) == 16
    assert "(tiles)" in err
    assert {int(m["done"]) for m in lines} <= set(range(34))


def bb_tiles(shape):
    return get_backbone("vit-small", weights="placeholder", tile=64, overlap=16).n_tiles(shape)


def test_features_cuts_3d_stacks_along_axis_like_segment(tmp_path):
    r = np.random.default_rng(1)
    vol = r.integers(0, 255, (20, 48, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    bb = get_backbone("vit-small", weights="placeholder")
    for axis, n in ((None, 20), (2, 64)):
        out = tmp_path / f"f{axis}"
        assert main(["features", str(tmp_path / "vol.tif"), "--backbone", "vit-small", "--weights", "placeholder",
                     "--out", str(out), *([] if axis is None else ["--axis", str(axis)])]) == 0
        z = np.load(out / "vol.npz")
        sl = np.moveaxis(vol, 0 if axis is None else axis, 0)
        assert z["features"].shape[0] == n and int(z["slice_axis"]) == (axis or 0)
        assert tuple(z["input_shape"]) == vol.shape
        for k in (0, n - 1):  # slice k is index k along the axis
            np.testing.assert_allclose(z["features"][k], bb.extract(sl[k]).features)
