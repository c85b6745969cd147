"""``neuros-cv features``, ``neuros-cv backbones`` and ``neuros-cv bench`` with a tiny model folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from neuros.plugins.cv.backbones.weights import WEIGHTS_ENV
from neuros.plugins.cv.cli import main


@pytest.fixture()
def images(tmp_path):
    r = np.random.default_rng(0)
    a, b = tmp_path / "a.tif", tmp_path / "b.npy"
    tifffile.imwrite(a, r.integers(0, 65535, (40, 56), dtype=np.uint16))
    np.save(b, r.random((32, 32, 3)).astype(np.float32))
    return [a, b]


def test_features_writes_arrays_and_metadata_naming_the_weights(images, tmp_path, tiny_vit_dir):
    out = tmp_path / "feats"
    rc = main(["features", *map(str, images), "--backbone", str(tiny_vit_dir), "--weights", "pretrained",
               "--out", str(out), "--layers", "0", "-1"])
    assert rc == 0
    doc = json.loads((out / "features.json").read_text())
    assert doc["weights"] == f"pretrained:{tiny_vit_dir}" and doc["backbone"]["feature_dim"] == 64
    rec = doc["images"][0]
    assert rec["grid_shape"] == [3, 4] and rec["image_shape"] == [40, 56] and rec["weights"] == doc["weights"]
    with np.load(out / "a.npz") as z:
        assert z["features"].shape == (3, 4, 64) and z["stride"] == 16 and list(z["image_shape"]) == [40, 56]
    out2 = tmp_path / "feats-npy"
    assert main(["features", str(images[1]), "--backbone", "vit-small", "--weights", "placeholder",
                 "--format", "npy", "--out", str(out2)]) == 0
    assert np.load(out2 / "b.npy").shape == (2, 2, 384)
    assert json.loads((out2 / "features.json").read_text())["weights"] == "placeholder"


@pytest.mark.parametrize(("args", "text"), [
    (["missing.tif"], "does not exist"),
    (["IMG", "--backbone", "vit-smal"], "did you mean 'vit-small'"),
    (["IMG", "--dtype", "float16"], "float16 is refused"),
    (["IMG", "--weights", "pretrained:/no/such/folder"], "does not exist"),
])
def test_features_bad_input_is_one_line_and_writes_nothing(images, tmp_path, capsys, args, text):
    out = tmp_path / "never"
    args = [str(images[0]) if a == "IMG" else a for a in args]
    assert main(["features", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text in err[0] and err[0].startswith("neuros-cv features: error:")
    assert not out.exists()


def test_backbones_shows_ids_hub_ids_dims_params_stride_and_local_weights(capsys, monkeypatch, tmp_path,
                                                                           tiny_convnext_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    shutil.copytree(tiny_convnext_dir, tmp_path / "w" / "cnx-tiny")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "w"))
    assert main(["backbones", "--family", "dinov3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("pretrained weights here" in ln for ln in lines)
    row = {ln.split("│")[1].strip(): ln for ln in lines if ln.startswith("│")}
    assert "facebook/dinov3-vits16-pretrain-lvd1689m" in row["vit-small"] and "21.6" in row["vit-small"]
    assert "384" in row["cnx-tiny"] and "27.8" in row["cnx-tiny"] and "yes" in row["cnx-tiny"]
    assert "no (auto" in row["vit-7b"] and "6716.4" in row["vit-7b"]


def test_bench_runs_on_a_local_model_folder(tmp_path, tiny_vit_dir, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "--config", "quick", "--backbones", str(tiny_vit_dir), "--weights", "pretrained",
               "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["backbones"][0]["weights"] == f"pretrained:{tiny_vit_dir}"
    assert f"pretrained:{tiny_vit_dir}" in capsys.readouterr().out
    assert doc["results"]["segmentation"] and all(r["weights"] == f"pretrained:{tiny_vit_dir}"
                                                  for r in doc["results"]["segmentation"])
