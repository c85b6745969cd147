"""``BackboneSpec``: one identity for a backbone's features, from training to ``segment predict`` and
``volume segment``.

Heads are trained in-process on a tiny random DINOv3 ViT (a real transformers network saved with
``save_pretrained``, see tests/tiny_models.py) with seeded random weights or ``scale=2``; the CLI, which
rebuilds the backbone from ``head.json`` alone, must give the same masks. Maps made with other options are
refused with the field named; heads saved before specs existed still load and predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr

from neuros.plugins.cv.backbones import BackboneSpec, DINOv3Backbone, get_backbone
from neuros.plugins.cv.backbones.spec import option_defaults
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.datasets.io import read_array
from neuros.plugins.cv.datasets.synthetic import make_dataset
from neuros.plugins.cv.experiments.pipeline import FeatureStore
from neuros.plugins.cv.experiments.real_suite import build_backbone as real_build
from neuros.plugins.cv.experiments.suite import SuiteConfig
from neuros.plugins.cv.experiments.suite import build_backbone as suite_build
from neuros.plugins.cv.heads import load_head, make_head
from neuros.plugins.cv.scale.features import scale_intensity
from neuros.plugins.cv.scale.segment import section_probabilities

SIZE = 64


# ---------------------------------------------------------------------------------------------- string form
@pytest.mark.parametrize("text", [
    "vit-small",
    "vit-small@random(seed=3)",
    "vit-small@random(seed=3)[l2=true,scale=2]",
    "vit-small@placeholder[scale=0.5]",
    "vit-base@random(seed=0)[layer_reduce=mean,layers=[-4,-1],norm=false]",
    "cnx-tiny@random(seed=1)[channels=[0,1,2],scaling=percentile,stage=1]",
    "filterbank[pool=mean,sigmas=[1,2.5]]",
    'vit-small@pretrained:/data/w[1]/ckpt[scaling="a, b]"]',
    "/models/dinov3 [copy]@pretrained",
])
def test_parse_is_the_inverse_of_str(text):
    spec = BackboneSpec.parse(text)
    assert str(spec) == text
    assert BackboneSpec.parse(str(spec)) == spec
    assert BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(BackboneSpec.parse(text)) == hash(spec)


def test_canonical_form_sorts_options_and_reads_json_values():
    spec = BackboneSpec.parse("vit-small@random(seed=3)[scale=2.0, l2=true, layers=[-1]]")
    assert spec.name == "vit-small" and spec.weights == "random(seed=3)"
    assert spec.options_dict == {"l2": True, "layers": (-1,), "scale": 2.0}
    assert str(spec) == "vit-small@random(seed=3)[l2=true,layers=[-1],scale=2]"
    assert BackboneSpec("filterbank").weights is None and str(BackboneSpec("filterbank")) == "filterbank"
    # Options left at their defaults change nothing, written or not.
    plain = BackboneSpec.parse("vit-small@random(seed=3)")
    assert plain.difference(BackboneSpec.parse("vit-small@random(seed=3)[norm=true,scale=1]")) is None
    assert plain.with_options(norm=True, scale=1.0) == plain


@pytest.mark.parametrize("text, words", [
    ("vit-small@", ["nothing after '@'"]),
    ("vit-small@random[scale=]", ["missing value"]),
    ("vit-small@random[scale=2,scale=3]", ["'scale' given twice"]),
    ("vit-small@random[scale=2,]", ["trailing ','"]),
    ("vit-small@random[a=b c]", ["expected ','"]),
])
def test_bad_spec_strings_fail_in_one_line(text, words):
    with pytest.raises(ValueError) as e:
        BackboneSpec.parse(text)
    msg = str(e.value)
    assert "\n" not in msg and text in msg and all(w in msg for w in words)


def test_build_refuses_what_does_not_belong():
    with pytest.raises(ValueError, match="takes no weights"):
        BackboneSpec.parse("filterbank@random").build()
    with pytest.raises(ValueError, match=r"has no option.*bogus"):
        BackboneSpec.parse("vit-small@placeholder[bogus=1]").build()
    with pytest.raises(ValueError, match="scale belong"):
        BackboneSpec.parse("vit-small@placeholder").build(scale=2)
    assert BackboneSpec.parse("vit-small@placeholder").build(batch_size=3).batch_size == 3


# ---------------------------------------------------------------------------------------------- backbones
def test_backbones_and_their_maps_carry_their_spec(tiny_vit_dir):
    image = np.random.default_rng(0).random((SIZE, SIZE)).astype(np.float32)
    bb = DINOv3Backbone(str(tiny_vit_dir), weights="random(seed=3)", scale=2, l2=True, batch_size=2, tile=None)
    assert str(bb.spec) == f"{tiny_vit_dir}@random(seed=3)[l2=true,scale=2]"
    fm = bb.extract(image)
    assert fm.spec == bb.spec and fm.stride == 8
    assert bb.describe()["spec"] == str(bb.spec)
    rebuilt = bb.spec.build()
    np.testing.assert_array_equal(rebuilt.extract(image).features, fm.features)
    # Other words for the same features give the same spec: the last of 2 blocks, the variant's own statistics.
    same = DINOv3Backbone(str(tiny_vit_dir), weights="random(seed=3)", scale=2, l2=True, layers=[1],
                          normalization="lvd")
    assert same.spec == bb.spec
    np.testing.assert_allclose(same.extract(image).features, fm.features, rtol=0, atol=1e-6)
    # Placeholder: only the pixels' preparation matters (norm/l2/layers do nothing there).
    assert str(get_backbone("vit-small", weights="placeholder", l2=True, norm=False).spec) == "vit-small@placeholder"
    assert str(get_backbone("filterbank", pool="mean").spec) == "filterbank[pool=mean]"
    assert str(get_backbone("cnx-tiny", weights="random", stage=3, norm=False).spec) == \
        "cnx-tiny@random(seed=0)[norm=false,stage=3]"
    assert set(option_defaults("vit-small")) >= {"scale", "layers", "layer_reduce", "norm", "l2", "stage"}


def test_feature_store_keeps_features_apart_when_options_differ(tiny_vit_dir):
    images = [np.random.default_rng(1).random((SIZE, SIZE)).astype(np.float32)]
    store = FeatureStore()
    a = store.get(DINOv3Backbone(str(tiny_vit_dir), weights="random"), "k", images)
    b = store.get(DINOv3Backbone(str(tiny_vit_dir), weights="random", scale=2), "k", images)
    assert a[0].grid_shape == (4, 4) and b[0].grid_shape == (8, 8)


def test_suites_build_through_the_spec(tiny_vit_dir):
    cfg = SuiteConfig(backbones=(str(tiny_vit_dir), "filterbank"), weights="random(seed=3)",
                      backbone_options={"filterbank": {"pool": "mean"}})
    assert str(suite_build(cfg, str(tiny_vit_dir)).spec) == f"{tiny_vit_dir}@random(seed=3)"
    assert str(suite_build(cfg, "filterbank").spec) == "filterbank[pool=mean]"
    with pytest.raises(ValueError, match="weights"):
        SuiteConfig(weights="imagenet")
    spec = f"{tiny_vit_dir}@random(seed=3)[scale=2]"
    assert str(real_build(spec).spec) == spec


# ---------------------------------------------------------------------------------------------- heads
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    images, masks = make_dataset("em", 3, SIZE, seed=7, protocol="random")
    u8 = (np.asarray(images) * 255).astype(np.uint8)
    iio.imwrite(d / "test.png", u8[2])
    vol = zarr.create_array(str(d / "vol.zarr"), shape=(2, SIZE, SIZE), chunks=(1, SIZE, SIZE), dtype="uint8")
    vol[...] = u8[1:]
    return d, list(u8[:2]), [(np.asarray(m) > 0).astype(np.uint8) for m in masks[:2]], u8


def _train(d: Path, images, masks, name: str, bb) -> Path:
    head = make_head("logistic", class_weight="balanced", label_rule="fraction", threshold=0.2)
    head.fit(bb.extract_batch(images), masks)
    return head.save(d / name, overwrite=True)


@pytest.fixture(scope="module")
def heads(data, tiny_vit_dir):
    d, images, masks, _ = data
    return {
        "seed3": _train(d, images, masks, "head-seed3", DINOv3Backbone(str(tiny_vit_dir), weights="random(seed=3)")),
        "scale2": _train(d, images, masks, "head-scale2",
                         DINOv3Backbone(str(tiny_vit_dir), weights="random", scale=2)),
    }


def test_head_json_records_the_spec(heads, tiny_vit_dir):
    meta = json.loads((heads["scale2"] / "head.json").read_text())
    assert meta["backbone_spec"]["string"] == f"{tiny_vit_dir}@random(seed=0)[scale=2]"
    assert "backbone_options" not in meta
    assert load_head(heads["scale2"]).backbone_spec_ == BackboneSpec.parse(meta["backbone_spec"]["string"])


@pytest.mark.parametrize("which, options, line", [
    ("scale2", {"weights": "random"}, "features were extracted with scale=1 but the head was trained with scale=2"),
    ("seed3", {"weights": "random"}, "weights=random(seed=0) but the head was trained with weights=random(seed=3)"),
    ("seed3", {"weights": "random(seed=3)", "l2": True}, "l2=true but the head was trained with l2=false"),
    ("seed3", {"weights": "random(seed=3)", "norm": False}, "norm=false but the head was trained with norm=true"),
    ("seed3", {"weights": "random(seed=3)", "layers": [0]}, "layers=[-2] but the head was trained with layers=null"),
    ("seed3", {"weights": "random(seed=3)", "scaling": "percentile"}, "scaling=percentile but"),
])
def test_maps_made_otherwise_are_refused_naming_the_field(heads, data, tiny_vit_dir, which, options, line):
    _, images, _, _ = data
    head = load_head(heads[which])
    fm = DINOv3Backbone(str(tiny_vit_dir), **options).extract(images[0])
    with pytest.raises(ValueError) as e:
        head.predict(fm)
    assert line in str(e.value) and "\n" not in str(e.value)


def _in_process(head_dir: Path, image: np.ndarray) -> np.ndarray:
    head = load_head(head_dir)
    return head.predict(head.backbone_spec_.build().extract(image))


@pytest.mark.parametrize("which", ["seed3", "scale2"])
def test_segment_predict_rebuilds_the_heads_backbone(heads, data, tmp_path, which):
    d = data[0]
    out = tmp_path / "masks"
    assert main(["segment", "predict", "--head", str(heads[which]), str(d / "test.png"), "--out", str(out)]) == 0
    want = _in_process(heads[which], read_array(d / "test.png"))
    assert len(np.unique(want)) == 2  # a real two-class mask, not a constant
    np.testing.assert_array_equal(read_array(out / "test.png"), want)


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("which", ["seed3", "scale2"])
def test_volume_segment_rebuilds_the_heads_backbone(heads, data, scheduler, tmp_path, which):
    d, _, _, u8 = data
    out = tmp_path / "seg.zarr"
    # One block per section: blocks then equal whole sections exactly, even for a ViT.
    assert main(["volume", "segment", str(d / "vol.zarr"), "--head", str(heads[which]), "--out", str(out),
                 "--scheduler", scheduler, "--block", str(SIZE), "--halo", "0"]) == 0
    head = load_head(heads[which])
    bb = head.backbone_spec_.build()
    want = np.stack([head.classes_[section_probabilities(s, bb, head, 0.0, 255.0).argmax(axis=2)] for s in u8[1:]])
    np.testing.assert_array_equal(want[0], head.predict(bb.extract(scale_intensity(u8[1], 0.0, 255.0))))
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][...], want)


# ---------------------------------------------------------------------------------------------- old heads
def _old_format(src: Path, dst: Path, requested_weights: str | None) -> Path:
    """``src`` rewritten as neuros-cv wrote heads before specs: backbone, weights, backbone_options."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "head.json").read_text())
    del meta["backbone_spec"]
    meta["backbone_options"] = {"weights": requested_weights} if requested_weights else {}
    (dst / "head.json").write_text(json.dumps(meta))
    return dst


