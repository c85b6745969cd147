"""Library errors name Python arguments (``overwrite=True``, ``component=``); the same failure through
``neuros-cv`` names the command's flags (``--overwrite``, ``--component``): ``cli.main`` rewrites them."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.cli import build_parser, cli_message, main
from neuros.plugins.cv.output import check_output_dir, check_output_file
from neuros.plugins.cv.scale.blocks import check_geometry
from neuros.plugins.cv.scale.cluster import dask_client, probe_scheduler
from neuros.plugins.cv.scale.ome import VoxelGeometry
from neuros.plugins.cv.scale.resume import check_volume_output
from neuros.plugins.cv.scale.zarr_io import open_volume


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _library(call, *args, **kw) -> str:
    with pytest.raises((ValueError, OSError)) as e:
        call(*args, **kw)
    msg = str(e.value)
    assert "--" not in msg, msg  # a Python caller is never told about flags
    return msg


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def _as_cli(parser, argv: list[str], message: str) -> str:
    return cli_message(message, parser, parser.parse_args(argv))


TRAIN = ["segment", "train", "--images", "i.png", "--masks", "m.png", "--out", "h"]


@pytest.mark.parametrize(("argv", "library", "cli"), [
    (TRAIN, "out=/x exists; pass overwrite=True to replace it", "--out /x exists; pass --overwrite to replace it"),
    (TRAIN, "give threshold= or classes=, not both", "give --threshold or --classes, not both"),
    (TRAIN, "(more than max_classes= 16)", "(more than --max-classes 16)"),
    (TRAIN, "use label_rule='fraction'", "use --label-rule 'fraction'"),
    (TRAIN, "pass balanced=False or balanced=True", "pass --no-balanced or --balanced"),
    # Not flags of this command, or not standing alone: left as they are.
    (TRAIN, "pass component= or order=1", "pass component= or order=1"),
    (TRAIN, "trained on vit-small@random(seed=3)[l2=true,scale=2]",
     "trained on vit-small@random(seed=3)[l2=true,scale=2]"),
    (TRAIN, "NEUROS_CV_WEIGHTS=/w was searched; overwrite=False", "NEUROS_CV_WEIGHTS=/w was searched; overwrite=False"),
    (["volume", "features", "in.zarr", "--out", "o.zarr"], "pass block=) or a smaller halo=; n_workers= must be >= 1",
     "pass --block) or a smaller --halo; --workers must be >= 1"),
    (["register", "a.png", "b.png"], "no shift within max_shift=8 keeps min_overlap=0.5; download=True",
     "no shift within --max-shift 8 keeps --min-overlap 0.5; --download"),
])
def test_cli_message_names_the_flags_of_the_command_that_ran(parser, argv, library, cli):
    assert _as_cli(parser, argv, library) == cli


def test_output_folder_and_file_errors(tmp_path, capsys):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "thesis.txt").write_text("mine")
    assert _library(check_output_dir, tmp_path / "res").startswith(
        f"out={tmp_path / 'res'} exists and is not empty; pass overwrite=True")
    target = tmp_path / "nb.ipynb"
    target.write_text("keep me")
    assert _library(check_output_file, target) == f"out={target} exists; pass overwrite=True to replace it"
    assert main(["notebook", "--config", "quick", "--out", str(target)]) == 2
    assert _error(capsys) == f"neuros-cv notebook: error: --out {target} exists; pass --overwrite to replace it"
    assert target.read_text() == "keep me"


def test_volume_errors_name_arguments_in_python_and_flags_on_the_command_line(tmp_path, capsys):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for name in "ab":
        group.create_array(name, shape=(1, 32, 32), dtype="uint8")
    vol = zarr.create_array(str(tmp_path / "v.zarr"), shape=(2, 64, 64), chunks=(1, 64, 64), dtype="uint8")
    vol[:] = np.random.default_rng(0).integers(0, 255, (2, 64, 64))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    out, foreign = str(tmp_path / "o.zarr"), tmp_path / "foreign"
    cases = [
        (lambda: open_volume(tmp_path / "g.zarr"), ["g.zarr"], "name one with component=", "name one with --component"),
        (lambda: check_geometry((64, 64), (16, 16), 32), ["v.zarr", "--block", "16,16", "--halo", "32"],
         "(rechunk the zarr or pass block=) or a smaller halo=",
         "(rechunk the zarr or pass --block) or a smaller --halo"),
        (lambda: probe_scheduler("nonsense"), ["v.zarr", "--scheduler", "nonsense"],
         "scheduler='nonsense' is not an address", "--scheduler 'nonsense' is not an address"),
        (lambda: check_volume_output(foreign), ["v.zarr", "--out", str(foreign)],
         f"out={foreign} holds data that neuros-cv did not write", f"--out {foreign} holds data that neuros-cv"),
        (lambda: VoxelGeometry().with_voxel_size((50, 4, 4)), ["v.zarr", "--voxel-size", "50", "4", "4"],
         "voxel_size= needs voxel_unit=", "--voxel-size needs --voxel-unit"),
    ]
    for call, args, in_python, on_cli in cases:
        assert in_python in _library(call)
        argv = ["volume", "features", str(tmp_path / args[0]), "--out", out, "--backbone", "filterbank", *args[1:]]
        assert main(argv) == 2
        err = _error(capsys)
        assert err.startswith("neuros-cv volume: error: ") and on_cli in err, err
    assert "n_workers= must be >= 1" in _library(lambda: dask_client(None, n_workers=0).__enter__())
    assert main(["volume", "features", str(tmp_path / "v.zarr"), "--out", out, "--backbone", "filterbank",
                 "--workers", "0"]) == 2
    assert _error(capsys) == "neuros-cv volume: error: --workers must be >= 1, got 0"
    assert not (tmp_path / "o.zarr").exists()


def test_missing_weights_name_download_in_python_and_the_flags_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("NEUROS_CV_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    msg = _library(get_backbone, "vit-small", weights="pretrained")
    assert "fetch it: download=True)" in msg and "pass weights='pretrained:/path/to/folder'" in msg
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.zeros((32, 32), np.uint8))
    assert main(["features", str(tmp_path / "a.png"), "--backbone", "vit-small", "--weights", "pretrained",
                 "--out", str(tmp_path / "f")]) == 2
    err = _error(capsys)
    assert "fetch it: --download)" in err and "pass --weights 'pretrained:/path/to/folder'" in err
    assert "download=True" not in err
