"""Object matching against stardist on real nuclei, ISBI region scores on real ssTEM membranes, sparse scoring."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuros.plugins.cv.instances import label_instances, membrane_regions
from neuros.plugins.cv.metrics import (
    match_instances,
    membrane_region_scores,
    pixel_scores,
    region_scores,
    score_images,
)

KEYS = {  # ours: stardist's
    "tp": "tp", "fp": "fp", "fn": "fn", "n_true": "n_true", "n_pred": "n_pred", "precision": "precision",
    "recall": "recall", "f1": "f1", "mean_matched_iou": "mean_matched_score", "mean_true_iou": "mean_true_score",
    "panoptic_quality": "panoptic_quality",
}


@pytest.fixture(scope="module")
def nuclei():
    data = pytest.importorskip("stardist.data")
    _, labels = data.test_image_nuclei_2d(return_mask=True)
    return labels


def _perturbations(labels: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.unique(labels)[1:]
    eroded = np.where(ndi.binary_erosion(labels > 0, iterations=2), labels, 0)
    dropped = np.where(np.isin(labels, rng.choice(ids, 25, replace=False)), 0, labels)
    # Merge touching nuclei: each pair of different labels side by side becomes one label.
    left, right = labels[:, :-1].ravel(), labels[:, 1:].ravel()
    touch = (left > 0) & (right > 0) & (left != right)
    pairs = np.unique(np.stack([left[touch], right[touch]], 1), axis=0)
    lut = np.arange(labels.max() + 1)
    lut[pairs[:, 1]] = pairs[:, 0]
    merged = lut[labels]
    shifted = np.roll(labels, 5, axis=1)
    split = label_instances(labels > 0, method="watershed")
    out = {"eroded": eroded, "dropped": dropped, "merged": merged, "shifted": shifted, "watershed": split}
    return {k: v.astype(labels.dtype) for k, v in out.items()}  # one dtype: stardist's numba compiles once


def test_match_instances_equals_stardist_on_real_nuclei(nuclei):
    from stardist.matching import matching

    perturbed = _perturbations(nuclei)
    assert np.unique(perturbed["merged"]).size < np.unique(nuclei).size - 5  # some were merged
    for name, pred in perturbed.items():
        for thr in (0.3, 0.5, 0.7):
            ours = match_instances(nuclei, pred, thr)
            ref = matching(nuclei, pred, thresh=thr)._asdict()
            for k, v in KEYS.items():
                assert ours[k] == pytest.approx(float(ref[v]), rel=1e-6, abs=1e-9), (name, thr, k)
    big = (nuclei.astype(np.int64) * 1000 + 7) * (nuclei > 0)  # sparse, huge label values
    assert match_instances(nuclei, big)["f1"] == 1.0
    assert match_instances(nuclei, perturbed["eroded"])["mean_matched_iou"] < 0.9


def test_match_instances_by_hand():
    t = np.zeros((20, 40), np.int32)
    t[2:12, 2:12] = 1
    t[2:12, 20:30] = 2
    p = np.zeros_like(t)
    p[2:12, 2:12] = 5  # IoU 1 with 1
    p[2:12, 26:36] = 9  # IoU 40/160 = 0.25 with 2
    r = match_instances(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == 0.5 and r["mean_matched_iou"] == 1.0
    assert match_instances(t, p, 0.25)["tp"] == 2
    # A true object cut in two halves: both halves have IoU exactly 0.5, only one may match.
    halves = np.zeros_like(t)
    halves[2:12, 2:7], halves[2:12, 7:12] = 1, 2
    r = match_instances(t[:, :15], halves[:, :15])
    assert (r["tp"], r["fp"], r["fn"], r["mean_matched_iou"]) == (1, 1, 0, 0.5)
    empty = match_instances(t, np.zeros_like(t))
    assert (empty["tp"], empty["fn"], empty["f1"]) == (0, 2, 0.0)


def test_region_scores_tell_merges_from_splits():
    t = np.repeat(np.repeat(np.arange(1, 5).reshape(2, 2), 10, 0), 10, 1)
    same = region_scores(t, t * 7 + 3)
    assert same["adapted_rand_error"] == 0 and same["vi"] == pytest.approx(0, abs=1e-12)
    merged = region_scores(t, (t + 1) // 2)  # 1+2 and 3+4 merged
    assert merged["rand_precision"] < 1 and merged["rand_recall"] == 1
    assert merged["vi_merge"] == pytest.approx(1.0) and merged["vi_split"] == pytest.approx(0, abs=1e-12)
    split = region_scores(t, t * 2 + (np.indices(t.shape)[1] % 2))  # every region cut into two
    assert split["rand_recall"] < 1 and split["rand_precision"] == 1
    assert split["vi_split"] == pytest.approx(1.0) and split["vi_merge"] == pytest.approx(0, abs=1e-12)
    for s in (merged, split):  # the error is 1 − the harmonic mean of the two fractions (SNEMI3D / ISBI)
        p, r = s["rand_precision"], s["rand_recall"]
        assert s["adapted_rand_error"] == pytest.approx(1 - 2 * p * r / (p + r))
    singles = region_scores(t, np.arange(t.size).reshape(t.shape))  # every pixel its own region
    assert (singles["rand_precision"], singles["rand_recall"], singles["adapted_rand_error"]) == (1.0, 0.0, 1.0)
    # Truth 0 is not scored, whatever is predicted there.
    t0 = t.copy()
    t0[:, 9:11] = 0
    p0 = t.copy()
    p0[:, 9:11] = 99
    assert region_scores(t0, p0)["adapted_rand_error"] == 0


@pytest.fixture(scope="module")
def membrane(sstem_dir):
    """The real truth membrane of ssTEM section 08, a 512² crop of its centre."""
    from neuros.plugins.cv.datasets.catalog import load_sstem

    mask = load_sstem(sstem_dir, sections=[8], downsample=1).masks[0]
    return mask[256:768, 256:768] == 1


def _gap(mem: np.ndarray) -> np.ndarray:
    """The membrane with one gap cut where it separates the two largest neighbouring regions."""
    filled = membrane_regions(mem)
    sizes = np.bincount(filled.ravel())
    a, b = filled[:, :-1], filled[:, 1:]
    score = np.where(a != b, np.minimum(sizes[a], sizes[b]), 0)
    y, x = np.unravel_index(np.argmax(score), score.shape)
    r = 2 * int(np.ceil(ndi.distance_transform_edt(mem)[y, x])) + 2
    out = mem.copy()
    out[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1] = False
    return out


def test_real_membrane_regions_scores(membrane):
    mem = membrane
    self_score = membrane_region_scores(mem, mem)
    assert self_score["adapted_rand_error"] == 0 and self_score["n_true_regions"] > 20
    assert self_score["n_pred_regions"] == self_score["n_true_regions"]
    as_proba = membrane_region_scores(mem, np.where(mem, 0.9, 0.1).astype(np.float32))
    assert as_proba["adapted_rand_error"] == 0

    gap, dilated, eroded = _gap(mem), ndi.binary_dilation(mem), ndi.binary_erosion(mem)
    scores = {n: membrane_region_scores(mem, m) for n, m in [("gap", gap), ("dilated", dilated),
                                                             ("eroded", eroded)]}
    dice = {n: pixel_scores(mem.astype(np.uint8), m.astype(np.uint8), 2)["dice"][1]
            for n, m in [("gap", gap), ("dilated", dilated)]}
    for s in scores.values():
        assert s["adapted_rand_error"] > 0 and s["vi"] > 0
    # The reason for the ISBI metric: one gap (few pixels, pixel Dice barely moves) merges two neurons
    # and costs far more Rand error than a 1-px thicker membrane everywhere (Dice much worse).
    assert (gap != mem).sum() < 0.1 * (dilated != mem).sum()
    assert dice["gap"] > 0.99 > 0.95 > dice["dilated"]
    assert scores["gap"]["adapted_rand_error"] > 10 * scores["dilated"]["adapted_rand_error"]
    assert scores["gap"]["adapted_rand_error"] > 0.1
    assert scores["gap"]["rand_precision"] < 1 and scores["gap"]["rand_recall"] == 1  # a merge, not a split
    assert scores["gap"]["n_pred_regions"] < self_score["n_pred_regions"]
    # Erosion opens the thin membranes everywhere: many merges, the worst of the three.
    assert scores["eroded"]["adapted_rand_error"] > scores["gap"]["adapted_rand_error"]


def test_score_images_ignores_unlabelled_pixels():
    rng = np.random.default_rng(3)
    truth = [rng.integers(0, 3, (20, 24)) for _ in range(4)]
    pred = [np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 3, t.shape)) for t in truth]
    sparse = [np.where(rng.random(t.shape) < 0.3, t, 255) for t in truth]
    res = score_images(sparse, pred, 3, n_boot=100, ignore=255)
    keep = [s != 255 for s in sparse]
    ref = score_images([s[k] for s, k in zip(sparse, keep, strict=True)],
                       [p[k] for p, k in zip(pred, keep, strict=True)], 3, n_boot=100)
    assert res == ref
    # Whatever is predicted at unlabelled pixels changes nothing.
    noisy = [np.where(k, p, (p + 1) % 3) for p, k in zip(pred, keep, strict=True)]
    assert score_images(sparse, noisy, 3, n_boot=100, ignore=255) == res
    dense = score_images(truth, noisy, 3, n_boot=100)
    assert dense["accuracy"] < res["accuracy"]
    # Scribble convention: 0 unlabelled, classes 1..K-1.
    scribbles = [np.where(k, t + 1, 0) for t, k in zip(truth, keep, strict=True)]
    res0 = score_images(scribbles, [p + 1 for p in pred], 4, n_boot=100, ignore=0)
    assert res0["accuracy"] == pytest.approx(res["accuracy"])
    assert set(res0["classes"]) == {"class1", "class2", "class3"}


def test_score_images_ignore_errors():
    t = [np.array([[0, 1], [1, 255]])]
    p = [np.array([[0, 1], [0, 1]])]
    with pytest.raises(ValueError, match="ignore=1"):
        score_images(t, p, 2, n_boot=10, ignore=1)
    with pytest.raises(ValueError, match="no labelled pixel"):
        score_images([np.full((2, 2), 255)], p, 2, n_boot=10, ignore=255)
    with pytest.raises(ValueError, match=r"labels must lie"):  # 255 is not a class without ignore
        score_images(t, p, 2, n_boot=10)


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda: match_instances(np.zeros((4, 4), int), np.zeros((4, 5), int)), "shape"),
        (lambda: match_instances(np.zeros((4, 4)), np.zeros((4, 4), int)), "true_labels"),
        (lambda: match_instances(np.zeros((4, 4), int), np.zeros((4, 4), bool)), "pred_labels"),
        (lambda: match_instances(np.zeros((4, 4), int), -np.ones((4, 4), int)), "pred_labels"),
        (lambda: match_instances(np.zeros((4, 4), int), np.zeros((4, 4), int), 0), "iou_threshold"),
        (lambda: region_scores(np.zeros((4, 4), int), np.ones((4, 4), int)), "true_regions"),
        (lambda: region_scores(np.ones((4, 4), int), np.ones((4, 4), np.float32)), "pred_regions"),
        (lambda: membrane_region_scores(np.ones((4, 4)), np.ones((4, 4))), "true_membrane"),
        (lambda: membrane_region_scores(np.ones((4, 4), bool), np.ones((4, 5))), "shape"),
        (lambda: membrane_region_scores(np.ones((4, 4), bool), np.full((4, 4), np.nan)), "membrane"),
    ],
)
def test_bad_input_is_a_one_line_error(call, word):
    with pytest.raises(ValueError) as err:
        call()
    assert word in str(err.value) and "\n" not in str(err.value)
