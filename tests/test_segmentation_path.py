"""One segmentation path: the report's experiments fit the users' heads, and its Tables 1–3 do not move.

The pinned numbers below were produced by the code *before* the report's pipeline was moved onto
``head.fit(maps, masks)`` (its own patch table, ``MajorityClassifier`` and the NumPy ``fit(X, y)`` overload),
for the config in :data:`CONFIG`; the refactor must reproduce them exactly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.datasets.synthetic import make_dataset
from neuros.plugins.cv.experiments.pipeline import FeatureStore, fit_head, pixel_dice, score_head
from neuros.plugins.cv.experiments.suite import SuiteConfig, run_suite
from neuros.plugins.cv.heads import SegmentationHead, make_head
from neuros.plugins.cv.labels import mask_targets, patch_labels
from neuros.plugins.cv.metrics import binary_f1

CONFIG = {"backbones": ("cnx-tiny", "filterbank"), "weights": "placeholder", "protocol": "report", "n_train": 4,
          "n_test": 2, "size": 64, "seed": 0}

# (train, test, backbone, head, n_train_patches, n_train_positive, accuracy, f1, n_test_patches,
#  n_test_positive, n_predicted_positive, pixel_dice, note is None)
SEGMENTATION = [
    ('em', 'em', 'cnx-tiny', 'logistic', 64, 6, 0.9375, 0.6666666666666666, 32, 4, 2, 0.322673031026253, True),
    ('mri', 'mri', 'cnx-tiny', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('histology', 'histology', 'cnx-tiny', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('em', 'em', 'filterbank', 'logistic', 64, 6, 0.96875, 0.8571428571428571, 32, 4, 3, 0.4313058273075287, True),
    ('mri', 'mri', 'filterbank', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('histology', 'histology', 'filterbank', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
]
CROSSMODAL = [
    ('em', 'em', 'cnx-tiny', 'logistic', 64, 6, 0.9375, 0.6666666666666666, 32, 4, 2, 0.322673031026253, True),
    ('em', 'mri', 'cnx-tiny', 'logistic', 64, 6, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('em', 'histology', 'cnx-tiny', 'logistic', 64, 6, 0.0, 0.0, 32, 0, 32, 0.1724484104852203, False),
    ('mri', 'em', 'cnx-tiny', 'majority', 64, 0, 0.875, 0.0, 32, 4, 0, 0.0, False),
    ('mri', 'mri', 'cnx-tiny', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('mri', 'histology', 'cnx-tiny', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('histology', 'em', 'cnx-tiny', 'majority', 64, 0, 0.875, 0.0, 32, 4, 0, 0.0, False),
    ('histology', 'mri', 'cnx-tiny', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('histology', 'histology', 'cnx-tiny', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('em', 'em', 'filterbank', 'logistic', 64, 6, 0.96875, 0.8571428571428571, 32, 4, 3, 0.4313058273075287, True),
    ('em', 'mri', 'filterbank', 'logistic', 64, 6, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('em', 'histology', 'filterbank', 'logistic', 64, 6, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('mri', 'em', 'filterbank', 'majority', 64, 0, 0.875, 0.0, 32, 4, 0, 0.0, False),
    ('mri', 'mri', 'filterbank', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('mri', 'histology', 'filterbank', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('histology', 'em', 'filterbank', 'majority', 64, 0, 0.875, 0.0, 32, 4, 0, 0.0, False),
    ('histology', 'mri', 'filterbank', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
    ('histology', 'histology', 'filterbank', 'majority', 64, 0, 1.0, 0.0, 32, 0, 0, 0.0, False),
]
# (backbone, modality, min_overlap_patches, estimated shifts, mean_error)
REGISTRATION = [
    ('cnx-tiny', 'em', 5, [(1, 1), (0, 2), (-2, -1)], 0.0),
    ('cnx-tiny', 'mri', 5, [(1, 1), (0, 2), (-2, -1)], 0.0),
    ('cnx-tiny', 'histology', 5, [(1, 1), (0, 2), (-2, -1)], 0.0),
    ('filterbank', 'em', 5, [(1, 1), (0, 2), (-2, -1)], 0.0),
    ('filterbank', 'mri', 5, [(1, 2), (0, 2), (-2, -1)], 0.3333333333333333),
    ('filterbank', 'histology', 5, [(2, 1), (0, 2), (-2, -1)], 0.3333333333333333),
]


def _row(r: dict) -> tuple:
    return (r.get("train", r.get("modality")), r.get("test", r.get("modality")), r["backbone"], r["head"],
            r["n_train_patches"], r["n_train_positive"], r["accuracy"], r["f1"], r["n_test_patches"],
            r["n_test_positive"], r["n_predicted_positive"], r["pixel_dice"], r["note"] is None)


@pytest.fixture(scope="module")
def suite():
    store = FeatureStore()
    results, _ = run_suite(SuiteConfig(**CONFIG), store=store)
    return results, store


def test_tables_1_to_3_are_the_numbers_of_the_code_before_the_refactor(suite):
    results, _ = suite
    assert [_row(r) for r in results["segmentation"]] == SEGMENTATION
    assert [_row(r) for r in results["crossmodal"]] == CROSSMODAL
    assert [(r["backbone"], r["modality"], r["min_overlap_patches"], [tuple(s["estimated"]) for s in r["shifts"]],
             r["mean_error"]) for r in results["registration"]] == REGISTRATION


def test_the_suite_fits_the_heads_users_fit(suite):
    _, store = suite
    heads = list(store._heads.values())
    assert heads and all(isinstance(h, SegmentationHead) for h in heads)
    assert {(h.label_rule, h.single_class) for h in heads} == {("majority", "majority")}
    assert {h.fitted_kind for h in heads} == {"logistic", "majority"}
    # Each head carries the spec of the features it was trained on, as a user's head does.
    assert {str(h.backbone_spec_).split("@")[0] for h in heads} == {"cnx-tiny", "filterbank"}


@pytest.fixture(scope="module")
def mri():
    """Filter-bank features of the report's MRI (lesion on a patch corner: no patch is majority-lesion)."""
    images, masks = make_dataset("mri", 3, 64, seed=0, protocol="report")
    return get_backbone("filterbank").extract_batch(list(images)), list(masks)


