"""The napari dock widgets: scribble segmentation (Train / Predict / Live, save and load heads) and stack alignment.

The work is :mod:`.session` and :mod:`.align` (no Qt); this module only reads the chosen layers, runs the work in
a napari worker thread (``napari.qt.threading.create_worker``, with napari's progress indicator), writes the
results into layers on the main thread, and turns errors into one-line napari notifications.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..heads import list_heads
from .align import ALIGN_MODELS, align_layer_data
from .session import (
    LIVE_HEAD,
    SCOPES,
    LayerError,
    Session,
    check_layers,
    check_scribbles,
    image_slice,
    spatial_shape,
    visible_box,
)

__all__ = ["AlignWidget", "SegmentWidget"]

#: Backbones offered in the list (any spec can be typed in).
BACKBONES = ("filterbank[stride=1]", "filterbank[stride=4]", "filterbank", "vit-small", "vit-small[stride=4]",
             "vit-small[layers=[-4,-1],stride=4]", "cnx-tiny[stage=2]", "vit-small+filterbank[stride=4]", "vit-base")
WEIGHTS = ("", "placeholder", "random", "pretrained", "auto")
#: Live mode waits this long after the last stroke before retraining (strokes in a burst retrain once).
LIVE_DELAY_MS = 150


def one_line(error: BaseException) -> str:
    """The first line of an error, prefixed with its type unless it is an expected user error."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if isinstance(error, (ValueError, FileNotFoundError, FileExistsError, KeyError)) else (
        f"{type(error).__name__}: {text}")


def _full(image: Any) -> Any:
    """The full-resolution array of an image layer (level 0 of a multiscale one, e.g. an OME-Zarr pyramid)."""
    return image.data[0] if getattr(image, "multiscale", False) else image.data


class _LayerCombo(QComboBox):
    """Layers of one type by name, kept in step with the viewer's layer list."""

    def __init__(self, viewer: Any, kind: type, allow_none: bool = False) -> None:
        super().__init__()
        self.viewer, self.kind, self.allow_none = viewer, kind, allow_none
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self.allow_none:
            self.addItem("")
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, self.kind)]
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any:
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None


class _WorkerWidget(QWidget):
    """What both dock widgets share: one background worker at a time and one-line error notifications.

    Subclasses set ``self._worker`` (None when idle), ``self.status`` (a QLabel) and ``self.last_error``.
    """

    @property
    def busy(self) -> bool:
        """Whether a worker is running."""
        return self._worker is not None

    def notify_error(self, error: BaseException | str) -> None:
        """Show an error as a one-line napari notification (and keep it in ``last_error``)."""
        msg = error if isinstance(error, str) else one_line(error)
        self.last_error = msg
        self.status.setText(f"error: {msg}")
        show_error(msg)


