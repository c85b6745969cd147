"""`neuros-cv bench` end to end: tables, files, determinism, atomic output and one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.experiments.suite import SuiteConfig, run_suite

CLI = [sys.executable, "-m", "neuros.plugins.cv.cli"]


#: A small real suite (the built-in ``quick`` one with the smallest ViT) for tests about outputs, not numbers.
QUICK = ["--config", "quick", "--backbones", "vit-small"]


def _run(args, **kw):
    """The CLI in a fresh interpreter (only where a separate process is the point: determinism across runs)."""
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, **kw)


def _main(capsys, *args):
    """The CLI's ``main`` in this process: (exit status, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    """The default (report) suite, run once, in this process (the one full run of this file)."""
    out = tmp_path_factory.mktemp("bench") / "run1"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(stdout), redirect_stderr(stderr):
        mp.setenv("COLUMNS", "160")
        code = main(["bench", "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def test_bench_prints_the_three_tables_and_explains_mri(bench_out):
    _, proc = bench_out
    for caption in ("Table 1", "Table 2", "Table 3", "CNX-Tiny", "ViT-Large", "Histology"):
        assert caption in proc.stdout
    assert "placeholder" in proc.stdout  # names the weights used
    assert "patch corner" in proc.stdout  # the MRI F1 = 0 artefact is explained in the output


def test_bench_writes_results_tables_and_csvs(bench_out):
    out, _ = bench_out
    assert {p.name for p in out.iterdir()} >= {
        "results.json", "tables.md", "segmentation.csv", "crossmodal.csv", "registration.csv", "report.html", "figures"
    }
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["backbones"] == ["cnx-tiny", "vit-large"] and doc["config"]["seed"] == 0
    used = {b["name"]: b["weights"] for b in doc["backbones"]}
    assert used == {"cnx-tiny": "placeholder", "vit-large": "placeholder"}
    res = doc["results"]
    assert len(res["segmentation"]) == 6 and len(res["crossmodal"]) == 18 and len(res["registration"]) == 6
    mri = [r for r in res["segmentation"] if r["modality"] == "mri"]
    assert all(r["f1"] == 0.0 and r["n_train_positive"] == 0 and r["note"] for r in mri)
    em = [r for r in res["segmentation"] if r["modality"] == "em"]
    assert all(r["f1"] > 0.5 and r["note"] is None for r in em)  # real foreground is found
    for r in res["registration"]:
        assert [s["true"] for s in r["shifts"]] == [[1, 1], [0, 2], [-2, -1]]
        assert r["mean_error"] == pytest.approx(sum(s["error"] for s in r["shifts"]) / 3)
    prov = doc["provenance"]
    assert prov["versions"]["numpy"] and "timings_s" in prov
    assert "Table 1" in (out / "tables.md").read_text()
    assert (out / "crossmodal.csv").read_text().count("\n") == 19


def _without_provenance(path: Path) -> str:
    doc = json.loads(path.read_text())
    doc.pop("provenance")
    return json.dumps(doc)


def test_same_seed_is_byte_identical_except_provenance(tmp_path):
    """The built-in ``quick`` suite (every experiment, three modalities, small images) in a fresh process and in
    this one gives the same bytes up to the provenance block."""
    one, two = tmp_path / "run1", tmp_path / "run2"
    proc = _run(["bench", "--config", "quick", "--out", str(one)])
    assert proc.returncode == 0, proc.stderr
    assert main(["bench", "--config", "quick", "--out", str(two)]) == 0
    a, b = (one / "results.json").read_text(), (two / "results.json").read_text()
    doc = json.loads(a)
    assert doc["config"]["name"] == "quick" and len(doc["results"]["registration"]) == 3  # a real run
    assert _without_provenance(one / "results.json") == _without_provenance(two / "results.json")
    # Everything before the provenance block is byte-identical text.
    assert a.split('"provenance"')[0] == b.split('"provenance"')[0]
    assert (one / "tables.md").read_bytes() == (two / "tables.md").read_bytes()


def test_different_seed_changes_the_data():
    cfg = dict(backbones=("vit-small",), modalities=("em",), n_train=2, n_test=1, size=64, shifts=((1, 0),))
    r0, _ = run_suite(SuiteConfig(**cfg, seed=0))
    r1, _ = run_suite(SuiteConfig(**cfg, seed=1))
    assert r0["segmentation"][0]["n_train_positive"] != r1["segmentation"][0]["n_train_positive"] or (
        r0["segmentation"][0]["accuracy"] != r1["segmentation"][0]["accuracy"]
    )


def test_refuses_to_clobber_and_overwrites_when_asked(tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["bench", *QUICK, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    # A folder neuros-cv did not write is never replaced, even with --overwrite.
    assert main(["bench", *QUICK, "--out", str(out), "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    # Our own earlier output is replaced; a file the user added beside it stays.
    (out / "keep.txt").unlink()
    assert main(["bench", *QUICK, "--out", str(out)]) == 0
    (out / "keep.txt").write_text("mine")
    assert main(["bench", *QUICK, "--out", str(out), "--overwrite"]) == 0
    assert (out / "results.json").exists() and (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbones", "vit-lrage"], "did you mean 'vit-large'"),
        (["--seed", "-1"], "seed: must be >= 0"),
    ],
)
def test_bad_arguments_are_one_line_errors_without_traceback(tmp_path, capsys, args, message):
    code, _, err = _main(capsys, "bench", *args, "--out", str(tmp_path / "o"))
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unwritable_out_is_reported_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, out, err = _main(capsys, "bench", "--out", str(blocker / "sub"))
    assert code == 2 and "is a file, not a folder" in err
    assert "Traceback" not in err and "Table 1" not in out


def test_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch):
    import neuros.plugins.cv.cli.bench as bench

    def boom(*a, **k):
        raise RuntimeError("disk full")

    def half_written(folder, *a, **k):
        (folder / "results.json").write_text("{")
        boom()

    monkeypatch.setattr(bench, "write_outputs", half_written)
    assert main(["bench", *QUICK, "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def test_backbones_command_lists_the_registry(capsys):
    code, out, _ = _main(capsys, "backbones")
    assert code == 0
    for name in ("vit-small", "vit-7b", "cnx-large"):
        assert name in out


def test_bench_says_what_the_placeholder_is_in_every_output(bench_out):
    from html import escape

    from neuros.plugins.cv.backbones.placeholder import PLACEHOLDER_NOTE, placeholder_notice

    out, proc = bench_out
    for name in ("cnx-tiny", "vit-large"):  # one terminal line per placeholder backbone
        assert placeholder_notice(name) in proc.stdout
    assert "one and the same stand-in" in proc.stdout and "majority" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["placeholder"]["note"] == PLACEHOLDER_NOTE
    assert [g["backbones"] for g in doc["placeholder"]["same_stand_in"]] == [["cnx-tiny", "vit-large"]]
    assert all(b["placeholder"] == PLACEHOLDER_NOTE for b in doc["backbones"])
    assert any("patch-level" in n for n in doc["reading_notes"])
    assert PLACEHOLDER_NOTE in (out / "tables.md").read_text()
    html = (out / "report.html").read_text()
    assert escape(PLACEHOLDER_NOTE) in html and "one and the same stand-in" in html
    assert all(r["min_overlap_patches"] == 20 for r in doc["results"]["registration"])
