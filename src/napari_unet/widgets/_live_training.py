"""Live mode of the Fine-tune dock: training goes on while the user paints, and each better version shows up
on screen by itself, without pressing Fine-tune or Segment.

While *Live* is on, :func:`napari_unet.core.live_training.live_in_child` runs in a worker: one training child
trains in rounds on the newest snapshot of the training pairs (that module says what a round is and when it
makes a version). This controller works on the main thread:

* it watches the pairs' Labels layers (napari's ``paint`` and ``data`` events) and reviewed-regions layers
  (``data``) and only sets a flag and restarts a short timer: a stroke costs nothing more. When the user has
  paused for :data:`SETTLE_MS` (a correction is several strokes, sent together), and at the latest every
  :data:`TICK_MS` while they go on painting or when the pairs changed, the pairs are copied (the dock's
  ``samples()``) and the copy put in the worker's outbox; the worker thread sends it to the child, so the
  images are pickled off the viewer's thread. Sent at a pause, a correction judges the round trained before it
  about a second after it is made, not up to a tick later;
* on a round that made a version, it selects the version (here and in Segment) and re-segments the region in
  view of each pair whose labels Segment made (they carry the kept prediction of :mod:`._predictions`) in a
  Segment worker, which also plans, object by object, where the new labels may go (only where the layer still
  equals that prediction and outside the pair's reviewed regions, :func:`._predictions.plan_unedited`); the
  main thread then writes them (:func:`._predictions.write_unedited`), planning again itself only if a stroke
  came meanwhile: strokes and checked labels are never overwritten. One re-segmentation at a time; the
  newest version that arrived meanwhile is re-segmented next;
* it shows the live state in one line (rounds done, the last held-out score, the version in use) and every
  round's steps in the dock's loss plot, one step axis for the whole session.

Stopping (the toggle, closing the dock, closing napari) cancels the worker's token: the child drops the round
in progress and ends, and the versions it saved stay in the library.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from napari_unet.core.change_kinds import corrected_kinds
from napari_unet.core.live_training import LiveRound
from napari_unet.widgets._layers import spatial_scale, unwrap
from napari_unet.widgets._models import model_kind
from napari_unet.widgets._predictions import plan_unedited, prediction_of, write_unedited
from napari_unet.widgets._regions import regions_mask
from napari_unet.widgets._registry import segment_widget_for
from napari_unet.widgets._scope import plan_scope
from napari_unet.widgets._view import data_position, view_bounds
from napari_unet.widgets._workers import Outcome, report_failure, segment_in_worker, start_worker

TICK_MS = 5000  # how often new strokes are looked for and sent while the user goes on painting
SETTLE_MS = 1000  # strokes are sent once the user has paused this long
ROUND_S = 20.0  # the time budget of one round (the dock's Steps, when set, may end it sooner)
SCORE_NAMES = {"val_f1": "held-out F1@0.5", "val_dice": "held-out Dice"}
LIVE_HINT = ("Live: correct objects with napari's paint tools; new strokes are sent when you pause. The plot "
             "shows the loss of every round (a round starts again from the model in use).")
GUESSING = "trained on your correction: your next one will test it"
IDLE_HINT = ("Press Live to go on training while you paint, or Fine-tune for one run on the pairs as they are.")


@dataclass
class _LiveRun:
    cancel: Any  # CancelToken of the training worker
    outbox: queue.Queue  # snapshots for the worker to send to the child
    base: Path  # the model live training started from
    in_use: Path  # the version in use (the newest put to use, else the base)
    worker: Any = None
    rounds: int = 0
    score: str = ""
    waiting: bool = False
    guessing: bool = False  # the last round trained on one correction: the next strokes will judge it
    error: str = ""
    versions: list[Path] = field(default_factory=list)


@dataclass
class _Job:
    """One pair's part of a re-segmentation with a new version: the region in view, and the labels there as they
    were when it started, on which the worker plans where the new labels may go."""

    labels: Any  # the pair's Labels layer
    index: tuple[Any, ...]  # the region in view, in the layer
    crop: Any  # the image in view, for the network
    options: dict[str, Any]  # segment's
    reviewed: np.ndarray | None  # the pair's reviewed mask over the layer
    before: np.ndarray  # a copy of the layer's labels in the region
    kept: np.ndarray  # the layer's kept prediction (whole)
    sent: Any = None  # the pair as last sent to training (a Sample: copies of its labels and prediction)

    @cached_property
    def corrected(self) -> frozenset[str]:
        """The kinds of correction the user made anywhere in the pair, as last sent (those made in the region in
        view since then are read from the region itself); computed once, in the worker."""
        if self.sent is None or self.sent.prediction is None:
            return frozenset()
        return frozenset(corrected_kinds(self.sent.prediction, self.sent.labels))

    def plan(self, new: np.ndarray, instance: bool) -> np.ndarray:
        """Where ``new`` may go, as :func:`write_unedited` decides it on the labels as they were (any thread)."""
        reviewed = None if self.reviewed is None else self.reviewed[self.index]
        return plan_unedited(self.before, self.kept[self.index], new, instance, reviewed, self.index,
                             self.kept.shape, self.corrected)

    def unchanged(self) -> bool:
        """Whether the layer's region and kept prediction are still those the plan was made on (main thread)."""
        return prediction_of(self.labels) is self.kept and np.array_equal(self.labels.data[self.index], self.before)


