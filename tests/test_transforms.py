"""Transform objects: apply to images and label maps, compose, invert, and files that ITK/ANTs read."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuros.plugins.cv.transforms import (
    CompositeTransform,
    DisplacementField,
    LinearTransform,
    index_geometry,
    load_transform,
    save_transform,
)

sitk = pytest.importorskip("SimpleITK")


def _smooth_field(shape, peak, seed=0, sigma=12.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in shape])
    return (f * (peak / np.abs(f).max())).astype(np.float32)


def _image(shape=(64, 80), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32)


# --------------------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("ndim", [2, 3])
def test_linear_inverse_and_composition_are_exact(ndim):
    angles = 0.4 if ndim == 2 else (0.3, -0.2, 0.5)
    a = LinearTransform.similarity(1.2, angles, shift=np.arange(ndim) + 1.5, center=np.full(ndim, 10.0))
    b = LinearTransform.affine(np.eye(ndim) + 0.05 * np.arange(ndim * ndim).reshape(ndim, ndim), np.ones(ndim))
    pts = np.random.default_rng(0).random((20, ndim)) * 50
    np.testing.assert_allclose((a @ a.inverse()).map_points(pts), pts, atol=1e-10)
    np.testing.assert_allclose((a @ b).map_points(pts), a.map_points(b.map_points(pts)), atol=1e-10)
    assert (a @ b).kind == "affine" and isinstance(a @ b, LinearTransform)
    # a rigid transform keeps distances; its centre stays put under the rotation alone
    r = LinearTransform.rigid(angles, center=np.full(ndim, 10.0))
    np.testing.assert_allclose(r.map_points(np.full(ndim, 10.0)), np.full((1, ndim), 10.0), atol=1e-12)
    d0 = np.linalg.norm(pts[1:] - pts[:-1], axis=1)
    rp = r.map_points(pts)
    np.testing.assert_allclose(np.linalg.norm(rp[1:] - rp[:-1], axis=1), d0, atol=1e-9)


def test_apply_samples_the_moving_image_at_the_mapped_points():
    img = _image()
    t = LinearTransform.translation((3, -2))
    out = t.apply(img)  # out[y, x] = img[y + 3, x - 2]
    np.testing.assert_allclose(out[:-3, 2:], img[3:, :-2], atol=1e-6)
    assert (out[-3:] == 0).all() and (out[:, :2] == 0).all()
    # cubic and linear agree at integer shifts; colour images go channel by channel
    np.testing.assert_allclose(t.apply(img, order=3)[:-3, 2:], img[3:, :-2], atol=1e-5)
    rgb = np.stack([img, 2 * img], -1)
    np.testing.assert_allclose(t.apply(rgb)[..., 1], 2 * out, atol=1e-6)


def test_label_maps_keep_their_values_and_dtype():
    labels = np.zeros((60, 60), np.uint16)
    labels[10:30, 15:40] = 7
    labels[35:50, 5:20] = 300
    r = LinearTransform.rigid(0.35, center=(30, 30))
    out = r.apply_labels(labels)
    assert out.dtype == np.uint16 and set(np.unique(out)) <= {0, 7, 300}
    back = r.inverse().apply_labels(out)
    assert (back == labels).mean() > 0.97
    with pytest.raises(ValueError, match="integer or boolean label map"):
        r.apply_labels(labels.astype(np.float32))


# --------------------------------------------------------------------------- displacement fields
@pytest.mark.parametrize("shape", [(96, 80), (24, 28, 20)])
def test_field_inverse_is_close_and_smooth_fields_do_not_fold(shape):
    field = DisplacementField(_smooth_field(shape, peak=6.0 if len(shape) == 2 else 3.0, sigma=8.0))
    inv = field.inverse()
    assert field.inverse_error(inv) < 0.05
    assert field.folding_fraction() == 0.0
    folded = DisplacementField(np.stack([np.zeros(shape, np.float32)] * (len(shape) - 1)
                                        + [np.tile(np.linspace(0, -3 * shape[-1], shape[-1], dtype=np.float32),
                                                   (*shape[:-1], 1))]))
    assert folded.folding_fraction() > 0.9  # x ↦ x − 3x folds everywhere


def test_composite_maps_points_in_order_and_becomes_one_field():
    shape = (50, 60)
    field = DisplacementField(_smooth_field(shape, 4.0))
    lin = LinearTransform.rigid(0.2, shift=(1.0, -2.0), center=(25, 30))
    chain = lin @ field  # field first, then the rigid transform
    pts = np.random.default_rng(3).random((30, 2)) * 40 + 5
    np.testing.assert_allclose(chain.map_points(pts), lin.map_points(field.map_points(pts)), atol=1e-9)
    assert isinstance(chain, CompositeTransform)
    as_field = chain.to_field(shape)
    img = _image(shape)
    np.testing.assert_allclose(as_field.apply(img), chain.apply(img, shape), atol=1e-5)
    np.testing.assert_allclose(chain.inverse().map_points(chain.map_points(pts)), pts, atol=0.05)


# --------------------------------------------------------------------------- files ITK/ANTs read
@pytest.mark.parametrize("suffix", [".tfm", ".mat"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_linear_files_map_physical_points_as_itk_reads_them(tmp_path, suffix, ndim):
    angles = 0.3 if ndim == 2 else (0.1, 0.2, -0.3)
    t = LinearTransform.similarity(0.9, angles, shift=np.linspace(-3, 4, ndim), center=np.full(ndim, 12.0))
    spacing, origin = np.linspace(0.5, 1.5, ndim), np.linspace(-20, 10, ndim)
    geo = index_geometry(ndim, spacing, origin)
    path = save_transform(t, tmp_path / f"affine{suffix}", geo, geo)
    itk = sitk.ReadTransform(str(path))
    idx = np.random.default_rng(4).random((10, ndim)) * 30
    phys = (idx * spacing + origin)[:, ::-1]  # ITK: physical x, y, z = reversed NumPy axes
    got = np.array([itk.TransformPoint(tuple(p)) for p in phys])[:, ::-1]
    np.testing.assert_allclose((got - origin) / spacing, t.map_points(idx), atol=1e-9)
    back = load_transform(path, geo, geo)
    np.testing.assert_allclose(back.map_points(idx), t.map_points(idx), atol=1e-9)


def test_itk_euler_files_with_a_centre_load_as_linear(tmp_path):
    e = sitk.Euler2DTransform((5.0, 7.0), 0.25, (1.5, -2.0))
    sitk.WriteTransform(e, str(tmp_path / "euler.tfm"))
    t = load_transform(tmp_path / "euler.tfm")
    pts = np.random.default_rng(5).random((8, 2)) * 20
    want = np.array([e.TransformPoint(tuple(p[::-1])) for p in pts])[:, ::-1]
    np.testing.assert_allclose(t.map_points(pts), want, atol=1e-9)


@pytest.mark.parametrize("shape", [(40, 48), (12, 16, 14)])
def test_fields_are_nifti_displacement_fields_for_itk(tmp_path, shape):
    field = DisplacementField(_smooth_field(shape, 3.0, sigma=4.0))
    spacing = np.linspace(0.8, 1.2, len(shape))
    path = save_transform(field, tmp_path / "warp.nii.gz", index_geometry(len(shape), spacing),
                          index_geometry(len(shape), spacing))
    img = sitk.ReadImage(str(path))
    assert img.GetNumberOfComponentsPerPixel() == len(shape) and img.GetSize() == shape[::-1]
    itk = sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
    idx = np.random.default_rng(6).random((10, len(shape))) * (np.array(shape) - 2) + 0.5
    got = np.array([itk.TransformPoint(tuple((p * spacing)[::-1])) for p in idx])[:, ::-1] / spacing
    np.testing.assert_allclose(got, field.map_points(idx), atol=1e-4)
    back = load_transform(path, moving=index_geometry(len(shape), spacing))
    np.testing.assert_allclose(back.field, field.field, atol=1e-4)
    import nibabel as nib

    assert nib.load(str(path)).shape[: len(shape)] == shape[::-1]  # opens as NIfTI (FSLeyes, ANTs)


def test_bad_transforms_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="matrix must be 2×2 or 3×3"):
        LinearTransform(np.eye(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"field must be \(2, H, W\)"):
        DisplacementField(np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        DisplacementField(np.full((2, 4, 4), np.nan))
    with pytest.raises(ValueError, match="saved as NIfTI"):
        save_transform(DisplacementField(np.zeros((2, 4, 4))), tmp_path / "f.tfm")
    with pytest.raises(ValueError, match="ITK file"):
        save_transform(LinearTransform.identity(2), tmp_path / "f.nii.gz")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_transform(tmp_path / "missing.tfm")
    (tmp_path / "junk.tfm").write_text("not a transform")
    with pytest.raises(ValueError, match=r"cannot read junk\.tfm"):
        load_transform(tmp_path / "junk.tfm")
    with pytest.raises(ValueError, match="cannot compose a 2-D transform with a 3-D one"):
        LinearTransform.identity(2) @ LinearTransform.identity(3)


# --------------------------------------------------------------------------- ANTs applies our files as we do
def test_ants_applies_saved_linear_and_warp_files_like_we_do(tmp_path):
    ants = pytest.importorskip("ants")
    img = _image((72, 90), seed=7)
    # ANTsPy's from_numpy puts physical x on NumPy axis 0; transpose so x is our last axis (ITK's convention)
    ants_img = ants.from_numpy(np.ascontiguousarray(img.T))
    lin = LinearTransform.similarity(1.1, 0.2, shift=(2.5, -1.5), center=(36, 45))
    field = DisplacementField(_smooth_field(img.shape, 3.0, seed=2, sigma=6.0))
    for t, name in ((lin, "affine.mat"), (field, "warp.nii.gz")):
        path = save_transform(t, tmp_path / name)
        theirs = ants.apply_transforms(fixed=ants_img, moving=ants_img, transformlist=[str(path)],
                                       interpolator="linear").numpy().T
        ours = t.apply(img)
        # compare where the mapped point lies inside the moving image (ANTs and SciPy treat its edge differently)
        pts = t.map_points(np.indices(img.shape).reshape(2, -1).T)
        inside = ((pts >= 1) & (pts <= np.array(img.shape) - 2)).all(axis=1).reshape(img.shape)
        assert inside.mean() > 0.7
        np.testing.assert_allclose(theirs[inside], ours[inside], atol=2e-3)


def test_nifti_volumes_keep_their_scanner_space(tmp_path):
    """A transform found on nibabel arrays, saved with the NIfTI headers, warps the files in ITK as it warps
    the arrays here — with an oblique affine and anisotropic voxels, so axis order and RAS/LPS matter."""
    import nibabel as nib

    rng = np.random.default_rng(8)
    vol = ndimage.gaussian_filter(rng.random((30, 34, 26)), 2).astype(np.float32)
    rot = LinearTransform.rigid((0.1, -0.2, 0.15)).matrix
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 0.9, 2.0])
    affine[:3, 3] = (-20.0, 15.0, -7.5)
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "vol.nii.gz"))
    t = LinearTransform.rigid((0.05, 0.1, -0.08), shift=(1.5, -1.0, 0.5), center=(15, 17, 13))
    field = DisplacementField(_smooth_field(vol.shape, 1.5, seed=3, sigma=4.0))
    ref = sitk.ReadImage(str(tmp_path / "vol.nii.gz"))
    for tr, name in ((t, "affine.tfm"), (field, "warp.nii.gz")):
        path = save_transform(tr, tmp_path / name, fixed=tmp_path / "vol.nii.gz", moving=tmp_path / "vol.nii.gz")
        itk_tr = sitk.ReadTransform(str(path)) if name.endswith(".tfm") else sitk.DisplacementFieldTransform(
            sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
        theirs = np.transpose(sitk.GetArrayFromImage(sitk.Resample(ref, ref, itk_tr, sitk.sitkLinear, 0.0)))
        ours = tr.apply(vol)
        pts = tr.map_points(np.indices(vol.shape).reshape(3, -1).T)
        inside = ((pts >= 1) & (pts <= np.array(vol.shape) - 2)).all(axis=1).reshape(vol.shape)
        assert inside.mean() > 0.5
        np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-3)
        back = load_transform(path, fixed=tmp_path / "vol.nii.gz", moving=tmp_path / "vol.nii.gz",
                              shape=vol.shape)
        np.testing.assert_allclose(back.map_points(pts[:50]), tr.map_points(pts[:50]), atol=1e-3)


@pytest.mark.parametrize("shape", [(20, 24), (12, 14, 10)])
def test_jacobian_determinant_of_a_linear_field_is_the_matrix_determinant(shape):
    """u(x) = (A − I) x: det(I + ∇u) = det(A) at every grid point (the written-out 2 × 2 / 3 × 3 formula)."""
    d = len(shape)
    a = np.random.default_rng(d).normal(size=(d, d)) * 0.4 + np.eye(d)
    x = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    u = np.einsum("ij,j...->i...", a - np.eye(d), x)
    jd = DisplacementField(u).jacobian_determinant()
    np.testing.assert_allclose(jd, np.linalg.det(a), rtol=1e-4, atol=1e-4)
    assert DisplacementField(u).folding_fraction() == float(np.linalg.det(a) <= 0)
