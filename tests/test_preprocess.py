"""Preprocessing rules: intensity scaling, channels, padding, rescaling."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv.preprocess import (
    grid_shape_for,
    normalize,
    pad_to_multiple,
    prepare,
    rescale,
    scaled_shape,
    to_float01,
    to_rgb,
)


def test_to_float01_dtype_rules():
    u8 = np.array([[0, 128, 255]], dtype=np.uint8)
    np.testing.assert_allclose(to_float01(u8), [[0, 128 / 255, 1]])
    f = np.array([[0.1, 0.5]], dtype=np.float64)
    np.testing.assert_array_equal(to_float01(f), f.astype(np.float32))  # already in [0, 1]: kept
    np.testing.assert_array_equal(to_float01(np.array([[True, False]])), [[1.0, 0.0]])
    assert (to_float01(np.full((4, 4), 7, dtype=np.uint16)) == 0).all()  # constant image
    u16 = np.arange(1000, 1200, dtype=np.uint16).reshape(10, 20)
    out = to_float01(u16)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1  # robust percentile stretch
    np.testing.assert_allclose(to_float01(u16, "dtype"), u16 / 65535, rtol=1e-6)
    mri = np.random.default_rng(0).normal(300, 50, (32, 32))
    mri[0, 0] = 1e6  # one hot pixel does not squash the rest
    assert np.median(to_float01(mri)) > 0.3
    with pytest.raises(ValueError, match="scaling"):
        to_float01(u8, "zscore")
    with pytest.raises(ValueError, match="percentiles"):
        to_float01(u8, percentiles=(90, 10))


def test_to_rgb_channel_rules():
    g = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert to_rgb(g).shape == (2, 3, 3) and (to_rgb(g)[..., 2] == g).all()
    two = np.stack([g, g + 2], axis=2)
    np.testing.assert_array_equal(to_rgb(two)[..., 2], g + 1)
    five = np.random.default_rng(0).random((2, 3, 5))
    np.testing.assert_array_equal(to_rgb(five), five[..., :3])
    np.testing.assert_array_equal(to_rgb(five, channels=(4, 0, 2)), five[..., [4, 0, 2]])
    with pytest.raises(ValueError, match="channels"):
        to_rgb(five, channels=(0, 1, 9))


def test_padding_and_grid():
    img = np.random.default_rng(0).random((17, 33, 3))
    p = pad_to_multiple(img, 16)
    assert p.shape == (32, 48, 3) and (p[:17, :33] == img).all()
    assert grid_shape_for(17, 33, 16) == (2, 3)
    tiny = pad_to_multiple(np.ones((3, 3)), 16)  # too small to reflect: edge padding
    assert tiny.shape == (16, 16) and (tiny == 1).all()
    assert prepare(np.zeros((5, 7), np.uint8), 16).shape == (16, 16, 3)
    np.testing.assert_allclose(normalize(np.full((1, 1, 3), 0.5), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), 0)


def test_rescale_up_and_down():
    img = np.random.default_rng(0).random((40, 30, 3)).astype(np.float32)
    assert rescale(img, 1.0) is not None and rescale(img, 1.0).shape == img.shape
    up = rescale(img, 2.0)
    assert up.shape == (80, 60, 3) and up.dtype == np.float32
    down = rescale(img, 0.5)
    assert down.shape == (20, 15, 3)
    assert abs(float(down.mean()) - float(img.mean())) < 0.01  # antialiased: mean preserved
    assert scaled_shape(3, 3, 0.1) == (1, 1)
    assert prepare(img, 16, scale=2.0).shape == (80, 64, 3)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            rescale(img, bad)
