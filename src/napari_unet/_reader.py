"""napari reader for TIFF / OME-TIFF / ImageJ TIFF files and zarr / OME-Zarr folders, opened lazily.

Reading is :mod:`napari_unet.core.io`'s job, shared with the command line so that a file has the same axes and
pixel size everywhere; this module only turns what it finds into napari layer data. napari gets dask arrays
that load only the planes it displays, and what the Segment widget needs to infer axes: ``axis_labels``
(t, z, y, x), ``channel_axis`` (one layer per channel), ``rgb``, and the pixel size as ``scale`` with
``units``. Pyramids (OME-TIFF sub-resolutions, OME-Zarr multiscales) become napari multiscale layers.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from napari_unet.core.io import ImageFile, file_kind, read_images

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

_KINDS = ("tiff", "zarr")  # napari reads .npy itself


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return a reader if every path is a TIFF file or a zarr folder, else None (napari tries other readers)."""
    paths = _paths(path)
    if not paths or not all(file_kind(p) in _KINDS for p in paths):
        return None
    return read


def read(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or several paths into napari layer data (lazy dask arrays)."""
    return [layer_data(image) for item in _paths(path) for image in read_images(item)]


def _paths(path: str | Sequence[str]) -> list[Any]:
    return [path] if isinstance(path, (str, os.PathLike)) else list(path)


def layer_data(image: ImageFile) -> LayerData:
    """An image layer: colour or channels split off, the other dimensions labelled and scaled."""
    import dask.array as da

    arrays = [da.from_zarr(level) for level in image.levels]
    kwargs: dict[str, Any] = {"name": image.name}
    keep = list(range(len(image.dims)))
    if image.rgb:
        kwargs["rgb"] = True
        keep.pop()
    elif "C" in image.dims:
        channel_axis = image.dims.index("C")
        kwargs["channel_axis"] = channel_axis
        keep.remove(channel_axis)
        if image.channel_names:
            kwargs["name"] = list(image.channel_names)
    kwargs["axis_labels"] = tuple(image.dims[i].lower() for i in keep)
    if any(image.scale[i] is not None or image.units[i] is not None for i in keep):
        kwargs["scale"] = tuple(1.0 if image.scale[i] is None else image.scale[i] for i in keep)
        kwargs["units"] = tuple(image.units[i] or "pixel" for i in keep)
    if image.translate is not None:
        kwargs["translate"] = tuple(image.translate[i] for i in keep)
    if len(arrays) > 1:
        kwargs["multiscale"] = True
    return (arrays if len(arrays) > 1 else arrays[0], kwargs, "image")
