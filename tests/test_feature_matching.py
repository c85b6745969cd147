"""The fast FFT path gives the report's diagonal-mean scores and translation without the N×N matrix."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from neuros.plugins.cv import get_backbone
from neuros.plugins.cv.feature_matching import (
    channel_cross_correlation,
    diagonal_means,
    diagonal_scores,
    estimate_translation,
    estimate_translation_from_features,
    patch_correlation,
    refine_peak,
)
from neuros.plugins.cv.features import FeatureMap


def _shifted_pair(rng, h, w, c, shift, noise=0.2):
    """Two (h, w, c) windows of one larger random map, the second moved by ``shift`` (no wrap-around)."""
    big = rng.standard_normal((h + 2 * abs(shift[0]) + 2, w + 2 * abs(shift[1]) + 2, c)).astype(np.float32)
    y0, x0 = abs(shift[0]) + 1, abs(shift[1]) + 1
    a = big[y0 : y0 + h, x0 : x0 + w]
    b = big[y0 - shift[0] : y0 - shift[0] + h, x0 - shift[1] : x0 - shift[1] + w]
    return a, b + noise * rng.standard_normal(b.shape).astype(np.float32)


@pytest.mark.parametrize(("h", "w", "c"), [(1, 1, 3), (3, 1, 5), (5, 7, 16), (8, 8, 32), (12, 9, 64), (16, 16, 130)])
def test_diagonal_scores_equal_the_reports_definition(h, w, c):
    rng = np.random.default_rng(h * 100 + w)
    a, b = _shifted_pair(rng, h, w, c, (min(2, h - 1), -min(3, w - 1)))
    a[0, 0] = 0.0  # a zero vector has similarity 0 in both definitions
    fast, counts_fast = diagonal_scores(a, b)
    slow, counts_slow = diagonal_means(patch_correlation(a, b), (h, w))
    np.testing.assert_array_equal(counts_fast, counts_slow)
    np.testing.assert_allclose(fast, slow, atol=1e-6)


def test_max_shift_window_matches_and_leaves_the_rest_undefined():
    rng = np.random.default_rng(1)
    a, b = _shifted_pair(rng, 10, 13, 24, (2, -1))
    slow, _ = diagonal_means(patch_correlation(a, b), (10, 13))
    fast, _ = diagonal_scores(a, b, max_shift=(3, 2))
    win = np.s_[9 - 3 : 9 + 4, 12 - 2 : 12 + 3]
    np.testing.assert_allclose(fast[win], slow[win], atol=1e-6)
    outside = np.ones_like(fast, dtype=bool)
    outside[win] = False
    assert np.isnan(fast[outside]).all()


@pytest.mark.parametrize("seed", range(12))
def test_fast_translation_equals_report_translation(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(3, 14)), int(rng.integers(3, 14))
    shift = (int(rng.integers(-(h // 2), h // 2 + 1)), int(rng.integers(-(w // 2), w // 2 + 1)))
    a, b = _shifted_pair(rng, h, w, int(rng.integers(4, 40)), shift, noise=float(rng.uniform(0.1, 2.0)))
    sim = patch_correlation(a, b)
    max_shift = [None, 1, (2, 3)][seed % 3]
    min_overlap = [1, 4, h * w // 2][seed % 3]
    try:
        want = estimate_translation(sim, grid_shape=(h, w), max_shift=max_shift, min_overlap=min_overlap)
    except ValueError:
        with pytest.raises(ValueError, match="no shift satisfies"):
            estimate_translation_from_features(a, b, max_shift=max_shift, min_overlap=min_overlap)
        return
    for precision in ("verified", "double"):
        got = estimate_translation_from_features(
            a, b, max_shift=max_shift, min_overlap=min_overlap, precision=precision
        )
        assert got == want, precision


def test_all_ties_fall_back_to_exact_scores_and_the_smallest_shift():
    zeros = np.zeros((9, 11, 8), dtype=np.float32)  # every score is 0: every shift is a candidate
    assert estimate_translation_from_features(zeros, zeros) == (0, 0)
    assert estimate_translation(patch_correlation(zeros, zeros), grid_shape=(9, 11)) == (0, 0)
    with pytest.raises(ValueError, match="precision"):
        estimate_translation_from_features(zeros, zeros, precision="half")


def test_fast_path_finds_true_shift_of_real_features(sstem_dir):
    import tifffile

    em = tifffile.imread(sstem_dir / "raw" / "02.tif")
    bb = get_backbone("vit-small", weights="placeholder")
    a = em[256:512, 256:512]
    b = em[256 - 32 : 512 - 32, 256 + 48 : 512 + 48]  # b = roll(a, (2, -3) patches) where they overlap
    fa, fb = bb.extract(a), bb.extract(b)
    assert isinstance(fa, FeatureMap)
    assert estimate_translation_from_features(fa, fb, min_overlap=64) == (2, -3)
    assert estimate_translation(patch_correlation(fa.flat(), fb.flat()), 16, min_overlap=64) == (2, -3)


def test_channel_cross_correlation_matches_scipy():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 9, 4))
    b = rng.standard_normal((7, 9, 4))
    ours = channel_cross_correlation(a, b, chunk=3)
    # scipy's correlate(b, a)[k] = Σ b[n + k] a[n], summed over channels.
    ref = sum(signal.correlate(b[:, :, c], a[:, :, c], mode="full", method="direct") for c in range(4))
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    corr, spec, shape = channel_cross_correlation(a, b, max_shift=(2, 3), return_spectrum=True)
    np.testing.assert_allclose(corr, ref[6 - 2 : 6 + 3, 8 - 3 : 8 + 4], atol=1e-5)
    assert spec.shape == shape and shape[0] >= 7 + 2 and shape[1] >= 9 + 3


def test_refine_peak_recovers_a_parabola_vertex():
    y, x = np.mgrid[0:7, 0:7]
    surface = -((y - 3.3) ** 2) - 2 * (x - 2.8) ** 2
    fy, fx = refine_peak(surface, (3, 3))
    assert fy == pytest.approx(0.3) and fx == pytest.approx(-0.2)
    assert refine_peak(surface, (0, 3))[0] == 0.0  # at the border: no refinement
    flat = np.zeros((3, 3))
    assert refine_peak(flat, (1, 1)) == (0.0, 0.0)


def test_bad_feature_maps_get_one_line_errors():
    a = np.zeros((4, 4, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="different grids"):
        diagonal_scores(a, np.zeros((4, 5, 8)))
    with pytest.raises(ValueError, match="different feature dimensions"):
        diagonal_scores(a, np.zeros((4, 4, 9)))
    bad = a.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_translation_from_features(a, bad)
    with pytest.raises(ValueError, match=r"\(h, w, C\)"):
        diagonal_scores(np.zeros((16, 8)), np.zeros((16, 8)))
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        diagonal_scores(a, a, max_shift=-1)
    with pytest.raises(TypeError, match="real-valued"):
        diagonal_scores(a.astype(complex), a.astype(complex))
