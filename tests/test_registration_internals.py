"""The fast paths inside register(): each equals the plain computation it replaces (issue 13, speed)."""

from __future__ import annotations

import numpy as np
import pytest

from neuros.plugins.cv import registration_models as rm
from neuros.plugins.cv.mutual_information import (
    box_window,
    bspline_window,
    bspline_window_slope,
    histogram_gradient,
    mutual_information,
    mutual_information_of,
    point_gradient,
    sample_with_gradient,
    stack_with_gradient,
)


@pytest.fixture(scope="module")
def em(sstem_dir):
    import tifffile

    return tifffile.imread(sstem_dir / "raw" / "04.tif").astype(np.float32) / 255.0


@pytest.mark.parametrize("window", ["bspline", "box"])
def test_mutual_information_histogram_equals_the_entries_of_each_point(window):
    """The block accumulation builds the same joint histogram as adding each point's 16 (cubic fixed window) or
    4 (box) weighted entries; the box puts each fixed value in the bin whose centre is nearest."""
    import torch

    rng = np.random.default_rng(0)
    n, bins = 5000, 24
    f = torch.from_numpy(rng.random(n, dtype=np.float32))
    m = torch.from_numpy(np.clip(0.6 * f.numpy() + 0.4 * rng.random(n, dtype=np.float32), 0, 1))
    mask = torch.from_numpy((rng.random(n) > 0.2).astype(np.float32))
    (fi, fw), (mi, mw) = (bspline_window if window == "bspline" else box_window)(f, bins), bspline_window(m, bins)
    if window == "box":
        u = 2.0 + f.numpy() * (bins - 5)
        assert fi.shape == (n, 1) and np.all(np.abs(fi.numpy()[:, 0] - u) <= 0.5) and np.all(fw.numpy() == 1)
    joint = np.zeros((bins, bins))
    w = (fw * mask[:, None]).numpy()[:, :, None] * mw.numpy()[:, None, :]
    rows = np.broadcast_to(fi.numpy()[:, :, None], w.shape)
    cols = np.broadcast_to(mi.numpy()[:, None, :], w.shape)
    np.add.at(joint, (rows, cols), w)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    want = float(np.sum(p[p > 0] * np.log(p[p > 0] / outer[p > 0])))
    got = float(mutual_information((fi, fw), m, mask, bins))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("window", ["bspline", "box"])
def test_written_out_mutual_information_gradient_equals_autograd(window):
    """The polish's closed-form derivative (histogram → each point's moving value) is autograd's, including
    values outside [0, 1] (held by the window's clamp: derivative 0) and masked points."""
    import torch

    rng = np.random.default_rng(3)
    n, bins = 4000, 32
    f = torch.from_numpy(rng.random(n, dtype=np.float32))
    m0 = 0.7 * f.numpy() + 0.4 * rng.random(n, dtype=np.float32) - 0.05  # some below 0, some above 1
    m = torch.from_numpy(m0.astype(np.float32)).requires_grad_(True)
    mask = torch.from_numpy((rng.random(n) > 0.1).astype(np.float32))
    fwin = (bspline_window if window == "bspline" else box_window)(f, bins)
    want = mutual_information(fwin, m, mask, bins)
    want.backward()
    idx, w, dw = bspline_window_slope(m.detach(), bins)
    i2, w2 = bspline_window(m.detach(), bins)
    assert torch.equal(idx, i2) and torch.allclose(w, w2)
    from neuros.plugins.cv.mutual_information import joint_histogram

    mi, g = histogram_gradient(joint_histogram(fwin, (idx, w), mask, bins))
    assert float(mi) == pytest.approx(float(want), rel=1e-6)
    got = point_gradient(g, fwin, (idx, w, dw), mask)
    assert ((m0 < 0) | (m0 > 1)).any() and np.all(got.numpy()[(m0 < 0) | (m0 > 1)] == 0)
    assert torch.allclose(got, m.grad, rtol=1e-4, atol=1e-6 * float(m.grad.abs().max()))
    # and the histogram's derivative itself, wherever a point's window reaches (the empty entries, where the
    # logarithm's clamp holds, never meet a point's non-zero weight)
    j = joint_histogram(fwin, (idx, w), mask, bins).requires_grad_(True)
    mutual_information_of(j).backward()
    full = j.detach() > 0
    assert torch.allclose(g[full], j.grad[full], rtol=1e-4, atol=1e-9)