def test_single_class_is_a_head_option(mri):
    maps, masks = mri
    assert all(m.any() for m in masks)  # pixels hold the lesion, patches do not
    with pytest.raises(ValueError, match="every training patch has the same label"):
        make_head("logistic", label_rule="majority").fit(maps, masks)
    head = make_head("logistic", label_rule="majority", single_class="majority").fit(maps, masks)
    assert head.fitted_kind == "majority" and head.classes_.tolist() == [0, 1]
    assert all((p == 0).all() for p in head.predict(maps))
    np.testing.assert_array_equal(head.predict_proba(maps[0], level="patch")[..., 0], 1.0)
    assert clone(head).get_params()["single_class"] == "majority"
    # With two classes among the patches the option changes nothing.
    fg = make_head("logistic", label_rule="fraction", threshold=0.02, single_class="majority").fit(maps, masks)
    assert fg.fitted_kind == "logistic"
    with pytest.raises(ValueError, match="single_class must be 'error' or 'majority'"):
        make_head("logistic", single_class="zero").fit(maps, masks)
    with pytest.raises(ValueError, match="single class"):
        make_head("logistic").fit(maps, [np.zeros_like(m) for m in masks])


def test_a_single_class_head_refuses_to_save(mri, tmp_path):
    maps, masks = mri
    head = fit_head(maps, masks)
    with pytest.raises(ValueError, match="learned nothing to save"):
        head.save(tmp_path / "head")
    assert not (tmp_path / "head").exists()


@pytest.fixture(scope="module")
def em():
    bb = get_backbone("filterbank")
    images, masks = make_dataset("em", 6, 72, seed=3, protocol="random")  # 72 px: border patches are cropped
    return bb.extract_batch(list(images)), list(masks)


def test_pixel_masks_come_from_predict_nearest_is_the_painted_patches(em):
    maps, masks = em
    head = fit_head(maps[:4], masks[:4])
    for fm in maps[4:]:
        grid = head.predict(fm, level="patch")
        painted = np.kron(grid, np.ones((16, 16), grid.dtype))[:72, :72]
        np.testing.assert_array_equal(head.predict(fm, level="pixel", interpolation="nearest"), painted)
        assert head.predict(fm).shape == (72, 72)  # bilinear stays the default
    pred = np.concatenate([head.predict(fm, level="pixel", interpolation="nearest").ravel() for fm in maps[4:]])
    truth = np.concatenate([m.ravel() for m in masks[4:]])
    assert pixel_dice(head, maps[4:], masks[4:]) == binary_f1(truth > 0, pred > 0)
    with pytest.raises(ValueError, match="interpolation must be"):
        head.predict(maps[4], interpolation="cubic")


def test_scores_compare_with_the_labels_the_head_trains_on(em):
    maps, masks = em
    head = fit_head(maps[:4], masks[:4], rule="fraction")
    targets, classes = mask_targets(masks[4:], [fm.image_shape for fm in maps[4:]], 16, "fraction")
    truth = np.concatenate([classes[t].ravel() for t in targets])
    pred = np.concatenate([p.ravel() for p in head.predict(maps[4:], level="patch")])
    s = score_head(head, maps[4:], masks[4:], rule="fraction")
    assert s["n_test_patches"] == truth.size and s["n_test_positive"] == int((truth > 0).sum())
    assert s["accuracy"] == float((truth == pred).mean())


def test_patch_labels_treat_any_binary_mask_alike():
    m = np.zeros((32, 32), np.uint8)
    m[:16, :10] = 255  # 62.5 % of patch (0, 0)
    assert patch_labels(m, 16, "majority").tolist() == [[255, 0], [0, 0]]
    np.testing.assert_array_equal(patch_labels(m > 0, 16, "majority") > 0, patch_labels(m, 16, "majority") > 0)
    targets, classes = mask_targets([m], [m.shape], 16, "majority")
    assert classes.tolist() == [0, 255] and targets[0].tolist() == [[1, 0], [0, 0]]


def test_report_modules_compute_nothing():
    """Tables and figures live in report/; fitting heads and PCA live in experiments/."""
    report = Path(__import__("neuros.plugins.cv.report", fromlist=["x"]).__file__).parent
    for path in report.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m.startswith(("sklearn", "heads")) or m.endswith("heads")}, path.name
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"fit", "fit_transform", "partial_fit"}, path.name
