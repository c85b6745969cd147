"""register(): rigid/similarity/affine/deformable recovery of known transforms on real images, 2-D and 3-D."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuros.plugins.cv.registration_models import align_stack_models, register
from neuros.plugins.cv.transforms import DisplacementField, LinearTransform


# --- real images ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def em(sstem_dir):
    import tifffile

    return tifffile.imread(sstem_dir / "raw" / "04.tif").astype(np.float32) / 255.0


def _linear(angle_deg: float, scale: float = 1.0, shear: float = 0.0) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])


def _pair(image, matrix, origin, fixed_shape, moving_shape, shift=(0.0, 0.0), source=None):
    """fixed = image[origin : origin + fixed_shape]; moving[z] = source[P(z)] with P about the crop's centre.

    Returns fixed, moving and the true transform (fixed coordinates → moving coordinates).
    """
    origin = np.asarray(origin, float)
    d = len(fixed_shape)
    centre = origin + (np.asarray(fixed_shape) - 1) / 2.0
    m_centre = (np.asarray(moving_shape) - 1) / 2.0
    p = LinearTransform(matrix, centre - matrix @ m_centre + np.asarray(shift, float))  # moving z → image
    fixed = image[tuple(slice(int(o), int(o) + s) for o, s in zip(origin, fixed_shape, strict=True))]
    moving = p.apply(image if source is None else source, moving_shape, order=3)
    truth = p.inverse() @ LinearTransform.translation(origin[:d])
    return fixed, moving, truth


def _tre(t, truth, shape, n=8) -> float:
    axes = [np.linspace(0.15 * s, 0.85 * s, n) for s in shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    return float(np.linalg.norm(t.map_points(pts) - truth.map_points(pts), axis=1).mean())


# --- recovery of known linear transforms ----------------------------------------------------------------------
@pytest.mark.parametrize(("model", "matrix"), [
    ("rigid", _linear(23.0)),
    ("similarity", _linear(-17.0, 1.18)),
    ("affine", _linear(12.0, 0.86, 0.09)),
])
def test_known_linear_transforms_on_a_real_em_section(em, model, matrix):
    fixed, moving, truth = _pair(em, matrix, (400, 380), (160, 160), (160, 160), shift=(6.3, -4.7))
    r = register(fixed, moving, model)
    assert _tre(r.transform, truth, fixed.shape) < 1.0
    assert r.transform.kind == model and r.reliable and r.score > 0.5
    assert r.consistency < 1.0 and r.grid == "fixed" and r.apply(moving).shape == fixed.shape


def test_cross_contrast_mri_t1_to_t2_like_affine(mni_volumes):
    t1, t2 = mni_volumes
    z = 45
    fixed, moving, truth = _pair(t1[:, :, z], _linear(-21.0, 1.12, -0.07), (8, 10), (80, 96), (91, 109),
                                 shift=(3.2, -2.1), source=t2[:, :, z])
    r = register(fixed, moving, "affine")
    assert _tre(r.transform, truth, fixed.shape) < 1.0, r
    assert r.reliable


def test_large_rotation_is_found_by_the_global_search(em):
    fixed, moving, truth = _pair(em, _linear(127.0), (300, 500), (112, 112), (112, 112), shift=(5.0, 3.0))
    r = register(fixed, moving, "rigid")
    assert _tre(r.coarse, truth, fixed.shape) < 6.0  # the grid search lands in the right basin …
    assert _tre(r.transform, truth, fixed.shape) < 1.0  # … and the optimiser finishes the job
    # without the rotation search the same pair cannot be solved, and the score says so
    wrong = register(fixed, moving, "rigid", angle_range=0)
    assert _tre(wrong.transform, truth, fixed.shape) > 5.0
    assert wrong.score < r.score and not wrong.reliable


def test_a_right_rotation_between_grid_angles_is_refined_even_when_a_wrong_one_scores_clearly_higher():
    """The goal run's nuclei-rigid-6-r30 pair: repetitive nuclei, the truth (−7.9°) halfway between the 15° grid's
    0° and −15°, which score 0.28 / 0.31 at the coarse level against 0.35 for a 165° rotation at 30 % overlap.
    Refining only candidates within 0.9 of the best never looked at the right basin (TRE 417 px; ANTs solved
    it, and our score said 0.00)."""
    from neuros.plugins.cv.datasets.pairs import make_pair, target_registration_error

    pair = make_pair("nuclei", "rigid", seed=6, rotation=30.0)
    r = register(pair.fixed, pair.moving, "rigid")
    assert target_registration_error(r.transform, pair.truth, pair.fixed.shape) < 0.05 and r.reliable


def test_a_scale_between_the_grid_scales_under_a_warp_is_found():
    """A warped MRI slice whose true scales (0.85 / 0.92, 16.5°) sat between the old grid's 0.8 and 1.0: no
    candidate of the grid landed in the right basin (TRE 111 px, unreliable; ANTs SyN solved it). The affine
    answer is now off by the warp alone (~3 px)."""
    from neuros.plugins.cv.datasets.pairs import make_pair, target_registration_error

    pair = make_pair("mri", "deformable", seed=7, rotation=30.0)
    r = register(pair.fixed, pair.moving, "affine")
    assert target_registration_error(r.transform, pair.truth, pair.fixed.shape) < 4.0 and r.reliable


def test_different_shapes_land_on_the_fixed_grid(em):
    fixed, moving, truth = _pair(em, _linear(9.0, 1.05), (420, 350), (112, 150), (170, 136), shift=(2.0, 7.0))
    r = register(fixed, moving, "similarity")
    assert r.fixed_shape == (112, 150) and r.moving_shape == (170, 136)
    assert r.apply(moving).shape == (112, 150)
    assert _tre(r.transform, truth, fixed.shape) < 1.0


# --- deformable -----------------------------------------------------------------------------------------------
def test_deformable_recovers_a_smooth_warp_better_than_affine_without_folding(em):
    shape = (144, 144)
    rng = np.random.default_rng(3)
    u = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 14) for _ in range(2)])
    u *= 5.0 / np.abs(u).max()  # peak 5 px
    warp = DisplacementField(u)
    fixed = em[440:584, 400:544]
    moving_src = LinearTransform.translation((440, 400))
    # moving[z] = em[S(W⁻¹(z))]: the truth maps fixed x to W(x) = x + u(x)
    inv = warp.inverse()
    moving = (moving_src @ inv).apply(em, shape, order=3)
    lin = register(fixed, moving, "affine", check_consistency=False)
    r = register(fixed, moving, "deformable", check_consistency=False, deformable_iterations=(25, 15))
    err_lin = _tre(lin.transform, warp, shape, n=12)
    err_def = _tre(r.transform, warp, shape, n=12)
    assert err_def < 0.6 * err_lin and err_def < 1.0, (err_lin, err_def)
    assert r.folding_fraction == 0.0


# --- confidence -----------------------------------------------------------------------------------------------
def test_no_overlap_or_noise_is_never_reliable(em):
    fixed = em[0:96, 0:96]
    noise = ndi.gaussian_filter(np.random.default_rng(0).random((96, 96)), 1.0)
    r = register(fixed, noise, "rigid")
    assert not r.reliable and r.reasons
    unrelated = em[800:896, 850:946]  # same section, far away: nothing in common
    r2 = register(fixed, unrelated, "affine")
    assert not r2.reliable
    good = register(fixed, em[3:99, 5:101], "affine")
    assert good.reliable and good.score > max(r.score, r2.score)


def test_low_overlap_answers_are_not_reliable(em):
    fixed = em[100:228, 100:228]
    moving = em[100:228, 196:324]  # the true answer overlaps 32 / 128 of the width: 0.25 of the area
    r = register(fixed, moving, "rigid", angle_range=0, min_overlap=0.5, check_consistency=False)
    assert r.overlap >= 0.5 - 0.02 or not r.reliable
    ok = register(fixed, moving, "rigid", angle_range=0, min_overlap=0.2, check_consistency=False)
    assert abs(ok.transform.offset[1] + 96) < 1.0 and ok.overlap == pytest.approx(0.25, abs=0.02)


def test_translation_model_delegates_to_register_translation(em):
    from neuros.plugins.cv.registration import register_translation

    fixed, moving = em[200:328, 200:328], em[203:331, 195:323]
    r = register(fixed, moving, "translation")
    t = register_translation(fixed, moving)
    np.testing.assert_allclose(r.transform.offset, t.shift, atol=1e-2)  # same method (inputs rescaled first)
    np.testing.assert_allclose(r.transform.offset, (-3, 5), atol=0.05)  # moving[x] = fixed[x + (3, -5)]
    assert r.reliable and r.consistency < 0.1


# --- 3-D ------------------------------------------------------------------------------------------------------
def test_3d_affine_on_a_cross_contrast_mni_crop(mni_volumes):
    from scipy.spatial.transform import Rotation

    t1, t2 = mni_volumes
    shape = (40, 48, 40)
    origin = np.array([28, 34, 26], float)
    m = Rotation.from_euler("XYZ", [8, -6, 10], degrees=True).as_matrix() * 1.06
    m = m @ np.array([[1, 0.05, 0], [0, 1, 0], [0, 0, 1]])
    centre = origin + (np.asarray(shape) - 1) / 2
    p = LinearTransform(m, centre - m @ ((np.asarray(shape) - 1) / 2) + np.array([1.5, -2.0, 1.0]))
    fixed = t1[tuple(slice(int(o), int(o) + s) for o, s in zip(origin, shape, strict=True))]
    moving = p.apply(t2, shape, order=1)
    truth = p.inverse() @ LinearTransform.translation(origin)
    # the rotation is ~13°: a ±30° search (16 grid rotations) keeps the test fast; the full search is tested below
    r = register(fixed, moving, "affine", check_consistency=False, angle_range=30)
    assert _tre(r.transform, truth, shape, n=5) < 1.0
    assert r.transform.ndim == 3 and r.apply(moving).shape == shape


def test_3d_rotation_grid_covers_so3():
    from scipy.spatial.transform import Rotation

    from neuros.plugins.cv.registration_models import ROTATION_STEP_3D, _rotation_grid_3d

    grid = np.stack(_rotation_grid_3d(ROTATION_STEP_3D))
    assert 150 < len(grid) < 1000 and np.allclose(np.linalg.det(grid), 1.0)
    probe = Rotation.random(500, random_state=0).as_matrix()
    cos = (np.einsum("nij,mij->nm", probe, grid) - 1) / 2  # cos of the angle between two rotations
    nearest = np.degrees(np.arccos(np.clip(cos.max(1), -1, 1)))
    assert nearest.max() < 0.9 * ROTATION_STEP_3D  # no rotation is farther than ~one step from the grid
    assert len(_rotation_grid_3d(ROTATION_STEP_3D, 40.0)) < len(grid) / 10  # angle_range limits it


def test_3d_large_oblique_rotation_is_recovered(mni_volumes):
    """A 90° turn about an oblique axis, T1 crop vs the whole T2-like volume: the principal axes of a crop are
    not the volume's, so only the rotation search finds it (the earlier principal-axes step missed it)."""
    from scipy.spatial.transform import Rotation

    t1, t2 = mni_volumes
    shape = (48, 48, 48)
    rot = Rotation.from_rotvec(np.deg2rad(90) * np.array([0.6, -0.48, 0.64])).as_matrix()
    c = (np.array(t1.shape) - 1) / 2
    truth = LinearTransform(rot, c - rot @ c + np.array([2.0, -3.0, 1.0])) @ LinearTransform.translation(
        c - (np.array(shape) - 1) / 2)
    fixed = truth.apply(t1, shape)
    # with the consistency check (the default): its reverse registration needs only the crop's share of the
    # whole volume covered; asking it for min_overlap of the volume made this call fail (session 9)
    r = register(fixed, t2, "rigid")
    assert _tre(r.transform, truth, shape, n=5) < 1.0 and r.reliable and r.consistency < 0.5