class SegmentWidget(_WorkerWidget):
    """Scribble segmentation: pick image + scribble layers, backbone and head; Train, Predict, Live; save/load.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it to dock widgets).

    Attributes
    ----------
    session : Session
        Feature cache and current head (``session.head``).
    last_error : str or None
        The last error shown as a notification (one line).
    n_runs : int
        Finished train/predict runs (Live mode counts each retrain).
    last_seconds : float
        Worker time of the last run (train + predict, without the layer update).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.last_error: str | None = None
        self.n_runs = 0
        self.last_seconds = 0.0
        self._worker: Any = None
        self._pending: str | None = None
        self._watched: Any = None

        self.image_combo = _LayerCombo(napari_viewer, Image)
        self.labels_combo = _LayerCombo(napari_viewer, Labels)
        self.backbone_combo = QComboBox()
        self.backbone_combo.setEditable(True)
        self.backbone_combo.addItems(BACKBONES)
        self.weights_combo = QComboBox()
        self.weights_combo.addItems(WEIGHTS)
        self.head_combo = QComboBox()
        self.head_combo.addItems(list_heads())
        self.head_combo.setCurrentText(LIVE_HEAD.kind)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        self.proba_check = QCheckBox("probability layers")
        self.live_check = QCheckBox("Live (retrain after each stroke)")
        self.train_button = QPushButton("Train")
        self.predict_button = QPushButton("Predict")
        self.save_button = QPushButton("Save head…")
        self.load_button = QPushButton("Load head…")
        self.status = QLabel("paint strokes of each class (0 = unlabelled), then Train")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("scribbles", self.labels_combo)
        form.addRow("backbone", self.backbone_combo)
        form.addRow("weights", self.weights_combo)
        form.addRow("head", self.head_combo)
        form.addRow("predict", self.scope_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.predict_button)
        io = QHBoxLayout()
        io.addWidget(self.save_button)
        io.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.proba_check)
        layout.addWidget(self.live_check)
        layout.addLayout(buttons)
        layout.addLayout(io)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(lambda: self._start("live"))
        self.train_button.clicked.connect(lambda: self._start("train"))
        self.predict_button.clicked.connect(lambda: self._start("predict"))
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        self.labels_combo.currentTextChanged.connect(self._watch_labels)
        self.image_combo.currentTextChanged.connect(self._watch_labels)
        self._watch_labels()

    # ----------------------------------------------------------------- state
    def _token(self, layer: Any) -> tuple[int, int]:
        return (id(layer), id(layer.data))

    def _watch_labels(self, *_: Any) -> None:
        """Follow strokes in the chosen scribble layer (Live mode) and image edits (drop cached features)."""
        if self._watched is not None:
            for event, cb in ((self._watched.events.paint, self._on_stroke),
                              (self._watched.events.data, self._on_stroke)):
                try:
                    event.disconnect(cb)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._watched = self.labels_combo.layer()
        if self._watched is not None:
            self._watched.events.paint.connect(self._on_stroke)
            self._watched.events.data.connect(self._on_stroke)
        image = self.image_combo.layer()
        if image is not None:
            image.events.data.connect(self._on_image_data)

    def _on_image_data(self, event: Any) -> None:
        self.session.cache.clear()

    def _on_stroke(self, *_: Any) -> None:
        if self.live_check.isChecked():
            self._live_timer.start()

    def _selected(self, need_labels: bool) -> tuple[Any, Any, tuple[int, ...]]:
        image = self.image_combo.layer()
        if image is None:
            raise LayerError("no image layer chosen; open an image (File ▸ Open) or a sample (File ▸ Open Sample)")
        labels = self.labels_combo.layer()
        if need_labels:
            space = check_layers(tuple(_full(image).shape), None if labels is None else tuple(labels.data.shape),
                                 rgb=image.rgb, image_name=image.name,
                                 labels_name="" if labels is None else labels.name)
            check_scribbles(labels.data, labels.name)
        else:
            space = check_layers(tuple(_full(image).shape), spatial_shape(tuple(_full(image).shape), image.rgb),
                                 rgb=image.rgb, image_name=image.name)
        self.session.set_backbone(self.backbone_combo.currentText(), self.weights_combo.currentText() or None)
        return image, labels, space

    def _current_index(self, image: Any, space: tuple[int, ...]) -> int | None:
        if len(space) == 2:
            return None
        step = image.world_to_data(self.viewer.dims.point)
        return int(np.clip(round(float(step[0])), 0, space[0] - 1))

    def _visible(self, image: Any, space: tuple[int, ...]) -> tuple[slice, slice]:
        try:  # (height, width) of the canvas in screen pixels; napari exposes it only on its Qt viewer
            canvas = tuple(int(v) for v in self.viewer.window._qt_viewer.canvas.size)
        except AttributeError:
            return slice(0, space[-2]), slice(0, space[-1])
        return visible_box(space[-2:], tuple(self.viewer.camera.center[-2:]), float(self.viewer.camera.zoom),
                           canvas, tuple(image.scale[-2:]), tuple(image.translate[-2:]))

    # ----------------------------------------------------------------- actions
    def train(self) -> None:
        """Train on the scribbles and predict the current slice (what the Train button does)."""
        self._start("train")

    def predict(self) -> None:
        """Predict with the current head over the chosen scope (the Predict button)."""
        self._start("predict")

    def _start(self, action: str) -> None:
        if self.busy:
            self._pending = action
            return
        try:
            image, labels, space = self._selected(need_labels=action in ("train", "live"))
            if action == "predict" and self.session.head is None:
                raise LayerError("no head yet: paint scribbles and press Train, or load a saved head")
        except (ValueError, FileNotFoundError) as e:
            self.notify_error(e)
            return
        index = self._current_index(image, space)
        scope = "visible" if action == "live" else self.scope_combo.currentText()
        box = self._visible(image, space) if scope == "visible" else None
        indices = list(range(space[0])) if scope == "stack" and len(space) == 3 else [index]
        job = {"action": action, "token": self._token(image), "data": _full(image), "rgb": image.rgb,
               "labels": None if labels is None or action == "predict" else np.array(labels.data, copy=True),
               "kind": self.head_combo.currentText(), "indices": indices, "box": box,
               "proba": self.proba_check.isChecked(), "image_name": image.name, "space": space}
        self.status.setText(f"{action}: working…")
        self._set_enabled(False)
        worker = create_worker(_run_job, self.session, job, _progress={"desc": f"neuros-cv {action}"},
                               _ignore_errors=True)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self.notify_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _set_enabled(self, on: bool) -> None:
        for b in (self.train_button, self.predict_button, self.save_button, self.load_button):
            b.setEnabled(on)

    def _on_finished(self) -> None:
        self._worker = None
        self._set_enabled(True)
        self.n_runs += 1
        if self._pending is not None:
            action, self._pending = self._pending, None
            self._start(action)

    def _on_result(self, result: dict[str, Any]) -> None:
        name = f"{result['image_name']} prediction"
        space = result["space"]
        if name in self.viewer.layers and tuple(self.viewer.layers[name].data.shape) == space:
            layer = self.viewer.layers[name]
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            image = self.viewer.layers[result["image_name"]]
            layer = self.viewer.add_labels(np.zeros(space, np.int32), name=name, opacity=0.5, scale=image.scale[
                -len(space):], translate=image.translate[-len(space):])
        for index, labels, window, proba in result["slices"]:
            target = layer.data if index is None else layer.data[index]
            target[window] = labels
            if proba is not None:
                self._write_proba(result, index, window, proba)
        layer.refresh()
        self.last_seconds = float(result["seconds"])
        head = self.session.head
        self.status.setText(f"{result['action']}: {head.kind} head on {self.session.spec}, classes "
                            f"{head.classes_.tolist()} ({result['seconds']:.2f} s)")

    def _write_proba(self, result: dict[str, Any], index: int | None, window: tuple[slice, slice],
                     proba: np.ndarray) -> None:
        space = result["space"]
        for k, c in enumerate(self.session.head.classes_):
            name = f"{result['image_name']} P(class {int(c)})"
            if name not in self.viewer.layers or tuple(self.viewer.layers[name].data.shape) != space:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
                self.viewer.add_image(np.zeros(space, np.float32), name=name, colormap="magma",
                                      contrast_limits=(0.0, 1.0), visible=False, blending="additive")
            layer = self.viewer.layers[name]
            target = layer.data if index is None else layer.data[index]
            target[window] = proba[..., k]
            layer.refresh()

    # ----------------------------------------------------------------- heads on disk
    def save_head(self, folder: str | Path, overwrite: bool = False) -> Path | None:
        """Save the current head as a ``head/`` folder (the format of ``neuros-cv segment train``)."""
        try:
            out = self.session.save_head(folder, overwrite=overwrite)
        except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
            self.notify_error(e)
            return None
        show_info(f"head saved to {out}")
        self.status.setText(f"head saved to {out}")
        return out

    def load_head(self, folder: str | Path) -> bool:
        """Load a ``head/`` folder (from ``segment train`` or this widget); the backbone follows its spec."""
        try:
            head = self.session.load_head(folder)
        except (ValueError, FileNotFoundError, OSError) as e:
            self.notify_error(e)
            return False
        self.backbone_combo.setCurrentText(str(head.backbone_spec_))
        self.weights_combo.setCurrentText("")
        self.head_combo.setCurrentText(head.kind)
        self.status.setText(f"loaded a {head.kind} head on {head.backbone_spec_}, classes {head.classes_.tolist()}")
        return True

    def _save_dialog(self) -> None:
        folder = QFileDialog.getSaveFileName(self, "Save head as a new folder")[0]
        if folder:
            self.save_head(folder, overwrite=False)

    def _load_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Load a head folder")
        if folder:
            self.load_head(folder)


def _run_job(session: Session, job: dict[str, Any]) -> dict[str, Any]:
    """The worker's part: (re)train if asked, then predict the slices of the job (no Qt, no layers)."""
    import time

    t0 = time.perf_counter()
    if job["action"] in ("train", "live"):
        session.train(job["token"], job["data"], job["labels"], kind=job["kind"], rgb=job["rgb"])
    out = []
    for index in job["indices"]:
        image = image_slice(job["data"], index, job["rgb"])
        labels, proba, window = session.predict_slice(job["token"], 0 if index is None else index, image,
                                                      box=job["box"])
        out.append((index, labels.astype(np.int32), window, proba.astype(np.float32) if job["proba"] else None))
    return {**{k: job[k] for k in ("action", "image_name", "space")}, "slices": out,
            "seconds": time.perf_counter() - t0}


