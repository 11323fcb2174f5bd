"""The arrays a segmentation run writes into: the caller's (a zarr array, say), checked against the image, or
new ones in memory, refused with a suggestion when they would take more than the memory allowed."""
from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.axes import Layout
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.memory import in_memory_limit
from napari_unet.core.runner import physical_memory


def allocate(shape: tuple[int, ...], dtype: Any, what: str, instead: str) -> np.ndarray:
    """A zeroed numpy output, unless it would take more than :func:`~napari_unet.core.memory.in_memory_limit`
    (a quarter of this machine's memory unless NAPARI_UNET_IN_MEMORY_LIMIT says otherwise)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size > in_memory_limit(physical_memory()):
        raise InvalidInputError(f"the {what} of this image would take {size / 2**30:.1f} GiB of memory; {instead}")
    return np.zeros(shape, dtype=dtype)


def labels_array(out: Any, layout: Layout) -> Any:
    """The array a run writes its labels into: ``out`` if it fits the image (shape, integer dtype), else a new
    one in memory."""
    if out is None:
        return allocate(layout.output_shape, np.int32, "labels",
                        "pass out= a zarr array (zarr.open_array(path, mode='w', shape=..., dtype='int32'))")
    if tuple(out.shape) != layout.output_shape:
        raise InvalidInputError(f"out has shape {tuple(out.shape)} but the labels of this image (axes "
                                f"{layout.output_axes!r}) have shape {layout.output_shape}")
    if np.dtype(out.dtype).kind not in "iu":
        raise InvalidInputError(f"out must have an integer dtype for labels (e.g. int32), not {out.dtype}")
    return out


def probabilities_array(probabilities: bool | Any, layout: Layout, classes: int) -> Any:
    """The array a run writes its class probabilities into: None when not asked for, the caller's array if it
    fits (shape, floating point), else a new one in memory."""
    if probabilities is False or probabilities is None:
        return None
    shape = (classes, *layout.output_shape)
    if probabilities is True:
        return allocate(shape, np.float32, "probabilities",
                        "pass probabilities=False, or a zarr array of shape (classes, *labels shape) to write into")
    if tuple(probabilities.shape) != shape:
        raise InvalidInputError(f"the probabilities array has shape {tuple(probabilities.shape)}; this image and "
                                f"model need {shape} (classes, then axes {layout.output_axes!r})")
    if np.dtype(probabilities.dtype).kind != "f":
        raise InvalidInputError(f"the probabilities array must be floating point, not {probabilities.dtype}")
    return probabilities
