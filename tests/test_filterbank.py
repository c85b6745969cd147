"""The classical filter-bank backbone: registry entry, shapes, and what its filters respond to."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv.backbones import backbone_info, get_backbone, list_backbones
from neuros.plugins.cv.backbones.filterbank import FILTERS, FilterBankBackbone, pixel_features


def _blob(size=64, sigma=4.0):
    yy, xx = np.mgrid[:size, :size] - size // 2
    return np.exp(-(yy**2 + xx**2) / (2 * sigma**2)).astype(np.float32)


def test_registered_as_classical():
    assert "filterbank" in list_backbones("classical")
    info = backbone_info("filterbank")
    assert info["family"] == "classical" and info["feature_dim"] == FilterBankBackbone().feature_dim


def test_feature_map_shape_and_weights():
    bb = get_backbone("filterbank")
    fm = bb.extract(np.random.default_rng(0).random((50, 70)))
    assert fm.grid_shape == (4, 5) and fm.image_shape == (50, 70) and fm.stride == 16.0
    assert fm.feature_dim == bb.feature_dim == 2 * (1 + len(FILTERS) * 4)
    assert fm.weights == "none (classical filters)" and fm.backbone == "filterbank"
    assert FilterBankBackbone(sigmas=(1.0, 2.0), pool="mean").extract(np.zeros((32, 32))).feature_dim == 17


def test_filters_respond_to_structure():
    img = _blob()
    px = pixel_features(img, sigmas=(2.0,))
    c = {name: 1 + i for i, name in enumerate(FILTERS)}
    centre = px[32, 32]
    assert centre[c["log"]] < 0  # bright blob: negative Laplacian of Gaussian at its centre
    assert centre[c["gradient"]] < px[32, 36, c["gradient"]]  # flat top, steep flank
    assert centre[c["hess_eig1"]] < 0 and centre[c["hess_eig2"]] <= centre[c["hess_eig1"]]
    assert (px[..., c["st_eig1"]] >= px[..., c["st_eig2"]] - 1e-7).all()
    flat = pixel_features(np.full((32, 32), 0.5, np.float32), sigmas=(2.0,))
    np.testing.assert_allclose(flat[..., c["gradient"]], 0, atol=1e-6)


REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # the filter bank's luminance rule (ITU-R BT.601)


def test_colour_uses_luminance_and_is_deterministic():
    rng = np.random.default_rng(1)
    rgb = rng.random((32, 32, 3)).astype(np.float32)
    before = rgb.copy()
    bb = get_backbone("filterbank")
    colour = bb.extract(rgb).features
    # an RGB image gives exactly the features of its BT.601 luminance image...
    np.testing.assert_array_equal(colour, bb.extract(rgb @ REC601).features)
    # ...and not those of another grey conversion (the comparison can tell the rules apart)
    for other in ([0.2126, 0.7152, 0.0722], [1 / 3, 1 / 3, 1 / 3]):
        grey = rgb @ np.array(other, dtype=np.float32)
        assert np.abs(bb.extract(grey).features - colour).max() > 1e-3
    assert np.abs(bb.extract(rgb[..., ::-1].copy()).features - colour).max() > 1e-3  # channel order matters
    # an alpha channel is ignored; a fresh backbone on a copy gives the same features; the input is untouched
    rgba = np.concatenate([rgb, rng.random((32, 32, 1)).astype(np.float32)], axis=2)
    np.testing.assert_array_equal(bb.extract(rgba).features, colour)
    np.testing.assert_array_equal(get_backbone("filterbank").extract(before.copy()).features, colour)
    np.testing.assert_array_equal(rgb, before)


def test_bad_parameters():
    with pytest.raises(ValueError, match="pool"):
        FilterBankBackbone(pool="max")
    with pytest.raises(ValueError, match="sigmas"):
        FilterBankBackbone(sigmas=(0.0,))
    with pytest.raises(ValueError, match="smaller than one 16×16 patch"):
        get_backbone("filterbank").extract(np.zeros((8, 8)))