class AlignWidget(_WorkerWidget):
    """Align a stack layer (translation or a transform model) into a new layer, transforms in its metadata."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.last_error: str | None = None
        self.result_layer: Any = None
        self._worker: Any = None
        self.layer_combo = _LayerCombo(napari_viewer, Image)
        self.model_combo = QComboBox()
        self.model_combo.addItems(ALIGN_MODELS)
        self.align_button = QPushButton("Align")
        self.status = QLabel("choose a (Z, Y, X) stack")
        form = QFormLayout()
        form.addRow("stack", self.layer_combo)
        form.addRow("model", self.model_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.align_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.align_button.clicked.connect(self.align)

    def align(self) -> None:
        """Align the chosen stack in a worker; the result becomes the layer ``<name> aligned``."""
        layer = self.layer_combo.layer()
        if layer is None:
            self.notify_error("no stack layer chosen; open a (Z, Y, X) stack first")
            return
        if layer.rgb or layer.data.ndim != 3:
            self.notify_error(f"layer {layer.name!r} has shape {tuple(layer.data.shape)}; the aligner takes a "
                              "(Z, Y, X) greyscale stack")
            return
        model = self.model_combo.currentText()
        self.status.setText(f"aligning {layer.name} ({model})…")
        self.align_button.setEnabled(False)
        worker = create_worker(align_layer_data, np.asarray(layer.data), model,
                               _progress={"desc": f"neuros-cv align ({model})"}, _ignore_errors=True)
        worker.returned.connect(lambda res: self._on_result(layer, res))
        worker.errored.connect(self.notify_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_finished(self) -> None:
        self._worker = None
        self.align_button.setEnabled(True)

    def _on_result(self, layer: Any, result: tuple[np.ndarray, dict[str, Any]]) -> None:
        aligned, meta = result
        self.result_layer = self.viewer.add_image(aligned, name=f"{layer.name} aligned", scale=layer.scale,
                                                  translate=layer.translate, metadata={"alignment": meta})
        self.status.setText(f"aligned {layer.name} ({meta['model']}, {len(meta['transforms'])} sections)")
