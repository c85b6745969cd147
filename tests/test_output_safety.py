"""Never lose a user's data: ``--overwrite`` replaces only what neuros-cv wrote, never an input.

Library-level rules of :mod:`neuros.plugins.cv.output`, then every command with an input and a foreign
file inside ``--out``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.output import (
    MARKER,
    OutputExistsError,
    atomic_output_dir,
    atomic_output_file,
    check_not_input,
    owned_files,
)


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders/files neuros-cv may have left in ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or "neuros-cv-tmp" in p.name
                  or "neuros-cv-old" in p.name or "probe" in p.name)


# --------------------------------------------------------------------------------------------- library rules
def test_new_folder_gets_marker_listing_its_files(tmp_path):
    with atomic_output_dir(tmp_path / "res", command="test") as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
    doc = json.loads((tmp_path / "res" / MARKER).read_text())
    assert doc["files"] == ["a.txt", "sub"] and doc["command"] == "test" and doc["tool"] == "neuros-cv"
    assert owned_files(tmp_path / "res") == ["a.txt", "sub"]


def test_overwrite_replaces_only_our_files_and_keeps_foreign_ones(tmp_path):
    out = tmp_path / "res"
    with atomic_output_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
        (tmp / "same.txt").write_text("v1")
    (out / "thesis.txt").write_text("years of work")  # the user's file, added later
    with pytest.raises(OutputExistsError, match="pass overwrite=True"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "same.txt").write_text("v2")
    assert (out / "thesis.txt").read_text() == "years of work"
    assert (out / "same.txt").read_text() == "v2" and not (out / "old.txt").exists()
    assert owned_files(out) == ["same.txt"]
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_a_folder_neuros_cv_did_not_write(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputExistsError, match="did not write"):
        with atomic_output_dir(out, overwrite=True):
            raise AssertionError("must not be reached: refused before any work")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_a_new_file_may_not_replace_a_foreign_file_of_the_same_name(tmp_path):
    out = tmp_path / "res"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("ours")
    (out / "b.txt").write_text("user's")
    with pytest.raises(OutputExistsError, match=r"b\.txt exists and neuros-cv did not write it"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
    assert (out / "a.txt").read_text() == "ours" and (out / "b.txt").read_text() == "user's"
    assert _leftovers(tmp_path) == []


def test_a_forged_marker_cannot_reach_outside_the_folder(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (tmp_path / "outside.txt").write_text("keep")
    (out / MARKER).write_text(json.dumps({"schema": "neuros-cv/output-manifest/1", "files": ["../outside.txt"]}))
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "x.txt").write_text("x")
    assert (tmp_path / "outside.txt").read_text() == "keep"


@pytest.mark.parametrize("relation", ["is", "contains", "is inside"])
def test_output_may_not_be_contain_or_lie_inside_an_input(tmp_path, relation):
    folder = tmp_path / "data"
    folder.mkdir()
    image = folder / "section.tif"
    image.write_bytes(b"x")
    out, inputs = {
        "is": (image, [image]),
        "contains": (folder, [image]),
        "is inside": (folder / "sub", [folder]),
    }[relation]
    with pytest.raises(ValueError, match=f"{relation} the input"):
        check_not_input(out, inputs)
    check_not_input(tmp_path / "elsewhere", inputs)  # unrelated output: fine


def test_dot_resolves_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with atomic_output_dir(".") as tmp:  # an empty current folder may receive outputs
        (tmp / "r.txt").write_text("r")
    assert (work / "r.txt").exists() and owned_files(work) == ["r.txt"]
    (work / "mine.txt").write_text("user")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(".", overwrite=True) as tmp:
            (tmp / "r.txt").write_text("half")
            raise RuntimeError("boom")
    assert (work / "r.txt").read_text() == "r" and (work / "mine.txt").exists()
    assert _leftovers(tmp_path) == []


def test_interrupt_leaves_nothing_behind(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(tmp_path / "res") as tmp:
            (tmp / "a.txt").write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "res") as tmp:
            (tmp / "a.txt").write_text("a")
        with atomic_output_file(tmp_path / "f.tif") as tmp_file:
            tmp_file.write_bytes(b"data")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "res") == 0o755
    assert mode(tmp_path / "res" / "a.txt") == 0o644 and mode(tmp_path / "res" / MARKER) == 0o644
    assert mode(tmp_path / "f.tif") == 0o644


# ------------------------------------------------------------------------------------------------ full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_names_the_path(small_disk):
    target = small_disk / "big.tif"
    with pytest.raises(OSError, match=f"disk full while writing {target}"):
        with atomic_output_file(target) as tmp:
            tifffile.imwrite(tmp, np.zeros((4, 512, 512), np.float32), photometric="minisblack")
    assert list(small_disk.iterdir()) == []


def test_align_on_a_full_disk_says_so_in_one_line(tmp_path, small_disk, capsys):
    rng = np.random.default_rng(0)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, rng.random((4, 384, 384)).astype(np.float32), photometric="minisblack")
    code = main(["align", str(stack), "--backbone", "filterbank", "--out", str(small_disk / "aligned.tif"),
                 "--transforms", str(tmp_path / "t.csv")])
    err = _one_error(capsys)
    assert code == 2 and err.startswith("neuros-cv align: error: disk full while writing")
    assert str(small_disk / "aligned.tif") in err
    assert list(small_disk.iterdir()) == [] and not (tmp_path / "t.csv").exists()


def test_library_rules_hold_in_a_fresh_process(tmp_path):
    """The marker written by one process is honoured by another (no in-memory state)."""
    code = (
        "import sys; from neuros.plugins.cv.output import atomic_output_dir\n"
        "with atomic_output_dir(sys.argv[1], overwrite=True) as t:\n"
        "    (t / 'a.txt').write_text('a')\n"
    )
    out = tmp_path / "res"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    (out / "user.txt").write_text("u")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt", "user.txt"]


# ------------------------------------------------------------------------------------- every command, real files
def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("neuros-cv")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def precious(tmp_path):
    """A user's folder: an EM section, its mask, an unrelated thesis; returns (folder, snapshot)."""
    from neuros.plugins.cv.datasets.synthetic import make_dataset

    folder = tmp_path / "precious"
    folder.mkdir()
    im, m = make_dataset("em", 2, 64, seed=3, protocol="random")
    tifffile.imwrite(folder / "section.tif", (im[0] * 255).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(folder / "mask.tif", (m[0] > 0).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(folder / "stack.tif", (im * 255).astype(np.uint8), photometric="minisblack")
    (folder / "thesis.txt").write_text("years of work")

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    return folder, snapshot


def _head(tmp_path, folder) -> Path:
    head = tmp_path / "head"
    assert main(["segment", "train", "--images", str(folder / "section.tif"), "--masks", str(folder / "mask.tif"),
                 "--backbone", "filterbank", "--out", str(head)]) == 0
    return head


COMMANDS = {
    "features": lambda f, h: ["features", str(f / "section.tif"), "--backbone", "filterbank"],
    "segment train": lambda f, h: ["segment", "train", "--images", str(f / "section.tif"), "--masks",
                                   str(f / "mask.tif"), "--backbone", "filterbank"],
    "segment predict": lambda f, h: ["segment", "predict", "--head", str(h), str(f / "section.tif")],
    "align": lambda f, h: ["align", str(f / "stack.tif"), "--backbone", "filterbank", "--transforms",
                           str(f.parent / "t.csv")],
    "volume convert": lambda f, h: ["volume", "convert", str(f / "stack.tif")],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_out_containing_an_input_is_refused_even_with_overwrite(command, precious, tmp_path, capsys):
    folder, snapshot = precious
    head = _head(tmp_path, folder) if command == "segment predict" else None
    before = snapshot()
    capsys.readouterr()
    assert main([*COMMANDS[command](folder, head), "--out", str(folder), "--overwrite"]) == 2
    assert "contains the input" in _one_error(capsys)
    assert snapshot() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["features", "segment train", "segment predict", "volume convert"])
def test_foreign_folder_is_refused_and_our_own_output_keeps_foreign_files(command, precious, tmp_path, capsys):
    folder, _ = precious
    head = _head(tmp_path, folder) if command == "segment predict" else None
    argv = COMMANDS[command](folder, head)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*argv, "--out", str(foreign), "--overwrite"]) == 2
    assert "did not write" in _one_error(capsys)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    ours = owned_files(out)
    assert ours, "the output folder carries the marker listing its files"
    (out / "notes.txt").write_text("added by the user")
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "added by the user" and owned_files(out) == ours
    assert _leftovers(tmp_path) == []


