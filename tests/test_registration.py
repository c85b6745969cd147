"""register_translation on real images shifted by known sub-pixel amounts, across contrasts, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuros.plugins.cv import get_backbone
from neuros.plugins.cv.backbones.base import UnknownBackboneError, list_backbones
from neuros.plugins.cv.registration import Translation, register_translation, shift_image, structure_channels


# --- real images (no one here drew them) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def em(sstem_dir):
    import tifffile

    return tifffile.imread(sstem_dir / "raw" / "04.tif").astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def mni():
    """An axial MNI152 T1 slice, a T2-like image built from the real tissue maps, and a brain mask."""
    datasets = pytest.importorskip("nilearn.datasets")
    z = 90
    t1 = datasets.load_mni152_template(resolution=1).get_fdata()[:, :, z]
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()[:, :, z]
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()[:, :, z]
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata()[:, :, z] > 0
    csf = np.clip(brain - gm - wm, 0, 1)
    t2 = (0.95 * csf + 0.55 * gm + 0.25 * wm) * brain  # CSF bright, WM dark, background dark
    return t1, t2, brain


@pytest.fixture(scope="module")
def nuclei():
    data = pytest.importorskip("stardist.data")
    return data.test_image_nuclei_2d().astype(np.float32)


@pytest.fixture(scope="module")
def ihc():
    from skimage.data import immunohistochemistry

    return immunohistochemistry()


def view(image, shift, size, noise=0.0, blur=0.0, gamma=1.0, rng=None):
    """The central ``size`` window of ``image`` moved by ``shift`` pixels (cubic spline), then degraded."""
    moved = shift_image(image, shift, order=3)
    h, w = image.shape[:2]
    y0, x0 = (h - size) // 2, (w - size) // 2
    out = moved[y0 : y0 + size, x0 : x0 + size].astype(np.float64)
    if blur:
        out = ndi.gaussian_filter(out, blur)
    lo, hi = out.min(), out.max()
    out = ((out - lo) / (hi - lo)) ** gamma
    if noise:
        out = out + noise * rng.standard_normal(out.shape)
    return out


def error(t: Translation, truth) -> float:
    return float(np.hypot(t.dy - truth[0], t.dx - truth[1]))


# --- accuracy on real images ----------------------------------------------------------------------------------
def test_em_subpixel_shifts_with_noise_blur_and_contrast(em):
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(5):
        d = rng.uniform(-20, 20, 2)
        a = view(em, (0, 0), 256, noise=0.03, rng=rng)
        b = view(em, d, 256, noise=0.03, blur=0.8, gamma=1.4, rng=rng)
        t = register_translation(a, b)
        errs.append(error(t, d))
        assert t.score > 0.5
    assert np.median(errs) <= 0.1 and max(errs) < 0.3, errs


def test_sign_convention_is_opposite_to_skimage(em):
    from skimage.registration import phase_cross_correlation

    a = view(em, (0, 0), 192)
    b = view(em, (4.0, -7.0), 192)
    ref = -phase_cross_correlation(a, b, upsample_factor=10)[0]
    t = register_translation(a, b)
    assert np.allclose(t.shift, ref, atol=0.2) and np.allclose(t.shift, (4.0, -7.0), atol=0.1)
    # Integer shifts follow np.roll exactly where the images overlap.
    rolled = np.roll(a, (5, -3), axis=(0, 1))
    assert np.allclose(register_translation(a, rolled).shift, (5, -3), atol=0.05)


@pytest.mark.parametrize("source", ["nuclei", "ihc"])
def test_packaged_images(source, request):
    img = request.getfixturevalue(source)
    if img.ndim == 3:  # the RGB path has its own test; one channel keeps this one fast
        img = img.mean(axis=2)
    rng = np.random.default_rng(1)
    errs = []
    for _ in range(3):
        d = rng.uniform(-15, 15, 2)
        a = view(img, (0, 0), 256, noise=0.02, rng=rng)
        b = view(img, d, 256, noise=0.02, blur=0.5, rng=rng)
        errs.append(error(register_translation(a, b), d))
    assert np.median(errs) <= 0.1 and max(errs) < 0.3, errs


def test_rgb_input_is_registered_on_its_intensity(ihc):
    d = (6.25, -3.5)
    a, b = ihc[128:384, 128:384], shift_image(ihc, d, order=3)[128:384, 128:384]
    assert error(register_translation(a, b), d) < 0.15


@pytest.mark.parametrize("contrast", ["t2-like", "inverted"])
def test_cross_contrast_mri(mni, contrast):
    t1, t2, brain = mni
    other = t2 if contrast == "t2-like" else brain * (1.0 - t1)  # tissue inverted, background kept dark
    rng = np.random.default_rng(2)
    errs = []
    for _ in range(3):
        d = rng.uniform(-15, 15, 2)
        a = t1 + 0.02 * rng.standard_normal(t1.shape)
        b = shift_image(other, d, order=3) + 0.02 * rng.standard_normal(t1.shape)
        t = register_translation(a, b)
        errs.append(error(t, d))
    assert np.median(errs) <= 0.25 and max(errs) < 0.5, errs


def test_intensity_fine_mode_and_partial_overlap(em):
    d = (70.4, -90.7)  # about 40 % of a 256² window overlaps
    a, b = view(em, (0, 0), 256), view(em, d, 256)
    for fine in ("structure", "intensity"):
        t = register_translation(a, b, fine=fine)
        assert error(t, d) < 0.15, (fine, t)
        assert t.overlap == pytest.approx((256 - 70.4) * (256 - 90.7) / 256**2, abs=0.01)


def test_large_images_go_through_the_coarse_pyramid(em):
    d = (13.3, 21.6)
    a, b = view(em, (0, 0), 640), view(em, d, 640)
    t = register_translation(a, b, coarse_size=160)  # downsampled 4× for the coarse search
    assert t.coarse != t.shift and abs(t.coarse[0] - d[0]) < 4 and abs(t.coarse[1] - d[1]) < 4
    assert error(t, d) < 0.1


def test_max_shift_bounds_the_search(em):
    a, b = view(em, (0, 0), 192), view(em, (30.0, 0.0), 192)
    assert error(register_translation(a, b), (30, 0)) < 0.1
    t = register_translation(a, b, max_shift=10)
    assert abs(t.dy) <= 10.5 and abs(t.dx) <= 10.5


# --- backbones for the coarse step ------------------------------------------------------------------------------
def test_placeholder_backbone_coarse_step_non_patch_multiple_shift(em):
    d = (23.4, -41.3)  # not a multiple of the 16-pixel patch
    a, b = view(em, (0, 0), 256), view(em, d, 256)
    t = register_translation(a, b, "vit-small", weights="placeholder")
    assert (t.backbone, t.weights) == ("vit-small", "placeholder")
    assert abs(t.coarse[0] - d[0]) < 16 and abs(t.coarse[1] - d[1]) < 16
    assert error(t, d) < 0.1


def _optional_backbone(name, **kw):
    if name not in list_backbones():
        pytest.skip(f"backbone {name!r} is not registered in this checkout")
    try:
        return get_backbone(name, **kw)
    except (NotImplementedError, ImportError, OSError) as e:
        pytest.skip(f"{name} {kw} not available here: {e}")


@pytest.mark.parametrize(
    ("name", "kw"),
    [("filterbank", {}), pytest.param("vit-small", {"weights": "random"}, marks=pytest.mark.slow)],
)
def test_other_backbones_when_available(em, name, kw):
    bb = _optional_backbone(name, **kw)
    d = (9.6, -12.2)
    a, b = view(em, (0, 0), 128), view(em, d, 128)
    t = register_translation(a, b, bb)
    assert t.backbone == bb.name and t.weights == bb.weights
    assert error(t, d) < 0.2


def test_tiny_random_dinov3_vit_coarse_step(em, tiny_vit_dir):
    """The same code path as the slow random-init ViT-S test, on a tiny real transformers ViT."""
    from neuros.plugins.cv.backbones.dinov3 import DINOv3Backbone

    bb = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained")  # random tiny weights saved to a folder
    d = (9.6, -12.2)
    t = register_translation(view(em, (0, 0), 128), view(em, d, 128), bb)
    assert t.weights == bb.weights and t.weights.startswith("pretrained:")
    assert error(t, d) < 0.1


# --- confidence ----------------------------------------------------------------------------------------------------
def test_score_is_low_when_the_answer_is_unreliable(em):
    rng = np.random.default_rng(4)
    good = register_translation(view(em, (0, 0), 192), view(em, (3.3, 2.2), 192))
    flat = register_translation(np.full((192, 192), 0.5), np.full((192, 192), 0.5))
    noise = register_translation(rng.random((192, 192)), rng.random((192, 192)))
    unrelated = register_translation(em[:192, :192], em[-192:, -192:])  # no common content
    assert good.score > 0.9
    assert flat.score == 0.0 and flat.shift == (0.0, 0.0)
    assert noise.score < 0.15 and unrelated.score < 0.15


# --- bad input -------------------------------------------------------------------------------------------------------
def test_bad_input_gets_one_line_errors():
    a = np.zeros((64, 64))
    cases = [
        ((a, np.zeros((64, 65))), {}, ValueError, "differ in shape"),
        ((a, np.full((64, 64), np.nan)), {}, ValueError, "NaN"),
        ((np.zeros((8, 8)), np.zeros((8, 8))), {"backbone": "vit-small", "weights": "placeholder"}, ValueError,
         "smaller than one 16×16 patch"),
        ((np.zeros((4, 4)), np.zeros((4, 4))), {}, ValueError, "smaller than one"),
        ((a, a), {"fine": "edges"}, ValueError, "fine must be one of"),
        ((a, a), {"min_overlap": 0}, ValueError, "min_overlap"),
        ((a, a), {"weights": "random"}, ValueError, "weights= needs a backbone"),
        ((a, a), {"max_shift": -2}, ValueError, "max_shift"),
        ((a, a), {"upsample": 0}, ValueError, "upsample"),
        ((a, a), {"backbone": 3}, TypeError, "backbone must be"),
        ((a, "x"), {}, TypeError, "numeric"),
    ]
    for args, kw, exc, msg in cases:
        with pytest.raises(exc, match=msg) as info:
            register_translation(*args, **kw)
        assert "\n" not in str(info.value)
    with pytest.raises(UnknownBackboneError, match="did you mean"):
        register_translation(a, a, "vit-smal")


def test_structure_channels_are_contrast_sign_invariant(em):
    win = em[:128, :128]
    np.testing.assert_allclose(structure_channels(win), structure_channels(1.0 - win), atol=1e-5)
    assert not structure_channels(np.ones((32, 32))).any()
