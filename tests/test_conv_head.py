"""The conv decoder head (kind ``conv``): sparse labels, reproducibility, tiles, persistence, real ssTEM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from neuros.plugins.cv.backbones.filterbank import WEIGHTS, pixel_features
from neuros.plugins.cv.features import FeatureMap
from neuros.plugins.cv.heads import load_head, make_head
from neuros.plugins.cv.heads.conv import ConvDecoderHead, decoder_halo

SMALL = {"channels": 8, "dilations": (1, 2), "steps": 8, "crop": 32, "batch_size": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not spin on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stride1(image: np.ndarray, sigmas: tuple[float, ...] = (1.0, 2.0)) -> FeatureMap:
    return FeatureMap(pixel_features(image, sigmas), 1.0, image.shape, "filterbank", WEIGHTS)


@pytest.fixture(scope="module")
def blobs() -> tuple[FeatureMap, np.ndarray]:
    """A 64×72 image of bright discs (class 2) with dark rims (class 1) on grey (class 3)."""
    yy, xx = np.mgrid[:64, :72]
    d = np.minimum(np.hypot(yy - 20, xx - 20), np.hypot(yy - 44, xx - 50))
    image = np.where(d < 8, 0.9, np.where(d < 11, 0.1, 0.5)).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 0.05, image.shape).astype(np.float32)
    mask = np.where(d < 8, 2, np.where(d < 11, 1, 3)).astype(np.uint8)
    return stride1(np.clip(image, 0, 1)), mask


def weights(head: ConvDecoderHead) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in head.net_.state_dict().items()}


def same_weights(a: ConvDecoderHead, b: ConvDecoderHead) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def scribble(mask: np.ndarray, value: int) -> np.ndarray:
    """Keep every 5th row of the mask's labels, the rest ``value``; class 3 survives only in unlabelled rows."""
    out = np.full_like(mask, value)
    rows = np.arange(mask.shape[0]) % 5 == 0
    out[rows] = mask[rows]
    out[(out == 3)] = value
    return out


def test_registered_and_clone() -> None:
    head = make_head("conv", seed=3, channels=16, dilations=(1, 4), unlabelled=0)
    assert isinstance(head, ConvDecoderHead) and head.seed == 3 and head.dilations == (1, 4)
    twin = clone(head)
    assert twin.get_params() == head.get_params() and twin is not head


def test_unlabelled_pixels_are_neither_classes_nor_trained(blobs) -> None:
    fm, mask = blobs
    sparse0 = scribble(mask, 0)
    head = ConvDecoderHead(**SMALL, unlabelled=0).fit(fm, [sparse0])
    # 3 only under unlabelled pixels and 0 is the unlabelled value: neither is a class
    assert head.classes_.tolist() == [1, 2]
    assert set(np.unique(head.predict(fm)).tolist()) <= {1, 2}
    # the value that marks unlabelled pixels does not reach the training: another value, same weights
    sparse9 = np.where(sparse0 == 0, 9, sparse0).astype(np.uint8)
    other = ConvDecoderHead(**SMALL, unlabelled=9).fit(fm, [sparse9])
    assert other.classes_.tolist() == [1, 2] and same_weights(head, other)
    # without `unlabelled` the same mask trains 0 as a class: different classes, different weights
    dense = ConvDecoderHead(**SMALL).fit(fm, [sparse0])
    assert dense.classes_.tolist() == [0, 1, 2]


def test_labels_under_unlabelled_pixels_do_not_change_the_weights(blobs) -> None:
    """Two dense masks that differ only where the scribble is unlabelled give the same weights."""
    fm, mask = blobs
    flipped = np.where(mask == 1, 2, mask).astype(np.uint8)  # rims become discs: other truth, same scribble rows
    keep = np.arange(mask.shape[0]) % 7 == 0
    keep_rows_same = keep & (mask == flipped).all(axis=1)
    a = np.where(keep_rows_same[:, None], mask, 0).astype(np.uint8)
    b = np.where(keep_rows_same[:, None], flipped, 0).astype(np.uint8)
    a[20, 9:12], b[20, 9:12] = 1, 1  # one labelled rim stroke so both classes are present
    assert not np.array_equal(mask, flipped) and np.array_equal(a, b)
    ha = ConvDecoderHead(**SMALL, unlabelled=0).fit(fm, [a])
    hb = ConvDecoderHead(**SMALL, unlabelled=0).fit(fm, [b])
    assert same_weights(ha, hb)


def test_same_seed_same_weights_other_seed_other_weights(blobs) -> None:
    fm, mask = blobs
    a = ConvDecoderHead(**SMALL, seed=1).fit(fm, [mask])
    b = ConvDecoderHead(**SMALL, seed=1).fit(fm, [mask])
    c = ConvDecoderHead(**SMALL, seed=2).fit(fm, [mask])
    assert same_weights(a, b) and not same_weights(a, c)
    assert np.array_equal(a.predict_proba(fm), b.predict_proba(fm))


