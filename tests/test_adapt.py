"""`neuros-cv adapt`: self-distillation of a tiny real DINOv3 ViT on real image files, a few steps each.

Losses finite and falling on a fixed batch, the teacher an exact EMA of the student, bit-identical resume after an
interruption, the exported folder loading through every weights path (Python, `features`, `segment train`) and
naming itself as adapted weights, LoRA merged and kept separately, lazy readers, one-line input errors.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import torch

from neuros.plugins.cv.adapt import AdaptConfig, Adapter, MultiCropSampler, adapt, open_images
from neuros.plugins.cv.adapt.api import build_adapter
from neuros.plugins.cv.adapt.train import latest_checkpoint
from neuros.plugins.cv.backbones import get_backbone
from neuros.plugins.cv.cli import main as cli
from tiny_models import make_tiny_vit

TINY = dict(batch_size=2, global_size=32, local_size=16, n_local=2, out_dim=32, head_hidden=32, head_bottleneck=8)


def _images(folder, n=3, size=96, seed=0):
    """Real TIFF files of smooth random texture (uint8), one a 3-slice stack."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = gaussian_filter(rng.random((3 if i == 0 else 1, size, size)), (0, 3, 3))
        a = ((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)
        tifffile.imwrite(folder / f"im{i}.tif", a if i == 0 else a[0])
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    return {"images": _images(root / "images"), "base": make_tiny_vit(root / "base", seed=1), "root": root}


def _adapter(data, steps=4, **kw):
    cfg = AdaptConfig(steps=steps, **{**TINY, **kw})
    return build_adapter(str(data["base"]), f"pretrained:{data['base']}", open_images([data["images"]]), cfg)[0]


def test_loss_finite_and_falling_on_a_fixed_batch(data):
    a = _adapter(data, steps=40, lr=3e-3, warmup=0.0, koleo_weight=0.0, mask_prob=1.0)
    views = a.sampler.sample(0)
    losses = [a.train_step(views)["loss"] for _ in range(8)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses


def test_sinkhorn_targets_share_the_prototypes_and_resist_a_collapsed_teacher():
    from neuros.plugins.cv.adapt.losses import centered_targets, sinkhorn_targets

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 64, generator=g) * 0.3
    q = sinkhorn_targets(logits, 0.04, n_iter=20)
    torch.testing.assert_close(q.sum(1), torch.ones(16))  # each sample: a distribution
    torch.testing.assert_close(q.sum(0), torch.full((64,), 16 / 64), rtol=0.05, atol=0.0)  # ≈ equal share
    # Sinkhorn-Knopp only rescales rows and columns of exp(t / temp): log q − t / temp = a_i + b_j exactly
    r = torch.log(q) - logits / 0.04
    r = r - r.mean(0, keepdim=True) - r.mean(1, keepdim=True) + r.mean()
    assert float(r.abs().max()) < 1e-3
    # a collapsed teacher (every sample on one prototype): the running centre starts from zero and keeps the
    # one-hot target; Sinkhorn-Knopp spreads it, so the student is not taught the collapse
    collapsed = torch.zeros(16, 64)
    collapsed[:, 0] = 1.0
    assert centered_targets(collapsed, torch.zeros(1, 64), 0.04)[:, 0].min() > 0.99
    assert sinkhorn_targets(collapsed, 0.04).max() < 0.1
    assert sinkhorn_targets(torch.zeros(0, 64), 0.04).shape == (0, 64)  # a step with no masked patch


def test_sinkhorn_centering_trains_and_is_validated(data):
    a = _adapter(data, steps=40, lr=3e-3, warmup=0.0, koleo_weight=0.0, mask_prob=1.0, centering="sinkhorn")
    views = a.sampler.sample(0)
    losses = [a.train_step(views)["loss"] for _ in range(6)]
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0], losses
    with pytest.raises(ValueError, match="centering must be one of center, sinkhorn"):
        AdaptConfig(centering="softmax")
    from neuros.plugins.cv.cli import build_parser
    from neuros.plugins.cv.cli.adapt import _config

    assert AdaptConfig().centering == "sinkhorn"  # the default (measured: docs/benchmarks.md, bench_adapt.py)
    assert _config(build_parser().parse_args(["adapt", "in/", "--out", "out/"])).centering == "sinkhorn"
    parsed = build_parser().parse_args(["adapt", "in/", "--out", "out/", "--centering", "center"])
    assert _config(parsed).centering == "center"  # the CLI flag reaches the run's config


def test_teacher_is_the_ema_of_the_student(data):
    a = _adapter(data)
    t0 = {k: v.clone() for k, v in a.teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in a.student.state_dict().items()}
    assert all(torch.equal(t0[k], s0[k]) for k in t0)  # the teacher starts as the student
    a.train_step()
    m = a.momentum_at(0)
    s1, t1 = a.student.state_dict(), a.teacher.state_dict()
    trained = [k for k, p in a.student.named_parameters() if p.requires_grad]
    moved = 0
    for k in trained:
        torch.testing.assert_close(t1[k], m * t0[k] + (1 - m) * s1[k], rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(t1[k], s1[k]))
    assert moved > len(trained) // 2  # teacher ≠ student: the check above is not trivially true
    assert 0.9 < m < 1


