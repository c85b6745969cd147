"""Issue #10: the report suite's outputs say what they are and agree with each other.

The placeholder is named and explained in every output, two placeholder "backbones" are flagged as one
stand-in, the registration search ignores shifts with almost no overlap, the registration figure is never an
empty plot, and Table 1 and the overlay figure score and show the same patch predictions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.backbones.placeholder import (
    PLACEHOLDER_NOTE,
    PLACEHOLDER_STAND_IN,
    is_placeholder,
    placeholder_notice,
)
from neuros.plugins.cv.datasets.synthetic import MODALITIES, make_dataset, make_image
from neuros.plugins.cv.experiments.examples import collect_examples
from neuros.plugins.cv.experiments.pipeline import FeatureStore
from neuros.plugins.cv.experiments.registration import (
    MIN_OVERLAP,
    estimate_patch_shift,
    min_overlap_patches,
    run_registration,
)
from neuros.plugins.cv.experiments.suite import REPORT_SHIFTS, SuiteConfig, load_suite, run_suite
from neuros.plugins.cv.feature_matching import estimate_translation, patch_correlation
from neuros.plugins.cv.heads import load_head, make_head
from neuros.plugins.cv.metrics import binary_f1
from neuros.plugins.cv.report.figures import overlay_figure, registration_errors
from neuros.plugins.cv.report.html import render_html
from neuros.plugins.cv.report.tables import (
    placeholder_summary,
    stand_in_groups,
    table1,
    tables_markdown,
)


@pytest.fixture(scope="module")
def two_placeholders():
    """A small suite on two DINOv3 ids that both run the placeholder (no weights on a test machine)."""
    config = load_suite("quick", backbones=["cnx-tiny", "vit-small"], n_train=3, n_test=2)
    store = FeatureStore()
    results, _ = run_suite(config, store=store)
    return config, results, store


# --------------------------------------------------------------------------------------------- placeholder
def test_placeholder_describe_carries_the_one_explanation():
    d = get_backbone("vit-small", weights="placeholder").describe()
    assert d["weights"] == "placeholder" and is_placeholder(d)
    assert d["placeholder"] == PLACEHOLDER_NOTE and d["stand_in"] == PLACEHOLDER_STAND_IN
    for words in ("not a model", "random projection", "say nothing about DINOv3"):
        assert words in PLACEHOLDER_NOTE
    assert placeholder_notice("vit-small") == f"vit-small: weights = placeholder. {PLACEHOLDER_NOTE}"
    # Backbones that are not the placeholder do not claim to be one.
    assert "placeholder" not in get_backbone("filterbank").describe()
    assert "stand_in" not in get_backbone("vit-small", weights="random").describe()


def test_describe_names_a_pretraining_dataset_only_for_a_releases_pretrained_weights(tiny_vit_dir):
    """Random-init weights, and a local checkpoint that is not a DINOv3 release (a tiny test model, a
    from-scratch ``adapt`` output), must not be described as pretrained on LVD-1689M."""
    assert get_backbone("vit-small", weights="random").describe()["pretrain"] == "none (random(seed=0) weights)"
    local = get_backbone(str(tiny_vit_dir), weights="pretrained").describe()
    assert local["weights"] == f"pretrained:{tiny_vit_dir}"
    assert local["pretrain"] == "unknown (a local checkpoint, not a DINOv3 release)"


def test_head_json_of_a_placeholder_head_says_what_the_placeholder_is(tmp_path):
    bb = get_backbone("vit-small", weights="placeholder")
    images, masks = make_dataset("em", 3, 64, seed=1, protocol="random")
    head = make_head("logistic").fit(bb.extract_batch(list(images)), list(masks))
    head.save(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    assert meta["weights"] == "placeholder" and meta["placeholder"] == PLACEHOLDER_NOTE
    assert load_head(tmp_path / "head").weights_ == "placeholder"  # the extra key does not break loading


def test_two_placeholder_backbones_are_flagged_as_one_stand_in(two_placeholders):
    _, results, _ = two_placeholders
    groups = stand_in_groups(results)
    assert len(groups) == 1 and groups[0]["backbones"] == ["cnx-tiny", "vit-small"]
    g = groups[0]
    assert 0 < g["identical"] <= g["compared"] == 3 * 3 + 6 + 3  # Table 1 cells, off-diagonal Table 2, Table 3
    assert "one and the same stand-in" in g["note"] and "CNX-Tiny and ViT-Small" in g["note"]
    md = tables_markdown(results)
    assert PLACEHOLDER_NOTE in md and g["note"] in md
    html = render_html({"backbones": results["backbones"], "results": results})
    assert 'id="placeholder"' in html and 'id="same-stand-in"' in html and "not a model" in html
    summary = placeholder_summary(results)
    assert summary["note"] == PLACEHOLDER_NOTE and summary["backbones"] == ["cnx-tiny", "vit-small"]
    assert summary["same_stand_in"] == groups


def test_stand_in_detection_reads_the_records_not_the_names(two_placeholders):
    _, results, _ = two_placeholders
    renamed = json.loads(json.dumps(results).replace('"cnx-tiny"', '"alpha"').replace('"vit-small"', '"beta"'))
    assert stand_in_groups(renamed)[0]["backbones"] == ["alpha", "beta"]
    # A backbone that did not run the placeholder (no stand_in in its record) is not grouped, whatever its name.
    real = json.loads(json.dumps(results))
    real["backbones"][1] = {k: v for k, v in real["backbones"][1].items() if k not in ("stand_in", "placeholder")}
    real["backbones"][1]["weights"] = "pretrained:/models/vit-small"
    assert stand_in_groups(real) == []
    md = tables_markdown(real)
    assert "CNX-Tiny: weights = placeholder" in md and "ViT-Small: weights" not in md
    assert "same stand-in" not in md


# ---------------------------------------------------------------------------------------------- registration
def test_filterbank_recovers_the_report_shifts_within_a_patch():
    bb = get_backbone("filterbank")
    for m in MODALITIES:
        image, _ = make_image(m, 128, seed=0, protocol="report", index=0)
        rec = run_registration(bb, m, image, REPORT_SHIFTS)
        assert rec["min_overlap_patches"] == min_overlap_patches((8, 8), MIN_OVERLAP) == 20
        for s in rec["shifts"]:
            assert max(abs(e - t) for e, t in zip(s["estimated"], s["true"], strict=True)) <= 1, (m, s)
        if m != "mri":  # a smooth MRI ramp is the filter bank's hard case: off by one patch at most
            assert rec["mean_error"] == 0.0, (m, rec["shifts"])


def test_a_spuriously_high_one_patch_overlap_is_not_chosen():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8, 32)).astype(np.float32)
    b = np.roll(a, (1, 1), axis=(0, 1)) + 0.8 * rng.standard_normal((8, 8, 32)).astype(np.float32)
    b[7, 7] = a[0, 0]  # shift (7, 7) overlaps one patch only, and that one matches perfectly
    sim = patch_correlation(a, b)
    assert estimate_translation(sim, grid_shape=(8, 8)) == (7, 7)  # the report's search (min_overlap=1) is fooled
    assert estimate_patch_shift(sim, (8, 8)) == (1, 1)  # the experiment's search is not
    assert estimate_patch_shift(sim, (8, 8), min_overlap=0.0) == (7, 7)


def test_suite_config_validates_min_overlap_against_its_shifts():
    assert SuiteConfig().min_overlap == MIN_OVERLAP
    with pytest.raises(ValueError, match="min_overlap"):
        SuiteConfig(min_overlap=1.5)
    with pytest.raises(ValueError, match=r"shift \(5, 5\) keeps 9 of 64 patches overlapping"):
        SuiteConfig(shifts=((5, 5),))
    assert SuiteConfig(shifts=((5, 5),), min_overlap=0.1).min_overlap == 0.1


def test_registration_figure_with_zero_errors_is_not_empty(two_placeholders):
    _, results, _ = two_placeholders
    assert all(s["error"] == 0 for r in results["registration"] for s in r["shifts"])
    ax = registration_errors(results).axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels.count("0.00\nexact") == len(results["registration"])  # one per backbone × modality
    assert any("18 shifts recovered exactly" in t for t in labels)
    assert ax.get_ylim()[1] >= 1.0  # the axis spans at least a patch, so 0 sits on a readable scale
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert len(dots) == 2 and all(not ln.get_clip_on() for ln in dots)  # one visible series per backbone
    assert sum(len(ln.get_ydata()) for ln in dots) == sum(len(r["shifts"]) for r in results["registration"])


# ----------------------------------------------------------------------------- Table 1 and overlay agree
def test_overlay_shows_the_predictions_table1_scores(two_placeholders):
    config, results, store = two_placeholders
    per_index = [collect_examples(config, store, index=i)["overlays"] for i in range(config.n_test)]
    for rec in results["segmentation"]:
        exs = [o for ov in per_index for o in ov if (o["backbone"], o["modality"]) == (rec["backbone"],
                                                                                       rec["modality"])]
        labels = np.concatenate([o["patch_labels"].ravel() for o in exs]).astype(int)
        pred = np.concatenate([o["patch_prediction"].ravel() for o in exs]).astype(int)
        assert binary_f1(labels, pred) == pytest.approx(rec["f1"])
        assert (labels == pred).mean() == pytest.approx(rec["accuracy"])
        mask = np.concatenate([o["mask"].ravel() for o in exs]).astype(int)
        painted = np.concatenate([o["prediction"].ravel() for o in exs]).astype(int)
        assert binary_f1(mask, painted) == pytest.approx(rec["pixel_dice"])
        for o in exs:  # the painted mask is the patch grid, pixel for pixel
            s = round(o["stride"])
            np.testing.assert_array_equal(o["prediction"][::s, ::s], o["patch_prediction"])
    fig = overlay_figure(per_index[0])
    assert all("patch F1" in ax.get_xlabel() and "pixel Dice" in ax.get_xlabel() for ax in fig.axes[2::3])


def test_table1_names_the_head_and_the_pixel_dice_and_explains_them():
    config = SuiteConfig(backbones=("cnx-tiny",), n_train=3, n_test=2)  # report protocol: MRI has no lesion patch
    results, _ = run_suite(config)
    header, rows = table1(results)
    assert header == ["Modality", "Model", "Head", "Accuracy", "F1 score", "Pixel Dice"]
    mri = next(r for r in rows if r[0] == "MRI")
    assert mri[2] == "majority†"
    md = tables_markdown(results)
    for words in ("patch-level", "more than half of its pixels", "Head \"majority\"", "Pixel Dice scores the same",
                  "at least 20 patches overlapping"):
        assert words in md
    html = render_html({"backbones": results["backbones"], "results": results})
    assert 'id="how-to-read"' in html and "more than half of its pixels" in html