@pytest.mark.parametrize("trunk_stride", [1, 2, 4])
def test_tiles_with_halo_equal_the_whole_image(blobs, trunk_stride) -> None:
    fm, mask = blobs
    head = ConvDecoderHead(**SMALL, trunk_stride=trunk_stride, tile=4096).fit(fm, [mask])
    whole = head.predict_proba(fm)
    tiled = head.set_params(tile=14).predict_proba(fm)  # tiles of 14 cells rounded up to the pooling grid
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_halo_covers_the_receptive_field(blobs) -> None:
    """Changing features just outside the halo leaves a pixel's logits alone; just inside, it changes them."""
    fm, mask = blobs
    head = ConvDecoderHead(**SMALL, trunk_stride=2).fit(fm, [mask])
    halo = decoder_halo(head.dilations, head.trunk_stride)
    assert halo == head.halo == 1 + 2 * (3 + 2) + 1
    x = fm.features[:, :, :]
    base = head._grid_logits(fm)[:, 32, 6:]  # row 32; columns 6.. are at distance ≥ 0 from column 6

    def changed_at(col: int) -> bool:
        feats = x.copy()
        feats[32, col] += 50.0
        out = head._grid_logits(FeatureMap(feats, 1.0, fm.image_shape, fm.backbone, fm.weights))
        return bool(np.abs(out[:, 32, 6:] - base).max(axis=0)[0] > 1e-6)

    assert not changed_at(6 + halo + 1) and changed_at(7)


def test_save_load_identical_proba(blobs, tmp_path) -> None:
    fm, mask = blobs
    head = ConvDecoderHead(**SMALL, unlabelled=0).fit(fm, [scribble(mask, 0)])
    head.save(tmp_path / "h")
    assert (tmp_path / "h" / "conv.safetensors").is_file()
    loaded = load_head(tmp_path / "h")
    assert isinstance(loaded, ConvDecoderHead)
    assert {**loaded.get_params(), "dilations": tuple(loaded.dilations)} == head.get_params()  # JSON: a list
    np.testing.assert_array_equal(loaded.predict_proba(fm), head.predict_proba(fm))


def test_stride2_map_gives_pixel_probabilities(blobs) -> None:
    fm, mask = blobs
    grid = fm.features[::2, ::2]
    coarse = FeatureMap(np.ascontiguousarray(grid), 2.0, fm.image_shape, "filterbank", WEIGHTS)
    head = ConvDecoderHead(**SMALL).fit(coarse, [mask])
    proba = head.predict_proba(coarse)
    assert proba.shape == (*mask.shape, 3) and np.allclose(proba.sum(axis=2), 1, atol=1e-5)
    assert head.predict_proba(coarse, level="patch").shape == (32, 36, 3)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_bad_input_one_line_errors(blobs) -> None:
    fm, mask = blobs
    with pytest.raises(ValueError) as e:
        ConvDecoderHead(**SMALL).fit(fm, [mask[:-1]])
    assert "shape" in one_line(e)
    with pytest.raises(ValueError) as e:
        ConvDecoderHead(**SMALL, unlabelled=0).fit(fm, [np.zeros_like(mask)])
    assert "no labelled pixel" in one_line(e)
    with pytest.raises(ValueError) as e:
        ConvDecoderHead(**{**SMALL, "dilations": (1, 0)}).fit(fm, [mask])
    assert "dilations" in one_line(e)
    head = ConvDecoderHead(**SMALL).fit(fm, [mask])
    other = FeatureMap(fm.features[:, :, :3], 1.0, fm.image_shape, "filterbank", WEIGHTS)
    with pytest.raises(ValueError) as e:
        head.predict(other)
    assert "features" in one_line(e)


def test_learns_membranes_on_real_sstem(sstem_dir) -> None:
    """Trained on a 256² crop of section 00, it finds membranes in a crop of section 01 well above chance."""
    from neuros.plugins.cv.datasets.catalog import load_sstem
    from neuros.plugins.cv.metrics import score_images

    data = load_sstem(sstem_dir, sections=(0, 1), downsample=1)
    crop = np.s_[256:512, 256:512]
    train, test = (stride1(img[crop], (1.0, 2.0, 4.0)) for img in data.images)
    masks = [m[crop] for m in data.masks]
    torch.manual_seed(0)
    head = ConvDecoderHead(channels=16, dilations=(1, 2, 4), steps=40, crop=64, batch_size=4, seed=0)
    head.fit(train, [masks[0]])
    truth = (masks[1] == 1).astype(np.uint8)
    dice = score_images([truth], [(head.predict(test) == 1).astype(np.uint8)], 2)["classes"]["class1"]["dice"]
    trivial = score_images([truth], [np.ones_like(truth)], 2)["classes"]["class1"]["dice"]  # all membrane
    assert dice > trivial + 0.2, (dice, trivial)


