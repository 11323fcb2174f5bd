"""The Segment dock's "where to look next": an uncertainty layer and the least certain objects in view.

When the option is on, the worker (never the widget) turns the run's class probabilities into a map of the
model's uncertainty and ranks the objects by it (:mod:`napari_unet.core.uncertainty`); the dock shows the map as
an image layer under the labels and lists the :data:`SHOWN` least certain objects in view. A click on one
centres the view on it, moves the stack to its plane and selects its label, so the user can correct it at once.
The list follows the view: pan, zoom or change plane and it shows the least certain objects there.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QCheckBox, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from napari_unet.core.uncertainty import entropy_map, object_doubts, within
from napari_unet.widgets._layers import add_derived_image, geometry_kwargs

SHOWN = 5  # objects listed: a handful to check, not a second labels layer


@dataclass(frozen=True)
class Reviewed:
    """A segmentation result with the model's uncertainty: the map (labels' shape) and the objects, least
    certain first."""

    result: Any
    entropy: np.ndarray
    doubts: list[Any]


def with_doubts(steps: Generator[Any, None, Any]) -> Generator[Any, None, Reviewed]:
    """Run in the worker: pass ``steps``' progress on, then measure the result's uncertainty."""
    result = yield from steps
    entropy = entropy_map(np.asarray(result.probabilities))
    return Reviewed(result, entropy, object_doubts(np.asarray(result.labels), entropy))


class DoubtPanel(QWidget):
    """A check box (worker asks for uncertainty), and the list of the least certain objects in view."""

    def __init__(self, viewer: Any, view_bounds: Callable[[Any], dict[str, tuple[float, float]] | None],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._view_bounds = view_bounds  # (layer) -> visible Y and X in its data coordinates, or None
        self._layer: Any = None
        self._doubts: list[Any] = []
        self.check = QCheckBox("Show where to look next")
        self.check.setToolTip("After segmenting, add a layer of the model's uncertainty (entropy of its class "
                              "probabilities) and list the least certain objects in view: check those first.")
        self.title = QLabel("Least certain in view (click to go there):")
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.itemClicked.connect(self._go_to)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.check)
        layout.addWidget(self.title)
        layout.addWidget(self.list)
        self._timer = QTimer(self, singleShot=True, interval=250)  # after the view settles
        self._timer.timeout.connect(self.refresh)
        self._set_visible(False)

    @property
    def wanted(self) -> bool:
        return self.check.isChecked()

    def show_result(self, reviewed: Reviewed, source: Any, output: Any, scope: Any) -> None:
        """Show the uncertainty layer of ``source`` under ``output`` and list its objects (main thread); ``scope``
        (a :class:`~napari_unet.widgets._scope.Scope`) says which part of the output the run covered."""
        name = f"{source.name} uncertainty"
        full = np.zeros(output.data.shape, np.float32)
        full[scope.output_index] = reviewed.entropy.reshape(full[scope.output_index].shape)
        layer = add_derived_image(self.viewer, full, name, colormap="inferno", contrast_limits=(0, 1),
                                  blending="additive", opacity=0.6, **geometry_kwargs(output))
        self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(output))
        self._doubts = [_placed(d, scope) for d in reviewed.doubts]
        self._watch(output)
        self.refresh()

    def refresh(self) -> None:
        """List the least certain objects that reach into the view (the plane shown, the canvas's extent)."""
        self.list.clear()
        layer = self._layer
        if layer is None or layer not in self.viewer.layers:
            self._set_visible(False)
            return
        shown = within(self._doubts, self._bounds(layer))[:SHOWN]
        for doubt in shown:
            item = QListWidgetItem(f"object {doubt.label}: {doubt.score:.0%} unsure")
            item.setData(Qt.ItemDataRole.UserRole, doubt)
            self.list.addItem(item)
        self._set_visible(bool(self._doubts))
        self.title.setText("Least certain in view (click to go there):" if shown else
                           "No object in view: pan, zoom or change the plane.")

    def forget(self) -> None:
        """Drop the list (a new run, or the output layer changed hands)."""
        self._doubts = []
        self._watch(None)
        self.refresh()

    def _bounds(self, layer: Any) -> dict[int, tuple[float, float]]:
        """The part of ``layer`` in view, by axis of its data: the planes shown and the canvas's Y and X."""
        point = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        offset = self.viewer.dims.ndim - layer.ndim
        displayed = [axis - offset for axis in self.viewer.dims.displayed]
        bounds = {axis: (round(point[axis]),) * 2 for axis in range(layer.ndim) if axis not in displayed}
        view = self._view_bounds(layer)
        if view is not None and len(displayed) == 2:
            bounds[displayed[0]], bounds[displayed[1]] = view["Y"], view["X"]
        return bounds

    def _go_to(self, item: QListWidgetItem) -> None:
        doubt = item.data(Qt.ItemDataRole.UserRole)
        layer = self._layer
        if layer is None or layer not in self.viewer.layers:
            return
        world = layer.data_to_world(doubt.centre)
        offset = self.viewer.dims.ndim - layer.ndim
        for axis, value in enumerate(world):
            if axis + offset not in self.viewer.dims.displayed:
                self.viewer.dims.set_point(axis + offset, value)
        camera = _camera(self.viewer)
        camera.center = tuple(world[a - offset] for a in self.viewer.dims.displayed)
        layer.selected_label = doubt.label
        self.viewer.layers.selection.active = layer

    def _watch(self, layer: Any) -> None:
        camera = _camera(self.viewer)
        events = (camera.events.center, camera.events.zoom, self.viewer.dims.events.point)
        if self._layer is not None:
            for event in events:
                event.disconnect(self._view_changed)
        self._layer = layer
        if layer is not None:
            for event in events:
                event.connect(self._view_changed)

    def _view_changed(self, event: Any = None) -> None:
        self._timer.start()  # refresh once the view settles, not on every step of a pan

    def _set_visible(self, visible: bool) -> None:
        self.title.setVisible(visible)
        self.list.setVisible(visible)


def _camera(viewer: Any) -> Any:
    """The viewer's camera (napari 0.9 moved it to ``viewer.scene``)."""
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def _placed(doubt: Any, scope: Any) -> Any:
    """A doubt of the run's labels placed in the output layer: shifted by the part the run covered, with the
    axes it held at one index (the plane of a "current slice" run) added back."""
    centre = [float(s.start) for s in scope.output_index]
    extent = [(s.start, s.stop) for s in scope.output_index]
    free = [axis for axis, fixed in enumerate(scope.fixed) if not fixed]
    for k, axis in enumerate(free):
        start = scope.output_index[axis].start
        centre[axis] = start + doubt.centre[k]
        extent[axis] = (start + doubt.extent[k][0], start + doubt.extent[k][1])
    return replace(doubt, centre=tuple(centre), extent=tuple(extent))
