"""The real suite's pixel rows (experiments/pixel_suite.py) on the real nuclei image, small budgets: the ilastik
recipe as a named baseline beside a pixel head and the patch head, object scores, the scribble variant
relative to dense training, the table, and the RealSuiteConfig / CLI wiring."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.experiments.pixel_suite import BASELINE, CONTROL_BACKBONE, PixelSuiteConfig, load_pixel_data
from neuros.plugins.cv.experiments.real_suite import RealSuiteConfig
from neuros.plugins.cv.report.real_tables import pixel_table, real_tables

pytest.importorskip("stardist")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``neuros-cv bench --suite real --sparse`` on the nuclei image with small pixel-row budgets."""
    tmp = tmp_path_factory.mktemp("pixel-suite")
    cfg = tmp / "real.toml"
    cfg.write_text('datasets = ["nuclei"]\nnuclei_tile = 256\nprotocols = false\ncrossmodal = false\n'
                   'n_boot = 20\n[pixel]\nbaseline_trees = 10\nbaseline_pixels = 5000\n'
                   'max_samples_per_class = 1500\npixel_heads = ["logistic"]\n')
    assert main(["bench", "--suite", "real", "--config", str(cfg), "--backbones", "filterbank", "--sparse",
                 "--out", str(tmp / "out")]) == 0
    return tmp / "out"


@pytest.fixture(scope="module")
def nuclei_rows(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_baseline_pixel_and_patch_rows_with_object_scores(nuclei_rows):
    assert nuclei_rows["pixel_skipped"] == []
    rows = {(r["kind"], r["labels"]): r for r in nuclei_rows["pixel"]}
    kinds = ("baseline", "pixel:logistic", "patch", "control")
    assert set(rows) == {(k, lab) for k in kinds for lab in ("dense", "scribbles")}
    assert rows["baseline", "dense"]["method"] == BASELINE
    # The DINOv3 pixel path runs as a control, and its row says the weights are random (never "pretrained").
    assert rows["control", "dense"]["method"] == f"{CONTROL_BACKBONE} + mlp (control)"
    assert "@random" in CONTROL_BACKBONE and "[stride=4]" in CONTROL_BACKBONE
    dice = {k: r["classes"]["nucleus"]["dice"] for k, r in rows.items()}
    # Measured: recipe 0.93, stride-1 filter bank + logistic 0.91, 16-px patch head 0.76 (nuclei ≈ 30 % of pixels).
    assert dice["baseline", "dense"] > 0.85 and dice["pixel:logistic", "dense"] > 0.85
    assert dice["patch", "dense"] < dice["pixel:logistic", "dense"] - 0.05  # pixels beat 16-px cells at edges
    assert 0.0 < dice["control", "dense"] < dice["pixel:logistic", "dense"]  # random ViT: above nothing, below us
    obj = rows["baseline", "dense"]["objects"]["nucleus"]
    assert obj["f1"] > 0.6 and obj["tp"] > 20 and 0.5 <= obj["mean_matched_iou"] <= 1.0
    assert obj["method"] == "watershed" and 0 < obj["min_size"] < 200  # touching nuclei split; specks dropped
    assert rows["baseline", "dense"]["fit_seconds"] > 0 and rows["patch", "dense"]["predict_seconds"] > 0


def test_scribble_rows_report_how_close_they_get_to_dense(nuclei_rows):
    for r in nuclei_rows["pixel"]:
        if r["labels"] == "scribbles":
            assert r["scribble_width"] == 3 and 0.01 < r["labelled_fraction"] < 0.08  # 3-px strokes: ~4 %
            rel = r["dice_vs_dense"]["nucleus"]
            dense = next(d for d in nuclei_rows["pixel"] if d["method"] == r["method"] and d["labels"] == "dense")
            assert rel == pytest.approx(r["classes"]["nucleus"]["dice"] / dense["classes"]["nucleus"]["dice"])
            assert rel > 0.7  # a few 3-px strokes: measured ≥ 0.9 of dense Dice


def test_cli_writes_the_pixel_rows(run_dir, nuclei_rows):
    assert nuclei_rows["config"]["pixel"]["sparse"] is True  # --sparse
    assert nuclei_rows["config"]["pixel"]["baseline_trees"] == 10  # the [pixel] table of the TOML
    csv = (run_dir / "pixel.csv").read_text().splitlines()
    assert csv[0].startswith("dataset,method,labels,class,dice") and len(csv) == 1 + 8
    md = (run_dir / "tables.md").read_text()
    assert "ilastik recipe" in md and "nuclei, pixel rows: one 512² image" in md


def test_sparse_without_pixel_rows_is_a_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "off.toml"
    cfg.write_text('datasets = ["nuclei"]\npixel = false\n')
    assert main(["bench", "--suite", "real", "--config", str(cfg), "--sparse", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sparse" in err[0] and "pixel = false" in err[0]
    assert not (tmp_path / "o").exists()


def test_pixel_table_names_the_baseline_and_the_labels(nuclei_rows):
    caption, (header, rows) = pixel_table(nuclei_rows)
    assert "ilastik recipe is the baseline" in caption and header[2:5] == ["Method", "Labels", "Dice"]
    assert "(control) rows run the DINOv3 pixel path with the weights their name gives" in caption
    assert rows[0][2] == BASELINE and rows[1][3].startswith("scribbles (") and "× dense" in rows[1][3]
    assert real_tables({"segmentation": [], **nuclei_rows})[-1][0] == caption
    assert pixel_table({"pixel": []}) is None


def test_em_rows_are_full_resolution_with_cropped_test_sections(sstem_dir):
    data = load_pixel_data(PixelSuiteConfig(datasets=("em",), em_train=(0,), em_test=(8, 9)))["em"]
    assert data["train"][0][0].shape == (1024, 1024) and data["test"][0][0].shape == (512, 512)
    assert "centre-cropped to 512²" in data["notes"][0]
    truth = data["true_objects"][0]
    assert truth.max() > 3 and np.array_equal(truth > 0, data["test"][1][0] == 2)
    # True mitochondria are connected components, so predicted ones are made the same way; the speck size
    # comes from the training objects (5th percentile of their areas).
    assert data["object_method"] == "components" and data["min_object"] > 50


def test_real_suite_config_carries_the_pixel_rows():
    assert RealSuiteConfig().pixel == PixelSuiteConfig()
    off = RealSuiteConfig.from_dict({"pixel": False})
    assert off.pixel is None and off.pixel_config() is None and off.to_dict()["pixel"] is False
    on = RealSuiteConfig.from_dict({"datasets": ["em", "nuclei"], "em_train": [0, 1], "seed": 3,
                                    "pixel": {"sparse": True, "pixel_heads": ["hgb", "logistic"]}})
    pc = on.pixel_config()
    assert pc.sparse and pc.pixel_heads == ("hgb", "logistic") and pc.datasets == ("em", "nuclei")
    assert pc.em_train == (0, 1) and pc.seed == 3
    assert RealSuiteConfig.from_dict(on.to_dict()) == on
    with pytest.raises(ValueError, match="unknown key"):
        RealSuiteConfig.from_dict({"pixel": {"heads": ["hgb"]}})


def test_sparse_without_the_real_suite_is_refused(tmp_path, capsys):
    from neuros.plugins.cv.cli import main

    assert main(["bench", "--sparse", "--out", str(tmp_path / "b")]) != 0
    assert "add --suite real" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_budget_thins_em_training_sections_and_full_restores_the_protocol(tmp_path, capsys):
    from neuros.plugins.cv.cli._bench_real import _config

    pc = RealSuiteConfig().pixel_config()
    assert pc.em_train == tuple(range(8)) and pc.em_train_used() == (0, 2, 5, 7)  # 4 of 8, evenly spaced
    assert PixelSuiteConfig(em_train=(0, 1, 2), em_train_sections=5).em_train_used() == (0, 1, 2)
    full = pc.full()
    assert full.em_train_used() == tuple(range(8)) and full.em_test_crop is None
    assert full.pixel_heads == (*pc.pixel_heads, "conv") and full.full() == full
    args = argparse.Namespace(config=None, backbones=None, seed=None, sparse=False, full=True)
    assert _config(args).pixel == RealSuiteConfig().pixel.full()
    with pytest.raises(ValueError, match="em_train_sections"):
        PixelSuiteConfig(em_train_sections=0)
    assert main(["bench", "--full", "--out", str(tmp_path / "b")]) != 0
    assert "add --suite real" in capsys.readouterr().err and not (tmp_path / "b").exists()
    cfg = tmp_path / "real.toml"
    cfg.write_text("pixel = false\n", encoding="utf-8")
    assert main(["bench", "--suite", "real", "--config", str(cfg), "--full", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--full" in err[0] and "pixel = false" in err[0]


def test_scribble_width_must_be_a_positive_integer():
    assert PixelSuiteConfig().scribble_width == 3
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="scribble_width must be a positive integer"):
            PixelSuiteConfig(scribble_width=bad)


def test_the_control_row_is_named_by_its_weights_and_can_be_turned_off():
    from neuros.plugins.cv.experiments.pixel_suite import _methods

    kinds = dict((k, label) for label, k in _methods(PixelSuiteConfig()))
    assert kinds["control"] == f"{CONTROL_BACKBONE} + mlp (control)" and "@random" in kinds["control"]
    for off in ("", None):  # a suite TOML has no null: "" turns it off too
        assert "control" not in {k for _, k in _methods(PixelSuiteConfig(control_backbone=off))}