def test_window_weights_are_the_cubic_bspline_kernel_at_each_bins_distance():
    """The windows' per-point polynomial pieces equal the cubic B-spline kernel evaluated at each of the four bins'
    distances (its textbook piecewise form), and their slopes its derivative (times the bin width)."""
    import torch

    bins = 32
    v = np.concatenate([np.linspace(0, 1, 257), np.random.default_rng(1).random(500)]).astype(np.float32)
    idx, w, dw = bspline_window_slope(torch.from_numpy(v), bins)
    u = 2.0 + v.astype(np.float64) * (bins - 5)
    r = u[:, None] - idx.numpy()  # signed distance to each bin
    t = np.abs(r)
    kernel = np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    slope = np.where(t < 1, -2 * t + 1.5 * t ** 2, np.where(t < 2, -0.5 * (2 - t) ** 2, 0.0)) * np.sign(r)
    assert np.all(t < 2.0 + 1e-6) and idx.min() >= 0 and idx.max() < bins
    np.testing.assert_allclose(w.numpy(), kernel, atol=2e-6)
    np.testing.assert_allclose(dw.numpy(), slope * (bins - 5), atol=1e-4)
    np.testing.assert_allclose(bspline_window(torch.from_numpy(v), bins)[1].numpy(), kernel, atol=2e-6)


def test_lbfgs_with_patience_stops_on_a_noisy_floor_and_keeps_the_lowest_loss():
    """On a loss whose noise (as float32 rounding) stalls the line searches near the optimum, ``patience`` ends
    the minimisation early; the parameters are left at the lowest loss evaluated, not the last one."""
    import torch

    scale = torch.tensor([1.0, 30.0, 0.3, 5.0, 100.0, 2.0])
    target = torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4, 0.25])

    def run(patience, xtol=1e-4):
        x = torch.zeros(6, requires_grad=True)
        seen = []
        rng = np.random.default_rng(0)

        def closure():
            loss = (scale * (x - target) ** 2).sum() + torch.tensor(float(rng.normal(0, 1e-4)))
            seen.append((float(loss.detach()), x.detach().clone()))
            return loss

        rm._lbfgs([x], closure, 60, ftol=1e-12, maxls=6, patience=patience, xtol=xtol)
        return x.detach(), seen

    full, seen_full = run(None)
    short, seen = run(3)
    assert len(seen) < len(seen_full) - 5
    # a new lowest loss closer than xtol to the last one is no progress either: with a huge xtol the first
    # evaluation and `patience` more are all there is
    tiny, seen_tiny = run(3, xtol=10.0)
    assert len(seen_tiny) == 4
    for x, evaluated in ((full, seen_full), (short, seen), (tiny, seen_tiny)):
        assert torch.equal(x, min(evaluated, key=lambda e: e[0])[1])
    assert float((full - target).abs().max()) < 0.05 and float((short - target).abs().max()) < 0.05


@pytest.mark.parametrize("d", [2, 3])
def test_written_out_structure_similarity_equals_autograd(d):
    """The structure levels' NumPy similarity and gradient (``structure_similarity``) equal the torch
    operations' value and autograd's gradient, overlap ramp included, with part of the level outside the
    moving image (zero padding, the border ramp) and a random affine map."""
    import torch

    rng = np.random.default_rng(d)
    fixed = _smooth_volume((40, 46) if d == 2 else (22, 26, 20), 0)
    moving = _smooth_volume((44, 38) if d == 2 else (24, 21, 23), 1)
    for f in (1, 2):
        lev = rm._Level(fixed, moving, f)
        a = np.eye(d) + rng.normal(0, 0.1, (d, d))
        y0 = (lev.points.numpy() @ a.T + rng.normal(0, 3, d) + 2.0).astype(np.float32)
        got, want = [], []
        for fn, out in ((lev.similarity, got), (lev.similarity_autograd, want)):
            y = torch.from_numpy(y0.copy()).requires_grad_(True)
            s, ov = fn(y)
            (gs,) = torch.autograd.grad(s, y, retain_graph=True)
            (go,) = torch.autograd.grad(ov, y)
            out += [float(s), float(ov), gs, go]
        assert 0.05 < got[1] < 0.98  # part of the level lies outside the moving image
        assert got[0] == pytest.approx(want[0], abs=1e-5) and got[1] == pytest.approx(want[1], abs=1e-6)
        for g, w in ((got[2], want[2]), (got[3], want[3])):
            assert torch.allclose(g, w, rtol=1e-3, atol=1e-4 * float(w.abs().max()))


