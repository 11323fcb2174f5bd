"""Showing labels as they are computed, without stalling the viewer.

Redrawing a whole 2048 x 2048 Labels layer costs about 100 ms on a small CPU, far more than the ~16 ms a frame
may take. napari's own painting tools avoid this by uploading only the changed part of the texture; this
module does the same for the tiles a run finishes: it writes them into the layer's array and redraws only the
part of the current view they touch, a few per event-loop turn within a small time budget. Where that is not
possible (a 3D view, transposed axes, a non-numpy array such as the zarr array of a result too large for
memory) it falls back to a throttled full refresh, skipped for regions on slices not on screen.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

TICK_MS = 30
BUDGET_S = 0.012  # redraw work per event-loop turn, leaving the rest of a frame to napari
FULL_REFRESH_EVERY_S = 0.5


def redraw_region(layer: Any, region: tuple[slice, ...]) -> bool:
    """Redraw the part of ``layer``'s current view inside ``region`` (data coordinates).

    Returns False when only a full refresh can show the change. Uses the same internals as napari's own paint
    tool (``_partial_labels_refresh``), on the layer behind the proxy napari gives plugins (which warns about
    private access); any change in those internals leads to the full-refresh path, never to an error.
    """
    layer = getattr(layer, "__wrapped__", layer)
    try:
        data = layer.data
        displayed = list(layer._slice_input.displayed)
        point = layer._get_pt_not_disp()
        if any(not (region[axis].start <= index < region[axis].stop) for axis, index in point.items()):
            return True  # the region is on another slice: nothing visible changed (whatever the array)
        if (not isinstance(data, np.ndarray) or len(displayed) != 2 or displayed != sorted(displayed)
                or layer.contour != 0 or not layer._slicing_state.loaded):
            return False
        shown = tuple(region[axis] for axis in displayed)
        source = tuple(region[axis] if axis in displayed else point[axis] for axis in range(data.ndim))
        image = layer._slice.image
        if image.raw.shape != tuple(data.shape[axis] for axis in displayed):
            return False
        image.raw[shown] = data[source]
        image.view[shown] = layer.colormap._data_to_texture(image.raw[shown])
        layer._updated_slice = region
        layer._partial_labels_refresh()
        return True
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return False


def blocks(region: tuple[slice, ...], size: int = 512) -> list[tuple[slice, ...]]:
    """Split the last two axes of ``region`` into blocks of at most ``size`` pixels, for redrawing piecewise."""
    *lead, ys, xs = region
    return [(*lead, slice(y, min(y + size, ys.stop)), slice(x, min(x + size, xs.stop)))
            for y in range(ys.start, ys.stop, size) for x in range(xs.start, xs.stop, size)]


class LiveLabels(QObject):
    """Queue of regions of one Labels layer to redraw, worked off by a timer on the main thread."""

    def __init__(self, layer: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.layer = layer
        self._queue: deque[tuple[slice, ...]] = deque()
        self._needs_full = False
        self._last_full = 0.0
        self._on_idle: Callable[[], None] | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)

    def write(self, region: tuple[slice, ...], values: np.ndarray) -> None:
        """Put ``values`` into ``layer.data[region]`` and queue the region for redrawing."""
        target = self.layer.data[region]
        target[...] = np.asarray(values).reshape(target.shape)
        self.queue(region)

    def refresh_all(self) -> None:
        """Redraw the layer's current view once, soon (a zarr-backed layer: only what is on screen is read)."""
        self._needs_full = True
        if not self._timer.isActive():
            self._timer.start()

    def queue(self, region: tuple[slice, ...]) -> None:
        self._queue.extend(blocks(region) if len(region) >= 2 else [region])
        if not self._timer.isActive():
            self._timer.start()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything queued so far is on screen."""
        self._on_idle = callback
        if not self._timer.isActive():
            self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._queue.clear()
        self._on_idle = None

    def _tick(self) -> None:
        started = time.perf_counter()
        while self._queue and time.perf_counter() - started < BUDGET_S:
            if not redraw_region(self.layer, self._queue.popleft()):
                self._needs_full = True
        now = time.perf_counter()
        idle = not self._queue
        finishing = idle and self._on_idle is not None
        if self._needs_full and (finishing or now - self._last_full > FULL_REFRESH_EVERY_S):
            self.layer.refresh()
            self._needs_full = False
            self._last_full = now
        if idle and not self._needs_full:
            self._timer.stop()
            callback, self._on_idle = self._on_idle, None
            if callback is not None:
                callback()
