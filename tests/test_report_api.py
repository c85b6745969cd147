"""The report's API: registry, placeholder backbone, synthetic data, patch correlation and translation."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from neuros.plugins.cv import (
    DINOv3Backbone,
    UnknownBackboneError,
    estimate_translation,
    get_backbone,
    list_backbones,
    make_dataset,
    patch_correlation,
)
from neuros.plugins.cv.backbones.dinov3 import VARIANTS
from neuros.plugins.cv.datasets.synthetic import make_image
from neuros.plugins.cv.experiments.registration import shift_zero_fill
from neuros.plugins.cv.labels import patch_labels

REPORT_IDS = [
    "cnx-tiny", "cnx-small", "cnx-base", "cnx-large",
    "vit-small", "vit-small-plus", "vit-base", "vit-large", "vit-huge-plus", "vit-7b",
]


# --- registry -------------------------------------------------------------------------------------------
def test_registry_has_the_report_ids_with_real_dims():
    names = list_backbones()
    for mid in REPORT_IDS:
        assert mid in names
    dims = {m: get_backbone(m, weights="placeholder").feature_dim for m in REPORT_IDS}
    # ViT embedding dims of the released checkpoints; ConvNeXt stride-16 stage channels.
    assert dims["vit-small"] == 384 and dims["vit-base"] == 768 and dims["vit-large"] == 1024
    assert dims["vit-huge-plus"] == 1280 and dims["vit-7b"] == 4096
    assert dims["cnx-tiny"] == 384 and dims["cnx-large"] == 768


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError, match="did you mean 'vit-large'"):
        get_backbone("vit-lrage")
    with pytest.raises(ValueError):  # UnknownBackboneError is a ValueError
        DINOv3Backbone("cnx-tinyy", weights="placeholder")


def test_bad_weights_mode():
    with pytest.raises(ValueError, match="weights must be one of"):
        DINOv3Backbone("vit-small", weights="imagenet")


# --- placeholder backbone ----------------------------------------------------------------------------------
def test_placeholder_embed_shapes_and_grid():
    bb = get_backbone("vit-large", weights="placeholder")
    emb = bb.embed(np.random.default_rng(0).random((3, 128, 128)))
    assert emb.shape == (3, 64, 1024)
    assert bb.grid_size == 8 and bb.grid_shape == (8, 8) and bb.patch_size == 16
    assert bb.weights == "placeholder"


def test_placeholder_pads_sizes_that_are_not_multiples_of_16():
    bb = get_backbone("cnx-tiny", weights="placeholder")
    fm = bb.extract(np.random.default_rng(0).random((50, 33)))
    assert fm.grid_shape == (4, 3)  # ceil(50/16), ceil(33/16): padded, not cropped
    assert fm.image_shape == (50, 33)
    with pytest.raises(ValueError, match="not square"):
        _ = bb.grid_size


def test_placeholder_is_deterministic_across_processes_and_distinct_per_model():
    img = make_image("em", 64, seed=3)[0]
    a = get_backbone("vit-small", weights="placeholder").extract(img).features
    code = (
        "import numpy as np;from neuros.plugins.cv import get_backbone;"
        "from neuros.plugins.cv.datasets.synthetic import make_image;"
        "f=get_backbone('vit-small',weights='placeholder').extract(make_image('em',64,seed=3)[0]).features;"
        "print(repr(float(f.sum())), repr(float(np.abs(f).max())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) == float(a.sum()) and float(out[1]) == float(np.abs(a).max())
    b = get_backbone("vit-small-plus", weights="placeholder").extract(img).features
    assert a.shape == b.shape and not np.allclose(a, b)


def test_placeholder_maps_equal_patches_to_equal_features():
    bb = get_backbone("vit-small", weights="placeholder")
    tile = np.random.default_rng(1).random((16, 16))
    fm = bb.extract(np.tile(tile, (3, 2)))
    flat = fm.flat()
    assert np.allclose(flat, flat[0], atol=1e-5)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros(20), "2-D"),
        (np.zeros((2, 2, 2, 2)), "2-D"),
        (np.full((32, 32), np.nan), "NaN"),
        (np.zeros((8, 40)), "smaller than one 16×16 patch"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_images_raise_one_line_errors(image, match):
    bb = get_backbone("vit-small", weights="placeholder")
    with pytest.raises((ValueError, TypeError), match=match) as info:
        bb.extract(image)
    assert "\n" not in str(info.value)


def test_embed_rejects_mixed_grids_and_empty_batches():
    bb = get_backbone("vit-small", weights="placeholder")
    with pytest.raises(ValueError, match="one grid shape"):
        bb.embed([np.zeros((32, 32)), np.zeros((48, 32))])
    with pytest.raises(ValueError, match="empty"):
        bb.embed([])


# --- synthetic data ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["em", "mri", "histology"])
def test_synthetic_datasets_are_seeded(modality):
    x1, m1 = make_dataset(modality, 3, size=64, seed=5)
    x2, m2 = make_dataset(modality, 3, size=64, seed=5)
    x3, _ = make_dataset(modality, 3, size=64, seed=6)
    assert np.array_equal(x1, x2) and np.array_equal(m1, m2)
    assert not np.array_equal(x1, x3)
    assert x1.dtype == np.float32 and 0 <= x1.min() and x1.max() <= 1
    assert m1.shape == (3, 64, 64) and set(np.unique(m1)) <= {0, 1}
    assert x1.shape[:3] == (3, 64, 64) and (x1.ndim == 4) == (modality == "histology")
    assert m1.any(axis=(1, 2)).all()  # every image has foreground pixels


def test_report_mri_lesion_sits_on_a_patch_corner_so_no_patch_is_majority_lesion():
    _, masks = make_dataset("mri", 20, size=128, seed=0, protocol="report")
    assert all(m.sum() > 0 for m in masks)
    assert all(patch_labels(m).sum() == 0 for m in masks)
    _, masks_r = make_dataset("mri", 20, size=128, seed=0, protocol="random")
    assert sum(patch_labels(m).sum() for m in masks_r) > 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"modality": "ct", "n_images": 2}, ValueError, "unknown modality 'ct'"),
        ({"modality": "em", "n_images": 0}, ValueError, "n_images must be >= 1"),
        ({"modality": "em", "n_images": 2.5}, TypeError, "n_images must be an integer"),
        ({"modality": "em", "n_images": 2, "protocol": "x"}, ValueError, "unknown protocol"),
        ({"modality": "em", "n_images": 2, "size": 8}, ValueError, "size must be >= 16"),
    ],
)
def test_make_dataset_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_dataset(**kwargs)


# --- feature matching: the report's definition ----------------------------------------------------------------
def brute_force_translation(sim, h, w):
    """Reference: loop over every shift and every patch (slow, obviously right)."""
    best, best_shift = -np.inf, None
    shifts = sorted(itertools.product(range(-h + 1, h), range(-w + 1, w)), key=lambda s: abs(s[0]) + abs(s[1]))
    for dy, dx in shifts:
        vals = [
            sim[y * w + x, (y + dy) * w + (x + dx)]
            for y in range(h) for x in range(w) if 0 <= y + dy < h and 0 <= x + dx < w
        ]
        m = float(np.mean(vals))
        if m > best + 1e-12:
            best, best_shift = m, (dy, dx)
    return best_shift


@pytest.mark.parametrize("seed", range(6))
def test_estimate_translation_matches_brute_force_on_random_similarities(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    sim = rng.standard_normal((h * w, h * w))
    assert estimate_translation(sim, grid_shape=(h, w)) == brute_force_translation(sim, h, w)


@pytest.mark.parametrize("shift", [(1, 1), (0, 2), (-2, -1), (3, -4), (0, 0)])
def test_estimate_translation_recovers_exact_shifts(shift):
    feats = np.random.default_rng(0).standard_normal((9, 11, 16))
    moved = np.roll(feats, shift, axis=(0, 1))
    sim = patch_correlation(feats.reshape(-1, 16), moved.reshape(-1, 16))
    assert estimate_translation(sim, grid_shape=(9, 11), max_shift=5) == shift
    if feats.shape[0] == feats.shape[1]:
        assert estimate_translation(sim, 9) == shift


def test_estimate_translation_respects_max_shift_and_validates():
    feats = np.random.default_rng(0).standard_normal((10, 10, 8))
    sim = patch_correlation(feats, np.roll(feats, (3, 0), axis=(0, 1)))
    # (3, 0) and its cyclic twin (-7, 0) both match perfectly: ties go to the smaller shift.
    assert estimate_translation(sim, 10) == (3, 0)
    assert abs(estimate_translation(sim, 10, max_shift=2)[0]) <= 2
    with pytest.raises(ValueError, match="100×100 but a 9×9 grid has 81"):
        estimate_translation(sim, 9)
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        estimate_translation(sim, 10, max_shift=-1)


def test_patch_correlation_is_cosine_and_validates():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((4, 7))
    s = patch_correlation(a, b)
    ref = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert s.shape == (5, 4) and np.allclose(s, ref, atol=1e-6)
    assert np.allclose(patch_correlation(np.zeros((2, 7)), b), 0)  # zero vectors: similarity 0, not NaN
    with pytest.raises(ValueError, match="different feature dimensions"):
        patch_correlation(a, rng.standard_normal((4, 6)))
    with pytest.raises(ValueError, match="NaN"):
        patch_correlation(np.full((2, 7), np.nan), b)


def test_shift_zero_fill_matches_roll_with_zeroed_wraparound():
    img = np.arange(1, 65, dtype=float).reshape(8, 8)
    out = shift_zero_fill(img, (2, -3))
    assert np.array_equal(out[2:, :-3], img[:-2, 3:])
    assert not out[:2].any() and not out[:, -3:].any()


def test_variants_table_is_consistent():
    for mid, v in VARIANTS.items():
        assert v.model_id == mid and v.patch_size == 16 and v.hub_id.startswith("facebook/dinov3-")