def test_old_format_heads_load_and_predict(heads, data, tmp_path, tiny_vit_dir):
    d, images, masks, _ = data
    old_seed = _old_format(heads["seed3"], tmp_path / "old-seed3", None)  # fitted in-process: no options saved
    old_scale = _old_format(heads["scale2"], tmp_path / "old-scale2", "random")  # as `segment train` wrote them
    placeholder = _train(d, images, masks, "head-placeholder", get_backbone("vit-small", weights="placeholder"))
    old_ph = _old_format(placeholder, tmp_path / "old-placeholder", "placeholder")
    assert str(load_head(old_seed).backbone_spec_) == f"{tiny_vit_dir}@random(seed=3)"
    assert str(load_head(old_scale).backbone_spec_) == f"{tiny_vit_dir}@random(seed=0)[scale=2]"
    assert str(load_head(old_ph).backbone_spec_) == "vit-small@placeholder"
    image = read_array(d / "test.png")
    for old, new in ((old_seed, heads["seed3"]), (old_scale, heads["scale2"]), (old_ph, placeholder)):
        out = tmp_path / f"masks-{old.name}"
        assert main(["segment", "predict", "--head", str(old), str(d / "test.png"), "--out", str(out)]) == 0
        np.testing.assert_array_equal(read_array(out / "test.png"), _in_process(new, image))


