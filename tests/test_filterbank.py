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


def test_colour_uses_luminance_and_is_deterministic():
    rng = np.random.default_rng(1)
    rgb = rng.random((32, 32, 3)).astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    bb = get_backbone("filterbank")
    np.testing.assert_allclose(bb.extract(rgb).features, bb.extract(grey).features, atol=1e-4)
    np.testing.assert_array_equal(bb.extract(rgb).features, bb.extract(rgb).features)


def test_bad_parameters():
    with pytest.raises(ValueError, match="pool"):
        FilterBankBackbone(pool="max")
    with pytest.raises(ValueError, match="sigmas"):
        FilterBankBackbone(sigmas=(0.0,))
    with pytest.raises(ValueError, match="smaller than one 16×16 patch"):
        get_backbone("filterbank").extract(np.zeros((8, 8)))
