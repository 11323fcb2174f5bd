"""Autosaving the Labels layers a user corrects, every few minutes and on fine-tune, without stalling the viewer.

One :class:`Autosaver` per viewer watches layers: the plugin's own output layers when the Segment widget makes
them (while the setting is on), and the training labels when fine-tuning starts. A layer is written only when
napari says it changed (its ``paint`` or ``data`` events), so an idle session writes nothing.

A save copies the layer's array on the main thread, where the user paints, so the snapshot is the labels as
they were at one moment; compressing, writing and flushing the copy (:mod:`napari_unet.core.autosave`,
atomically) happen in a napari worker on the autosaver's own thread. A layer has at most one save running: a
save asked for meanwhile starts when it ends. A failed save is shown as a napari warning (once, until a save of that layer
succeeds again), keeps the previous snapshot, and the layer is tried again at the next save.
"""
from __future__ import annotations

import sys
import time
import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import QCoreApplication, QObject, QThreadPool, QTimer

INTERVAL_MS = 3 * 60 * 1000

_SAVERS: weakref.WeakValueDictionary[int, Autosaver] = weakref.WeakValueDictionary()


class Autosaver(QObject):
    """Snapshots of watched Labels layers whenever they changed, every ``interval_ms`` and on request."""

    def __init__(self, viewer: Any, interval_ms: int = INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._dirty: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._saving: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # a save is running
        self._again: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # asked for meanwhile
        self._warned: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()  # failing, said so
        self._workers: set[Any] = set()  # saves running (napari workers), kept referenced until they end
        # one thread of its own: saves never wait behind a long Segment or Fine-tune run in napari's shared
        # pool (as many threads as cores), are written one at a time, and a closing window waits for the last
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
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
        return bool(self._workers)

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Wait for the saves being written (and those they lead to) to end, handling Qt events meanwhile so
        that their results arrive; True if none is left. For tests and for a clean exit."""
        deadline = time.monotonic() + timeout_s
        while self._workers and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        return not self._workers

    def _start(self, layer: Any, key: str) -> None:
        """Copy ``layer``'s labels now and write them in a worker thread."""
        from napari.qt.threading import create_worker

        snapshot = np.array(layer.data, copy=True)  # the labels at this moment; painting goes on meanwhile
        scale, translate = tuple(layer.scale), tuple(layer.translate)
        self._dirty[layer] = False
        self._saving[layer] = True
        worker = create_worker(_write, key, snapshot, layer.name, _source(layer), scale, translate,
                               _start_thread=False)
        self._workers.add(worker)
        layer_ref, owner, name = weakref.ref(layer), weakref.ref(self), layer.name
        worker.returned.connect(lambda error: _deliver(owner, worker, layer_ref, name, error))
        self._pool.start(worker)

    def _saved(self, worker: Any, layer: Any, name: str, error: BaseException | None) -> None:
        """A save ended (main thread): warn about a failure, or start the save asked for meanwhile."""
        self._workers.discard(worker)
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
        """Watch ``layers`` and save everything that changed now (what starting fine-tuning does)."""
        for layer in layers:
            if layer is not None:
                self.watch(layer)
        return self.save_changed()


def _write(key: str, data: np.ndarray, name: str, source: str | None, scale: tuple, translate: tuple
           ) -> tuple[BaseException] | None:
    """Compress and write one snapshot (in a worker thread); returns the error (in a tuple: a worker that
    returns an exception raises it) instead of raising it."""
    from napari_unet.core.autosave import save_snapshot

    try:
        save_snapshot(key, data, name, source, scale, translate)
    except Exception as exc:  # noqa: BLE001 - any failure is shown to the user on the main thread
        return (exc,)
    return None


def _deliver(owner: Any, worker: Any, layer_ref: Any, name: str, failed: tuple[BaseException] | None) -> None:
    from qtpy.compat import isalive

    saver = owner()
    if saver is not None and isalive(saver):
        saver._saved(worker, layer_ref(), name, failed[0] if failed else None)


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