def test_resume_after_an_interrupt_gives_identical_weights(data, tmp_path):
    whole = _adapter(data, steps=4)
    whole.run(tmp_path / "a", checkpoint_every=0)
    first = _adapter(data, steps=4)
    first.run(tmp_path / "b", checkpoint_every=1, stop_after=2)  # "interrupted" after step 2
    assert latest_checkpoint(tmp_path / "b").name == "step-00000002.pt"
    del first
    again = _adapter(data, steps=4)  # a fresh process would build everything anew
    torch.manual_seed(1234)  # global RNG disturbed in between: restored from the checkpoint
    assert again.resume(tmp_path / "b") is not None and again.step == 2
    again.run(tmp_path / "b", checkpoint_every=1)
    for part in ("student", "teacher"):
        sa, sb = getattr(whole, part).state_dict(), getattr(again, part).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in again.history]
    torch.testing.assert_close(whole.center, again.center, rtol=0, atol=0)


def test_resume_refuses_other_settings(data, tmp_path):
    _adapter(data, steps=2).run(tmp_path / "c", checkpoint_every=1)
    with pytest.raises(ValueError, match="batch_size=2 but this run has batch_size=3"):
        _adapter(data, steps=2, batch_size=3).resume(tmp_path / "c")


@pytest.fixture(scope="module")
def adapted(data):
    out = data["root"] / "adapted"
    adapt([data["images"]], out, str(data["base"]), f"pretrained:{data['base']}", AdaptConfig(steps=3, **TINY),
          checkpoint_every=2)
    return out


def test_adapted_folder_records_its_provenance(adapted, data):
    doc = json.loads((adapted / "adapt.json").read_text())
    assert doc["base_weights"] == f"pretrained:{data['base']}" and doc["steps"] == 3 and doc["seed"] == 0
    assert len(doc["losses"]) == 3 and all(np.isfinite(h["loss"]) for h in doc["losses"])
    assert doc["data"]["n_slices"] == 5 and doc["versions"]["torch"] == torch.__version__
    assert (adapted / "config.json").is_file() and (adapted / "model.safetensors").is_file()


def test_adapted_folder_loads_through_the_registry_and_is_named_adapted(adapted, data):
    bb = get_backbone("vit-small", weights=f"pretrained:{adapted}")
    d = bb.describe()
    assert d["weights"] == f"pretrained:{adapted}" and d["adapted"]["adapted"] is True
    assert "adapted weights" in d["note"] and d["adapted"]["base_weights"] == f"pretrained:{data['base']}"
    img = tifffile.imread(data["images"] / "im1.tif")
    fm = bb.extract(img)
    assert fm.meta["adapted"]["steps"] == 3
    # the suites and volume workers build backbones from spec strings: the same folder, the same record
    from neuros.plugins.cv.backbones import BackboneSpec

    spec = BackboneSpec.parse(f"vit-small@pretrained:{adapted}[stride=8]")
    assert spec.build().describe()["adapted"]["provenance"] == str(adapted / "adapt.json")
    base = get_backbone("vit-small", weights=f"pretrained:{data['base']}")
    assert "adapted" not in base.describe()
    assert not np.allclose(base.extract(img).features, fm.features)  # the weights did change


