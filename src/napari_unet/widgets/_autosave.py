"""Autosaving the Labels layers a user corrects, on the main thread, every few minutes and on fine-tune.

One :class:`Autosaver` per viewer watches layers: the plugin's own output layers when the Segment widget makes
them (while the setting is on), and the training labels when fine-tuning starts. A layer is written only when
napari says it changed (its ``paint`` or ``data`` events), so an idle session writes nothing. Saving runs on
the main thread because it reads the layer's array, which the user may be painting on; a compressed snapshot
of a 2048 x 2048 label image takes a few tens of milliseconds. Files are written by
:mod:`napari_unet.core.autosave`, atomically.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

INTERVAL_MS = 3 * 60 * 1000

_SAVERS: weakref.WeakValueDictionary[int, Autosaver] = weakref.WeakValueDictionary()


class Autosaver(QObject):
    """Snapshots of watched Labels layers whenever they changed, every ``interval_ms`` and on request."""

    def __init__(self, viewer: Any, interval_ms: int = INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._dirty: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
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
        """Write every watched layer that changed since its last snapshot; returns how many were written.

        Never raises: a full disk must not break the viewer. A failure is printed, the layer stays marked
        changed and is tried again next time.
        """
        from napari_unet.core.autosave import autosave_enabled, save_snapshot

        if not autosave_enabled():
            return 0
        written = 0
        for layer, key in list(self._keys.items()):
            if not self._dirty.get(layer) or not isinstance(layer.data, np.ndarray):
                continue
            try:
                save_snapshot(key, layer.data, layer.name, _source(layer), layer.scale, layer.translate)
            except (OSError, ValueError) as exc:
                print(f"napari-unet: could not autosave '{layer.name}': {exc}", file=sys.stderr)
                continue
            self._dirty[layer] = False
            written += 1
        return written

    def save_layers(self, layers: list[Any]) -> int:
        """Watch ``layers`` and save everything that changed now (what starting fine-tuning does)."""
        for layer in layers:
            if layer is not None:
                self.watch(layer)
        return self.save_changed()


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
