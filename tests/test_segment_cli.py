"""``neuros-cv segment train/predict`` on real file formats; bad input fails in one line, writing nothing."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.io import read_array
from neuros.plugins.cv.datasets.synthetic import make_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("seg")
    im, m = make_dataset("em", 5, 64, seed=7, protocol="random")
    u8 = (im * 255).astype(np.uint8)
    tifffile.imwrite(d / "train.tif", u8[:4], photometric="minisblack")
    tifffile.imwrite(d / "train_masks.tif", (m[:4] * 255).astype(np.uint8), photometric="minisblack")
    iio.imwrite(d / "test.png", u8[4])
    tifffile.imwrite(d / "stack.tif", u8[:2], photometric="minisblack")
    return d, m


def _err(capsys) -> str:
    """The one error line (a progress bar may precede it on stderr; no traceback)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("neuros-cv")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_then_predict(files, tmp_path, capsys):
    d, m = files
    head = tmp_path / "head"
    assert main(["segment", "train", "--images", str(d / "train.tif"), "--masks", str(d / "train_masks.tif"),
                 "--backbone", "filterbank", "--head", "logistic", "--balanced", "--out", str(head)]) == 0
    assert "classes [0, 255]" in capsys.readouterr().out
    out = tmp_path / "masks"
    assert main(["segment", "predict", "--head", str(head), str(d / "test.png"), str(d / "stack.tif"),
                 "--out", str(out)]) == 0
    pred = read_array(out / "test.png")
    assert pred.shape == (64, 64) and set(np.unique(pred)) <= {0, 255}
    assert ((pred > 0) == (m[4] > 0)).mean() > (m[4] == 0).mean()  # beats all-background
    assert read_array(out / "stack.tif").shape == (2, 64, 64)
    capsys.readouterr()
    # --out exists now: refused without --overwrite, nothing changed.
    assert main(["segment", "predict", "--head", str(head), str(d / "test.png"), "--out", str(out)]) == 2
    assert "--overwrite" in _err(capsys)


def test_bad_input_writes_nothing(files, tmp_path, capsys):
    d, m = files
    out = tmp_path / "head"
    base = ["segment", "train", "--backbone", "filterbank", "--out", str(out), "--images", str(d / "train.tif")]
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    assert main([*base, "--masks", str(tmp_path / "small.tif")]) == 2
    assert "does not match image" in _err(capsys)
    tifffile.imwrite(tmp_path / "float.tif", m[:4].astype(np.float32) * 0.5, photometric="minisblack")
    assert main([*base, "--masks", str(tmp_path / "float.tif")]) == 2
    assert "non-integer" in _err(capsys)
    blob = (d / "train_masks.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[: len(blob) // 3])
    assert main([*base, "--masks", str(tmp_path / "cut.tif")]) == 2
    assert "corrupt or truncated" in _err(capsys)
    assert not out.exists()
    assert main(["segment", "predict", "--head", str(tmp_path), str(d / "test.png"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "not a saved head" in _err(capsys)
    assert not (tmp_path / "m").exists()
