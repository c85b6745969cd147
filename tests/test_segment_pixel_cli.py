"""``neuros-cv segment`` at pixel level on real ssTEM crops: stride-1 training through tiled features, sparse
scribble masks (``--unlabelled``), sampling budget, PCA, ``hgb``; probabilities (float32 TIFF) and instance
labels (uint32 TIFF) that equal the in-process head; sparse and object scores; bad input in one line, nothing
written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from threadpoolctl import threadpool_limits

from neuros.plugins.cv.backbones.spec import BackboneSpec
from neuros.plugins.cv.cli import main
from neuros.plugins.cv.cli.segment import DEFAULT_PIXEL_SAMPLES
from neuros.plugins.cv.datasets.catalog import load_sstem
from neuros.plugins.cv.datasets.io import read_array
from neuros.plugins.cv.dense import TiledFeatures
from neuros.plugins.cv.heads import load_head
from neuros.plugins.cv.instances import label_instances
from neuros.plugins.cv.metrics import match_instances, score_images

CROP = (slice(256, 384), slice(352, 480))  # 128² crops with membranes and mitochondria in every section


#: The per-pixel filter bank (two scales keep the tests fast).
PIXEL = "filterbank[stride=1,sigmas=[1,2]]"


@pytest.fixture(autouse=True)
def _one_thread():
    """One BLAS/OpenMP thread: the test machine is shared, and oversubscribed OpenMP pools stall."""
    with threadpool_limits(1):
        yield


def _scribbles(mask: np.ndarray, every: int = 9) -> np.ndarray:
    """Sparse labels from a dense mask: class value + 1 on every ``every``-th row and column, 0 elsewhere."""
    out = np.zeros_like(mask, dtype=np.uint8)
    lines = np.zeros(mask.shape, bool)
    lines[::every] = True
    lines[:, ::every] = True
    out[lines] = mask[lines] + 1
    return out


@pytest.fixture(scope="module")
def em(sstem_dir, tmp_path_factory):
    """Real ssTEM crops as files: sections 00, 01 (train) and 08 (test); dense masks 0/1/2 and scribbles."""
    d = tmp_path_factory.mktemp("em")
    data = load_sstem(sstem_dir, sections=(0, 1, 8), downsample=1)
    for s, im, m in zip(("00", "01", "08"), data.images, data.masks, strict=True):
        Image.fromarray((im[CROP] * 255).round().astype(np.uint8)).save(d / f"em{s}.png")
        tifffile.imwrite(d / f"dense{s}.tif", m[CROP].astype(np.uint8))
        Image.fromarray(_scribbles(m[CROP])).save(d / f"scrib{s}.png")
    return d


def _err(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("neuros-cv")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _train(d, out, masks=("dense00.tif", "dense01.tif"), *extra, images=("em00.png", "em01.png")):
    return main(["segment", "train", "--images", *(str(d / i) for i in images), "--masks",
                 *(str(d / m) for m in masks), "--backbone", PIXEL, "--out", str(out), *extra])


def test_pixel_train_predict_writes_probabilities_and_instances_equal_to_the_head(em, tmp_path, capsys):
    d = em
    assert _train(d, tmp_path / "head", ("dense00.tif", "dense01.tif"), "--head", "logistic",
                  "--max-samples-per-class", "3000", "--tile", "48") == 0
    out = capsys.readouterr().out
    assert "9000 positions at stride 1, at most 3000 per class" in out and "classes [0, 1, 2]" in out
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    assert meta["stride"] == 1 and meta["params"]["max_samples_per_class"] == 3000
    assert main(["segment", "predict", "--head", str(tmp_path / "head"), str(d / "em08.png"), "--probabilities",
                 "--instances", "2", "--min-size", "10", "--tile", "40", "--out", str(tmp_path / "pred")]) == 0
    pred = read_array(tmp_path / "pred" / "em08.png")
    proba = tifffile.imread(tmp_path / "pred" / "em08_proba.tif")
    inst = tifffile.imread(tmp_path / "pred" / "em08_instances.tif")
    assert pred.shape == (128, 128) and proba.dtype == np.float32 and proba.shape == (3, 128, 128)
    with tifffile.TiffFile(tmp_path / "pred" / "em08_proba.tif") as tf:  # Fiji: a hyperstack, one channel per class
        assert tf.is_imagej and tf.series[0].axes == "CYX"
    assert inst.dtype == np.uint32 and inst.shape == (128, 128)
    # The same as the head in-process (whole tiles of another size: the filter bank's tiles are exact).
    head = load_head(tmp_path / "head")
    image = read_array(d / "em08.png")
    ref = head.predict_proba(TiledFeatures(BackboneSpec.parse(PIXEL).build(), image, tile=1024))
    np.testing.assert_array_equal(proba, np.moveaxis(ref, -1, 0))
    np.testing.assert_array_equal(pred, head.classes_[ref.argmax(axis=2)])
    np.testing.assert_array_equal(inst, label_instances(ref, cls=2, min_size=10))
    assert 0 < inst.max() == np.unique(inst[inst > 0]).size  # objects numbered 1..n
    # A stack: (Z, H, W) uint32, each slice's objects as in 2-D, ids numbered on (none repeats across slices).
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image[::-1]]), photometric="minisblack")
    assert main(["segment", "predict", "--head", str(tmp_path / "head"), str(tmp_path / "stack.tif"),
                 "--instances", "2", "--min-size", "10", "--out", str(tmp_path / "pred_stack")]) == 0
    stack = tifffile.imread(tmp_path / "pred_stack" / "stack_instances.tif")
    assert stack.dtype == np.uint32 and stack.shape == (2, 128, 128)
    np.testing.assert_array_equal(stack[0], inst)
    ids = np.unique(stack[1][stack[1] > 0])
    assert ids.size > 0 and ids.min() == inst.max() + 1 and ids.max() == inst.max() + ids.size
    # Better than the majority class on a held-out section (measured: accuracy 0.70 vs 0.59; the quality of
    # pixel heads is measured by the real suite, not here).
    truth = tifffile.imread(d / "dense08.tif")
    s = score_images([truth], [pred.astype(np.int64)], 3, n_boot=1)
    assert s["accuracy"] > np.bincount(truth.ravel()).max() / truth.size + 0.05


def test_sparse_scribbles_train_and_score_only_labelled_pixels(em, tmp_path, capsys):
    d = em
    head = tmp_path / "head"
    assert _train(d, head, ("scrib00.png", "scrib01.png"), "--unlabelled", "0", "--head", "hgb",
                  "--max-samples-per-class", "150", "--n-components", "6") == 0
    assert "unlabelled value 0, PCA to 6 components" in capsys.readouterr().out
    h = load_head(head)
    assert h.classes_.tolist() == [1, 2, 3] and h.unlabelled == 0 and h.pca_components_.shape[0] == 6
    # Scored on the test section's scribbles: only labelled pixels count (== scoring them in-process).
    assert main(["segment", "evaluate", "--head", str(head), "--images", str(d / "em08.png"), "--masks",
                 str(d / "scrib08.png"), "--unlabelled", "0", "--n-boot", "5", "--out", str(tmp_path / "s.json")]) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["unlabelled"] == 0 and "labelled pixels only" in capsys.readouterr().out
    scrib = read_array(d / "scrib08.png")
    pred = h.predict(TiledFeatures(BackboneSpec.parse(PIXEL).build(), read_array(d / "em08.png")))
    keep = scrib > 0
    want = score_images([scrib[keep] - 1], [pred[keep] - 1], 3, n_boot=5)
    assert got["classes"]["2"]["dice"] == pytest.approx(want["classes"]["class1"]["dice"])
    assert got["accuracy"] == pytest.approx(want["accuracy"])
    # Without --unlabelled the 0s are an unknown value, and the message says what to pass.
    assert main(["segment", "evaluate", "--head", str(head), "--images", str(d / "em08.png"), "--masks",
                 str(d / "scrib08.png")]) == 2
    assert "pass --unlabelled 0" in _err(capsys)


def test_evaluate_object_scores(em, tmp_path, capsys):
    d = em
    assert _train(d, tmp_path / "head", ("dense00.tif", "dense01.tif"), "--head", "logistic",
                  "--max-samples-per-class", "2000") == 0
    assert main(["segment", "evaluate", "--head", str(tmp_path / "head"), "--images", str(d / "em08.png"),
                 "--masks", str(d / "dense08.tif"), "--instances", "2", "--instance-method", "components",
                 "--min-size", "20", "--n-boot", "5", "--out", str(tmp_path / "s.json")]) == 0
    assert "objects of class 2 (components)" in capsys.readouterr().out
    obj = json.loads((tmp_path / "s.json").read_text())["objects"]
    head = load_head(tmp_path / "head")
    proba = head.predict_proba(TiledFeatures(BackboneSpec.parse(PIXEL).build(), read_array(d / "em08.png")))
    truth = tifffile.imread(d / "dense08.tif")
    want = match_instances(label_instances(truth == 2, method="components"),
                           label_instances(proba, cls=2, method="components", min_size=20))
    for k in ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "f1", "mean_matched_iou"):
        assert obj[k] == pytest.approx(want[k]), k
    assert obj["n_true"] > 0


def test_default_sampling_budget_at_pixel_strides(em, tmp_path, capsys):
    d = em
    assert _train(d, tmp_path / "a", ("dense00.tif",), images=("em00.png",)) == 0
    assert load_head(tmp_path / "a").max_samples_per_class == DEFAULT_PIXEL_SAMPLES
    assert _train(d, tmp_path / "b", ("dense00.tif",), "--max-samples-per-class", "all", images=("em00.png",)) == 0
    h = load_head(tmp_path / "b")
    assert h.max_samples_per_class is None and h.n_train_patches_ == 128 * 128
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _train(d, tmp_path / "c", ("dense00.tif",), "--max-samples-per-class", "0", images=("em00.png",))
    assert "expected a positive number of positions or 'all'" in capsys.readouterr().err


def test_bad_input_is_one_line_and_writes_nothing(em, tmp_path, capsys):
    d = em
    out = tmp_path / "head"
    empty = np.zeros((128, 128), np.uint8)
    Image.fromarray(empty).save(tmp_path / "empty.png")
    assert _train(d, out, ("scrib00.png", str(tmp_path / "empty.png")), "--unlabelled", "0") == 2
    assert _err(capsys) == ("neuros-cv segment: error: mask empty.png holds no labelled pixel (every pixel is "
                            "--unlabelled 0); paint strokes of the classes in it or leave the image out")
    # A class whose strokes are outvoted in every 16-px cell at the stride of the pooled filter bank.
    thin = np.zeros((128, 128), np.uint8)
    thin[:, :] = 1
    thin[::16, ::16] = 2
    Image.fromarray(thin).save(tmp_path / "thin.png")
    assert main(["segment", "train", "--images", str(d / "em00.png"), "--masks", str(tmp_path / "thin.png"),
                 "--unlabelled", "0", "--backbone", "filterbank", "--out", str(out)]) == 2
    assert "class(es) [2] have no labelled position at the backbone's stride 16" in _err(capsys)
    assert _train(d, out, ("dense00.tif", "dense01.tif"), "--classes", "0", "1", "--unlabelled", "0") == 2
    assert "--unlabelled 0 is also listed in --classes 0 1" in _err(capsys)
    Image.fromarray(np.zeros((100, 128), np.uint8)).save(tmp_path / "short.png")
    assert _train(d, out, ("dense00.tif", str(tmp_path / "short.png"))) == 2
    assert "shape (100, 128) does not match image em01.png shape (128, 128)" in _err(capsys)
    nan = read_array(d / "em00.png").astype(np.float32)
    nan[5, 7] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    assert _train(d, out, ("dense00.tif",), images=(str(tmp_path / "nan.tif"),)) == 2
    line = _err(capsys)
    assert "nan.tif" in line and "NaN" in line
    assert not out.exists()
    # evaluate: mask values the head does not know; --unlabelled that is a class; predict: an unknown class.
    assert _train(d, out, ("dense00.tif",), "--head", "logistic", "--max-samples-per-class", "500",
                  images=("em00.png",)) == 0
    capsys.readouterr()
    seven = tifffile.imread(d / "dense08.tif").copy()
    seven[:4] = 7
    tifffile.imwrite(tmp_path / "seven.tif", seven)
    ev = ["segment", "evaluate", "--head", str(out), "--images", str(d / "em08.png"), "--out", str(tmp_path / "e")]
    assert main([*ev, "--masks", str(tmp_path / "seven.tif")]) == 2
    assert "holds value(s) [7] that the head does not know (its classes: [0, 1, 2])" in _err(capsys)
    assert main([*ev, "--masks", str(d / "dense08.tif"), "--unlabelled", "1"]) == 2
    assert "--unlabelled 1 is a class of the head" in _err(capsys)
    assert not (tmp_path / "e").exists()
    assert main(["segment", "predict", "--head", str(out), str(d / "em08.png"), "--instances", "5", "--out",
                 str(tmp_path / "p")]) == 2
    assert "--instances 5 is not a class of the head (its classes: [0, 1, 2])" in _err(capsys)
    assert main(["segment", "predict", "--head", str(out), str(d / "em08.png"), "--instances", "2",
                 "--instance-threshold", "1.5", "--out", str(tmp_path / "p")]) == 2
    assert _err(capsys) == "neuros-cv segment: error: --instance-threshold must lie in [0, 1], got 1.5"
    nan_in = ["segment", "predict", "--head", str(out), str(tmp_path / "nan.tif"), "--out", str(tmp_path / "p")]
    assert main(nan_in) == 2
    assert "NaN" in _err(capsys)
    assert not (tmp_path / "p").exists()


def test_fused_backbone_spec_passes_through(em, tmp_path, capsys):
    """A fused spec string is taken as written: trained, saved, rebuilt by predict, same masks as in-process."""
    d = em
    spec = "filterbank[stride=4,sigmas=[1,2]]+filterbank[stride=4,sigmas=[4]]"
    bb = BackboneSpec.parse(spec).build()
    assert main(["segment", "train", "--images", str(d / "em00.png"), "--masks", str(d / "dense00.tif"),
                 "--backbone", spec, "--head", "logistic", "--out", str(tmp_path / "head")]) == 0
    assert f"(backbone spec {bb.spec})" in capsys.readouterr().out
    head = load_head(tmp_path / "head")
    assert str(head.backbone_spec_) == str(bb.spec) and head.stride_ == 4
    assert main(["segment", "predict", "--head", str(tmp_path / "head"), str(d / "em08.png"), "--out",
                 str(tmp_path / "pred")]) == 0
    image = read_array(d / "em08.png")
    np.testing.assert_array_equal(read_array(tmp_path / "pred" / "em08.png"),
                                  head.predict(TiledFeatures(bb, image)))
    # --weights names DINOv3 weights: a fused spec with no DINOv3 part refuses it in one line, writing nothing.
    assert main(["segment", "train", "--images", str(d / "em00.png"), "--masks", str(d / "dense00.tif"),
                 "--backbone", spec, "--weights", "random", "--out", str(tmp_path / "h2")]) == 2
    assert "--weights applies to DINOv3 backbones" in _err(capsys)
    assert not (tmp_path / "h2").exists()
