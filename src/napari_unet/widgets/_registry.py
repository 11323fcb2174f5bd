"""Which Segment widget belongs to which viewer, so the Fine-tune widget can hand it a new model.

A weak mapping: a closed viewer or widget simply disappears from it.
"""
from __future__ import annotations

import weakref
from typing import Any

_SEGMENT_WIDGETS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _key(viewer: Any) -> int:
    # napari hands each plugin widget its own proxy of the viewer; the viewer behind them is the same
    return id(getattr(viewer, "__wrapped__", viewer))


def register_segment_widget(viewer: Any, widget: Any) -> None:
    _SEGMENT_WIDGETS[_key(viewer)] = widget


def segment_widget_for(viewer: Any, open_if_missing: bool = False) -> Any | None:
    """The viewer's Segment widget; with ``open_if_missing``, dock one when there is none."""
    widget = _SEGMENT_WIDGETS.get(_key(viewer))
    if widget is not None and _key(getattr(widget, "viewer", None)) != _key(viewer):  # an id reused after a close
        widget = None
    if widget is None and open_if_missing and getattr(viewer, "window", None) is not None:
        viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        widget = _SEGMENT_WIDGETS.get(_key(viewer))
    return widget