def test_align_output_may_not_replace_its_input(precious, capsys):
    folder, snapshot = precious
    before = snapshot()
    assert main(["align", str(folder / "stack.tif"), "--backbone", "filterbank", "--out", str(folder / "stack.tif"),
                 "--transforms", str(folder.parent / "t.csv"), "--overwrite"]) == 2
    assert "is the input" in _one_error(capsys) and snapshot() == before


def test_out_dot_is_resolved_refused_when_foreign_and_leaves_no_temp(precious, tmp_path, monkeypatch, capsys):
    folder, snapshot = precious
    monkeypatch.chdir(folder)
    before = snapshot()
    assert main(["features", "section.tif", "--backbone", "filterbank", "--out", ".", "--overwrite"]) == 2
    err = _one_error(capsys)
    assert "empty name" not in err and "contains the input" in err
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert main(["features", str(folder / "section.tif"), "--backbone", "filterbank", "--out", ".",
                 "--overwrite"]) == 2
    assert "did not write" in _one_error(capsys)
    assert snapshot() == before and [p.name for p in work.iterdir()] == ["thesis.txt"]
    assert _leftovers(tmp_path) == []


def test_bench_refuses_a_foreign_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "thesis.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--backbones", "vit-small", "--out", ".", "--overwrite"]) == 2
    assert "did not write" in _one_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.txt"]


