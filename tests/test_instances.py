"""Instances from pixel maps: connected components, seeded watershed, membrane regions; real nuclei and ssTEM."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuros.plugins.cv.instances import label_instances, membrane_regions
from neuros.plugins.cv.metrics import match_instances


def _disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def touching():
    """Two overlapping disks (one blob with a neck) and their true instance labels."""
    a, b = _disk((60, 90), (30, 28), 15), _disk((60, 90), (30, 54), 15)
    truth = np.zeros((60, 90), np.uint32)
    truth[a] = 1
    truth[b & ~a] = 2
    return a | b, truth


@pytest.fixture(scope="module")
def nuclei():
    """Real fluorescence nuclei with their instance labels (stardist's test image; installed, offline)."""
    data = pytest.importorskip("stardist.data")
    _, labels = data.test_image_nuclei_2d(return_mask=True)
    return labels


def test_components_merge_touching_disks_and_watershed_splits_them(touching):
    mask, truth = touching
    cc = label_instances(mask, method="components")
    ws = label_instances(mask, method="watershed")
    assert cc.dtype == ws.dtype == np.uint32
    assert cc.max() == 1 and ws.max() == 2
    assert match_instances(truth, ws, 0.8)["tp"] == 2
    assert (ws[mask] > 0).all() and (ws[~mask] == 0).all()
    # Peaks of the distance transform as seeds split them the same way.
    assert label_instances(mask, min_distance=5).max() == 2


def test_a_neck_shallower_than_h_is_not_split(touching):
    mask, _ = touching
    assert label_instances(mask, h=20).max() == 1  # both centres are < 20 px above the neck


def test_input_forms_agree():
    rng = np.random.default_rng(0)
    p = ndi.gaussian_filter(rng.random((64, 64)), 3)
    p = (p - p.min()) / np.ptp(p)
    proba = np.stack([1 - p, p], axis=-1).astype(np.float32)
    from_proba = label_instances(proba, cls=1, threshold=0.6)
    assert from_proba.max() >= 2
    np.testing.assert_array_equal(label_instances(p, threshold=0.6), from_proba)
    np.testing.assert_array_equal(label_instances(p >= 0.6), from_proba)
    class_map = np.where(p >= 0.6, 2, 1).astype(np.uint8)
    np.testing.assert_array_equal(label_instances(class_map, cls=2), from_proba)
    # Flooding 1 − p instead of the distance keeps the same objects (the same foreground pixels).
    by_p = label_instances(proba, cls=1, threshold=0.6, landscape="probability")
    np.testing.assert_array_equal(by_p > 0, from_proba > 0)


def test_min_size_removes_small_objects_and_numbers_the_rest():
    mask = np.zeros((40, 40), bool)
    mask[2:12, 2:12] = True  # 100 px
    mask[20:22, 20:22] = True  # 4 px
    mask[30:38, 5:35] = True  # 240 px
    for method in ("components", "watershed"):
        lab = label_instances(mask, method=method, min_size=10)
        assert sorted(np.unique(lab).tolist()) == [0, 1, 2]
        assert (lab[20:22, 20:22] == 0).all()


def test_watershed_keeps_objects_thinner_than_h():
    mask = np.zeros((30, 30), bool)
    mask[5, 2:28] = True  # a 1-px line: its distance maximum is 1 < h
    mask[15:25, 10:20] = True
    lab = label_instances(mask, h=3.0)
    assert lab.max() == 2 and (lab[mask] > 0).all()


def test_watershed_splits_touching_real_nuclei_that_components_merge(nuclei):
    foreground = nuclei > 0  # the thresholded truth: touching nuclei share one blob
    n_true = np.unique(nuclei).size - 1
    cc = label_instances(foreground, method="components")
    ws = label_instances(foreground, method="watershed")
    assert cc.max() < n_true  # touching nuclei merged
    cc_tp, ws_tp = match_instances(nuclei, cc)["tp"], match_instances(nuclei, ws)["tp"]
    assert ws_tp >= cc_tp + 10, (cc_tp, ws_tp)
    assert abs(int(ws.max()) - n_true) < abs(int(cc.max()) - n_true)


def test_real_mitochondria_components_match_themselves(sstem_dir):
    from neuros.plugins.cv.datasets.catalog import load_sstem

    mask = load_sstem(sstem_dir, sections=[8], downsample=1).masks[0]
    mito = label_instances(mask, cls=2, method="components")
    assert mito.max() == ndi.label(mask == 2)[1] > 5
    np.testing.assert_array_equal(mito > 0, mask == 2)
    assert match_instances(mito, mito)["f1"] == 1.0
    eroded = label_instances(ndi.binary_erosion(mask == 2, iterations=3), method="components")
    assert match_instances(mito, eroded)["f1"] < 1.0


def test_membrane_regions_of_a_grid():
    mem = np.zeros((41, 41), bool)
    mem[20, :] = mem[:, 20] = True
    closed = membrane_regions(mem, fill=False)
    assert closed.dtype == np.uint32 and closed.max() == 4 and (closed[mem] == 0).all()
    filled = membrane_regions(mem)
    assert filled.max() == 4 and (filled > 0).all()
    np.testing.assert_array_equal(filled[~mem], closed[~mem])
    gap = mem.copy()
    gap[20, 5:8] = False  # a gap in the horizontal membrane merges the two left regions
    assert membrane_regions(gap).max() == 3


def test_a_diagonal_one_pixel_membrane_separates():
    mem = np.eye(30, dtype=bool)  # 8-connected only
    assert membrane_regions(mem, fill=False).max() == 2


def test_membrane_probability_threshold_and_specks():
    mem = np.zeros((41, 41), np.float32)
    mem[18:23, :] = 0.9
    mem[20, 20] = 0.2  # a speck of non-membrane inside the thick membrane
    assert membrane_regions(mem, 0.5).max() == 3
    assert membrane_regions(mem, 0.5, min_size=2).max() == 2
    assert membrane_regions(mem, 0.95).max() == 1  # nothing is confident membrane


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda: label_instances(np.full((8, 8, 2), np.nan, np.float32), cls=1), "proba"),
        (lambda: label_instances(np.full((8, 8, 2), 0.5, np.float32), cls=2), "cls"),
        (lambda: label_instances(np.full((8, 8, 2), 0.5, np.float32)), "cls"),
        (lambda: label_instances(np.full((8, 8), 1.5, np.float32)), "proba"),
        (lambda: label_instances(np.ones((8, 8), bool), method="otsu"), "method"),
        (lambda: label_instances(np.ones((8, 8), bool), threshold=2), "threshold"),
        (lambda: label_instances(np.ones((8, 8), bool), min_size=-1), "min_size"),
        (lambda: label_instances(np.ones((8, 8), bool), landscape="probability"), "landscape"),
        (lambda: label_instances(np.ones((8, 8), bool), cls=1), "cls"),
        (lambda: label_instances(np.ones(8, bool)), "proba"),
        (lambda: membrane_regions(np.full((8, 8), np.nan)), "membrane"),
        (lambda: membrane_regions(np.zeros((8, 8, 2))), "membrane"),
        (lambda: membrane_regions(np.array([["a"]])), "membrane"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_argument(call, word):
    with pytest.raises(ValueError) as err:
        call()
    assert word in str(err.value) and "\n" not in str(err.value)
