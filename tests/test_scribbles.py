"""Simulated scribbles (scribbles.py) on a real ssTEM section: reproducible, inside their class, every class and
every object covered, sparse; and the one-line error for an unlabelled value that collides with a class."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuros.plugins.cv.datasets.catalog import load_sstem
from neuros.plugins.cv.scribbles import dense_classes, labelled_fraction, simulate_scribbles


@pytest.fixture(scope="module")
def mask(sstem_dir) -> np.ndarray:
    # The lower half (512×1024) of section 08 at full resolution: 0 other / 1 membrane / 2 mitochondria.
    return load_sstem(sstem_dir, sections=[8], downsample=1).masks[0][512:]


@pytest.fixture(scope="module")
def scribbles(mask) -> np.ndarray:
    return simulate_scribbles(mask, seed=5)


def test_reproducible_from_the_seed(mask, scribbles):
    again = simulate_scribbles(mask, seed=5)
    other = simulate_scribbles(mask, seed=6)
    assert np.array_equal(again, scribbles)
    assert not np.array_equal(other, scribbles)
    assert labelled_fraction(other) == pytest.approx(labelled_fraction(scribbles), rel=0.3)


@pytest.mark.parametrize("width", [1, 2])
def test_every_scribble_pixel_lies_inside_the_class_it_names(mask, scribbles, width):
    s = scribbles if width == 1 else simulate_scribbles(mask, seed=5, width=width)
    on = s != 0
    assert np.array_equal(dense_classes(s[on]), mask[on].astype(np.int64))


def test_every_class_and_every_mitochondrion_gets_a_stroke(mask, scribbles):
    assert set(np.unique(scribbles).tolist()) == {0, 1, 2, 3}
    objects, n = ndi.label(mask == 2, structure=np.ones((3, 3)))
    touched = np.unique(objects[scribbles == 3])
    assert n > 5 and set(touched.tolist()) == set(range(1, n + 1))


def test_scribbles_are_sparse_strokes_not_regions(mask, scribbles):
    frac = labelled_fraction(scribbles)
    assert 0.002 < frac < 0.02, frac  # ~1 % of the pixels on real ssTEM (width 1)
    wide = labelled_fraction(simulate_scribbles(mask, seed=5, width=2))
    assert frac < wide < 4 * frac
    # Width-1 strokes are skeleton stretches: one pixel wide, no 2×2 block of labelled pixels.
    on = scribbles != 0
    assert not np.any(on[:-1, :-1] & on[1:, :-1] & on[:-1, 1:] & on[1:, 1:])


def test_unlabelled_value_that_is_a_scribble_value_is_refused(mask):
    with pytest.raises(ValueError, match="unlabelled=2 equals a scribble value"):
        simulate_scribbles(mask, unlabelled=2)
    s = simulate_scribbles(mask[:128, :128], seed=0, unlabelled=255)
    assert set(np.unique(s).tolist()) <= {1, 2, 3, 255}
