"""Segmentation heads: the estimator interface, pixel/patch outputs, save/load, and bad input."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.datasets.synthetic import make_dataset
from neuros.plugins.cv.features import FeatureMap
from neuros.plugins.cv.heads import (
    HEADS,
    IncrementalLinearHead,
    list_heads,
    load_head,
    make_head,
)

FAST = {"mlp": {"epochs": 20, "hidden": 32, "batch_size": 32}, "rf": {"n_estimators": 20}}


@pytest.fixture(scope="module")
def em():
    """Filter-bank features of synthetic EM (random placement): 6 train, 2 test images of 64²."""
    bb = get_backbone("filterbank")
    im, m = make_dataset("em", 8, 64, seed=5, protocol="random")
    return bb.extract_batch(list(im)), [x for x in m]


def _three_class(n: int = 4, size: int = 64):
    """Images with two kinds of objects: bright disks (class 1) and dark squares (class 2)."""
    rng = np.random.default_rng(0)
    ims, ms = [], []
    for _ in range(n):
        img = 0.5 + 0.03 * rng.standard_normal((size, size))
        m = np.zeros((size, size), np.uint8)
        for _ in range(3):
            y, x = rng.integers(8, size - 24, 2)
            m[y : y + 16, x : x + 16] = 2
            img[y : y + 16, x : x + 16] = 0.1
        yy, xx = np.ogrid[:size, :size]
        cy, cx = rng.integers(12, size - 12, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
        m[disk], img[disk] = 1, 0.95
        ims.append(img.astype(np.float32))
        ms.append(m)
    return ims, ms


@pytest.mark.parametrize("kind", ["logistic", "sgd", "knn", "rf", "mlp"])
def test_every_head_predicts_pixels_and_patches(em, kind):
    maps, masks = em
    head = make_head(kind, **FAST.get(kind, {})).fit(maps[:6], masks[:6])
    proba = head.predict_proba(maps[6:], level="pixel")
    assert [p.shape for p in proba] == [(64, 64, 2)] * 2
    np.testing.assert_allclose(proba[0].sum(axis=2), 1.0, atol=1e-5)
    patch = head.predict_proba(maps[6], level="patch")
    assert patch.shape == (4, 4, 2)
    # Pixel probabilities are the patch probabilities upsampled bilinearly (no other path).
    np.testing.assert_allclose(head.predict_proba(maps[6]), maps[6].to_pixels(patch), atol=1e-6)
    labels = head.predict(maps[6])
    assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1}
    assert head.predict(maps[6], level="patch").shape == (4, 4)
    # Better than predicting background everywhere on the test images.
    acc = np.mean([(p == m).mean() for p, m in zip(head.predict(maps[6:]), masks[6:], strict=True)])
    assert acc > np.mean([(m == 0).mean() for m in masks[6:]])


def test_multiclass_masks_and_label_values():
    ims, ms = _three_class()
    maps = get_backbone("filterbank").extract_batch(ims)
    # Label values need not be 0..K-1: 0/100/200 come back as 0/100/200.
    head = make_head("logistic").fit(maps[:3], [m * 100 for m in ms[:3]])
    assert head.classes_.tolist() == [0, 100, 200]
    assert head.predict_proba(maps[3]).shape == (64, 64, 3)
    pred = head.predict(maps[3])
    assert set(np.unique(pred)) <= {0, 100, 200}
    assert (pred == ms[3] * 100).mean() > (ms[3] == 0).mean()


@pytest.mark.parametrize("kind", ["logistic", "mlp", "sgd"])
def test_save_load_roundtrip(em, tmp_path, kind):
    maps, masks = em
    head = make_head(kind, class_weight="balanced", **FAST.get(kind, {})).fit(maps[:6], masks[:6])
    head.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    assert meta["backbone"] == "filterbank" and meta["weights"] == "none (classical filters)"
    assert meta["feature_dim"] == maps[0].feature_dim and meta["params"]["class_weight"] == "balanced"
    again = load_head(tmp_path / "h")
    np.testing.assert_allclose(again.predict_proba(maps[6]), head.predict_proba(maps[6]), atol=1e-6)
    with pytest.raises(FileExistsError, match="not empty"):
        head.save(tmp_path / "h")


def test_refuses_another_backbones_features(em):
    maps, masks = em
    head = make_head("logistic").fit(maps[:6], masks[:6])
    other = get_backbone("vit-small", weights="placeholder").extract(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="trained on 'filterbank'"):
        head.predict(other)
    renamed = FeatureMap(maps[6].features, 16.0, (64, 64), "filterbank", "other-weights")
    with pytest.raises(ValueError, match="weights"):
        head.predict_proba(renamed)


def test_bad_training_input(em):
    maps, masks = em
    with pytest.raises(ValueError, match="non-integer"):
        make_head("logistic").fit(maps[:2], [masks[0] * 0.5, masks[1]])
    with pytest.raises(ValueError, match="does not match image shape"):
        make_head("logistic").fit(maps[:2], [masks[0][:32], masks[1]])
    with pytest.raises(ValueError, match="empty training set"):
        make_head("logistic").fit([], [])
    with pytest.raises(ValueError, match="single class"):
        make_head("logistic").fit(maps[:2], [np.zeros((64, 64), np.uint8)] * 2)
    with pytest.raises(ValueError, match="unknown head 'logstic'; did you mean 'logistic'"):
        make_head("logstic")
    with pytest.raises(RuntimeError, match="not fitted"):
        make_head("knn").predict(maps[0])
    with pytest.raises(ValueError, match="level must be"):
        make_head("logistic").fit(maps[:6], masks[:6]).predict(maps[6], level="voxel")


def test_incremental_head_learns_from_chunks(em):
    maps, masks = em
    head = IncrementalLinearHead(class_weight="balanced")
    with pytest.raises(ValueError, match="classes="):
        head.partial_fit(maps[:2], masks[:2])
    head.partial_fit(maps[:3], masks[:3], classes=[0, 1]).partial_fit(maps[3:6], masks[3:6])
    assert head.n_train_patches_ == 6 * 16
    acc = np.mean([(p == m).mean() for p, m in zip(head.predict(maps[6:]), masks[6:], strict=True)])
    assert acc > np.mean([(m == 0).mean() for m in masks[6:]])


def test_heads_take_feature_maps_only(em):
    maps, masks = em
    X = np.concatenate([fm.flat() for fm in maps[:6]])
    y = np.zeros(len(X), np.int64)
    with pytest.raises(TypeError, match="feature_maps must be a FeatureMap"):
        make_head("logistic").fit(X, y)
    head = make_head("logistic").fit(maps[:6], masks[:6])
    with pytest.raises(TypeError, match="feature_maps must be a FeatureMap"):
        head.predict(X)
    assert set(list_heads()) == {"logistic", "sgd", "knn", "rf", "hgb", "mlp", "conv"}


def test_load_head_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"head\.json not found"):
        load_head(tmp_path)
    (tmp_path / "head.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_head(tmp_path)


# --------------------------------------------------------------------------- scikit-learn estimator protocol
NON_DEFAULT = {
    "logistic": {"C": 0.25, "max_iter": 50},
    "sgd": {"alpha": 1e-3, "epochs": 2, "batch_size": 128},
    "knn": {"n_neighbors": 3},
    "rf": {"n_estimators": 7, "max_depth": None, "n_jobs": 1},
    "hgb": {"max_iter": 5, "learning_rate": 0.2, "max_leaf_nodes": 7, "l2_regularization": 0.5},
    "mlp": {"hidden": 8, "epochs": 2, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.0, "dropout": 0.0},
    "conv": {"channels": 4, "dilations": (1,), "trunk_stride": 2, "steps": 3, "crop": 16, "batch_size": 2,
             "lr": 1e-2, "weight_decay": 0.0, "tile": 64, "augment": True, "tta": True},
}


@pytest.mark.parametrize("kind", list(HEADS))
def test_clone_gives_an_unfitted_head_with_the_same_parameters(em, kind):
    cw = None if kind == "knn" else "balanced"
    head = make_head(kind, seed=7, class_weight=cw, label_rule="fraction", threshold=0.25, single_class="majority",
                     **NON_DEFAULT[kind])
    params = head.get_params()
    assert list(params) == list(inspect.signature(type(head)).parameters)  # exactly the __init__ signature
    assert params == {**NON_DEFAULT[kind], "label_rule": "fraction", "threshold": 0.25, "class_weight": cw,
                      "seed": 7, "single_class": "majority", "unlabelled": None, "max_samples_per_class": None,
                      "n_components": None}
    assert head.get_params(deep=True) == head.get_params(deep=False) == params
    maps, masks = em
    head.fit(maps[:6], masks[:6])
    copy = clone(head)
    assert type(copy) is type(head) and copy is not head
    assert copy.get_params() == params
    assert not hasattr(copy, "classes_")  # learned state is not cloned
    np.testing.assert_array_equal(copy.fit(maps[:6], masks[:6]).predict(maps[6:7])[0],
                                  head.predict(maps[6:7])[0])


@pytest.mark.parametrize("kind", list(HEADS))
def test_set_params_sets_known_names_and_refuses_unknown_ones(kind):
    head = make_head(kind)
    assert head.set_params(seed=11, threshold=0.75) is head
    assert head.get_params()["seed"] == 11 and head.threshold == 0.75
    with pytest.raises(ValueError, match=r"invalid parameter 'bogus' for \w+Head; valid parameters: .*seed"):
        head.set_params(bogus=1)
    with pytest.raises(ValueError, match="invalid parameter 'nope'"):
        head.set_params(nope__deep=1)
    assert head.set_params() is head


def test_grid_search_over_head_parameters(em):
    maps, masks = em

    def pixel_accuracy(est, X, y):
        return float(np.mean([np.mean(p == m) for p, m in zip(est.predict(X), y, strict=True)]))

    search = GridSearchCV(make_head("logistic", max_iter=200), {"C": [1e-4, 1.0]}, cv=2, scoring=pixel_accuracy)
    search.fit(maps[:6], masks[:6])
    assert set(search.cv_results_["param_C"]) == {1e-4, 1.0}
    assert search.best_estimator_.get_params()["C"] == search.best_params_["C"]
    assert search.best_estimator_.predict(maps[6:7])[0].shape == (64, 64)