def test_adapted_folder_through_the_cli(adapted, data, tmp_path):
    assert cli(["features", str(data["images"] / "im1.tif"), "--backbone", "vit-small", "--weights",
                f"pretrained:{adapted}", "--out", str(tmp_path / "f")]) == 0
    doc = json.loads((tmp_path / "f" / "features.json").read_text())
    assert doc["backbone"]["adapted"]["adapted"] is True and doc["images"][0]["meta"]["adapted"]["steps"] == 3
    mask = (tifffile.imread(data["images"] / "im1.tif") > 128).astype(np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", mask)
    assert cli(["segment", "train", "--images", str(data["images"] / "im1.tif"), "--masks", str(tmp_path / "m.tif"),
                "--backbone", "vit-small", "--weights", f"pretrained:{adapted}", "--out", str(tmp_path / "h")]) == 0
    head = json.loads((tmp_path / "h" / "head.json").read_text())
    assert head["weights"] == f"pretrained:{adapted}" and head["adapted"]["adapted"] is True


@pytest.mark.parametrize("train", ["last-k", "lora"])
def test_partial_training_keeps_the_rest_fixed(data, train):
    a = _adapter(data, steps=2, train=train, last_k=1)
    before = {k: v.clone() for k, v in a.student.backbone.state_dict().items()}
    a.train_step()
    after = a.student.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if train == "last-k":
        assert changed and all(k.startswith(("model.layer.1.", "norm.", "embeddings.mask_token")) for k in changed)
    else:
        assert changed and all("lora_" in k or "mask_token" in k for k in changed)


def test_lora_merged_and_separate_both_load(data, tmp_path):
    cfg = AdaptConfig(steps=2, train="lora", lora_rank=2, lr=0.05, warmup=0.0, **TINY)
    img = tifffile.imread(data["images"] / "im1.tif")
    feats = {}
    for save in ("merged", "separate"):
        out = adapt([data["images"]], tmp_path / save, str(data["base"]), f"pretrained:{data['base']}", cfg,
                    checkpoint_dir=tmp_path / "ckpt", resume=True, lora_save=save)
        if save == "separate":
            assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        else:
            assert not (out / "adapter_config.json").exists()
        bb = get_backbone("vit-small", weights=f"pretrained:{out}")
        assert bb.describe()["adapted"]["train"] == "lora"
        feats[save] = bb.extract(img).features
    base = get_backbone("vit-small", weights=f"pretrained:{data['base']}").extract(img).features
    np.testing.assert_allclose(feats["merged"], feats["separate"], atol=1e-5)
    assert np.abs(feats["merged"] - base).max() > 1e-3


def test_readers_are_lazy_and_take_every_format(tmp_path):
    import nibabel as nib
    import zarr

    vol = (np.random.default_rng(0).random((20, 40, 30)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", vol)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    z = zarr.open(str(tmp_path / "vol.zarr"), mode="w", shape=vol.shape, dtype=vol.dtype, chunks=(4, 40, 30))
    z[:] = vol
    t, n, zz = (open_images([tmp_path / f], axis=ax)[0] for f, ax in
                (("stack.tif", None), ("vol.nii.gz", 2), ("vol.zarr", 1)))
    assert isinstance(t.array, np.memmap)  # the TIFF stack is memory-mapped, not read
    assert (t.n_slices, t.shape) == (20, (40, 30)) and (n.n_slices, n.shape) == (30, (20, 40))
    assert (zz.n_slices, zz.shape) == (40, (20, 30))
    w = zz.read(5, slice(2, 10), slice(0, 8))
    assert w.shape == (8, 8) and 0 <= w.min() and w.max() <= 1
    np.testing.assert_allclose(w, np.clip((vol[2:10, 5, :8] - zz.lo) / (zz.hi - zz.lo), 0, 1), rtol=1e-6)
    s = MultiCropSampler([t, n, zz], batch_size=3, global_size=16, local_size=8, n_local=2, seed=3)
    v, again = s.sample(7), s.sample(7)
    assert v.globals_.shape == (6, 1, 16, 16) and v.locals_.shape == (6, 1, 8, 8)
    assert torch.equal(v.globals_, again.globals_) and not torch.equal(v.globals_, s.sample(8).globals_)


def test_bad_inputs_are_one_line_errors(data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "bad.tif").write_bytes(b"\x00garbage" * 10)
    base = ["--backbone", str(data["base"]), "--weights", f"pretrained:{data['base']}", "--steps", "1",
            "--batch-size", "1", "--global-size", "32", "--local-size", "16", "--n-local", "1", "--out-dim", "16"]
    for inp, text in ((empty, "holds no image file"), (tmp_path / "notes.txt", "unsupported file type"),
                      (tmp_path / "bad.tif", "not a valid TIFF")):
        assert cli(["adapt", str(inp), "--out", str(tmp_path / "o"), *base]) == 2
        err = capsys.readouterr().err.strip()
        assert text in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    assert cli(["adapt", str(data["images"]), "--out", str(foreign), *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is not empty" in err and "\n" not in err
    assert cli(["adapt", str(data["images"]), "--out", str(foreign), *base, "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (foreign / "thesis.docx").read_text() == "precious" and len(list(foreign.iterdir())) == 1
    (tmp_path / "afile").write_text("x")  # an out path that cannot be a folder
    assert cli(["adapt", str(data["images"]), "--out", str(tmp_path / "afile" / "out"), *base]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in err and "\n" not in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions are not enforced here (running as root)")
        assert cli(["adapt", str(data["images"]), "--out", str(ro / "out"), *base]) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot write" in err and "\n" not in err
    finally:
        ro.chmod(0o700)


def test_cli_adapt_writes_and_resumes(data, tmp_path, capsys):
    args = ["adapt", str(data["images"]), "--backbone", str(data["base"]), "--weights", f"pretrained:{data['base']}",
            "--steps", "3", "--batch-size", "1", "--global-size", "32", "--local-size", "16", "--n-local", "1",
            "--out-dim", "16", "--checkpoint-every", "1", "--out", str(tmp_path / "ad")]
    assert cli(args) == 0
    assert json.loads((tmp_path / "ad" / "adapt.json").read_text())["steps"] == 3
    assert "use them with --weights pretrained:" in capsys.readouterr().out
    # a second run finds the finished checkpoint and only re-exports (no step repeated)
    assert cli([*args, "--overwrite"]) == 0
    assert "resumed at step 3" in capsys.readouterr().err


def test_convnext_and_placeholder_are_refused(data, tiny_convnext_dir):
    src = open_images([data["images"]])
    with pytest.raises(ValueError, match="ConvNeXt"):
        build_adapter(str(tiny_convnext_dir), f"pretrained:{tiny_convnext_dir}", src, AdaptConfig(**TINY))
    with pytest.raises(ValueError, match="runs no network"):
        build_adapter("vit-small", "placeholder", src, AdaptConfig(**TINY))
    assert isinstance(Adapter, type)
