"""Reviewed regions: the shapes a user draws over the parts of an image they have corrected.

A user who corrected only part of an image trains on that part: the rectangles (or polygons, ellipses) of a
Shapes layer become the training mask. Shapes are mapped into the labels layer's pixel grid through both
layers' scale and translate. A shape drawn on a 2D Shapes layer over a stack marks that region on every
plane; a shape drawn in a 3D Shapes layer marks its own plane only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

AREA_SHAPES = ("rectangle", "polygon", "ellipse")


def regions_mask(shapes: Any, labels: Any) -> np.ndarray:
    """A boolean mask over ``labels.data`` that is True inside the area shapes of ``shapes``."""
    from skimage.draw import ellipse, polygon2mask

    from napari_unet.core.errors import InvalidInputError

    shape = tuple(labels.data.shape)
    mask = np.zeros(shape, dtype=bool)
    used = 0
    for vertices, kind in zip(shapes.data, shapes.shape_type):
        if kind not in AREA_SHAPES:
            continue
        world = np.asarray(vertices, float) * np.asarray(shapes.scale) + np.asarray(shapes.translate)
        n = min(world.shape[1], len(shape))
        world = world[:, -n:]
        pixels = (world - np.asarray(labels.translate)[-n:]) / np.asarray(labels.scale)[-n:]
        plane = np.zeros(shape[-2:], dtype=bool)
        yx = pixels[:, -2:]
        if kind == "ellipse":
            (y0, x0), (y1, x1) = yx.min(axis=0), yx.max(axis=0)
            rr, cc = ellipse((y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2, shape=plane.shape)
            plane[rr, cc] = True
        else:
            plane = polygon2mask(plane.shape, yx)
        if n > 2:
            lead = tuple(int(round(v)) for v in pixels[:, :-2].mean(axis=0))
            if any(not 0 <= i < size for i, size in zip(lead, shape[-n:-2])):
                continue
            mask[(Ellipsis, *lead, slice(None), slice(None))] |= plane
        else:
            mask |= plane
        used += 1
    if not used or not mask.any():
        raise InvalidInputError(
            f"the Shapes layer '{shapes.name}' has no rectangle, polygon or ellipse over the labels "
            f"'{labels.name}'; draw rectangles around the regions you corrected, or choose no regions layer "
            "to train on the whole labels layer"
        )
    return mask
