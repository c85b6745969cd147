"""The napari plugin through a real viewer (napari's ``make_napari_viewer``, pytest-qt, headless Qt + Xvfb GL).

Scribbles are painted programmatically through the labels layer's own edit path (``data_setitem``, which records
history and emits the paint event a brush stroke does), buttons are clicked, and every test waits for the real
worker thread (``qtbot.waitUntil``). Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from neuros.plugins.cv.napari_plugin.headless import ensure_headless

ensure_headless()  # a private Xvfb + QT_QPA_PLATFORM=xcb (offscreen without Xvfb), before Qt starts
napari = pytest.importorskip("napari")  # the only reason to skip: the `napari` extra is not installed

from neuros.plugins.cv.cli import main as cli_main  # noqa: E402
from neuros.plugins.cv.datasets.io import read_mask  # noqa: E402
from neuros.plugins.cv.datasets.synthetic import make_image  # noqa: E402
from neuros.plugins.cv.napari_plugin import manifest_path  # noqa: E402
from neuros.plugins.cv.napari_plugin.widget import AlignWidget, SegmentWidget  # noqa: E402
from neuros.plugins.cv.scribbles import simulate_scribbles  # noqa: E402

WAIT_MS = 120_000


def _register_manifest() -> None:
    """Make napari know the plugin: discovered through the ``napari.manifest`` entry point of an install from
    this pyproject, or registered from the packaged ``napari.yaml`` (an older editable install); before any
    viewer exists, so every viewer's plugin set-up includes it once."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    if not any(m.name == "neuros-cv" for m in pm.iter_manifests()):
        pm.register(manifest_path())


_register_manifest()
SIZE = 192


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))


def _paint(layer, where: np.ndarray, value: int) -> None:
    """One stroke: the labels layer's edit path (history + paint event), as the brush does."""
    layer.data_setitem(np.nonzero(where), value)


@pytest.fixture
def em():
    image, mask = make_image("em", SIZE, seed=0)
    return image, mask.astype(bool), simulate_scribbles(mask, seed=0).astype(np.uint8)


@pytest.fixture
def setup(make_napari_viewer, qtbot, em):
    """A viewer with the EM image, an empty scribble layer and the segmentation widget docked."""
    image, _mask, _scribbles = em
    viewer = make_napari_viewer(show=True)  # shown (offscreen) so the canvas renders for the screenshot
    viewer.add_image(image, name="em")
    labels = viewer.add_labels(np.zeros(image.shape, np.uint8), name="scribbles")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="neuros-cv")
    widget.image_combo.setCurrentText("em")
    widget.labels_combo.setCurrentText("scribbles")
    widget.backbone_combo.setCurrentText("filterbank[stride=1]")
    return viewer, widget, labels


def _wait(qtbot, widget, runs: int) -> None:
    qtbot.waitUntil(lambda: widget.n_runs >= runs and not widget.busy, timeout=WAIT_MS)


def _train(qtbot, widget, labels, scribbles) -> None:
    for v in np.unique(scribbles[scribbles > 0]):
        _paint(labels, scribbles == v, int(v))
    runs = widget.n_runs
    widget.train_button.click()
    _wait(qtbot, widget, runs + 1)
    assert widget.last_error is None


def test_train_button_segments_painted_em(setup, qtbot, em, tmp_path):
    viewer, widget, labels = setup
    _, mask, scribbles = em
    assert (scribbles > 0).mean() < 0.05  # a few strokes, not a mask
    _train(qtbot, widget, labels, scribbles)
    pred = np.asarray(viewer.layers["em prediction"].data)
    assert pred.shape == mask.shape
    assert _dice(pred == 2, mask) > 0.85  # scribble value 2 = object (dense class 1 + 1)
    # features were computed once: a second Train hits the cache
    misses = widget.session.cache.misses
    widget.train_button.click()
    _wait(qtbot, widget, widget.n_runs + 1)
    assert widget.session.cache.misses == misses and widget.session.cache.hits > 0
    # the artefact: the viewer showing image, scribbles and prediction
    viewer.layers["em prediction"].opacity = 0.4
    viewer.layers.move(viewer.layers.index(labels), len(viewer.layers))  # strokes drawn over the prediction
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    import imageio.v3 as iio

    out = Path(os.environ.get("NEUROS_CV_SCREENSHOT", tmp_path / "napari_prediction.png"))
    iio.imwrite(out, shot)
    assert shot.ndim == 3 and shot.shape[0] > 100 and shot[..., :3].std() > 10  # not a blank canvas