def test_segment_train_takes_a_spec_string(data, tmp_path, tiny_vit_dir, capsys):
    iio.imwrite(tmp_path / "im.png", data[1][0])
    iio.imwrite(tmp_path / "m.png", data[2][0] * 255)
    spec = f"{tiny_vit_dir}@random(seed=3)[scale=2]"
    assert main(["segment", "train", "--images", str(tmp_path / "im.png"), "--masks", str(tmp_path / "m.png"),
                 "--backbone", spec, "--label-rule", "fraction", "--out", str(tmp_path / "h")]) == 0
    assert f"backbone spec {spec}" in capsys.readouterr().out
    assert str(load_head(tmp_path / "h").backbone_spec_) == spec
    assert main(["segment", "train", "--images", str(tmp_path / "im.png"), "--masks", str(tmp_path / "m.png"),
                 "--backbone", spec, "--weights", "placeholder", "--out", str(tmp_path / "h2")]) == 2
    assert "give the weights once" in capsys.readouterr().err


def test_features_cli_writes_the_spec(data, tmp_path, tiny_vit_dir):
    d = data[0]
    out = tmp_path / "f"
    assert main(["features", str(d / "test.png"), "--backbone", f"{tiny_vit_dir}@random(seed=3)", "--scale", "2",
                 "--l2", "--batch-size", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "features.json").read_text())
    assert doc["backbone_spec"]["string"] == f"{tiny_vit_dir}@random(seed=3)[l2=true,scale=2]"
    assert doc["images"][0]["spec"] == doc["backbone_spec"]["string"] and doc["images"][0]["stride"] == 8


def test_get_backbone_takes_a_whole_spec_string():
    from neuros.plugins.cv.backbones import get_backbone

    bb = get_backbone("filterbank[stride=1]")
    assert str(bb.spec) == "filterbank[stride=1]" and bb.stride == 1.0
    vit = get_backbone("vit-small@random(seed=3)[stride=4]")
    assert str(vit.spec) == "vit-small@random(seed=3)[stride=4]" and vit.stride == 4.0
    with pytest.raises(ValueError, match="did you mean 'filterbank'"):
        get_backbone("filterbnak[stride=1]")
