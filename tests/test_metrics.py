"""Pixel metrics against scikit-learn, bootstrap CIs, label rules and the single-class error."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score

from neuros.plugins.cv.labels import class_balance_weights, encode_masks, patch_labels, patch_targets
from neuros.plugins.cv.metrics import (
    accuracy,
    binary_f1,
    bootstrap_ci,
    confusion,
    pixel_scores,
    require_two_classes,
    score_images,
)


def _maps(n=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    truth = [rng.integers(0, k, (20, 24)) for _ in range(n)]
    pred = [np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, k, t.shape)) for t in truth]
    return truth, pred


def test_pixel_scores_match_sklearn():
    truth, pred = _maps(1)
    t, p = truth[0].ravel(), pred[0].ravel()
    np.testing.assert_array_equal(confusion(t, p, 3), confusion_matrix(t, p, labels=[0, 1, 2]))
    s = pixel_scores(t, p, 3)
    np.testing.assert_allclose(s["dice"], f1_score(t, p, average=None, labels=[0, 1, 2]))
    np.testing.assert_allclose(s["iou"], jaccard_score(t, p, average=None, labels=[0, 1, 2]))
    # F1 leaves the background out.
    assert s["f1"] == pytest.approx(f1_score(t, p, labels=[1, 2], average="macro"))
    assert s["accuracy"] == pytest.approx(accuracy(t, p))


def test_score_images_pools_over_images_with_cis():
    truth, pred = _maps(8)
    res = score_images(truth, pred, 3, ["bg", "a", "b"], n_boot=300, seed=1)
    t = np.concatenate([x.ravel() for x in truth])
    p = np.concatenate([x.ravel() for x in pred])
    assert res["classes"]["a"]["dice"] == pytest.approx(f1_score(t, p, labels=[1], average="macro"))
    assert len(res["per_image"]) == 8 and "bg" not in res["classes"]
    for c in ("a", "b"):
        lo, hi = res["classes"][c]["dice_ci"]
        assert lo <= res["classes"][c]["dice"] <= hi and hi - lo < 0.2
    assert res == score_images(truth, pred, 3, ["bg", "a", "b"], n_boot=300, seed=1)


def test_bootstrap_ci_is_degenerate_for_identical_images():
    conf = np.tile(np.array([[50, 5], [10, 35]]), (5, 1, 1))
    ci = bootstrap_ci(conf, n_boot=100)
    np.testing.assert_allclose(ci["dice"][1], [70 / 85, 70 / 85])


def test_single_class_test_set_is_an_error_not_a_zero():
    truth = [np.zeros((8, 8), int)] * 2
    with pytest.raises(ValueError, match="meaningless"):
        score_images(truth, truth, 2)
    with pytest.raises(ValueError, match="single class"):
        require_two_classes(np.zeros(5))
    # The report's patch metric keeps its documented value 0 for that case.
    assert binary_f1(np.zeros(4), np.zeros(4)) == 0.0
    with pytest.raises(ValueError, match="differs from prediction shape"):
        score_images([np.zeros((4, 4), int)], [np.zeros((4, 5), int)], 2)


def test_label_rules():
    m = np.zeros((32, 32), np.uint8)
    m[:16, :10] = 1  # 62.5 % of patch (0, 0)
    m[16:, 16:22] = 2  # 37.5 % of patch (1, 1)
    assert patch_labels(m, 16, "argmax").tolist() == [[1, 0], [0, 0]]
    fr_rule = patch_targets(np.stack([1 - (m > 0), m == 1, m == 2], -1).reshape(2, 16, 2, 16, 3).mean((1, 3)),
                            "fraction", 0.3)
    assert fr_rule.tolist() == [[1, 0], [0, 2]]
    with pytest.raises(ValueError, match="binary rule"):
        patch_labels(m, 16, "majority")
    assert patch_labels((m == 1).astype(np.uint8), 16, "majority").tolist() == [[1, 0], [0, 0]]


def test_encode_masks_and_balance():
    enc, classes = encode_masks([np.array([[0, 255], [255, 255]])], [(2, 2)])
    assert classes.tolist() == [0, 255] and enc[0].tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="not among the known classes"):
        encode_masks([np.array([[0, 7]])], [(1, 2)], classes=np.array([0, 1]))
    w = class_balance_weights(np.array([0, 0, 0, 1]), 2)
    assert w[:3].sum() == pytest.approx(w[3])