def test_live_mode_updates_after_a_new_stroke(setup, qtbot, em):
    viewer, widget, labels = setup
    _, mask, scribbles = em
    layer = viewer.layers["em"]
    flat = np.zeros(mask.shape, bool)
    flat[:48, :64] = True  # a third texture: flat grey, no class painted in it yet
    layer.data[flat] = 0.5
    layer.refresh()
    _train(qtbot, widget, labels, scribbles)
    pred = viewer.layers["em prediction"]
    assert not (np.asarray(pred.data) == 3).any()
    viewer.reset_view()  # the whole slice on screen: Live predicts what is visible
    box = widget._visible(layer, mask.shape)
    assert (box[0].start, box[1].start, box[0].stop, box[1].stop) == (0, 0, *mask.shape)
    widget.live_check.setChecked(True)
    runs = widget.n_runs
    stroke = np.zeros(mask.shape, bool)
    stroke[20:24, 10:50] = True  # one stroke of a new class 3 in the flat region
    _paint(labels, stroke, 3)
    _wait(qtbot, widget, runs + 1)  # no button pressed: the stroke retrained and re-predicted
    assert widget.last_error is None
    assert widget.session.head.classes_.tolist() == [1, 2, 3]
    inside = np.zeros(mask.shape, bool)
    inside[8:40, 8:56] = True
    assert (np.asarray(pred.data)[inside] == 3).mean() > 0.9  # the flat region is class 3 now
    assert (np.asarray(pred.data)[~flat] == 3).mean() < 0.05  # and little else is


def test_head_saved_from_widget_predicts_the_same_in_segment_predict(setup, qtbot, em, tmp_path):
    import tifffile

    viewer, widget, labels = setup
    image, _mask, scribbles = em
    _train(qtbot, widget, labels, scribbles)
    head_dir = tmp_path / "head"
    assert widget.save_head(head_dir) == head_dir
    tifffile.imwrite(tmp_path / "em.tif", image)
    assert cli_main(["segment", "predict", "--head", str(head_dir), str(tmp_path / "em.tif"),
                     "--out", str(tmp_path / "masks")]) == 0
    cli = read_mask(tmp_path / "masks" / "em.png")
    np.testing.assert_array_equal(cli, np.asarray(viewer.layers["em prediction"].data))

    # and the reverse: a head from `segment train` loads in the widget and predicts what `segment predict` does
    tifffile.imwrite(tmp_path / "scribbles.tif", scribbles)
    assert cli_main(["segment", "train", "--images", str(tmp_path / "em.tif"), "--masks",
                     str(tmp_path / "scribbles.tif"), "--backbone", "filterbank[stride=4]", "--head", "rf",
                     "--unlabelled", "0", "--out", str(tmp_path / "cli_head")]) == 0
    assert cli_main(["segment", "predict", "--head", str(tmp_path / "cli_head"), str(tmp_path / "em.tif"),
                     "--out", str(tmp_path / "cli_masks")]) == 0
    assert widget.load_head(tmp_path / "cli_head")
    assert widget.backbone_combo.currentText() == "filterbank[stride=4]"
    runs = widget.n_runs
    widget.predict_button.click()
    _wait(qtbot, widget, runs + 1)
    assert widget.last_error is None
    np.testing.assert_array_equal(read_mask(tmp_path / "cli_masks" / "em.png"),
                                  np.asarray(viewer.layers["em prediction"].data))


def _error_shown(widget, runs_before: int, fragment: str) -> None:
    from napari.utils.notifications import notification_manager

    assert widget.last_error is not None and fragment in widget.last_error
    assert "\n" not in widget.last_error
    assert any(fragment in str(n.message) for n in notification_manager.records)
    assert not widget.busy and widget.n_runs == runs_before  # nothing started, nothing crashed


def test_bad_layer_choices_notify_in_one_line(setup, qtbot, em):
    viewer, widget, labels = setup
    _image, _, scribbles = em
    runs = widget.n_runs
    widget.train_button.click()  # nothing painted yet
    _error_shown(widget, runs, "no painted pixel")

    _paint(labels, scribbles == 1, 1)  # one class only
    widget.train_button.click()
    _error_shown(widget, runs, "one class only")

    viewer.add_labels(np.zeros((SIZE + 8, SIZE), np.uint8), name="wrong shape")
    widget.labels_combo.setCurrentText("wrong shape")
    widget.train_button.click()
    _error_shown(widget, runs, "has shape")

    viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="4d")
    widget.image_combo.setCurrentText("4d")
    widget.train_button.click()
    _error_shown(widget, runs, "4-D")

    widget.image_combo.setCurrentText("em")
    widget.labels_combo.setCurrentText("scribbles")
    widget.predict_button.click()  # no head yet
    _error_shown(widget, runs, "no head yet")
    widget.backbone_combo.setCurrentText("no-such-backbone")
    _paint(labels, scribbles == 2, 2)
    widget.train_button.click()
    _error_shown(widget, runs, "no-such-backbone")
    # the viewer still works: a good choice trains
    widget.backbone_combo.setCurrentText("filterbank[stride=4]")
    widget.train_button.click()
    _wait(qtbot, widget, runs + 1)
    assert "em prediction" in viewer.layers


