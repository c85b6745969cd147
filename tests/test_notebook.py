"""The report's notebook: generated, executed end to end offline (nbclient), tables equal to results.json's."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import nbformat
import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.report.notebook import build_notebook, execute_notebook
from neuros.plugins.cv.report.tables import tables_markdown

REPO = Path(__file__).resolve().parents[1]
SEED = 3  # not the suite's default: the notebook must follow the override exactly as the bench does


@pytest.fixture(scope="module")
def bench_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb-bench") / "bench"
    assert main(["bench", "--config", "quick", "--seed", str(SEED), "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text()), out


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    pytest.importorskip("nbclient", reason="nbclient (dev extra) executes the notebook")
    pytest.importorskip("ipykernel", reason="ipykernel (dev extra) runs the notebook's kernel")
    work = tmp_path_factory.mktemp("nb-run")
    nb = build_notebook("quick", {"seed": SEED}, out_dir=str(work / "out"))
    return execute_notebook(nb, cwd=work, timeout=300), work


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_notebook_runs_without_errors_and_explains_each_step(executed):
    nb, _ = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) - 2  # prose between the code
    source = "\n".join(c.source for c in code)
    for api in ("load_suite", "list_backbones", ".extract(", ".embed(", "patch_correlation", "estimate_translation",
                "fit_head", "run_suite", "tables_markdown", "report_figures"):
        assert api in source
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # heat maps, error bars, overlays, PCA


def test_notebook_tables_match_results_json_for_the_same_seed(executed, bench_doc):
    nb, _ = executed
    doc, out = bench_doc
    printed = next(_stdout(c) for c in nb.cells if c.cell_type == "code" and "print(tables_markdown" in c.source)
    from_json = tables_markdown({"backbones": doc["backbones"], **doc["results"], "notes": doc["notes"]})
    assert printed == from_json + "\n"
    assert printed == (out / "tables.md").read_text() + "\n"
    em = next(r for r in doc["results"]["segmentation"] if r["modality"] == "em")
    assert f"| {em['accuracy']:.3f} | {em['f1']:.3f} |" in printed


def test_notebook_writes_the_same_files_as_bench(executed, bench_doc):
    _, work = executed
    doc, out = bench_doc
    mine = json.loads((work / "out" / "results.json").read_text())
    assert {k: v for k, v in mine.items() if k != "provenance"} == {k: v for k, v in doc.items() if k != "provenance"}
    assert sorted(p.name for p in (work / "out" / "figures").iterdir()) == sorted(
        p.name for p in (out / "figures").iterdir()
    )


def test_cli_refuses_an_existing_notebook_unless_overwrite(tmp_path, capsys):
    target = tmp_path / "nb.ipynb"
    assert main(["notebook", "--config", "quick", "--out", str(target)]) == 0
    nb = nbformat.read(target, as_version=4)
    nbformat.validate(nb)
    target.write_text("keep me")
    assert main(["notebook", "--config", "quick", "--out", str(target)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert main(["notebook", "--config", "quick", "--out", str(target), "--overwrite"]) == 0
    assert nbformat.read(target, as_version=4).cells[0].cell_type == "markdown"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nb.ipynb"]  # no temporary file left behind


def test_bad_suite_is_rejected_before_writing(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('backbones = ["vit-lrage"]\n')
    target = tmp_path / "nb.ipynb"
    assert main(["notebook", "--config", str(bad), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "backbones" in err and "vit-large" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_create_advanced_notebook_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["create_advanced_notebook.py", "--config", "quick"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "create_advanced_notebook.py"), run_name="__main__")
    assert done.value.code == 0
    nb = nbformat.read(tmp_path / "dino_advanced_experiments.ipynb", as_version=4)
    assert "dino_advanced_experiments.ipynb" in nb.cells[0].source
