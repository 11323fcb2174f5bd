"""Autosaving the Labels layers a user corrects, every few minutes and on fine-tune, without stalling the viewer.

One :class:`Autosaver` per viewer watches layers: the plugin's own output layers when the Segment widget makes
them (while the setting is on), and the training labels when fine-tuning starts. A layer is written only when
napari says it changed (its ``paint`` or ``data`` events) or the plugin wrote into it (:func:`mark_changed`), so
an idle session writes nothing.

A save copies the layer's array on the main thread, where the user paints, so the snapshot is the labels as
they were at one moment; compressing, writing and flushing the copy (:mod:`napari_unet.core.autosave`,
atomically) happen on the autosaver's own thread, one save at a time, and the outcome comes back to the main
thread through a Qt signal. A layer has at most one save running: a save asked for meanwhile starts when it
ends. A failed save is shown as a napari warning (once, until a save of that layer succeeds again), keeps the
previous snapshot, and the layer is tried again at the next save.

The thread is a plain one, not a napari worker: napari's workers replace the process-wide warnings hook while
they run and put the old one back when they end, so a save that ended while a Segment or Fine-tune worker ran
took that run's hook away, and its warnings never reached the user. Nor does a save wait behind those runs in
napari's shared thread pool (as many threads as cores).
"""
from __future__ import annotations

import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from qtpy.QtCore import QCoreApplication, QObject, QTimer, Signal

INTERVAL_MS = 3 * 60 * 1000

_SAVERS: weakref.WeakValueDictionary[int, Autosaver] = weakref.WeakValueDictionary()


class Autosaver(QObject):
    """Snapshots of watched Labels layers whenever they changed, every ``interval_ms`` and on request."""

    _written = Signal(object)  # (layer reference, layer name, error or None), from the saving thread

    def __init__(self, viewer: Any, interval_ms: int = INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._dirty: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._saving: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # a save is running
        self._again: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # asked for meanwhile
        self._warned: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # failing, said so
        self._pending = 0  # saves started whose outcome has not arrived yet
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-autosave")
        self._written.connect(self._saved)  # queued: emitted by the saving thread, run on the main thread
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.save_changed)
        self.timer.start()

    @property
    def watched(self) -> list[Any]:
        return list(self._keys.keys())

    def watch(self, layer: Any, source: str | None = None) -> None:
        """Autosave ``layer`` from now on; it counts as changed, so the next save writes it."""
        layer = getattr(layer, "__wrapped__", layer)  # napari's plugin proxy: watch the layer itself
        if layer in self._keys:
            return
        from napari_unet.core.autosave import new_key

        self._keys[layer] = new_key(layer.name)
        self._dirty[layer] = True
        owner = weakref.ref(self)

        def changed(event: Any = None, layer_ref: Any = weakref.ref(layer)) -> None:
            saver, target = owner(), layer_ref()
            if saver is not None and target is not None:
                saver._dirty[target] = True

        layer.events.paint.connect(changed)
        layer.events.data.connect(changed)

    def save_changed(self) -> int:
        """Start saving every watched layer that changed since its last snapshot; returns how many saves started.

        The labels are copied here; the files are written in a worker thread (:meth:`wait` waits for them). A
        layer whose previous save still runs is saved again when that one ends. Never raises: a full disk must
        not break the viewer (see :meth:`_saved`).
        """
        from napari_unet.core.autosave import autosave_enabled

        if not autosave_enabled():
            return 0
        started = 0
        for layer, key in list(self._keys.items()):
            if not self._dirty.get(layer) or not isinstance(layer.data, np.ndarray):
                continue
            if self._saving.get(layer):
                self._again[layer] = True
                continue
            self._start(layer, key)
            started += 1
        return started

    @property
    def busy(self) -> bool:
        """Whether a save is being written."""
        return self._pending > 0

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Wait for the saves being written (and those they lead to) to end, handling Qt events meanwhile so
        that their results arrive; True if none is left. For tests and for a clean exit."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        return not self._pending

    def _start(self, layer: Any, key: str) -> None:
        """Copy ``layer``'s labels now and write them on the saving thread."""
        snapshot = np.array(layer.data, copy=True)  # the labels at this moment; painting goes on meanwhile
        args = (key, snapshot, layer.name, _source(layer), tuple(layer.scale), tuple(layer.translate))
        self._dirty[layer] = False
        self._saving[layer] = True
        self._pending += 1
        self._thread.submit(_write, self._written, weakref.ref(layer), *args)

    def _saved(self, outcome: tuple[Any, str, BaseException | None]) -> None:
        """A save ended (main thread): warn about a failure, or start the save asked for meanwhile."""
        layer_ref, name, error = outcome
        self._pending = max(0, self._pending - 1)
        layer = layer_ref()
        if layer is None:
            return  # the layer is gone
        self._saving.pop(layer, None)
        again = self._again.pop(layer, False)
        if error is not None:
            self._dirty[layer] = True  # tried again at the next save
            print(f"napari-unet: could not autosave '{name}': {error}", file=sys.stderr)
            if not self._warned.get(layer):
                self._warned[layer] = True
                from napari.utils.notifications import show_warning

                show_warning(f"Could not autosave the labels '{name}': {error}. The previous autosave is kept; "
                             "free some disk space, or save the layer yourself (File > Save Selected Layers). "
                             "Autosave keeps trying every few minutes.")
            return
        self._warned.pop(layer, None)
        if again and self._dirty.get(layer) and layer in self._keys:
            self.save_changed()

    def save_layers(self, layers: list[Any]) -> int:
        """Watch ``layers`` and start saving everything that changed (what starting fine-tuning does)."""
        for layer in layers:
            if layer is not None:
                self.watch(layer)
        return self.save_changed()


def _write(done: Any, layer_ref: Any, key: str, data: np.ndarray, name: str, source: str | None, scale: tuple,
           translate: tuple) -> None:
    """Compress and write one snapshot (on the saving thread), then report to the main thread; never raises."""
    from napari_unet.core.autosave import save_snapshot

    error = None
    try:
        save_snapshot(key, data, name, source, scale, translate)
    except Exception as exc:  # noqa: BLE001 - any failure is shown to the user on the main thread
        error = exc
    try:
        done.emit((layer_ref, name, error))
    except RuntimeError:
        pass  # the viewer's window, and its autosaver, were closed meanwhile


def mark_changed(layer: Any) -> None:
    """Count ``layer`` as changed for every autosaver that watches it: for writes into its array that napari
    does not announce (Live mode's re-segmentation of the view writes the array and refreshes the layer)."""
    layer = getattr(layer, "__wrapped__", layer)
    for saver in list(_SAVERS.values()):
        if layer in saver._keys:
            saver._dirty[layer] = True


def autosaver_for(viewer: Any) -> Autosaver:
    """The viewer's autosaver, made on first use; it lives as long as the viewer's window."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    saver = _SAVERS.get(id(viewer))
    if saver is None or saver.viewer is not viewer:
        window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        saver = Autosaver(viewer, parent=window)
        _SAVERS[id(viewer)] = saver
    return saver


def _source(layer: Any) -> str | None:
    from napari_unet.widgets._layers import output_record

    record = output_record(layer)
    return record.get("source") if record else None
