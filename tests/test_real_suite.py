"""The real-data suite on small real subsets: structure, CIs, filterbank beside DINOv3, both protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.cli._bench_real import write_real_outputs
from neuros.plugins.cv.experiments.pipeline import FeatureStore
from neuros.plugins.cv.experiments.protocols import run_protocol_comparison
from neuros.plugins.cv.experiments.real_suite import RealSuiteConfig, run_real_suite
from neuros.plugins.cv.output import atomic_output_dir
from neuros.plugins.cv.report.real_tables import real_markdown, real_tables

pytest.importorskip("stardist")


@pytest.fixture(scope="module")
def small(sstem_dir):
    config = RealSuiteConfig(
        backbones=("vit-small@placeholder", "filterbank"),
        datasets=("em", "nuclei"),
        em_train=(0, 1), em_test=(12, 13), em_downsample=4, nuclei_tile=128,
        protocols=False, n_boot=200, pixel=None,  # the pixel rows: tests/test_pixel_suite.py
    )
    results, _ = run_real_suite(config)
    return config, results


def test_dice_per_class_per_backbone_with_cis(small):
    _, res = small
    assert [b["spec"] for b in res["backbones"]] == ["vit-small@placeholder", "filterbank"]
    assert {b["weights"] for b in res["backbones"]} == {"placeholder", "none (classical filters)"}
    seg = {(r["dataset"], r["spec"]): r for r in res["segmentation"]}
    assert set(seg) == {(d, s) for d in ("em", "nuclei") for s in ("vit-small@placeholder", "filterbank")}
    assert set(seg["em", "filterbank"]["classes"]) == {"membrane", "mitochondria"}
    for r in seg.values():
        for c in r["classes"].values():
            lo, hi = c["dice_ci"]
            assert 0.0 <= lo <= c["dice"] <= hi <= 1.0 and c["n_pixels"] > 0
    # Both backbones segment nuclei far better than chance (nuclei cover ~20 % of pixels).
    assert min(seg["nuclei", s]["classes"]["nucleus"]["dice"] for s in ("vit-small@placeholder", "filterbank")) > 0.4


def test_tables_put_filterbank_beside_dinov3(small):
    _, res = small
    tables = real_tables(res)
    header, rows = tables[0][1]
    assert header[2:] == ["ViT-Small [placeholder]", "Filterbank [none (classical filters)]"]
    assert [r[1] for r in rows] == ["membrane", "mitochondria", "nucleus"]
    _, cm_rows = tables[1][1]
    assert len(cm_rows) == 4 and cm_rows[0][0] == "em → em"
    md = real_markdown(res)
    assert "downsampled ×4" in md and "Weights used: vit-small@placeholder = placeholder" in md


def test_report_protocol_artefact_and_better_protocol():
    recs = run_protocol_comparison(get_backbone("filterbank"), FeatureStore(), ("mri",), n_train=4, n_test=3,
                                   n_boot=200)
    mri = recs[0]
    assert mri["report"]["f1"] == 0.0 and "labelling artefact" in mri["report"]["note"]
    assert mri["report"]["n_test_positive_patches"] == 0
    assert mri["better"]["dice"] > 0.2  # random placement + pixel scoring: no artefact
    lo, hi = mri["better"]["dice_ci"]
    assert lo <= mri["better"]["dice"] <= hi
    table = real_tables({"segmentation": [], "protocols": [{**mri, "spec": "filterbank"}]})[-1][1]
    assert table[1][0][2].endswith("*")  # the artefact is starred in the bench output


def test_outputs_written_atomically(small, tmp_path):
    config, res = small
    with atomic_output_dir(tmp_path / "out") as tmp:
        write_real_outputs(tmp, config, res, {"data": 0.0})
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["schema"] == "neuros-cv/bench-real/1" and doc["config"]["em_downsample"] == 4
    assert (tmp_path / "out" / "segmentation.csv").read_text().count("\n") == 1 + 2 * 3
    assert np.isfinite(doc["segmentation"][0]["f1"])


def test_config_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="overlap"):
        RealSuiteConfig(em_train=(0, 1), em_test=(1, 2))
    with pytest.raises(ValueError, match="unknown dataset"):
        RealSuiteConfig(datasets=("ct",))
    with pytest.raises(ValueError, match=r"real suite config: unknown key\(s\) datsets; known: .*datasets"):
        RealSuiteConfig.from_dict({"datsets": ["em"]})
    out = tmp_path / "r"
    assert main(["bench", "--suite", "real", "--backbones", "vit-smal", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'vit-small'" in err[0] and not out.exists()
    assert main(["bench", "--suite", "real", "--weights", "random", "--out", str(out)]) == 2
    assert "--weights applies to --suite report" in capsys.readouterr().err and not out.exists()
    (tmp_path / "bad.toml").write_text('datasets = ["ct"]\n')
    assert main(["bench", "--suite", "real", "--config", str(tmp_path / "bad.toml"), "--out", str(out)]) == 2
    assert "unknown dataset 'ct'" in capsys.readouterr().err and not out.exists()


def test_cli_end_to_end_from_a_toml_config(sstem_dir, tmp_path, capsys):
    cfg = tmp_path / "real.toml"
    cfg.write_text('datasets = ["nuclei"]\nnuclei_tile = 256\nprotocols = false\ncrossmodal = false\n'
                   'n_boot = 100\npixel = false\n')  # the pixel rows' CLI run: tests/test_pixel_suite.py
    out = tmp_path / "out"
    assert main(["bench", "--suite", "real", "--config", str(cfg), "--backbones", "filterbank",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Filterbank [none (classical filters)]" in printed and "nucleus" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["backbones"] == ["filterbank"] and doc["config"]["nuclei_tile"] == 256
    assert sorted(p.name for p in out.iterdir()) == [".neuros-cv-output.json", "crossmodal.csv", "report.html",
                                                      "results.json", "segmentation.csv", "tables.md"]
    assert "nucleus" in (out / "report.html").read_text(encoding="utf-8")  # the records, as generic tables