def test_the_midpoint_of_two_answers_is_halfway_and_keeps_their_kind():
    """The consistency check's midpoint m = a ∘ (a⁻¹ ∘ b)^½: of equal answers the answer itself; the half step
    taken twice from a reaches b; of two rigid answers a rigid one at half the angle; the same from either
    side."""
    from neuros.plugins.cv.transforms import LinearTransform

    def hom(t):
        return np.vstack([np.c_[t.matrix, t.offset], [0, 0, 1]])

    a = LinearTransform.rigid([0.17], [3.0, -2.0], center=[20.0, 30.0])
    b = LinearTransform.rigid([0.21], [3.4, -2.2], center=[20.0, 30.0])
    c = LinearTransform(np.array([[1.1, 0.05], [-0.02, 0.95]]), np.array([1.0, 2.0]), "affine")
    same = rm._midpoint(a, a)
    assert np.allclose(same.matrix, a.matrix) and np.allclose(same.offset, a.offset)
    for x, y in ((a, b), (a, c)):
        mid = rm._midpoint(x, y)
        step = np.linalg.solve(hom(x), hom(mid))
        assert np.allclose(hom(x) @ step @ step, hom(y)) and mid.kind == x.kind
        back = rm._midpoint(y, x)
        assert np.allclose(hom(back), hom(mid))
    mid = rm._midpoint(a, b)
    assert np.allclose(mid.matrix @ mid.matrix.T, np.eye(2))
    assert np.isclose(np.arctan2(mid.matrix[1, 0], mid.matrix[0, 0]),
                      np.mean([np.arctan2(t.matrix[1, 0], t.matrix[0, 0]) for t in (a, b)]))


def test_stacked_sampling_equals_two_passes(em):
    import torch

    img = torch.from_numpy(em[:64, :80].copy())[None, None]
    grad = rm._gradients(img)
    coords = torch.from_numpy(np.random.default_rng(1).uniform(0, 60, (500, 2)).astype(np.float32))
    a = coords.clone().requires_grad_(True)
    b = coords.clone().requires_grad_(True)
    va = sample_with_gradient(img, grad, a)
    vb = sample_with_gradient(stack_with_gradient(img, grad), None, b)
    va.sum().backward()
    vb.sum().backward()
    assert torch.allclose(va, vb, atol=1e-6) and torch.allclose(a.grad, b.grad, atol=1e-5)


