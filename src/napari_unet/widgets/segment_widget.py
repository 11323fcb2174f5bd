"""The Segment dock widget: pick an image and a model, press Segment, watch the labels grow tile by tile.

The widget gathers values and plans the run on the main thread (which image, which axes, which part of the
stack, which output layer), then runs :func:`napari_unet.core.inference.segment_steps` in a napari generator
worker. Everything the worker yields comes back to the main thread, where finished tiles are copied into the
output Labels layer and redrawn piecewise (:mod:`._live`). The worker never touches a widget or a layer.
A successful in-memory run ends by keeping a private copy of the labels (:mod:`._predictions`), against which
Fine-tune measures the user's corrections.

A result too large for memory (labels over :func:`napari_unet.core.memory.in_memory_limit`) goes to disk: the
core writes it straight into a zarr array (:mod:`._scratch`) that a lazy Labels layer shows, and the main thread
only redraws what is on screen; probabilities likewise go to zarr arrays of the part segmented. Which layers a
run fills, and how a stopped one is marked, is :mod:`._segment_layers`.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from napari_unet.widgets._autosave import autosaver_for
from napari_unet.widgets._channels import ChannelPickers, stack_channels
from napari_unet.widgets._layers import LayerPicker, fit_labels_dtype, full_resolution, infer_axes, spatial_scale
from napari_unet.widgets import _scratch
from napari_unet.widgets._live import LiveLabels
from napari_unet.widgets._models import DevicePicker, ModelPicker, model_kind
from napari_unet.widgets._doubts import DoubtPanel, Reviewed, with_doubts
from napari_unet.widgets._predictions import forget_prediction, keep_prediction
from napari_unet.widgets._progress import ProgressLine, RunProgress, format_seconds
from napari_unet.widgets._registry import register_segment_widget
from napari_unet.widgets._scope import SCOPE_TITLES, Scope, plan_scope, scope_titles
from napari_unet.widgets._segment_layers import (
    keep_partial,
    model_classes,
    output_layer,
    show_probabilities,
    too_large,
)
from napari_unet.widgets._scroll import scrollable_layout
from napari_unet.widgets._view import data_position, view_bounds
from napari_unet.widgets._workers import Outcome, report_failure, segment_in_worker, set_up_once, start_worker

PRECISIONS = ("auto", "float32", "bfloat16", "float16")  # core.runner.PRECISIONS, without importing torch here


@dataclass
class _Run:
    """One Segment run, seen from the main thread."""

    source: Any  # the Image layer
    output: Any  # the Labels layer being filled
    created: bool  # the run made the output layer (rather than reusing the plugin's previous one)
    scope: Scope
    cancel: Any  # CancelToken
    progress: RunProgress
    live: LiveLabels
    probabilities: bool
    lazy: bool = False  # too large for memory: the core writes into zarr arrays the layers show
    scratch: list[str] = field(default_factory=list)  # the zarr folders this run writes into
    worker: Any = None
    written: bool = False
    editable: bool = True  # the output's editability before the run locked it (tiles would overwrite strokes)
    unlock: Any = None  # gives the output its editability back
    ended: bool = False  # the outcome arrived: later progress events are stale
    stop_reason: str = ""
    started: float = field(default_factory=time.perf_counter)


class SegmentWidget(QWidget):
    """Segment an image layer with a U-Net; the result is a Labels layer named after the image."""

    run_finished = Signal(str)  # "done", "cancelled" or "failed", once the result is on screen

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: _Run | None = None
        self._axes_auto = True

        self.image_picker = LayerPicker(napari_viewer, (Image,))
        self.image_picker.setToolTip("The image to segment (channel 1, for a model that takes several).")
        self.model_picker = ModelPicker()
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("One letter per dimension of the image: T time, Z depth, C channel, Y, X. "
                                  "Inferred from the layer; type to override, clear to infer again.")
        self.axes_note = QLabel()
        self.axes_note.setWordWrap(True)
        self.axes_note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # wrap, never widen
        self.scope_picker = QComboBox()
        for key, title in SCOPE_TITLES.items():
            self.scope_picker.addItem(title, key)
        self.scope_picker.setToolTip("Segment the whole image or stack, only the slice or time point shown, or only "
                                     "the part of the image in view (fast feedback on big images).")
        self.device_picker = DevicePicker()
        self.diameter_spin = QDoubleSpinBox()
        self.diameter_spin.setRange(0.0, 1000.0)
        self.diameter_spin.setDecimals(1)
        self.diameter_spin.setSpecialValueText("auto")
        self.diameter_spin.setSuffix(" px")
        self.diameter_spin.setToolTip("Typical object diameter in pixels: the image is resampled so that objects "
                                      "have the size the model was trained at. 'auto' segments the image as it "
                                      "is, reports the size of the objects found and, for a 2D image whose "
                                      "objects are over 1.5 times the model's size, segments it again at that "
                                      "size.")

        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip("Edge of the tiles the network sees; 'auto' fits the device's memory.")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("auto")
        self.batch_spin.setToolTip("Tiles per forward pass; 'auto' fits the device's memory.")
        self.tta_check = QCheckBox("Test-time augmentation")
        self.tta_check.setToolTip("Test-time augmentation: average the predictions of the image and its copies "
                                  "flipped along every combination of axes (4 in 2D, 8 in 3D): smoother "
                                  "borders, 4x slower in 2D, 8x in 3D.")
        self.precision_picker = QComboBox()
        self.precision_picker.addItems(PRECISIONS)
        self.precision_picker.setToolTip("Arithmetic precision; 'auto' uses reduced precision where it is safe.")
        self.probabilities_check = QCheckBox("Add probability layers")
        self.probabilities_check.setToolTip("Also show the per-class probabilities as image layers.")

        advanced = QCollapsible("Advanced")
        advanced_form = QWidget()
        form = QFormLayout(advanced_form)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Precision", self.precision_picker)
        form.addRow(self.tta_check)
        form.addRow(self.probabilities_check)
        advanced.addWidget(advanced_form)
        self.advanced = advanced

        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self._on_button)
        self.progress_bar = ProgressLine()
        self.status = QLabel("Choose an image and a model, then press Segment.")
        self.status.setWordWrap(True)
        self.doubts = DoubtPanel(napari_viewer, lambda layer: self._view_bounds(layer, "Z" * (layer.ndim - 2) + "YX"))

        main = QFormLayout()
        main.addRow("Image", self.image_picker)
        self.channel_pickers = ChannelPickers(napari_viewer, main, main.rowCount(), self)
        main.addRow("Model", self.model_picker)
        main.addRow("Axes", self.axes_edit)
        main.addRow("", self.axes_note)
        main.addRow("Scope", self.scope_picker)
        main.addRow("Diameter", self.diameter_spin)
        main.addRow("Device", self.device_picker)
        layout = scrollable_layout(self)
        layout.addLayout(main)
        layout.addWidget(advanced)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.doubts)
        layout.addStretch(1)

        self.image_picker.currentIndexChanged.connect(self._on_image_changed)
        self.channel_pickers.changed.connect(self._on_image_changed)
        self.model_picker.currentIndexChanged.connect(self._update_axes)
        self.axes_edit.textEdited.connect(self._on_axes_edited)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        register_segment_widget(napari_viewer, self)
        self._update_axes()

    # ----------------------------------------------------------------------------------------------------------
    # Public
    # ----------------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    def select_model(self, name_or_path: str | Path) -> bool:
        """Choose a model by name or folder (the Fine-tune widget calls this with a new version)."""
        return self.model_picker.select(name_or_path)

    def segment(self) -> None:
        """Start a run with the current settings (what the Segment button does)."""
        if self._run is None:
            self._start()

    def cancel(self, reason: str = "") -> None:
        """Ask the running segmentation to stop at its next tile batch."""
        run = self._run
        if run is None or run.cancel.cancelled:
            return
        run.stop_reason = run.stop_reason or reason
        run.cancel.cancel()
        self.run_button.setText("Cancelling...")
        self.run_button.setEnabled(False)

    # ----------------------------------------------------------------------------------------------------------
    # Axes
    # ----------------------------------------------------------------------------------------------------------

    def _model_kind(self) -> tuple[int, int]:
        return model_kind(self.model_picker.model_path)

    def _on_image_changed(self, *args: Any) -> None:
        self._axes_auto = True
        self._update_axes()

    def _on_axes_edited(self, text: str) -> None:
        self._axes_auto = not text.strip()
        self._update_axes()

    def _update_axes(self, *args: Any) -> None:
        dims, channels = self._model_kind()
        self.channel_pickers.set_channels(channels)
        layer = self.image_picker.layer
        if layer is None:
            self.axes_edit.clear()
            self.axes_note.setText("")
            return
        stack = None
        try:
            stack = stack_channels(layer, self.channel_pickers.layers, dims)
            inferred = stack.axes if stack else infer_axes(layer, dims, channels)
        except ValueError as exc:
            inferred = ""
            self.axes_note.setText(str(exc))
        if self._axes_auto:
            self.axes_edit.setText(inferred)
        try:
            axes = self._input(layer)[1]
        except ValueError as exc:
            self.axes_note.setText(f"<span style='color:#e06c4c'>{exc}</span>")
            return
        for index, title in enumerate(scope_titles(axes, dims).values()):
            self.scope_picker.setItemText(index, title)
        how = "from the layer" if self._axes_auto else "set by you; clear to infer"
        planes = "".join(a for a in axes if a in ("TZ" if dims == 2 else "T"))
        detail = f", {dims}D model runs per {'/'.join(planes)} plane" if planes else ""
        stacked = f"; C stacks the layers {', '.join(stack.names)}" if stack else ""
        self.axes_note.setText(f"{axes} ({how}{detail}{stacked})")

    def _input(self, layer: Any) -> tuple[Any, str, str]:
        """(data, its checked axes, the axes of the layer's own data): the layer's data, or, with channel layers
        chosen, the layers stacked lazily as channels in front (so the axes are "C" + the layer's)."""
        from napari_unet.core.colour import resolve_model_axes
        from napari_unet.core.errors import InvalidInputError

        dims, channels = self._model_kind()
        stack = stack_channels(layer, self.channel_pickers.layers, dims)
        data = stack.data if stack else full_resolution(layer)
        axes = resolve_model_axes(self.axes_edit.text() or (stack.axes if stack else None), data.shape,
                                  spatial_dims=dims, in_channels=channels, rgb=bool(layer.rgb) and stack is None)
        if stack is None:
            return data, axes, axes
        if axes[0] != "C":
            raise InvalidInputError(f"the channel layers are stacked along the first axis: axes must start with "
                                    f"C (as in {stack.axes}), not {axes}")
        return data, axes, axes[1:]

    # ----------------------------------------------------------------------------------------------------------
    # Starting a run
    # ----------------------------------------------------------------------------------------------------------

    def _on_button(self) -> None:
        if self._run is None:
            self._start()
        else:
            self.cancel("cancelled")

    def _start(self) -> None:
        set_up_once(self.run_button, self._start_run)

    def _start_run(self) -> None:
        from napari_unet.core.cancel import CancelToken

        layer = self.image_picker.layer
        model_path = self.model_picker.model_path
        if layer is None:
            return self._refuse("Open or select an image layer first.")
        if model_path is None:
            return self._refuse("There is no model yet: choose 'Browse...' to pick a model folder.")
        try:
            data, axes, layer_axes = self._input(layer)
        except ValueError as exc:
            return self._refuse(str(exc))
        dims, _ = self._model_kind()
        position = [0.0] * (len(axes) - len(layer_axes)) + self._position(layer, layer_axes)
        scope = plan_scope(data.shape, axes, self.scope_picker.currentData(), position, dims,
                           self._view_bounds(layer, layer_axes))
        crop = data[scope.image_index]
        lazy = too_large(data.shape, axes, scope, model_path, self.probabilities_check.isChecked())
        output, created = output_layer(self.viewer, layer, axes, data.shape, scope, model_path.name, lazy)
        forget_prediction(output)  # its labels change now; a successful run keeps the new ones (see _finish)
        self.doubts.forget()
        doubts = self.doubts.wanted and not lazy  # a run too large for memory has no probabilities in memory
        token = CancelToken()
        progress = RunProgress(f"Segmenting {layer.name}", cancel_callback=lambda: self.cancel("cancelled"))
        run = _Run(layer, output, created, scope, token, progress, LiveLabels(output, self),
                   self.probabilities_check.isChecked(), lazy, editable=output.editable)
        output.editable = False  # until the run ends: a stroke painted now would be overwritten by later tiles
        run.unlock = functools.partial(setattr, output, "editable", run.editable)
        self.destroyed.connect(run.unlock)  # a dock closed mid-run never sees the end: the layer is unlocked then
        self._run = run
        options = {
            "axes": scope.axes,
            "device": self.device_picker.device,
            "tile_shape": (self.tile_spin.value(),) * dims if self.tile_spin.value() else None,
            "batch_size": self.batch_spin.value() or None,
            "tta": self.tta_check.isChecked(),
            "precision": self.precision_picker.currentText(),
            "probabilities": run.probabilities or doubts,
            "diameter": self.diameter_spin.value() or None,
            "scale": spatial_scale(layer, layer_axes, scope.axes),
        }
        steps = lambda: segment_in_worker(crop, model_path, token, options)  # noqa: E731
        if doubts:
            steps = lambda: with_doubts(segment_in_worker(crop, model_path, token, options))  # noqa: E731
        if lazy:
            steps = self._lazy_steps(run, crop, model_path, options, clear=not created)
        run.worker = start_worker(steps, lambda event: self._on_event(run, event), self, token, "Segment")
        self.run_button.setText("Cancel")
        self.progress_bar.set_progress(0, 0, "loading the model...")
        self.status.setText(f"Segmenting {layer.name} ({scope.description}) with {model_path.name}...")

    def _refuse(self, message: str) -> None:
        self.status.setText(message)
        show_warning(message)

    def _position(self, layer: Any, axes: str) -> list[float]:
        return data_position(self.viewer, layer, axes)

    def _view_bounds(self, layer: Any, axes: str) -> dict[str, tuple[float, float]] | None:
        return view_bounds(self.viewer, layer, axes)

    def _lazy_steps(self, run: _Run, crop: Any, model_path: Path, options: dict[str, Any], clear: bool) -> Any:
        """The worker of a run too large for memory: labels (and probabilities) go straight into zarr arrays.

        The arrays are made here, on the main thread; the worker writes into them (first clearing the part a
        reused output layer had from an earlier run) and never touches the layers.
        """
        labels = _scratch.CropView(run.output.data, run.scope.output_index, run.scope.fixed)
        options = {**options, "out": labels, "keep_partial": True}  # a stopped run keeps its tiles, as in memory
        if run.probabilities:
            classes = model_classes(model_path)
            options["probabilities"] = _scratch.create((classes, *labels.shape), np.float32)
        run.scratch = [f for f in (_scratch.folder_of(run.output.data),
                                   _scratch.folder_of(options["probabilities"])) if f]
        for folder in run.scratch:
            _scratch.hold(folder)
        token = run.cancel

        def steps() -> Any:
            if clear:
                from napari_unet.core.postprocess import fill

                fill(labels, (), 0)
            return (yield from segment_in_worker(crop, model_path, token, options))

        return steps

    # ----------------------------------------------------------------------------------------------------------
    # Events from the worker (main thread)
    # ----------------------------------------------------------------------------------------------------------

    def _on_event(self, run: _Run, event: Any) -> None:
        if isinstance(event, Outcome):
            self._finish(run, event)
            return
        if run.ended:
            return
        left = run.progress.time_left()
        remaining = f", {format_seconds(left)} left" if left else ""
        self.progress_bar.set_progress(event.done, event.total, f"{event.done} / {event.total} tiles{remaining}")
        if event.message:
            self.status.setText(event.message)
        if run.output in self.viewer.layers and event.preview is not None:
            for region in event.regions:
                if run.lazy:  # the worker wrote into the layer's own zarr array: only redraw
                    run.live.queue(run.scope.to_output(region))
                else:
                    run.live.write(run.scope.to_output(region), event.preview[region])
                run.written = True
        # last: napari's activity bar processes pending events, so the next ones may be handled inside this call
        run.progress.update_to(event.done, event.total)

    def _on_layer_removed(self, event: Any) -> None:
        run = self._run
        if run is None:
            return
        if event.value == run.source:  # == rather than "is": napari gives plugins proxies of layers
            self.cancel(f"the image layer '{run.source.name}' was removed")
        elif event.value == run.output:
            self.cancel(f"the output layer '{run.output.name}' was removed")

    def _finish(self, run: _Run, outcome: Outcome) -> None:
        run.ended = True
        output_alive = run.output in self.viewer.layers
        if outcome.status == "done" and output_alive and not run.stop_reason:
            result = outcome.value
            reviewed = result if isinstance(result, Reviewed) else None
            if reviewed is not None:
                result = reviewed.result
            if run.lazy:  # already in the layer's zarr array (final ids): no full-volume work here
                run.live.refresh_all()
            else:
                labels = np.asarray(result.labels)
                fit_labels_dtype(run.output, int(labels.max(initial=0)))
                run.live.write(run.scope.output_index, labels)
                keep_prediction(run.output)  # what the user's corrections will be measured against
                autosaver_for(self.viewer).watch(run.output)  # the user will correct it: keep their work safe
                if reviewed is not None:
                    self.doubts.show_result(reviewed, run.source, run.output, run.scope)
            run.output.metadata["napari_unet"]["partial"] = False
            if run.probabilities and getattr(result, "probabilities", None) is not None:
                show_probabilities(self.viewer, run.source, run.output, run.scope, result, run.lazy)
            seconds = time.perf_counter() - run.started
            count = getattr(result, "objects", None)
            found = f": {count} object{'s' if count != 1 else ''}" if count is not None else ""
            notes = "".join(f" Note: {note}." for note in getattr(result, "messages", []))
            message = (f"Segmented {run.source.name} ({run.scope.description}) in {format_seconds(seconds)}"
                       f"{found}.{notes}")
            run.live.when_idle(lambda: self._end(run, "done", message))
            return
        run.live.stop()
        if outcome.status == "failed":
            message = report_failure(outcome, "Segmentation")
        else:
            message = f"Segmentation stopped: {run.stop_reason or 'cancelled'}."
            (show_info if run.stop_reason in ("", "cancelled") else show_warning)(message)
        if output_alive:
            keep_partial(self.viewer, run.output, run.created, run.written)
        self._end(run, outcome.status if outcome.status == "failed" else "cancelled", message)

    def _end(self, run: _Run, status: str, message: str) -> None:
        for folder in run.scratch:
            _scratch.release(folder, self.viewer.layers)
        run.scratch = []
        if run.unlock is not None:
            run.unlock()
            self.destroyed.disconnect(run.unlock)
            run.unlock = None
        if run.output in self.viewer.layers:
            run.output.refresh(data_displayed=False, highlight=False, extent=False)  # the layer list thumbnail
        if self._run is run:
            self._run = None
        self.run_button.setText("Segment")
        self.run_button.setEnabled(True)
        self.progress_bar.set_progress(status == "done", 1, status)
        self.status.setText(message)
        run.progress.close()  # after the widget's state is final: napari processes pending events here
        self.run_finished.emit(status)