# --- stacks ---------------------------------------------------------------------------------------------------
def test_align_stack_models_undoes_known_rigid_motions(em):
    rng = np.random.default_rng(1)
    n, shape = 3, (112, 112)
    truths, sections = [], []
    for _ in range(n):
        m = _linear(rng.uniform(-15, 15))
        _, moving, truth = _pair(em, m, (450, 450), shape, shape, shift=rng.uniform(-6, 6, 2))
        sections.append(moving)
        truths.append(truth)
    aligned, res = align_stack_models(np.stack(sections), "rigid", neighbours=2)
    assert aligned.shape == (n, *shape) and len(res.transforms) == n
    # section i's transform, relative to section 0, equals the truth relative to section 0
    for i in range(1, n):
        want = truths[i] @ truths[0].inverse()
        assert _tre(res.transforms[i], want, shape) < 1.0


# --- errors ---------------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors():
    a = np.random.default_rng(0).random((32, 32))
    with pytest.raises(ValueError, match="model must be one of") as e:
        register(a, a, "elastic")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="same dimension"):
        register(a, np.zeros((8, 32, 32)))
    b = a.copy()
    b[3, 4] = np.nan
    with pytest.raises(ValueError, match="moving contains NaN"):
        register(a, b)
    with pytest.raises(ValueError, match="min_overlap"):
        register(a, a, min_overlap=0)
    with pytest.raises(ValueError, match="2-D image or a 3-D volume"):
        register(a[0], a[0])


def test_backbone_features_join_the_fine_step(em, tiny_vit_dir):
    """A tiny random DINOv3 ViT's patch features run through the fine step; they carry no knowledge, so the
    structure channels must keep the answer right (and the method says which backbone was used)."""
    from neuros.plugins.cv.backbones.dinov3 import DINOv3Backbone

    bb = DINOv3Backbone(str(tiny_vit_dir), weights="pretrained")
    fixed, moving, truth = _pair(em, _linear(14.0, 1.07), (420, 420), (128, 128), (128, 128), shift=(3.0, -2.0))
    r = register(fixed, moving, "similarity", bb, feature_weight=0.3, check_consistency=False)
    assert bb.name in r.method
    assert _tre(r.transform, truth, fixed.shape) < 1.0
    with pytest.raises(ValueError, match="2-D only"):
        register(np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), "affine", bb)