@pytest.mark.parametrize("d", [2, 3])
def test_point_interpolation_equals_grid_sample_with_border_padding(d):
    """The sparse interpolation at fixed points (value and gradient) equals grid_sample's, points outside the
    grid included (clamped, as border padding does)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    shape = (7, 9) if d == 2 else (5, 6, 7)
    pts = rng.uniform(-1.5, np.asarray(shape) + 0.5, (300, d))
    u = torch.from_numpy(rng.normal(size=(1, 3, *shape)).astype(np.float32))
    ua, ub = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
    size = torch.tensor([s - 1 for s in shape], dtype=torch.float32)
    g = (2.0 * torch.from_numpy(pts.astype(np.float32)) / size - 1.0).flip(-1).view(1, *([1] * (d - 1)), -1, d)
    want = F.grid_sample(ua, g, mode="bilinear", padding_mode="border", align_corners=True).reshape(3, -1).T
    got = rm._PointInterpolation(pts, shape)(ub)
    weights = torch.from_numpy(rng.normal(size=(300, 3)).astype(np.float32))
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(ua.grad, ub.grad, atol=1e-4)


def test_coarse_scores_do_not_depend_on_how_candidates_are_batched(em):
    """Each candidate is correlated on its own box: the same scores and translations in batches of 1 or 40."""
    fixed, moving = em[100:260, 120:300], em[80:301, 100:330]  # moving 44 × 46 at ×5: even sides
    mats = [s * rm._rot2(np.deg2rad(a)) for s in (0.8, 1.0, 1.25) for a in range(-180, 180, 15)]
    one = rm._coarse_candidates(fixed, moving, 5, mats, 0.25, batch=1)
    many = rm._coarse_candidates(fixed, moving, 5, mats, 0.25, batch=40, workers=2)
    assert len(one) == len(many) == len(mats)
    a = sorted((round(v, 4), t.offset.round(3).tolist()) for v, t in one)
    b = sorted((round(v, 4), t.offset.round(3).tolist()) for v, t in many)
    assert a == b
    # the crop pair is a pure translation by (20, 20): the upright candidate samples pixel centres and finds it
    # exactly (a box of the wrong parity put it at 17.5, half a coarse pixel off, scoring 0.83 instead of 0.94)
    assert np.allclose(one[0][1].matrix, np.eye(2)) and np.allclose(one[0][1].offset, 20.0, atol=1e-3)
    assert one[0][0] > 0.9


@pytest.mark.parametrize("model", ["rigid", "affine", "deformable"])
def test_an_agreeing_reverse_makes_the_answer_the_midpoint(em, monkeypatch, model):
    """Linear models: the returned transform is the midpoint of the forward answer and the inverse of the
    reverse one (their agreement within the limit is what allows it); deformable keeps the forward affine, and
    without the consistency check there is no midpoint."""
    fixed, moving = em[300:428, 300:428], em[292:436, 310:440]
    calls = []
    real = rm._midpoint

    def spy(a, b):
        calls.append((a, b, real(a, b)))
        return calls[-1][2]

    monkeypatch.setattr(rm, "_midpoint", spy)
    r = rm.register(fixed, moving, model, workers=1)
    if model == "deformable":
        assert calls == []
        return
    assert len(calls) == 1 and r.reliable
    fwd, inv_rev, mid = calls[0]
    assert r.transform is mid and not np.allclose(fwd.matrix, inv_rev.matrix, rtol=0, atol=1e-9)
    assert r.transform.kind == model
    calls.clear()
    rm.register(fixed, moving, model, workers=1, check_consistency=False)
    assert calls == []


def test_threads_do_not_change_the_answer(em):
    """The reverse registration beside the forward one (2-D: in a forked child process) and the coarse batches
    on two threads: the same result as serial."""
    fixed, moving = em[300:428, 300:428], em[292:436, 310:440]
    serial = rm.register(fixed, moving, "affine", workers=1)
    threaded = rm.register(fixed, moving, "affine", workers=2)
    assert np.array_equal(serial.transform.matrix, threaded.transform.matrix)
    assert np.array_equal(serial.transform.offset, threaded.transform.offset)
    assert serial.consistency == threaded.consistency and serial.score == threaded.score
    assert serial.reliable


def test_a_right_answer_whose_reverse_search_is_fooled_gets_a_second_opinion(sstem_dir):
    """A 512² ssTEM section zoomed out by ~1.2 and turned ~21°: a third of the fixed image is padding, whose
    straight edge fooled the reverse registration's own search (consistency 556 px, a right answer flagged
    unreliable with score 0). The reverse run again from the inverse of the forward answer is preferred by
    its own similarity, and the answer is confirmed."""
    from neuros.plugins.cv.datasets.pairs import make_pair, target_registration_error

    pair = make_pair("sstem", "affine", seed=1, rotation=30.0, crop=1.0, root=str(sstem_dir))
    assert (pair.fixed == 0).mean() > 0.3
    r = rm.register(pair.fixed, pair.moving, "affine")
    assert target_registration_error(pair.truth, r.transform, pair.fixed.shape) < 0.1
    assert r.consistency < 0.5 and r.reliable and r.score > 0.5


def test_repeated_coarse_candidates_are_searched_once():
    """The identity is a candidate of its own and usually the SO(3) search's best: it is correlated once; the
    first of equal matrices is kept and the order is unchanged."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix()
    mats = [np.eye(3), r, 0.8 * np.eye(3), np.eye(3) + 1e-9, r.copy(), r.T]
    out = rm._distinct(mats)
    assert len(out) == 4
    assert all(a is b for a, b in zip(out, [mats[0], mats[1], mats[2], mats[5]], strict=True))
    assert rm._distinct([]) == [] and len(rm._distinct([r])) == 1


def test_the_reverse_check_asks_for_the_forward_overlap_as_a_share_of_the_moving_image():
    """A crop registered into a whole volume: the reverse registration cannot cover a quarter of the volume
    with the crop; it asks for the crop's share, and if it still finds nothing the answer is unconfirmed
    (infinite inconsistency, said in one line), not an error."""
    assert rm._reverse_overlap(0.25, (48, 48, 48), (98, 116, 94)) == pytest.approx(0.25 * 48 ** 3 / (98 * 116 * 94))
    assert rm._reverse_overlap(0.25, (64, 64), (64, 64)) == 0.25
    assert rm._reverse_overlap(0.25, (128, 128), (64, 64)) == 0.25
    reasons = rm._reasons(0.0, 0.9, float("inf"), 0.25, 1.0)
    assert any("found no transform to confirm it" in r for r in reasons)
    assert not any("inconsistency inf" in r for r in reasons)


