"""Where the viewer looks, in a layer's data coordinates: the position of its sliders and the part of the
canvas in view. The Segment dock plans its "current slice" and "region in view" runs from them, and Live
fine-tuning re-segments what is in view."""
from __future__ import annotations

from typing import Any

import numpy as np


def data_position(viewer: Any, layer: Any, axes: str) -> list[float]:
    """The viewer's position in the layer's data coordinates, one value per axis of ``axes``."""
    point = list(np.asarray(layer.world_to_data(viewer.dims.point), dtype=float))
    return point + [0.0] * (len(axes) - len(point))  # an RGB layer's colour axis has no position


def view_bounds(viewer: Any, layer: Any, axes: str) -> dict[str, tuple[float, float]] | None:
    """The Y and X extent of the canvas in the layer's data coordinates (2D view only)."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        return None
    offset = dims.ndim - layer.ndim  # the layer's axes are the viewer's last ones
    shown = [axis - offset for axis in dims.displayed]
    if [axes[i] if 0 <= i < len(axes) else "" for i in shown] != ["Y", "X"]:
        return None
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9
    canvas = getattr(viewer, "canvas", None)
    height, width = canvas.size if canvas is not None else viewer._canvas_size
    zoom = camera.zoom
    center = camera.center[-2:]
    corners = []
    for dy, dx in ((-1, -1), (1, 1)):
        point = list(dims.point)
        point[dims.displayed[0]] = center[0] + dy * height / (2 * zoom)
        point[dims.displayed[1]] = center[1] + dx * width / (2 * zoom)
        corners.append(layer.world_to_data(point))
    (y0, x0), (y1, x1) = ([c[shown[0]], c[shown[1]]] for c in corners)
    return {"Y": (min(y0, y1), max(y0, y1)), "X": (min(x0, x1), max(x0, x1))}
