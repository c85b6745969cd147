"""Shift bookkeeping shared by feature matching and registration: window, overlap counts, tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv import feature_matching, registration
from neuros.plugins.cv.shifts import (
    TIE_RTOL,
    best_shift,
    crop_window,
    min_overlap_count,
    overlap_count,
    overlap_counts,
    overlap_mask,
    parse_max_shift,
)


def _brute_force_counts(h: int, w: int, my: int, mx: int) -> np.ndarray:
    out = np.zeros((2 * my + 1, 2 * mx + 1), dtype=np.int64)
    for dy in range(-my, my + 1):
        for dx in range(-mx, mx + 1):
            out[dy + my, dx + mx] = sum(
                0 <= y + dy < h and 0 <= x + dx < w for y in range(h) for x in range(w)
            )
    return out


@pytest.mark.parametrize(("h", "w", "window"), [(1, 1, None), (3, 5, None), (6, 4, (2, 1)), (4, 4, (6, 5))])
def test_overlap_counts_equal_a_brute_force_count(h, w, window):
    my, mx = (h - 1, w - 1) if window is None else window
    want = _brute_force_counts(h, w, my, mx)
    np.testing.assert_array_equal(overlap_counts((h, w), window), want)
    for dy in range(-my, my + 1):
        for dx in range(-mx, mx + 1):
            assert overlap_count((h, w), (dy, dx)) == want[dy + my, dx + mx]


def test_ties_go_to_the_smallest_shift_then_row_major():
    table = np.zeros((5, 5))
    for dy, dx in [(2, 2), (0, 1), (0, -1), (1, 0), (-1, 0), (-2, 1)]:
        table[dy + 2, dx + 2] = 1.0
    assert best_shift(table) == (-1, 0)  # |shift| 1: (-1, 0) comes first in row-major order
    table[1, 2] = 0.0
    assert best_shift(table) == (0, -1)
    assert best_shift(np.zeros((3, 7))) == (0, 0)  # a flat table (e.g. flat images): no shift


def test_one_tolerance_decides_what_ties():
    table = np.zeros((5, 5))
    table[4, 4] = 1.0  # (2, 2) is the best...
    table[2, 3] = 1.0 - 0.5 * TIE_RTOL  # ...but (0, 1) is within the tolerance: a tie, and smaller
    assert best_shift(table) == (0, 1)
    table[2, 3] = 1.0 - 5 * TIE_RTOL  # outside the tolerance: no tie
    assert best_shift(table) == (2, 2)
    big = table * 1000.0  # the tolerance is relative to |best| above 1
    big[2, 3] = 1000.0 - 500 * TIE_RTOL
    assert best_shift(big) == (0, 1)


def test_best_shift_honours_the_mask_and_skips_nan():
    table = np.arange(15, dtype=float).reshape(3, 5)
    assert best_shift(table) == (1, 2)
    allowed = np.ones_like(table, dtype=bool)
    allowed[2, 4] = False
    assert best_shift(table, allowed) == (1, 1)
    table[2, 3] = np.nan
    assert best_shift(table, allowed) == (1, 0)
    with pytest.raises(ValueError, match="no shift is allowed"):
        best_shift(table, np.zeros_like(allowed))
    with pytest.raises(ValueError, match="odd sides"):
        best_shift(np.zeros((2, 3)))


def test_min_overlap_mask_and_count():
    counts = overlap_counts((10, 10))
    assert min_overlap_count((10, 10), 0.3) == 30  # 0.3 · 100 is 30.000000000000004 in floats
    assert min_overlap_count((10, 10), 0.0) == 1  # a shift needs at least one pair
    assert overlap_mask(counts, 30).sum() == (counts >= 30).sum()
    assert overlap_mask(counts, 0).sum() == counts.size - 0  # every shift of the full table has a pair
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="min_overlap"):
            min_overlap_count((10, 10), bad)


def test_parse_max_shift_windows():
    assert parse_max_shift(None, (5, 8)) == (4, 7)
    assert parse_max_shift(3, (5, 8)) == (3, 3)
    assert parse_max_shift((2, 30), (5, 8)) == (2, 7)
    assert parse_max_shift(np.array([1, 2]), (5, 8)) == (1, 2)
    assert parse_max_shift(np.int64(2), (5, 8)) == (2, 2)
    assert parse_max_shift(2.5, (9, 9)) == (2, 2)
    assert parse_max_shift(2.5, (9, 9), subpixel=True) == (3, 3)


@pytest.mark.parametrize("bad", [-1, (1, -1), float("nan"), float("inf"), True, "3", (1, 2, 3), (), [[1, 2]]])
def test_parse_max_shift_rejects_bad_bounds(bad):
    with pytest.raises(ValueError, match=r"max_shift must be >= 0 pixels"):
        parse_max_shift(bad, (9, 9), unit="pixels")


def test_crop_window_is_the_centre():
    table = np.arange(5 * 7).reshape(5, 7)
    np.testing.assert_array_equal(crop_window(table, (1, 2)), table[1:4, 1:6])
    with pytest.raises(ValueError, match="does not fit"):
        crop_window(table, (3, 0))


def test_matching_and_registration_share_the_module():
    """No private copy of the bookkeeping is left in either module."""
    for name in ("_best_shift", "_max_shift_pair"):
        assert not hasattr(registration, name)
    for name in ("_max_shift_pair", "_max_shift_px", "_overlap_counts"):
        assert not hasattr(feature_matching, name) and not hasattr(registration, name)
    # the two paths break the same near-tie the same way: a near-equal score at a larger shift loses
    table = np.zeros((9, 9))
    table[4 + 3, 4 + 3] = 1.0
    table[4 + 1, 4] = 1.0 - 0.5 * TIE_RTOL
    counts = overlap_counts((5, 5))
    assert feature_matching._best_shift(table, counts, (5, 5), None, 1) == best_shift(table) == (1, 0)