@pytest.mark.parametrize("d", [2, 3])
def test_the_returned_field_is_the_fitted_one(d):
    """The field is fitted on a grid downsampled by f, read at the sample points by linear interpolation; the
    returned full-resolution field is that same field at every pixel. (Integrating it again at full resolution,
    as before session 9, put the control grid's corners elsewhere: up to ~4 px apart on this random field,
    and 3-D label Dice 0.933 instead of 0.949.)"""
    import torch

    torch.manual_seed(0)
    shape, f = ((61, 70), 4) if d == 2 else ((33, 40, 29), 4)
    v = torch.randn(1, d, *(6,) * d) * 3
    full = rm._full_field(v, shape, f=f)
    lshape = tuple(s // f for s in shape)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.integers(0, s, 300) for s in shape], 1)
    interp = rm._PointInterpolation((pts - (f - 1) / 2.0) / f, lshape)
    with torch.no_grad():
        fitted = interp(rm._svf(v, lshape, f, 6)).numpy() * f
    np.testing.assert_allclose(full[(slice(None), *pts.T)].T, fitted, atol=1e-4)


def test_a_reverse_that_finds_nothing_leaves_the_answer_unconfirmed(em, monkeypatch):
    """When the consistency check's reverse registration (and its second opinion) find no transform keeping the
    overlap, the call still returns the forward answer — flagged, with the reason in one line — not an error."""
    fixed, moving = em[300:428, 300:428], em[292:436, 310:440]
    real = rm._linear_stage

    def reverse_fails(fixed_pyr, moving_pyr, model, opts):
        if fixed_pyr.img.shape == moving.shape:  # the reverse direction (and its second opinion)
            raise rm._NoOverlap("no transform keeps min_overlap")
        return real(fixed_pyr, moving_pyr, model, opts)

    monkeypatch.setattr(rm, "_linear_stage", reverse_fails)
    r = rm.register(fixed, moving, "rigid", workers=1)
    assert np.isposinf(r.consistency) and not r.reliable and r.score == 0.0
    assert r.reasons == ["score 0.00 < 0.15",
                         "the reverse registration (the consistency check) found no transform to confirm it"]
    assert np.allclose(r.transform.matrix, np.eye(2), atol=0.01)  # the forward answer itself is kept


def _smooth_volume(shape, seed):
    from scipy import ndimage as ndi

    v = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


@pytest.mark.parametrize("window", ["box", "bspline"])
def test_the_polish_split_between_threads_equals_the_whole_mutual_information(window):
    """The polish's points in parts whose joint histograms add up (one part per thread): the same mutual
    information and the same gradient as one histogram of all the points, whatever the number of threads."""
    import torch

    fixed, moving = _smooth_volume((30, 34, 28), 0), _smooth_volume((30, 34, 28), 1)
    moving = 0.5 * moving + 0.5 * fixed
    want = None
    for workers in (1, 2):
        lev = rm._PolishLevel(fixed, moving, 4000, 32, workers, window)
        assert len(lev.parts) == rm.POLISH_PARTS == 2
        y = (lev.points * 0.97 + 0.6).requires_grad_(True)
        mi, overlap = lev.similarity(y)
        mi.backward()
        if want is None:  # the plain computation: one histogram of every point, one autograd graph
            from neuros.plugins.cv.mutual_information import stack_with_gradient

            yy = y.detach().clone().requires_grad_(True)
            vals = torch.from_numpy(fixed[tuple(lev.points.numpy().astype(np.int64).T)])
            mov = torch.from_numpy(moving)[None, None]
            inside = rm._inside(yy.detach(), moving.shape, 0.0)
            whole = mutual_information((box_window if window == "box" else bspline_window)(vals, 32),
                                       sample_with_gradient(stack_with_gradient(mov, rm._gradients(mov)), None, yy),
                                       inside, 32)
            whole.backward()
            want = (float(whole), yy.grad.clone())
            assert float(overlap) == pytest.approx(float(inside.mean()))
        assert float(mi) == pytest.approx(want[0], rel=1e-5)
        assert torch.allclose(y.grad, want[1], rtol=1e-4, atol=1e-7 * float(want[1].abs().max()))


def test_a_registration_holds_blas_to_one_thread_and_gives_it_back(monkeypatch):
    """SciPy's L-BFGS-B calls BLAS, whose threads otherwise spin on the core the reverse registration needs:
    one BLAS thread while a registration runs, the caller's setting after; two registrations at once on
    threads: limited until the last one ends, then given back."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from threadpoolctl import threadpool_limits

    def blas_threads() -> set[int]:
        return {m["num_threads"] for m in rm._blas_controller().select(user_api="blas").info()}

    seen: list[tuple[set[int], int]] = []
    both = Barrier(2, timeout=10)

    def inside(*args):
        seen.append((blas_threads(), rm._BLAS_STATE["depth"]))
        return "done"

    monkeypatch.setattr(rm, "_register", inside)
    a = np.zeros((16, 16), np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        assert rm.register(a, a) == "done"
        assert seen == [({1}, 1)] and blas_threads() == {2}

    def together(*args):
        both.wait()  # both registrations are running
        seen.append((set(), rm._BLAS_STATE["depth"]))
        both.wait()
        return "done"

    monkeypatch.setattr(rm, "_register", together)
    before = blas_threads()
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda _: rm.register(a, a), range(2))) == ["done", "done"]
    assert [depth for _, depth in seen[1:]] == [2, 2]
    assert rm._BLAS_STATE == {"depth": 0, "limiter": None} and blas_threads() == before


def test_3d_scales_are_searched_for_the_best_rotations_only(mni_volumes):
    """The 3-D coarse search ranks every rotation at the scale nearest 1, then tries the other scales for the
    best few rotations only: on an MNI152 volume turned 90° and zoomed by 0.8 it finds the same best candidate
    as the whole product of scales and rotations, from fewer candidates."""
    from scipy.spatial.transform import Rotation

    from neuros.plugins.cv.transforms import LinearTransform

    t1, _ = mni_volumes
    rots = [np.eye(3)] + [Rotation.from_rotvec(np.deg2rad(a) * np.asarray(ax, float)).as_matrix()
                          for a in (90, 180) for ax in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
    truth_m = 0.8 * rots[3]  # 90° about the first axis
    c = (np.asarray(t1.shape) - 1) / 2
    fixed = LinearTransform(truth_m, c - truth_m @ c + np.array([2.0, -3.0, 1.0])).apply(t1, t1.shape)
    fp, mp = rm._Pyramid(fixed), rm._Pyramid(t1)
    fc = rm._factors(t1.shape, 24)
    counted: list[int] = []
    real = rm._coarse_ranked

    def count(fixed_, moving_, f, matrices, *a, **k):
        counted.append(len(matrices))
        return real(fixed_, moving_, f, matrices, *a, **k)

    scales = (0.8, 1.0, 1.25)
    full = rm._coarse_candidates(fp, mp, fc, [s * r for s in scales for r in rots], 0.25)
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setattr(rm, "_coarse_ranked", count)
        two = rm._scaled_candidates_3d(fp, mp, fc, rots, scales, 0.25, 1)
    assert np.allclose(two[0][1].matrix, truth_m) and np.allclose(full[0][1].matrix, truth_m)
    assert two[0][0] == pytest.approx(full[0][0])
    assert counted == [len(rots), 2 * rm.SCALED_ROTATIONS_3D] and sum(counted) < len(full)


def test_the_2d_field_is_fitted_as_it_is_returned(em):
    """The 2-D velocity field is integrated on a grid every ``grid_spacing`` pixels and read at each level's
    pixels by linear interpolation: the displacement the fit applies at the full-resolution level's pixels is
    the returned field there (the fit and the answer are one field, as in 3-D; integrated at the level's
    resolution, as until session 10, the two differed by 8.6 px here)."""
    import torch

    from neuros.plugins.cv.transforms import LinearTransform

    img = em[200:261, 300:370].copy()
    fp = mp = rm._Pyramid(img)
    lev = rm._Level(fp, mp, 1)
    seen: list = []
    real = rm._Level.similarity

    def record(self, y):
        seen.append(y.detach().clone())
        return real(self, y)

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setattr(rm._Level, "similarity", record)
        mpatch.setattr(rm, "_lbfgs", lambda params, closure, iters, **k: (params[0].data.normal_(0, 3), closure()))
        v = rm._optimise_field([lev], LinearTransform(np.eye(2), np.zeros(2)), img.shape, 8.0, [1], 1.0, 8)
    applied = (seen[-1] - lev.points).numpy()  # identity linear part: y = x + u(x)
    returned = np.moveaxis(rm._full_field(v, img.shape, 6, 8), 0, -1)
    assert np.abs(applied).max() > 1.0  # a real, random field
    np.testing.assert_allclose(applied, returned, atol=1e-4)
