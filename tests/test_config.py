"""Suites as TOML files: built-in suites load, bad keys and values are rejected by name, the CLI uses them."""

from __future__ import annotations

import json

import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.experiments.suite import SuiteConfig, builtin_suites, load_suite


def test_builtin_suites_are_toml_files_and_report_is_the_default():
    assert {"report", "quick"} <= set(builtin_suites())
    # The bench's default suite is the report's configuration (the file and the dataclass cannot drift apart).
    assert load_suite("report") == SuiteConfig()
    assert load_suite() == load_suite("report")
    quick = load_suite("quick")
    assert quick.backbones == ("cnx-tiny",) and quick.weights == "placeholder"


def test_a_suite_file_with_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nbackbones = ["vit-small", "filterbank"]\nweights = "random"\nn_train = 2\n'
        'shifts = [[1, 0]]\n[backbone_options.vit-small]\nweights = "placeholder"\n'
    )
    cfg = load_suite(path, seed=4)
    assert cfg.backbones == ("vit-small", "filterbank") and cfg.n_train == 2 and cfg.seed == 4
    assert cfg.shifts == ((1, 0),) and cfg.backbone_options == {"vit-small": {"weights": "placeholder"}}
    # The resolved config round-trips through the form stored in results.json.
    assert SuiteConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('backbones = ["vit-lrage"]', ["backbones", "vit-large"]),
        ("n_test = -1", ["n_test", ">= 1", "-1"]),
        ("n_train = 2.5", ["n_train", "integer"]),
        ("sizes = 64", ["unknown key", "sizes"]),
        ('modalities = ["ct"]', ["modalities", "ct"]),
        ('protocol = "best"', ["protocol", "best"]),
        ('weights = "imagenet"', ["weights", "imagenet"]),
        ("shifts = [[9, 0]]", ["shifts", "does not fit"]),
        ("shifts = 3", ["shifts", "pairs"]),
        ("backbones = 7", ["backbones", "list"]),
        ("seed = true", ["seed", "integer"]),
        ('[backbone_options.vit-small]\nweights = "random"', ["backbone_options", "vit-small"]),
        ("n_train = ", ["not valid TOML", "line 1"]),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, text, names):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as err:
        load_suite(path)
    msg = str(err.value)
    assert "\n" not in msg and "bad.toml" in msg
    for n in names:
        assert n in msg


def test_unknown_builtin_and_missing_file():
    with pytest.raises(ValueError, match=r"unknown built-in suite 'reprot'.*report"):
        load_suite("reprot")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.toml"):
        load_suite("nowhere.toml")


def test_bench_cli_rejects_a_bad_config_in_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("n_test = -1\n")
    out = tmp_path / "out"
    assert main(["bench", "--config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuros-cv bench: error:") and "n_test" in err and len(err.splitlines()) == 1
    assert not out.exists()
    bad.write_text('backbones = ["nope-net"]\n')
    assert main(["bench", "--config", str(bad), "--out", str(out)]) == 2
    assert "backbones" in capsys.readouterr().err
    assert not out.exists()


def test_bench_stores_the_resolved_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(
        'name = "tiny"\nbackbones = ["cnx-tiny"]\nweights = "placeholder"\nmodalities = ["em"]\n'
        "n_train = 2\nn_test = 1\nsize = 48\nshifts = [[1, 1]]\n"
    )
    out = tmp_path / "out"
    assert main(["bench", "--config", str(path), "--seed", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"] == load_suite(path, seed=2).to_dict()
    assert doc["config"]["seed"] == 2 and doc["config"]["size"] == 48  # file value and CLI override
    assert [r["modality"] for r in doc["results"]["segmentation"]] == ["em"]
