"""Registration pairs with known truth (datasets.pairs): real images, reproducible random transforms."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv.datasets.pairs import make_pair, make_pair_3d, random_warp, target_registration_error
from neuros.plugins.cv.transforms import LinearTransform

pytest.importorskip("nilearn")


@pytest.mark.parametrize("model", ["rigid", "affine", "deformable"])
def test_mri_cross_contrast_pairs_are_real_and_reproducible(model):
    pair = make_pair("mri-t2", model, seed=3)
    again = make_pair("mri-t2", model, seed=3)
    np.testing.assert_array_equal(pair.fixed, again.fixed)
    assert pair.cross_contrast and pair.fixed.shape != pair.moving.shape
    ident = LinearTransform.translation(np.zeros(2))
    # the truth is far from the identity, and exactly itself
    assert target_registration_error(ident, pair.truth, pair.fixed.shape) > 2.0
    assert target_registration_error(pair.truth, pair.truth, pair.fixed.shape) == 0.0
    # the fixed window lies inside the moving base: few empty pixels
    assert (pair.fixed > 0.02).mean() > 0.5
    # labels follow the truth: the fixed labels are the moving labels sampled at the true points
    assert set(np.unique(pair.fixed_labels)) == {0, 1, 2}
    # cross contrast: white matter is bright in T1 (fixed) and dark in the T2-like moving image
    wm_f, gm_f = pair.fixed[pair.fixed_labels == 2].mean(), pair.fixed[pair.fixed_labels == 1].mean()
    wm_m, gm_m = pair.moving[pair.moving_labels == 2].mean(), pair.moving[pair.moving_labels == 1].mean()
    assert wm_f > gm_f and wm_m < gm_m


def test_random_warps_have_the_requested_peak_and_no_folding():
    f = random_warp((64, 80), np.random.default_rng(0), peak=8.0)
    assert np.isclose(np.abs(f.field).max(), 8.0) and f.folding_fraction() == 0.0


def test_sstem_and_3d_pairs(sstem_dir):
    pair = make_pair("sstem", "similarity", seed=1, root=str(sstem_dir))
    assert pair.fixed.shape == (384, 384) and pair.moving.shape == (512, 512)
    p3 = make_pair_3d("affine", seed=0, downsample=4)
    assert p3.fixed.ndim == 3 and p3.fixed.shape == p3.fixed_labels.shape
    assert target_registration_error(LinearTransform.translation(np.zeros(3)), p3.truth, p3.fixed.shape) > 1.0


def test_section_stack_residual_is_zero_for_the_true_alignment_only(sstem_dir):
    from neuros.plugins.cv.datasets.pairs import make_section_stack

    st = make_section_stack(3, seed=1, downsample=8, rotation=8.0, peak=0.0, root=str(sstem_dir))
    assert st.stack.shape == (3, 102, 102) and st.stack.dtype == np.float32
    # the true alignment: section 0's frame → section i of the stack = truth_i⁻¹ ∘ truth_0
    exact = [t.transforms[-1].inverse() @ st.truths[0].transforms[-1] for t in st.truths]
    assert max(st.residual(exact)) < 1e-6
    ident = st.residual([LinearTransform.identity(2)] * 3)
    assert ident[0] == 0.0 and min(ident[1:]) > 1.0  # sections moved by several pixels
    # with an elastic warp the sections differ from the rigid-only ones by up to the peak
    warped = make_section_stack(3, seed=1, downsample=8, rotation=8.0, peak=3.0, root=str(sstem_dir))
    assert 0.3 < np.abs(warped.stack[1] - st.stack[1]).max() and max(warped.residual(exact)) > 0.2
