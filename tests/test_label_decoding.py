"""Label masks are decoded by their dtype: 1-bit PNGs (bool) as they are, 8-bit PNGs ``> 127``.

The ssTEM per-class PNGs mix both encodings (mitochondria of sections 01 and 07 are 1-bit); one threshold for
all files read those sections as "no mitochondria".
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from neuros.plugins.cv.datasets.catalog import SSTEM_CLASSES, load_dataset, load_sstem, read_sstem_mask
from neuros.plugins.cv.datasets.io import read_array
from neuros.plugins.cv.labels import decode_binary_mask

# Plausible foreground fractions per class for every shipped section (measured: membranes 0.19–0.22,
# mitochondria 0.04–0.07, synapses 0.003–0.010).
FRACTIONS = {"membranes": (0.15, 0.30), "mitochondria": (0.02, 0.12), "synapses": (0.0, 0.03)}
# labels/NN.png (merged, consistently 8-bit) values of the per-class masks.
MERGED = {"mitochondria": 191, "synapses": 223}


def _disc(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - 15.5) ** 2 + (xx - 12.5) ** 2 < 8**2


def _write_pngs(folder, disc):
    """The same disc as a 1-bit PNG and as an 8-bit anti-aliased PNG (grey edge ring)."""
    one_bit = folder / "one_bit.png"
    Image.fromarray(disc).convert("1").save(one_bit)
    grey = np.where(disc, 255, 0).astype(np.uint8)
    from scipy import ndimage

    edge = ndimage.binary_dilation(disc) & ~disc
    grey[edge] = 90  # anti-aliasing outside the object: below the midpoint
    inner = disc & ~ndimage.binary_erosion(disc)
    grey[inner] = 200  # anti-aliasing inside the object: above the midpoint
    eight_bit = folder / "eight_bit.png"
    Image.fromarray(grey, mode="L").save(eight_bit)
    return one_bit, eight_bit


def test_one_bit_and_eight_bit_png_decode_to_the_same_mask(tmp_path):
    disc = _disc()
    one_bit, eight_bit = _write_pngs(tmp_path, disc)
    a, b = read_array(one_bit), read_array(eight_bit)
    assert a.dtype == bool and b.dtype == np.uint8  # what the reader gives for each PNG mode
    assert not (a > 127).any()  # the old single threshold empties a 1-bit mask
    np.testing.assert_array_equal(decode_binary_mask(a), disc)
    np.testing.assert_array_equal(decode_binary_mask(b), disc)
    assert decode_binary_mask(np.array([[0.2, 0.7]]), threshold=0.5).tolist() == [[False, True]]
    with pytest.raises(ValueError, match="NaN"):
        decode_binary_mask(np.array([[np.nan, 1.0]]), name="p.tif")


def test_load_sstem_decodes_one_bit_mitochondria(tmp_path):
    """An ssTEM-layout folder whose mitochondria PNG is 1-bit (as sections 01/07 are) keeps its mitochondria."""
    disc = _disc()
    for sub in ("raw", "membranes", "mitochondria"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "raw" / "01.tif", np.full((32, 32), 128, np.uint8))
    membrane = np.zeros((32, 32), bool)
    membrane[:, 30:] = True
    Image.fromarray(membrane).convert("1").save(tmp_path / "membranes" / "01.png")
    Image.fromarray(disc).convert("1").save(tmp_path / "mitochondria" / "01.png")
    s = load_dataset("sstem", tmp_path, sections=[1], downsample=1)
    np.testing.assert_array_equal(s.masks[0] == 2, disc)
    np.testing.assert_array_equal(s.masks[0] == 1, membrane & ~disc)
    # The same section with an anti-aliased 8-bit mitochondria PNG gives the same labels.
    _, eight_bit = _write_pngs(tmp_path, disc)
    eight_bit.replace(tmp_path / "mitochondria" / "01.png")
    np.testing.assert_array_equal(load_sstem(tmp_path, sections=[1], downsample=1).masks[0], s.masks[0])
    with pytest.raises(ValueError, match="unknown ssTEM class"):
        read_sstem_mask(tmp_path, "axons", 1)


@pytest.mark.parametrize("kind", SSTEM_CLASSES)
def test_every_shipped_sstem_section_has_plausible_labels(sstem_dir, kind):
    lo, hi = FRACTIONS[kind]
    for s in range(14):
        mask = read_sstem_mask(sstem_dir, kind, s)
        assert mask.shape == (1024, 1024)
        frac = float(mask.mean())
        assert lo < frac < hi, f"{kind}/{s:02d}.png: foreground fraction {frac:.4f} outside ({lo}, {hi})"
        if kind in MERGED:
            merged = read_array(sstem_dir / "labels" / f"{s:02d}.png") == MERGED[kind]
            agree = float((merged == mask).mean())
            assert agree >= 0.999, f"{kind}/{s:02d}.png agrees with labels == {MERGED[kind]} on {agree:.5f}"


def test_load_sstem_mitochondria_in_every_section(sstem_dir):
    s = load_sstem(sstem_dir, downsample=1)
    for i, m in enumerate(s.masks):
        merged = read_array(sstem_dir / "labels" / f"{i:02d}.png") == 191
        assert float(((m == 2) == merged).mean()) >= 0.999, f"section {i:02d}"
        assert 0.02 < float((m == 2).mean()) < 0.12 and 0.1 < float((m == 1).mean()) < 0.3
