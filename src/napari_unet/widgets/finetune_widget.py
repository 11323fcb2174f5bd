"""The Fine-tune dock widget: retrain the U-Net on the user's corrected labels while they keep working.

Training pairs are (image layer, labels layer, optional Shapes layer of reviewed regions). On Fine-tune the
labels and masks are copied, so the user may go on painting; :func:`napari_unet.core.training.finetune_steps`
runs in a child process (:mod:`napari_unet.core.training_process`, so that training never slows the viewer),
and a napari generator worker relays its per-step progress to a live loss / Dice plot. The tuned model is
saved as a new version in the library (by the child). The dock shows its score on the held-out part of the
annotations beside its parent's; a version that never beat its parent, or scores lower, is kept but not
selected, any other is selected in the Segment widget, "Segment again" re-runs the Segment widget's image with it and "Roll back"
selects the parent again. A labels layer Segment made carries the model's prediction (:mod:`._predictions`):
the pixels the user changed from it weigh more in training. *Live* trains on continuously while the user
paints (:mod:`._live_training`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QEvent, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_unet.widgets._autosave import autosaver_for
from napari_unet.widgets._channels import stack_channels
from napari_unet.widgets._layers import full_resolution, infer_axes, source_of
from napari_unet.widgets._live_training import LiveTraining
from napari_unet.widgets._loss_plot import LossPlot
from napari_unet.widgets._models import DevicePicker, ModelPicker, model_kind
from napari_unet.widgets._pair_row import PairRow
from napari_unet.widgets._predictions import corrections_message, prediction_of, weighing_note
from napari_unet.widgets._progress import ProgressLine, RunProgress, format_seconds
from napari_unet.widgets._regions import regions_mask
from napari_unet.widgets._registry import segment_widget_for
from napari_unet.widgets._scroll import scrollable_layout
from napari_unet.widgets._workers import Outcome, finetune_in_child, report_failure, set_up_once, start_worker
from napari_unet.widgets._version_report import scores_text, version_message


class FinetuneWidget(QWidget):
    """Fine-tune a model on corrected labels; the result is a new model version in the library."""

    run_finished = Signal(str)  # "done", "cancelled" or "failed"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[PairRow] = []
        self.saved_path: Path | None = None  # the version the last run saved and selected
        self.parent_path: Path | None = None  # the model it was tuned from, which 'Roll back' selects
        self._run: dict[str, Any] | None = None

        self.pairs_box = QVBoxLayout()
        header = QHBoxLayout()
        for text in ("Image", "Labels", "Regions"):
            header.addWidget(QLabel(f"<b>{text}</b>"), 1)
        header.addSpacing(24)
        self.pairs_box.addLayout(header)
        self.add_button = QPushButton("Add current layers")
        self.add_button.setToolTip("Add the selected image and labels layers (and the top Shapes layer, if any) "
                                   "as a training pair.")
        self.add_button.clicked.connect(self.add_current_layers)

        self.model_picker = ModelPicker()
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(5, 24 * 3600)
        self.budget_spin.setValue(60)
        self.budget_spin.setSuffix(" s")
        self.budget_spin.setToolTip("How long to train. Training also stops early once the validation loss "
                                    "stops improving.")

        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1_000_000)
        self.steps_spin.setSpecialValueText("as many as fit")
        self.start_picker = QComboBox()
        self.start_picker.addItems(["Its weights", "Random weights (from scratch)"])
        self.start_picker.setToolTip("Fine-tune the base model's weights, or train its architecture from random "
                                     "weights (for images unlike anything it was trained on; needs more time).")
        self.kind_picker = QComboBox()
        self.kind_picker.addItems(["Detect", "New to the model", "Like the model's"])
        self.kind_picker.setToolTip("Images of a kind the model was not made for (histology, brightfield, whole "
                                    "cells...) get a faster schedule. Detect: from the annotations (dark objects "
                                    "on a bright background) and how well the model does on them before training.")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(0.0, 1e-1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setSpecialValueText("auto")
        self.lr_spin.setValue(0.0)
        self.lr_spin.setToolTip("The peak learning rate; auto: 1e-3, or 3e-3 for images new to the model.")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 64)
        self.batch_spin.setValue(4)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.augment_check = QCheckBox("Augment (flips, rotations, elastic, intensity)")
        self.augment_check.setChecked(True)
        self.device_picker = DevicePicker()
        advanced = QCollapsible("Advanced")
        advanced_form = QWidget()
        form = QFormLayout(advanced_form)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("Device", self.device_picker)
        form.addRow(self.augment_check)
        advanced.addWidget(advanced_form)
        self.advanced = advanced

        self.run_button = QPushButton("Fine-tune")
        self.run_button.clicked.connect(self._on_button)
        self.live = LiveTraining(self)
        self.live_button = QPushButton("Live")
        self.live_button.setCheckable(True)
        self.live_button.setToolTip("Train continuously while you paint: new strokes are sent when you pause, "
                                    "and each version that beats the one in use on your held-out annotations (or "
                                    "on the corrections you made after its round started) is selected and "
                                    "re-segments the region in view, except where you edited.")
        self.live_button.toggled.connect(self._on_live_toggled)
        self.live.stopped.connect(self._on_live_stopped)
        self.live_line = QLabel()
        self.live_line.setWordWrap(True)
        self.live_line.hide()
        self.progress_bar = ProgressLine()
        self.plot = LossPlot()
        self.status = QLabel("Correct a segmentation with napari's paint tools, add the image and labels as a "
                             "pair, then press Fine-tune.")
        self.status.setWordWrap(True)
        self.segment_again_button = QPushButton("Segment again")
        self.segment_again_button.setEnabled(False)
        self.segment_again_button.setToolTip("Run the Segment widget on its image with the new model.")
        self.segment_again_button.clicked.connect(self.segment_again)
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setEnabled(False)
        self.rollback_button.setToolTip("Select the model this version was fine-tuned from again, here and in the "
                                        "Segment widget. The new version stays in the library.")
        self.rollback_button.clicked.connect(self.roll_back)
        self.scores = QLabel()
        self.scores.setWordWrap(True)
        self.scores.setToolTip("Scores on the part of your annotations held out of training (a block in a corner "
                               "of the annotated area): object F1 at IoU 0.5, TP / (TP + (FP + FN) / 2), for "
                               "instance models; foreground Dice for semantic ones.")
        self.scores.hide()

        settings = QFormLayout()
        settings.addRow("Base model", self.model_picker)
        settings.addRow("Start from", self.start_picker)
        settings.addRow("Images", self.kind_picker)
        settings.addRow("Time budget", self.budget_spin)
        layout = scrollable_layout(self)
        layout.addLayout(self.pairs_box)
        layout.addWidget(self.add_button)
        layout.addLayout(settings)
        layout.addWidget(advanced)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.live_button)
        buttons.addWidget(self.segment_again_button, 1)
        buttons.addWidget(self.rollback_button, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.live_line)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot)
        layout.addWidget(self.scores)
        layout.addWidget(self.status)
        layout.addStretch(1)

        segment = segment_widget_for(napari_viewer)
        if segment is not None and segment.model_picker.model_path is not None:
            self.model_picker.select(segment.model_picker.model_path)
        self.model_picker.currentIndexChanged.connect(self._update_channels)

    # ----------------------------------------------------------------------------------------------------------
    # Pairs
    # ----------------------------------------------------------------------------------------------------------

    def add_pair(self, image: Any = None, labels: Any = None, regions: Any = None) -> PairRow:
        """Add a row, preset to the given layers where they are given."""
        row = PairRow(self.viewer, self._remove_pair)
        row.image.set_layer(image)
        row.labels.set_layer(labels)
        row.regions.set_layer(regions)
        row.channels.set_channels(model_kind(self.model_picker.model_path)[1])
        self.rows.append(row)
        self.pairs_box.addWidget(row)
        return row

    def add_current_layers(self) -> PairRow | None:
        """A pair from the selected layers: the active Labels layer (or the top one), the image it was
        segmented from (or the active/top Image layer), and the top Shapes layer if there is one."""
        layers = list(self.viewer.layers)
        active = self.viewer.layers.selection.active

        def top(kind: type) -> Any:
            if isinstance(active, kind):
                return active
            return next((layer for layer in reversed(layers) if isinstance(layer, kind)), None)

        labels = top(Labels)
        image = source_of(labels, layers) if labels is not None else None
        image = image if isinstance(image, Image) else top(Image)
        if image is None or labels is None:
            show_warning("Add a pair needs an image layer and a labels layer; segment an image first, or "
                         "open one and add a Labels layer to paint on.")
            return None
        for row in self.rows:
            if row.image.layer == image and row.labels.layer == labels:
                return row
        shapes = next((layer for layer in reversed(layers) if isinstance(layer, Shapes)), None)
        return self.add_pair(image, labels, shapes)

    def _update_channels(self, *args: Any) -> None:
        """Show each pair's channel pickers for the chosen model's number of input channels."""
        channels = model_kind(self.model_picker.model_path)[1]
        for row in self.rows:
            row.channels.set_channels(channels)

    def _remove_pair(self, row: PairRow) -> None:
        self.rows.remove(row)
        self.pairs_box.removeWidget(row)
        row.deleteLater()

    def samples(self) -> list[Any]:
        """Training samples from the pairs, with labels and masks copied so that painting may go on; a pair whose
        labels Segment made carries the prediction they were corrected from."""
        from napari_unet.core.errors import InvalidInputError
        from napari_unet.core.training import Sample

        if not self.rows:
            raise InvalidInputError("there are no training pairs: press 'Add current layers' with an image and "
                                    "its corrected labels selected")
        samples = []
        for number, row in enumerate(self.rows, 1):
            image, labels, regions = row.image.layer, row.labels.layer, row.regions.layer
            data, axes, _ = self.pair_input(number, row)
            expected = tuple(n for n, a in zip(data.shape, axes) if a != "C")
            label_data = labels.data[0] if labels.multiscale else labels.data
            if tuple(label_data.shape) != expected:
                raise InvalidInputError(
                    f"training pair {number}: the labels '{labels.name}' have shape {tuple(label_data.shape)} but "
                    f"the image '{image.name}' (axes {axes}) needs labels of shape {expected}")
            mask = regions_mask(regions, labels) if regions is not None else None
            samples.append(Sample(image=data, labels=np.array(label_data, copy=True), mask=mask, axes=axes,
                                  prediction=prediction_of(labels, expected)))
        return samples

    def pair_input(self, number: int, row: PairRow) -> tuple[Any, str, str]:
        """(image data, its axes, the axes of the image layer's own data) of pair ``number`` (``row``): with
        channel layers chosen, the layers stacked as channels in front ("C" + the layer's axes)."""
        from napari_unet.core.errors import InvalidInputError

        dims, channels = model_kind(self.model_picker.model_path)
        image = row.image.layer
        if image is None or row.labels.layer is None:
            raise InvalidInputError(f"training pair {number} needs an image layer and a labels layer")
        if row.regions.lost:
            raise InvalidInputError(f"training pair {number}: its reviewed-regions layer was removed; choose "
                                    "another, or 'none' to train on all of its labels")
        try:
            stack = stack_channels(image, row.channels.layers, dims)
        except ValueError as exc:
            raise InvalidInputError(f"training pair {number}: {exc}") from None
        if stack:
            return stack.data, stack.axes, stack.axes[1:]
        axes = infer_axes(image, dims, channels)
        return full_resolution(image), axes, axes

    # ----------------------------------------------------------------------------------------------------------
    # Running
    # ----------------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    def _on_button(self) -> None:
        if self._run is None:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        """Copy the samples and start training (what the Fine-tune button does)."""
        if self._run is None:
            set_up_once(self.run_button, self._start_run)

    def _start_run(self) -> None:
        from napari_unet.core.cancel import CancelToken

        prepared = self.training_input()
        if isinstance(prepared, str):
            return self._refuse(prepared)
        model_path, samples = prepared
        options = {**self.training_options(), "time_budget_s": float(self.budget_spin.value()),
                   "from_scratch": self.start_picker.currentIndex() == 1}
        token = CancelToken()
        run = {"cancel": token, "progress": RunProgress(f"Fine-tuning {model_path.name}", self.stop),
               "base": model_path.name, "budget": options["time_budget_s"],
               "predictions": sum(sample.prediction is not None for sample in samples)}
        self._run = run
        self.plot.clear()
        self.scores.hide()
        self.segment_again_button.setEnabled(False)
        self.rollback_button.setEnabled(False)
        run["worker"] = start_worker(lambda: finetune_in_child(model_path, samples, token, options),
                                     lambda event: self._on_event(run, event), self, token, "Fine-tune")
        self.run_button.setText("Stop")
        self.live_button.setEnabled(False)
        self.progress_bar.set_progress(0, 0, "preparing the training data...")
        note = weighing_note(run["predictions"])
        self.status.setText(f"Fine-tuning {model_path.name} on {len(samples)} image(s){note}; you can go on painting.")

    def training_input(self) -> tuple[Path, list[Any]] | str:
        """The chosen model and a copy of the pairs to train on (the labels autosaved first: they are the user's
        corrections), or why there is nothing to train."""
        model_path = self.model_picker.model_path
        if model_path is None:
            return "Choose a base model first (or 'Browse...' to a model folder)."
        try:
            samples = self.samples()
        except ValueError as exc:
            return str(exc)
        autosaver_for(self.viewer).save_layers([row.labels.layer for row in self.rows])
        return model_path, samples

    def training_options(self) -> dict[str, Any]:
        """The training settings of the dock that a Fine-tune run and a live round share."""
        return {
            "steps": self.steps_spin.value() or None,
            "device": self.device_picker.device,
            "seed": self.seed_spin.value(),
            "learning_rate": self.lr_spin.value() or None,
            "new_kind": (None, True, False)[self.kind_picker.currentIndex()],
            "batch_size": self.batch_spin.value(),
            "augment": self.augment_check.isChecked(),
        }

    def stop(self) -> None:
        """Stop training early; the best model so far is still saved."""
        run = self._run
        if run is None or run["cancel"].cancelled:
            return
        run["cancel"].cancel()
        self.run_button.setText("Stopping...")
        self.run_button.setEnabled(False)

    def event(self, event: QEvent) -> bool:
        """Closing the dock (napari takes the widget out of its window) stops a run, as Stop does."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.stop()
            self.live.stop()
        return super().event(event)

    def _on_live_toggled(self, on: bool) -> None:
        """Live on: start the live loop (the toggle springs back if it cannot start); off: stop it."""
        if not on:
            self.live.stop()
            self.live_button.setEnabled(False)  # until the training process has ended
        elif self.live.start():
            self.run_button.setEnabled(False)
        else:
            self.live_button.blockSignals(True)
            self.live_button.setChecked(False)
            self.live_button.blockSignals(False)

    def _on_live_stopped(self, status: str) -> None:
        self.live_button.blockSignals(True)
        self.live_button.setChecked(False)
        self.live_button.blockSignals(False)
        self.live_button.setEnabled(True)
        self.run_button.setEnabled(True)

    def segment_again(self) -> None:
        """Segment the Segment widget's image with the model this dock selected last (the new version, or
        its parent after a roll back)."""
        segment = segment_widget_for(self.viewer, open_if_missing=True)
        chosen = self.parent_path if self.saved_path is None else self.saved_path
        if segment is None or chosen is None:
            return
        if segment.running:  # its run goes on with the model it started with
            message = f"Segment is still running; press Segment again when it has finished, to use {chosen.name}."
            self.status.setText(message)
            show_info(message)
            return
        segment.select_model(chosen)
        segment.segment()

    def roll_back(self) -> None:
        """Select the new version's parent again, here and in the Segment widget; nothing is deleted."""
        if self.saved_path is None or self.parent_path is None:
            return
        new, self.saved_path = self.saved_path, None
        self.select_model(self.parent_path)
        self.rollback_button.setEnabled(False)
        message = (f"Rolled back: {self.parent_path.name} is selected again. '{new.name}' stays in the library "
                   "(choose it in the model list to use it).")
        self.status.setText(message)
        show_info(message)

    def select_model(self, path: Path) -> None:
        """Choose ``path`` as the base model here and as the model of the Segment widget."""
        segment = segment_widget_for(self.viewer)
        if segment is not None:
            segment.select_model(path)
        self.model_picker.select(path)

    def _refuse(self, message: str) -> None:
        self.status.setText(message)
        show_warning(message)

    def _on_event(self, run: dict[str, Any], event: Any) -> None:
        if isinstance(event, Outcome):
            self._finish(run, event)
            return
        if run.get("ended"):
            return
        self.plot.add(event.step, loss=event.loss, val_loss=event.val_loss, val_dice=event.val_dice)
        # training ends at the step limit or the time budget, whichever comes first
        fraction = event.elapsed_s / run["budget"] if run["budget"] else 0.0
        if event.total_steps:
            fraction = max(fraction, event.step / event.total_steps)
        left = event.time_left_s
        steps = f"step {event.step}" + (f" / {event.total_steps}" if event.total_steps else "")
        remaining = f", {format_seconds(left)} left" if left is not None else ""
        self.progress_bar.set_progress(min(fraction, 1.0), 1.0, steps + remaining)
        if event.message:
            self.status.setText(event.message)
        # last: napari's activity bar processes pending events, so the next ones may be handled inside this call
        run["progress"].update_to(min(fraction, 1.0) * 1000, 1000)

    def _finish(self, run: dict[str, Any], outcome: Outcome) -> None:
        run["ended"] = True
        self._run = None
        self.run_button.setText("Fine-tune")
        self.run_button.setEnabled(True)
        self.live_button.setEnabled(True)
        status = outcome.status
        if status == "failed":
            message = report_failure(outcome, "Fine-tuning")
            self.progress_bar.set_progress(0, 1, "failed")
        elif outcome.value is None:
            status = "cancelled"
            message = "Stopped before the first training step; no model was saved."
            show_info(message)
            self.progress_bar.set_progress(0, 1, "stopped")
        else:
            version = outcome.value
            self.scores.setText(scores_text(version))
            self.scores.show()
            message, selected = version_message(version, run["base"], run["cancel"].cancelled,
                                                corrections_message(version.path, run["predictions"]))
            if selected:
                self.saved_path, self.parent_path = version.path, version.parent
                self.select_model(version.path)
                self.segment_again_button.setEnabled(True)
                self.rollback_button.setEnabled(True)
            (show_info if selected else show_warning)(message)
            self.progress_bar.set_progress(1, 1, "done")
        self.status.setText(message)
        run["progress"].close()  # after the widget's state is final: napari processes pending events here
        self.run_finished.emit(status)