def test_stack_pyramid_predicts_every_slice_and_probabilities(make_napari_viewer, qtbot):
    stack = np.stack([make_image("em", 96, seed=0, index=i)[0] for i in range(3)])
    masks = np.stack([make_image("em", 96, seed=0, index=i)[1] for i in range(3)])
    viewer = make_napari_viewer()
    viewer.add_image([stack, stack[:, ::2, ::2]], multiscale=True, name="stack")  # a pyramid, as OME-Zarr opens
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint8), name="scribbles")
    first = simulate_scribbles(masks[0], seed=1)
    full = np.zeros(stack.shape, np.uint8)
    full[0] = first
    for v in (1, 2):
        _paint(labels, full == v, v)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.setCurrentText("stack")
    widget.labels_combo.setCurrentText("scribbles")
    widget.scope_combo.setCurrentText("stack")
    widget.proba_check.setChecked(True)
    widget.train_button.click()
    _wait(qtbot, widget, 1)
    assert widget.last_error is None
    pred = np.asarray(viewer.layers["stack prediction"].data)
    for i in range(3):  # slices 1 and 2 were never painted
        assert _dice(pred[i] == 2, masks[i] > 0) > 0.8
    p_obj = np.asarray(viewer.layers["stack P(class 2)"].data)
    p_bg = np.asarray(viewer.layers["stack P(class 1)"].data)
    np.testing.assert_allclose(p_obj + p_bg, 1.0, atol=1e-4)


def test_align_widget_adds_the_aligned_stack_with_its_transforms(make_napari_viewer, qtbot):
    from scipy import ndimage as ndi

    base = make_image("em", 128, seed=2)[0]
    shifts = [(0.0, 0.0), (3.0, -2.0), (5.0, 1.0)]
    stack = np.stack([ndi.shift(base, s, order=1, mode="nearest") for s in shifts]).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="sections")
    widget = AlignWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.layer_combo.setCurrentText("sections")
    widget.model_combo.setCurrentText("translation")
    widget.align_button.click()
    qtbot.waitUntil(lambda: widget.result_layer is not None and not widget.busy, timeout=WAIT_MS)
    meta = widget.result_layer.metadata["alignment"]
    assert meta["model"] == "translation" and len(meta["transforms"]) == 3
    found = np.array([[r["dy"], r["dx"]] for r in meta["transforms"]])
    # section i shows the base moved by shifts[i]; the aligner recovers that motion (sign by its convention)
    np.testing.assert_allclose(np.abs(found), np.abs(np.array(shifts)), atol=0.5)
    assert widget.result_layer.data.shape == stack.shape
    assert np.abs(widget.result_layer.data[2, 20:-20, 20:-20] - base[20:-20, 20:-20]).mean() < \
        np.abs(stack[2, 20:-20, 20:-20] - base[20:-20, 20:-20]).mean() / 2
    widget.model_combo.setCurrentText("rigid")
    viewer.add_image(np.zeros((4, 4), np.float32), name="flat")
    widget.layer_combo.setCurrentText("flat")
    widget.align_button.click()  # a 2-D layer: a notification, no worker
    assert widget.last_error is not None and "(Z, Y, X)" in widget.last_error and not widget.busy


def test_manifest_registers_widgets_readers_and_samples(make_napari_viewer, tmp_path):
    import nibabel as nib

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("neuros-cv", "Scribble segmentation")
    assert isinstance(widget, SegmentWidget)
    viewer.open_sample("neuros-cv", "em")
    assert {"synthetic em", "em truth", "em scribbles"} <= {layer.name for layer in viewer.layers}
    vol = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    img = nib.Nifti1Image(vol, np.diag([0.5, 0.7, 2.0, 1.0]))
    nib.save(img, tmp_path / "vol.nii.gz")
    layers = viewer.open(tmp_path / "vol.nii.gz", plugin="neuros-cv")
    assert tuple(layers[0].scale) == pytest.approx((0.5, 0.7, 2.0))
    np.testing.assert_array_equal(layers[0].data, vol)


def test_xvfb_found_or_display_set():
    assert os.environ.get("DISPLAY") or shutil.which("Xvfb"), "napari's canvas needs GL: install xvfb (make setup)"


def test_fused_dinov3_backbone_with_weights_from_the_widget(setup, qtbot, em, tiny_vit_dir, tmp_path):
    import json

    viewer, widget, labels = setup
    _, mask, scribbles = em
    widget.backbone_combo.setCurrentText(f"{tiny_vit_dir}[stride=8]+filterbank[stride=8]")
    widget.weights_combo.setCurrentText("random")  # fills the ViT part, as `segment train --weights random`
    _train(qtbot, widget, labels, scribbles)
    spec = str(widget.session.spec)
    assert spec == f"{tiny_vit_dir}@random[stride=8]+filterbank[stride=8]"
    assert viewer.layers["em prediction"].data.shape == mask.shape
    widget.save_head(tmp_path / "head")
    built = str(widget.session.backbone.spec)  # what ran: the weights resolved to a seed
    assert built == f"{tiny_vit_dir}@random(seed=0)[stride=8]+filterbank[stride=8]"
    assert json.loads((tmp_path / "head" / "head.json").read_text())["backbone_spec"]["string"] == built