def test_volume_output_may_not_replace_its_input_volume(tmp_path, capsys):
    import zarr

    vol = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    src = tmp_path / "em.zarr"
    zarr.create_array(str(src), shape=vol.shape, chunks=(1, 32, 32), dtype="float32")[:] = vol
    for action in ("features", "align"):
        extra = ["--backbone", "filterbank"]
        assert main(["volume", action, str(src), "--out", str(src), "--overwrite", *extra]) == 2
        assert "is the input" in _one_error(capsys)
        np.testing.assert_array_equal(zarr.open_array(str(src), mode="r")[:], vol)


def test_volume_overwrite_refuses_a_zarr_neuros_cv_did_not_write(tmp_path, capsys):
    import zarr

    vol = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    src, other = tmp_path / "em.zarr", tmp_path / "other.zarr"
    zarr.create_array(str(src), shape=vol.shape, chunks=(1, 32, 32), dtype="float32")[:] = vol
    zarr.create_array(str(other), shape=vol.shape, chunks=(1, 32, 32), dtype="float32")[:] = vol
    assert main(["volume", "features", str(src), "--out", str(other), "--overwrite", "--backbone",
                 "filterbank"]) == 2
    assert "did not write" in _one_error(capsys)
    np.testing.assert_array_equal(zarr.open_array(str(other), mode="r")[:], vol)


def test_converted_zarr_keeps_its_manifest_in_attributes_and_opens_without_warnings(precious, tmp_path):
    import warnings

    import zarr

    folder, _ = precious
    out = tmp_path / "em.zarr"
    assert main(["volume", "convert", str(folder / "stack.tif"), "--out", str(out)]) == 0
    assert not (out / MARKER).exists() and owned_files(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(out), mode="r")
        assert list(group.keys())


def test_register_and_evaluate_outputs_may_not_replace_an_input(precious, tmp_path, capsys):
    folder, snapshot = precious
    before = snapshot()
    section = folder / "section.tif"
    assert main(["register", str(section), str(section), "--out", str(section), "--overwrite"]) == 2
    assert "is the input" in _one_error(capsys)
    head = _head(tmp_path, folder)
    capsys.readouterr()
    assert main(["segment", "evaluate", "--head", str(head), "--images", str(section), "--masks",
                 str(folder / "mask.tif"), "--out", str(folder / "mask.tif"), "--overwrite"]) == 2
    assert "is the input" in _one_error(capsys)
    assert snapshot() == before
