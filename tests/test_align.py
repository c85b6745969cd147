"""align_stack and the register/align CLIs on real serial-section EM jittered by known translations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.registration import align_stack, shift_image

N_SECTIONS = 5
SIZE = 256


@pytest.fixture(scope="module")
def sections(sstem_dir):
    import tifffile

    return np.stack([tifffile.imread(sstem_dir / "raw" / f"{i:02d}.tif") for i in range(N_SECTIONS)])


@pytest.fixture(scope="module")
def jitter():
    return np.random.default_rng(7).uniform(-10, 10, (N_SECTIONS, 2))


def window(image, shift):
    """The central SIZE² window of ``image`` moved by ``shift`` (cubic spline), as uint8 like the source."""
    moved = shift_image(image, shift, order=3)
    y0 = (image.shape[0] - SIZE) // 2
    return np.clip(np.rint(moved[y0 : y0 + SIZE, y0 : y0 + SIZE]), 0, 255).astype(np.uint8)


def test_identical_sections_jittered_are_recovered_exactly(sections, jitter):
    vol = np.stack([window(sections[3], d) for d in jitter])
    aligned, tr = align_stack(vol)
    np.testing.assert_allclose(tr.shifts, jitter - jitter[0], atol=0.1)
    assert aligned.dtype == np.uint8 and aligned.shape == vol.shape
    inner = np.s_[24:-24, 24:-24]  # away from the filled borders
    for i in range(1, N_SECTIONS):
        before = np.abs(vol[i][inner].astype(float) - vol[0][inner].astype(float)).mean()
        after = np.abs(aligned[i][inner].astype(float) - aligned[0][inner].astype(float)).mean()
        assert after < 0.25 * before, (i, before, after)  # what is left is bilinear interpolation blur


@pytest.mark.parametrize("reference", ["previous", "running"])
def test_real_neighbouring_sections_recover_the_jitter(sections, jitter, reference):
    """Neighbours are 45–50 nm apart and differ in content; the stack's own drift is measured on the
    un-jittered sections, so the jitter must show up as the difference (up to a global offset)."""
    plain = np.stack([window(s, (0, 0)) for s in sections])
    jittered = np.stack([window(s, d) for s, d in zip(sections, jitter, strict=True)])
    _, base = align_stack(plain, reference=reference)
    _, tr = align_stack(jittered, reference=reference)
    recovered = tr.shifts - base.shifts
    err = np.hypot(*(recovered - (jitter - jitter[0])).T)
    assert err.max() < 1.0, err
    assert (tr.scores[1:] > 0.1).all() and tr.reference == reference
    messages = []
    align_stack(jittered[:3], reference=reference, progress=messages.append)
    assert len(messages) == 3 and messages[-1].startswith("section 2")


def test_bad_stacks_get_one_line_errors(sections):
    with pytest.raises(ValueError, match="at least two"):
        align_stack(sections[:1])
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        align_stack(sections[0])
    with pytest.raises(ValueError, match="reference must be"):
        align_stack(sections[:2], reference="first")
    vol = sections[:2, :64, :64].astype(float)
    vol[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"volume\[1\] contains 1 NaN"):
        align_stack(vol)


# --- CLIs ----------------------------------------------------------------------------------------------------------
@pytest.fixture()
def stack_file(tmp_path, sections, jitter):
    import tifffile

    path = tmp_path / "stack.tif"
    vol = np.stack([window(s, d) for s, d in zip(sections[:4], jitter[:4], strict=True)])
    tifffile.imwrite(path, vol, photometric="minisblack")
    return path


def test_cli_align_writes_tiff_and_csv(tmp_path, stack_file, capsys):
    import tifffile

    out, tr = tmp_path / "aligned.tif", tmp_path / "transforms.csv"
    assert main(["align", str(stack_file), "--out", str(out), "--transforms", str(tr)]) == 0
    vol = tifffile.imread(out)
    assert vol.shape == (4, SIZE, SIZE) and vol.dtype == np.uint8
    with tifffile.TiffFile(out) as f:
        meta = json.loads(f.pages[0].description)
    assert meta["weights"] == "none" and len(meta["shifts"]) == 4
    rows = list(csv.DictReader(tr.open()))
    assert [r["section"] for r in rows] == ["0", "1", "2", "3"]
    assert set(rows[0]) >= {"dy", "dx", "pair_dy", "pair_dx", "score", "backbone", "weights"}
    shifts = np.array([[float(r["dy"]), float(r["dx"])] for r in rows])
    np.testing.assert_allclose(shifts, meta["shifts"])
    assert "aligned 4 sections" in capsys.readouterr().out
    # A second run without --overwrite refuses and leaves both files untouched.
    before = (out.read_bytes(), tr.read_bytes())
    assert main(["align", str(stack_file), "--out", str(out), "--transforms", str(tr)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out.read_bytes(), tr.read_bytes()) == before


def test_cli_align_folder_input_and_failures_write_nothing(tmp_path, sections, capsys):
    import tifffile

    folder = tmp_path / "sections"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"{i:02d}.tif", sections[i, :128, :128])
    out, tr = tmp_path / "a.tif", tmp_path / "t.csv"
    assert main(["align", str(folder), "--out", str(out), "--transforms", str(tr), "--reference", "running"]) == 0
    assert tifffile.imread(out).shape == (3, 128, 128)
    capsys.readouterr()
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, sections[:1, :64, :64], photometric="minisblack")
    out2, tr2 = tmp_path / "b.tif", tmp_path / "u.csv"
    assert main(["align", str(one), "--out", str(out2), "--transforms", str(tr2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least two" in err[0]
    assert not out2.exists() and not tr2.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_cli_register_prints_dy_dx_score(tmp_path, sections, capsys):
    import tifffile

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(a, window(sections[2], (0, 0)))
    tifffile.imwrite(b, window(sections[2], (5.5, -2.25)))
    assert main(["register", str(a), str(b)]) == 0
    cap = capsys.readouterr()
    dy, dx, score = (float(v) for v in cap.out.split())
    assert abs(dy - 5.5) < 0.1 and abs(dx + 2.25) < 0.1 and 0.5 < score <= 1
    assert "weights=none" in cap.err
    assert main(["register", str(a), str(b), "--json", "--backbone", "vit-small", "--weights", "placeholder"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["weights"] == "placeholder" and abs(rec["dy"] - 5.5) < 0.1
    c = tmp_path / "c.tif"
    tifffile.imwrite(c, sections[2, :100, :120])
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(a.read_bytes()[:300])
    for argv, msg in [
        (["register", str(a), str(c)], "differ in shape"),
        (["register", str(a), str(truncated)], "corrupt or truncated tiff"),
        (["register", str(a), str(tmp_path / "missing.tif")], "does not exist"),
        (["register", str(a), str(b), "--weights", "random"], "--weights needs --backbone"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_cli_align_model_on_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path, capsys):
    """`align --model` shares the translation path's full-disk handling: one line naming the file, no output."""
    import subprocess

    import tifffile

    disk = tmp_path / "small"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        base = np.random.default_rng(0).random((400, 400)).astype(np.float32)
        stack = tmp_path / "stack.tif"  # three shifted copies: 1.7 MB of float32 output, more than the disk
        tifffile.imwrite(stack, np.stack([base[i:i + 384, :384] for i in (0, 3, 6)]), photometric="minisblack")
        code = main(["align", str(stack), "--model", "rigid", "--out", str(disk / "aligned.tif"),
                     "--transforms", str(tmp_path / "tr")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("neuros-cv")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("neuros-cv align: error: disk full while writing") and "aligned.tif" in lines[0]
        assert list(disk.iterdir()) == [] and not (tmp_path / "tr").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
