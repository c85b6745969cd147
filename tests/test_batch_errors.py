"""Batches: an error names the file; ``--skip-errors`` goes on, writes the others, lists what it skipped and
exits 3; a garbage TIFF says it is not a valid TIFF (in every reader, ``volume convert`` included)."""

from __future__ import annotations

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from neuros.plugins.cv.backbones.base import get_backbone
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.io import read_array
from neuros.plugins.cv.datasets.synthetic import make_dataset
from neuros.plugins.cv.heads import make_head
from neuros.plugins.cv.output import MARKER

NAN_MSG = "nan.tif: image contains 100 NaN/inf pixel(s)"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    im, m = make_dataset("em", 3, 64, seed=5, protocol="random")
    masks = [(x > 0).astype(np.uint8) for x in m]
    make_head("logistic", class_weight="balanced").fit(
        get_backbone("filterbank").extract_batch(list(im[:2])), masks[:2]).save(d / "head")
    tifffile.imwrite(d / "good.tif", (im[2] * 255).astype(np.uint8))
    iio.imwrite(d / "good_mask.png", masks[2])
    bad = im[1].astype(np.float32)
    bad.ravel()[np.random.default_rng(0).choice(bad.size, 100, replace=False)] = np.nan
    tifffile.imwrite(d / "nan.tif", bad)
    iio.imwrite(d / "nan_mask.png", masks[1])
    (d / "garbage.tif").write_bytes(b"II*\x00" + np.random.default_rng(1).bytes(4000))  # a header, then noise
    return d


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith(("neuros-cv", "  "))]


def test_garbage_tiff_is_not_a_valid_tiff_everywhere(batch, tmp_path, capsys):
    g = batch / "garbage.tif"
    with pytest.raises(ValueError, match="not a valid TIFF") as e:
        read_array(g)
    assert str(g) in str(e.value) and "empty" not in str(e.value)
    assert main(["volume", "convert", str(g), "--out", str(tmp_path / "g.zarr")]) == 2
    (line,) = _errors(capsys)
    assert str(g) in line and "not a valid TIFF" in line
    assert main(["segment", "predict", "--head", str(batch / "head"), str(g), "--out", str(tmp_path / "m")]) == 2
    (line,) = _errors(capsys)
    assert "garbage.tif" in line and "not a valid TIFF" in line and "empty" not in line
    assert not (tmp_path / "m").exists()


def test_predict_error_names_the_file_and_writes_nothing(batch, tmp_path, capsys):
    out = tmp_path / "masks"
    assert main(["segment", "predict", "--head", str(batch / "head"), str(batch / "good.tif"),
                 str(batch / "nan.tif"), "--out", str(out)]) == 2
    (line,) = _errors(capsys)
    assert line.startswith("neuros-cv segment: error:") and NAN_MSG in line
    assert not out.exists() and not list(tmp_path.iterdir())  # no temp folder left either


def test_predict_skip_errors_writes_the_others_and_exits_3(batch, tmp_path, capsys):
    out = tmp_path / "masks"
    rc = main(["segment", "predict", "--head", str(batch / "head"), str(batch / "nan.tif"), str(batch / "good.tif"),
               str(batch / "garbage.tif"), "--out", str(out), "--skip-errors", "--preview"])
    assert rc == 3
    lines = _errors(capsys)
    assert lines[0] == "neuros-cv segment predict: skipped 2 file(s):"
    assert NAN_MSG in lines[1] and "garbage.tif" in lines[2] and "not a valid TIFF" in lines[2]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "good.png", "good_preview.png"]


def test_features_skip_errors(batch, tmp_path, capsys):
    out = tmp_path / "feats"
    args = ["features", str(batch / "nan.tif"), str(batch / "good.tif"), "--backbone", "filterbank", "--out", str(out)]
    assert main(args) == 2
    (line,) = _errors(capsys)
    assert NAN_MSG in line and not out.exists()
    assert main([*args, "--skip-errors"]) == 3
    lines = _errors(capsys)
    assert lines[0] == "neuros-cv features: skipped 1 file(s):" and NAN_MSG in lines[1]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "features.json", "good.npz"]
    doc = json.loads((out / "features.json").read_text())
    assert [r["image"] for r in doc["images"]] == [str(batch / "good.tif")]
    assert NAN_MSG in doc["skipped"][0]["reason"]


def test_evaluate_skip_errors(batch, tmp_path, capsys):
    base = ["segment", "evaluate", "--head", str(batch / "head"), "--images", str(batch / "nan.tif"),
            str(batch / "good.tif"), "--masks", str(batch / "nan_mask.png"), str(batch / "good_mask.png")]
    assert main(base) == 2
    (line,) = _errors(capsys)
    assert NAN_MSG in line
    out = tmp_path / "s.json"
    assert main([*base, "--skip-errors", "--n-boot", "50", "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "class 1: Dice" in captured.out and NAN_MSG in captured.err
    doc = json.loads(out.read_text())
    assert doc["n_images"] == 1 and len(doc["skipped"]) == 1


def test_every_input_failing_writes_nothing(batch, tmp_path, capsys):
    out = tmp_path / "masks"
    assert main(["segment", "predict", "--head", str(batch / "head"), str(batch / "nan.tif"), "--out", str(out),
                 "--skip-errors"]) == 2
    assert "every input failed" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []
