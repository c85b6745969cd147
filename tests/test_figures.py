"""Report figures: drawn from real suite results with the Agg canvas, saved as PNG, faithful to the data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neuros.plugins.cv.experiments.examples import collect_examples, pca_rgb
from neuros.plugins.cv.experiments.pipeline import FeatureStore
from neuros.plugins.cv.experiments.suite import load_suite, run_suite
from neuros.plugins.cv.features import FeatureMap
from neuros.plugins.cv.report.figures import crossmodal_heatmaps, report_figures, save_figures


@pytest.fixture(scope="module")
def suite():
    config = load_suite("quick", backbones=["cnx-tiny", "filterbank"], modalities=["em", "mri"], n_train=2,
                        n_test=1)
    store = FeatureStore()
    results, _ = run_suite(config, store=store)
    return config, results, collect_examples(config, store)


def test_all_figures_are_pngs_and_saved(suite, tmp_path):
    _, results, examples = suite
    figs = report_figures(results, examples)
    assert list(figs) == ["crossmodal", "registration", "overlays", "pca"]
    paths = save_figures(figs, tmp_path / "figures")
    for p in paths:
        im = Image.open(p)
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
        assert np.asarray(im.convert("L")).std() > 5  # something is drawn
    # More backbones/modalities → more rows of overlays.
    assert Image.open(tmp_path / "figures" / "overlays.png").size[1] > Image.open(paths[1]).size[1]


def test_heatmap_cells_carry_the_results(suite):
    _, results, _ = suite
    fig = crossmodal_heatmaps(results)
    axes = [a for a in fig.axes if a.get_images() and a.get_title()]
    assert len(axes) == 4  # 2 backbones × (accuracy, F1)
    acc = axes[0].get_images()[0].get_array()
    recs = [r for r in results["crossmodal"] if r["backbone"] == "cnx-tiny"]
    expected = np.array([[r["accuracy"] for r in recs if r["train"] == t] for t in ("em", "mri")])
    np.testing.assert_allclose(np.asarray(acc), expected)
    assert "placeholder" in axes[0].get_title()


def test_examples_are_the_suites_data_and_predictions(suite):
    config, _, examples = suite
    assert [(o["backbone"], o["modality"]) for o in examples["overlays"]] == [
        ("cnx-tiny", "em"), ("cnx-tiny", "mri"), ("filterbank", "em"), ("filterbank", "mri")
    ]
    for o in examples["overlays"]:
        assert o["prediction"].shape == o["mask"].shape == o["image"].shape[:2] == (config.size, config.size)
        assert o["prediction"].dtype == bool
    em = examples["overlays"][0]
    assert (em["prediction"] & em["mask"]).any()  # the EM head finds real foreground
    assert [p["backbone"] for p in examples["pca"]] == ["cnx-tiny", "filterbank"]
    assert all(p["rgb"].shape == (4, 4, 3) for p in examples["pca"])
    with pytest.raises(ValueError, match="index"):
        collect_examples(config, index=5)


def test_pca_rgb_follows_the_feature_structure():
    # Two feature clusters (left/right halves) must get two clearly different colours.
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 0.01, (6, 8, 16)).astype(np.float32)
    feats[:, 4:, 0] += 5.0
    rgb = pca_rgb(FeatureMap(feats, 16, (96, 128), "x", "none"))
    assert rgb.shape == (6, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    left, right = rgb[:, :4].mean(axis=(0, 1)), rgb[:, 4:].mean(axis=(0, 1))
    assert np.abs(left - right).max() > 0.8


def test_figures_skip_what_the_results_do_not_have():
    assert report_figures({"volumes": [{"iou": 1.0}]}) == {}
    with pytest.raises(ValueError, match="cross-modality"):
        crossmodal_heatmaps({"crossmodal": []})
