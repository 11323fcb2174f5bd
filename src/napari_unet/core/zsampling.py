"""Z steps: a stack resampled along Z to the grid a network works on, and its results brought back.

Stacks are usually recorded with a Z step several times the pixel size. A network that learned nuclei on one
grid sees them squashed on a coarser one, so a stack whose voxel size is known is resampled along Z to the
network's grid first (the *image*, linearly: resampling results afterwards cannot change what the network saw)
and each of the stack's own planes then takes the result of the nearest resampled plane. The 2D model's three
orthogonal passes (:mod:`~napari_unet.core.orthogonal`) and 3D models (:func:`to_model_grid`, also what
``scripts/train_3d_model.py`` trains on) resample the same way, so that what a model is trained on and what it
is given agree. The first and last planes are kept where they are.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_unet.core import sizing
from napari_unet.core.axes import check_axes, infer_axes
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.postprocess import renumbered


def check_scale(scale: Sequence[float] | None, axes: str) -> dict[str, float]:
    """The pixel size per spatial axis of the image (Z, Y, X in the image's order), or {} for None."""
    if scale is None:
        return {}
    spatial = [a for a in axes if a in "ZYX"]
    try:
        values = [float(s) for s in scale]
    except (TypeError, ValueError):
        values = []
    if len(values) != len(spatial) or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInputError(f"scale must give one positive pixel size per spatial axis of the image "
                                f"({''.join(spatial)}), e.g. scale={(2.0, 1.0, 1.0)[-len(spatial):]}, not {scale!r}")
    return dict(zip(spatial, values))


def lateral_size(sizes: dict[str, float]) -> float:
    """The lateral pixel size: the geometric mean of Y and X (the same where the pixels are square)."""
    return math.sqrt(sizes["Y"] * sizes["X"])


def resampled_depth(depth: int, factor: float) -> int:
    """Planes of a stack of ``depth`` planes resampled to Z steps ``factor`` times finer (first and last kept)."""
    if depth <= 1:
        return depth
    return max(1, int(round((depth - 1) * factor))) + 1


def nearest_planes(depth: int, resampled: int) -> np.ndarray:
    """For each of ``depth`` planes, the index of the nearest plane of a ``resampled``-plane version of the stack
    (the same span, first and last planes kept)."""
    if depth <= 1 or resampled <= 1:
        return np.zeros(depth, dtype=np.intp)
    return np.rint(np.arange(depth) * ((resampled - 1) / (depth - 1))).astype(np.intp)


def resample_planes(array: np.ndarray, depth: int, axis: int = 0) -> np.ndarray:
    """``array`` linearly resampled along ``axis`` to ``depth`` planes, as float32."""
    array = np.asarray(array)
    if array.shape[axis] == depth:
        return array.astype(np.float32, copy=False)
    factors = [1.0] * array.ndim
    factors[axis] = depth / array.shape[axis]
    return ndimage.zoom(array.astype(np.float32), factors, order=1, mode="nearest", prefilter=False)


def to_model_grid(image: np.ndarray, step: float, model_step: float = 1.0, axis: int = 0) -> np.ndarray:
    """A stack with Z step ``step`` (in pixels) resampled along ``axis`` to the model's Z step ``model_step``."""
    depth = np.asarray(image).shape[axis]
    return resample_planes(image, resampled_depth(depth, step / model_step), axis)


def labels_to_model_grid(labels: np.ndarray, step: float, model_step: float = 1.0, axis: int = 0) -> np.ndarray:
    """Labels of a stack with Z step ``step`` on the model's grid: each new plane takes the nearest old plane's."""
    labels = np.asarray(labels)
    depth = labels.shape[axis]
    resampled = resampled_depth(depth, step / model_step)
    nearest = nearest_planes(resampled, depth)  # for each new plane, the nearest old one
    return np.take(labels, nearest, axis=axis)


def segment_on_model_grid(run: Callable[..., Generator[Any, None, Any]], image: Any, model: Any,
                          axes: str | None, **options: Any) -> Generator[Any, None, Any]:
    """``run(image, model, axes, **options)`` (the engine's steps) for a 3D model, on the Z step it was trained at.

    A 3D model whose config records its ``z_step`` gets a stack whose voxel size is given (``options["scale"]``)
    resampled along Z to that step; its labels (nearest plane) and probabilities come back on the stack's own
    planes. Anything else runs as given.
    """
    config = getattr(model, "config", None)
    scale = options.get("scale")
    if config is None or config.network.spatial_dims != 3 or config.z_step is None or scale is None:
        return (yield from run(image, model, axes, **options))
    shape = tuple(int(n) for n in np.shape(image))
    letters = check_axes(axes, len(shape)) if axes is not None else infer_axes(
        shape, spatial_dims=3, in_channels=config.in_channels)
    sizes = check_scale(scale, letters)
    step = sizes["Z"] / lateral_size(sizes) if "Z" in sizes else config.z_step
    factor = step / config.z_step
    if math.isclose(factor, 1.0, rel_tol=0.01):
        return (yield from run(image, model, axes, **dict(options, scale=None)))
    if not (isinstance(image, np.ndarray) or sizing.fits_in_memory(image)):
        result = yield from run(image, model, axes, **dict(options, scale=None))
        result.messages.append(f"the Z step ({step:.3g} pixel sizes) was not resampled to the model's "
                               f"{config.z_step:g}: the stack is too large to resample in memory")
        return result
    image = np.asarray(image)
    z = letters.index("Z")
    depth = image.shape[z]
    resampled = to_model_grid(image, step, config.z_step, axis=z)
    inner = dict(options, out=None, probabilities=options["probabilities"] is not False, scale=None)
    result = yield from sizing.without_previews(run(resampled, model, letters, **inner))
    planes = nearest_planes(depth, resampled.shape[z])
    lz = result.labels_axes.index("Z")
    result.labels = np.take(np.asarray(result.labels), planes, axis=lz)
    if config.task == "instance":  # class ids stay as they are
        result.labels = renumbered(result.labels)
        result.objects = int(result.labels.max(initial=0))
    if result.probabilities is not None:
        result.probabilities = np.take(np.asarray(result.probabilities), planes, axis=lz + 1)
    sizing.into_callers_arrays(result, options)
    result.messages.append(f"Z step of {step:.3g} pixel sizes resampled to the model's {config.z_step:g} "
                           f"({depth} planes -> {resampled.shape[z]}), results on the stack's own planes")
    return result