class LiveTraining(QObject):
    """The live loop of a Fine-tune dock (``dock``): start, stop, the tick, and what a new version does."""

    stopped = Signal(str)  # "done" (stopped, versions kept) or "failed", once no training process is left
    resegmented = Signal(str)  # the version whose labels were just written into the view

    def __init__(self, dock: Any) -> None:
        super().__init__(dock)
        self.dock = dock
        self._run: _LiveRun | None = None
        self._dirty = False
        self._sent: dict = {}  # each pair's sample last sent, by its layers: its corrections say what a new
        # version may change in it
        self._pairs: tuple = ()  # the layers of the pairs watched, to notice pairs added, removed or changed
        self._watched: list[tuple[Any, str]] = []  # (layer, event name) connected to _mark_dirty
        self._segmenting: Any = None  # the cancel token of the re-segmentation in progress, if any
        self._pending: Path | None = None  # a version that arrived while another was being re-segmented
        self.timer = QTimer(self)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)
        self.settle = QTimer(self)  # restarted by every stroke: fires once the user pauses
        self.settle.setSingleShot(True)
        self.settle.setInterval(SETTLE_MS)
        self.settle.timeout.connect(self.tick)

    @property
    def running(self) -> bool:
        return self._run is not None

    # ----------------------------------------------------------------------------------------------------------
    # Start, stop, tick
    # ----------------------------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start live training on the dock's pairs; False (with a message) when it cannot start."""
        from napari_unet.core.cancel import CancelToken
        from napari_unet.core.live_training import live_in_child

        dock = self.dock
        if self._run is not None:
            return True
        prepared = dock.training_input()
        if isinstance(prepared, str):
            return self._refuse(prepared)
        model_path, samples = prepared
        options = {**dock.training_options(), "time_budget_s": ROUND_S}
        token, outbox = CancelToken(), queue.Queue()
        run = _LiveRun(token, outbox, model_path, model_path)
        self._run = run
        self._remember_sent(samples)
        self._watch()
        run.worker = start_worker(lambda: live_in_child(model_path, samples, token, options, outbox),
                                  lambda event: self._on_event(run, event), dock, token, "Live fine-tuning")
        self.timer.start()
        dock.plot.clear()
        dock.status.setText(LIVE_HINT)
        self._show(f"Live: training the first round on {len(samples)} pair(s) from {model_path.name}...")
        return True

    def stop(self) -> None:
        """Stop live training: the round in progress is dropped, the versions made stay in the library."""
        run = self._run
        if run is None or run.cancel.cancelled:
            return
        run.cancel.cancel()
        self.timer.stop()
        self.settle.stop()
        self._pending = None
        if self._segmenting is not None:  # Stop means no more changes to the labels, even of a finished round
            self._segmenting.cancel()
        self._show(f"Live: stopping after {run.rounds} round(s)...")

    def tick(self) -> None:
        """Send a fresh snapshot of the pairs when a stroke (or a change of the pairs) came since the last."""
        run = self._run
        if run is None or run.cancel.cancelled:
            return
        if self._pair_layers() != self._pairs:
            self._watch()
            self._dirty = True
        if not self._dirty:
            return
        self._dirty = False
        try:
            samples = self.dock.samples()
        except ValueError as exc:
            self._show(f"Live: the pairs cannot be sent ({exc}); training goes on with the last ones.")
            return
        run.outbox.put(samples)
        self._remember_sent(samples)
        if run.waiting:
            run.waiting = False
            self._show_state(run)

    def _remember_sent(self, samples: list) -> None:
        """Keep the samples just sent (one per pair, in the dock's order), by their pair's layers."""
        self._sent = dict(zip(self._pair_layers(), samples))

    def _refuse(self, message: str) -> bool:
        self._show(message)
        show_warning(message)
        return False

    # ----------------------------------------------------------------------------------------------------------
    # Watching the pairs
    # ----------------------------------------------------------------------------------------------------------

    def _pair_layers(self) -> tuple:
        return tuple(_layers_of(row) for row in self.dock.rows)

    def _watch(self) -> None:
        """Connect the pairs' labels and regions layers to the dirty flag (only those of the current pairs)."""
        self._unwatch()
        self._pairs = self._pair_layers()
        for _, labels, regions in self._pairs:
            for layer, names in ((labels, ("paint", "data")), (regions, ("data",))):
                for name in names if layer is not None else ():
                    getattr(layer.events, name).connect(self._mark_dirty)
                    self._watched.append((layer, name))

    def _unwatch(self) -> None:
        for layer, name in self._watched:
            getattr(layer.events, name).disconnect(self._mark_dirty)
        self._watched = []
        self._pairs = ()

    def _mark_dirty(self, event: Any = None) -> None:
        self._dirty = True
        self.settle.start()  # (re)started: the snapshot goes once the strokes pause

    # ----------------------------------------------------------------------------------------------------------
    # Rounds from the child (main thread)
    # ----------------------------------------------------------------------------------------------------------

    def _on_event(self, run: _LiveRun, event: Any) -> None:
        if isinstance(event, Outcome):
            self._finish(run, event)
            return
        if not isinstance(event, LiveRound):  # a training step of the round in progress
            self.dock.plot.add(event.step, loss=event.loss, val_loss=event.val_loss, val_dice=event.val_dice)
            self.dock.progress_bar.set_progress(min(event.elapsed_s / ROUND_S, 1.0), 1.0,
                                                f"round {run.rounds + 1}: {event.elapsed_s:.0f} s of {ROUND_S:.0f}")
            return
        run.rounds, run.waiting, run.guessing = event.number, event.waiting, event.guessing
        self.dock.progress_bar.set_progress(0.0, 0.0, "")  # the round ended; the line below says what came of it
        if event.error and event.error != run.error:
            show_warning(f"Live fine-tuning: {event.error}")
        run.error = event.error
        if event.score_name is not None:
            name = ("F1@0.5 on your newest corrections" if event.on_newer else "F1@0.5 on held-out corrections"
                    if event.on_corrections else SCORE_NAMES[event.score_name])
            run.score = f"{name} {event.after:.3f}"
        if event.version is not None:
            run.versions.append(event.version)
            if not run.cancel.cancelled:  # saved while stopping: kept in the library, not put to use
                run.in_use = event.version
                self.dock.select_model(event.version)
                self._resegment(event.version)
        self._show_state(run)

    def _show_state(self, run: _LiveRun) -> None:
        unscored = (GUESSING if run.guessing else
                    "no held-out correction yet (correct a few objects: each round is tested on some of them)")
        parts = [f"Live: {run.rounds} round{'s' if run.rounds != 1 else ''}", run.score or unscored,
                 f"using {run.in_use.name}"]
        line = " · ".join(parts)
        if run.error:
            line += f" · waiting for new strokes ({run.error})"
        elif run.guessing and run.score:
            line += f" · the last round {GUESSING}"
        elif run.waiting:
            line += " · waiting for new strokes"
        self._show(line)

    def _finish(self, run: _LiveRun, outcome: Outcome) -> None:
        self._run = None
        self.timer.stop()
        self.settle.stop()
        self._unwatch()
        made = ", ".join(path.name for path in run.versions) or "none"
        if outcome.status == "failed":
            message = report_failure(outcome, "Live fine-tuning")
        else:
            message = (f"Live fine-tuning stopped after {run.rounds} round(s); versions made: {made} (they stay in "
                       f"the library). {run.in_use.name} is in use.")
            show_info(message)
        if run.in_use != run.base:  # Roll back returns to the model live training started from
            self.dock.saved_path, self.dock.parent_path = run.in_use, run.base
            self.dock.rollback_button.setEnabled(True)
            self.dock.segment_again_button.setEnabled(True)
        self._show(message)
        self.dock.progress_bar.set_progress(0.0, 0.0, "")
        self.dock.status.setText(IDLE_HINT)
        self.stopped.emit("failed" if outcome.status == "failed" else "done")

    def _show(self, text: str) -> None:
        self.dock.live_line.setText(text)
        self.dock.live_line.show()

    # ----------------------------------------------------------------------------------------------------------
    # Re-segmenting the view with a new version
    # ----------------------------------------------------------------------------------------------------------

    def _resegment(self, version: Path) -> None:
        """Segment what is in view of each pair with ``version`` in a worker; the labels are written when it ends."""
        from napari_unet.core.cancel import CancelToken

        if self._segmenting is not None:
            self._pending = version
            return
        jobs = self._jobs(version)
        if not jobs:
            return
        token = CancelToken()
        instance = _task(version) == "instance"

        def steps() -> Any:
            results = []
            for job in jobs:
                result = yield from segment_in_worker(job.crop, version, token, job.options)
                results.append((result, job.plan(result.labels, instance)))  # off the viewer's thread
            return results

        self._segmenting = token
        start_worker(steps, lambda event: self._on_segmented(version, instance, jobs, event), self.dock, token,
                     "Live re-segmentation")

    def _jobs(self, version: Path) -> list[_Job]:
        """What to re-segment for each pair whose labels carry a prediction: the region in view."""
        viewer, dims = self.dock.viewer, model_kind(version)[0]
        segment = segment_widget_for(viewer)
        diameter = (segment.diameter_spin.value() or None) if segment is not None else None
        jobs = []
        for number, row in enumerate(self.dock.rows, 1):
            try:
                data, axes, layer_axes = self.dock.pair_input(number, row)
            except ValueError:
                continue
            image, labels = row.image.layer, row.labels.layer
            kept = prediction_of(labels, tuple(n for n, a in zip(data.shape, axes) if a != "C"))
            if kept is None:
                continue  # labels not made by Segment: the user's edits cannot be told from the model's output
            position = [0.0] * (len(axes) - len(layer_axes)) + data_position(viewer, image, layer_axes)
            scope = plan_scope(data.shape, axes, "view", position, dims, view_bounds(viewer, image, layer_axes))
            options = {"axes": scope.axes, "device": self.dock.device_picker.device, "diameter": diameter,
                       "scale": spatial_scale(image, layer_axes, scope.axes), "probabilities": False}
            regions = row.regions.layer
            try:
                reviewed = regions_mask(regions, labels) if regions is not None else None
            except ValueError:  # no area shape yet: nothing reviewed
                reviewed = None
            index = scope.output_index
            sent = self._sent.get(_layers_of(row))
            jobs.append(_Job(labels, index, data[scope.image_index], options, reviewed, np.array(labels.data[index]),
                             kept, sent))
        return jobs

    def _on_segmented(self, version: Path, instance: bool, jobs: list[_Job], event: Any) -> None:
        if not isinstance(event, Outcome):
            return  # tile progress: the labels are written at the end, where they may still be edited
        self._segmenting = None
        if event.status == "failed":
            report_failure(event, "Live re-segmentation")
        elif event.status == "done":
            for job, (result, planned) in zip(jobs, event.value):
                if job.labels not in self.dock.viewer.layers:
                    continue
                # strokes made (or a new Segment run) while the worker ran: planned again here, on the labels now
                write_unedited(job.labels, job.index, result.labels, instance, job.reviewed,
                               planned if job.unchanged() else None, job.corrected)
            self.resegmented.emit(version.name)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._resegment(pending)


def _task(folder: Path) -> str:
    """A model's task ("instance" or "semantic") from its config, without torch."""
    from napari_unet.core.library import read_config_json

    return str(read_config_json(folder / "config.json").get("task", "instance"))


def _layers_of(row: Any) -> tuple:
    """A pair's (image, labels, regions) layers, unwrapped: what identifies it from one look to the next."""
    return unwrap(row.image.layer), unwrap(row.labels.layer), unwrap(row.regions.layer)