@pytest.mark.parametrize("stride", [1, 2])
def test_augmented_windows_turn_features_and_labels_together(stride) -> None:
    """Each window is one of the square's 8 symmetries, applied to features and labels alike."""
    from neuros.plugins.cv.heads.conv import _WindowSampler

    h = w = 24
    rr, cc = np.mgrid[0:h, 0:w]
    cell = (rr * 1000 + cc).astype(np.int64)  # every grid cell's own position
    labels = np.repeat(np.repeat(cell, stride, axis=0), stride, axis=1)  # its pixels carry it as their label
    grid = cell.astype(np.float32)
    fm = FeatureMap(np.stack([grid, grid], axis=-1), float(stride), labels.shape, "t", "none")
    plain = _WindowSampler([fm], [labels], 8, np.random.default_rng(0), augment=False)
    turned = _WindowSampler([fm], [labels], 8, np.random.default_rng(0), augment=True)
    orientations = set()
    for sampler in (plain, turned):
        x, y, s = sampler.batch(16)
        assert s == stride
        np.testing.assert_array_equal(x[..., 0], y[:, ::stride, ::stride])  # labels follow their features
        if sampler is turned:  # the direction in which the row index grows, per window
            orientations |= {(int(np.sign(b[1, 0, 0] - b[0, 0, 0])), int(np.sign(b[0, 1, 0] - b[0, 0, 0])))
                             for b in x}
        else:
            assert np.all(x[:, 1, 0, 0] - x[:, 0, 0, 0] == 1000)  # no augmentation: all upright
    assert len(orientations) >= 3  # several of the 8 symmetries were drawn


def test_sqrt_class_weights_sit_between_none_and_balanced() -> None:
    from neuros.plugins.cv.labels import class_weights_per_class

    counts = np.array([900, 90, 10])
    bal = class_weights_per_class(counts, "balanced")
    sq = class_weights_per_class(counts, "sqrt")
    assert class_weights_per_class(counts, None) is None
    np.testing.assert_allclose((bal * counts).sum(), counts.sum())  # weighted mean 1 over the samples
    np.testing.assert_allclose((sq * counts).sum(), counts.sum())
    assert sq[2] / sq[0] == pytest.approx(np.sqrt(bal[2] / bal[0]))  # the ratios are the square roots
    assert 1 < sq[2] / sq[0] < bal[2] / bal[0]
    with pytest.raises(ValueError, match="class_weight must be one of"):
        class_weights_per_class(counts, "inverse")
    with pytest.raises(ValueError, match="class_weight must be None, 'balanced' or 'sqrt'"):
        make_head("conv", class_weight="inverse").fit([FeatureMap(np.zeros((8, 8, 2), np.float32), 1.0, (8, 8),
                                                                  "t", "none")], [np.eye(8, dtype=np.uint8)])


@pytest.mark.parametrize("stride", [1, 2])
def test_tta_makes_predictions_turn_with_the_map(blobs, stride) -> None:
    """Averaged over the square's symmetries, the decoder is equivariant: a turned map gives turned output."""
    fm, mask = blobs
    if stride == 2:
        fm = FeatureMap(np.ascontiguousarray(fm.features[::2, ::2]), 2.0, fm.image_shape, "filterbank", WEIGHTS)
    head = ConvDecoderHead(**SMALL, tta=False).fit(fm, [mask])
    assert not head.uses_tta and ConvDecoderHead(**SMALL).fit(fm, [mask]).uses_tta  # "auto": on for the filter bank
    turned = FeatureMap(np.ascontiguousarray(np.rot90(fm.features, 1)[:, ::-1]), fm.stride,
                        fm.image_shape[::-1], "filterbank", WEIGHTS)

    def turn(p):
        return np.rot90(p, 1)[:, ::-1]

    plain = head.predict_proba(turned, level="patch")
    assert not np.allclose(plain, turn(head.predict_proba(fm, level="patch")), atol=1e-3)  # the net alone is not
    tta = clone(head).set_params(tta=True)
    tta.__dict__.update({k: v for k, v in vars(head).items() if k.endswith("_")})  # the same fitted weights
    a = tta.predict_proba(turned, level="patch")
    np.testing.assert_allclose(a, turn(tta.predict_proba(fm, level="patch")), atol=1e-5)
    assert tta.predict_proba(fm).shape == (*mask.shape, 3)
