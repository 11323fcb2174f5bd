"""napari reader for TIFF / OME-TIFF files and zarr / OME-Zarr folders, opened lazily.

Microscopy stacks are often larger than memory, so nothing here reads pixels: TIFFs are opened through
tifffile's zarr store (one chunk per page or tile) and zarr folders directly, and napari gets dask arrays that
load only the planes it displays. The metadata gives napari what the Segment widget needs to infer axes:
``axis_labels`` (t, z, y, x), ``channel_axis`` (one layer per channel), ``rgb``, and the pixel size as
``scale`` with ``units``. Pyramids (OME-TIFF sub-resolutions, OME-Zarr multiscales) become napari multiscale
layers.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

TIFF_SUFFIXES = (".tif", ".tiff")
# tifffile axis letters -> napari axis labels; "S" (samples) is handled as rgb, "C" as channel_axis
_TIFF_AXES = {"T": "t", "Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c", "I": "z", "Q": "z"}
_UNIT_ALIASES = {"µm": "um", "μm": "um", "micron": "um", "microns": "um", "\\u00B5m": "um"}


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return a reader if every path is a TIFF file or a zarr folder, else None (napari tries other readers)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_kind(p) for p in paths):
        return None
    return read


def read(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or several paths into napari layer data (lazy dask arrays)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for item in paths:
        layers.extend(read_tiff(item) if _kind(item) == "tiff" else read_zarr(item))
    return layers


def _kind(path: str | os.PathLike) -> str | None:
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES and p.is_file():
        return "tiff"
    if p.is_dir() and any((p / marker).exists() for marker in ("zarr.json", ".zattrs", ".zgroup", ".zarray")):
        return "zarr"
    return None


# --------------------------------------------------------------------------------------------------------------
# TIFF / OME-TIFF
# --------------------------------------------------------------------------------------------------------------


def read_tiff(path: str | os.PathLike) -> list[LayerData]:
    """A TIFF's first image series as a lazy dask array (a multiscale list when it has sub-resolutions)."""
    import dask.array as da
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        shape = series.shape
        levels = len(series.levels)
        dtype = series.dtype
        sizes = _tiff_pixel_sizes(tif)
    store = tifffile.imread(path, aszarr=True, series=0)
    opened = zarr.open(store, mode="r")
    if levels > 1:
        data: Any = [da.from_zarr(opened[str(level)]) for level in range(levels)]
    else:
        data = da.from_zarr(opened)

    labels = _axis_labels(axes)
    kwargs: dict[str, Any] = {"name": Path(path).name.split(".")[0]}
    rgb = axes.endswith("S") and shape[-1] in (3, 4) and dtype.itemsize == 1
    channel_axis = None
    if rgb:
        kwargs["rgb"] = True
        spatial_labels = labels[:-1]
    elif "C" in axes or "S" in axes:
        channel_axis = axes.index("C") if "C" in axes else axes.index("S")
        spatial_labels = labels[:channel_axis] + labels[channel_axis + 1:]
        kwargs["channel_axis"] = channel_axis
    else:
        spatial_labels = labels
    _set_axes_and_scale(kwargs, spatial_labels, sizes)
    if levels > 1:
        kwargs["multiscale"] = True
    return [(data, kwargs, "image")]


def _axis_labels(axes: str) -> list[str]:
    """napari labels for tifffile's axis letters; a page sequence ('I', 'Q') counts as z unless z exists."""
    labels: list[str] = []
    for letter in axes:
        label = _TIFF_AXES.get(letter, letter.lower())
        labels.append(label if label not in labels and (label != "z" or letter == "Z" or "Z" not in axes)
                      else letter.lower())
    return labels


def _tiff_pixel_sizes(tif: Any) -> dict[str, tuple[float, str]]:
    """Pixel size and unit per axis label ('x', 'y', 'z', 't') from OME or ImageJ metadata; empty if neither."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_xml_sizes(tif.ome_metadata)
    if tif.is_imagej and tif.imagej_metadata is not None:
        meta = tif.imagej_metadata
        unit = _unit(str(meta.get("unit", "pixel")))
        sizes: dict[str, tuple[float, str]] = {}
        page = tif.pages[0]
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            value = page.tags.get(tag)
            if value is not None:
                num, den = value.value
                if num and den:
                    sizes[axis] = (den / num, unit)
        if "spacing" in meta:
            sizes["z"] = (float(meta["spacing"]), unit)
        if "finterval" in meta:
            sizes["t"] = (float(meta["finterval"]), "s")
        return sizes
    return {}


def _ome_xml_sizes(xml: str) -> dict[str, tuple[float, str]]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return {}
    sizes = {}
    for axis in ("X", "Y", "Z"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value:
            sizes[axis.lower()] = (float(value), _unit(pixels.get(f"PhysicalSize{axis}Unit", "um")))
    if pixels.get("TimeIncrement"):
        sizes["t"] = (float(pixels.get("TimeIncrement")), pixels.get("TimeIncrementUnit", "s"))
    return sizes


def _unit(unit: str) -> str:
    return _UNIT_ALIASES.get(unit, unit)


def _set_axes_and_scale(kwargs: dict[str, Any], labels: Sequence[str],
                        sizes: dict[str, tuple[float, str]]) -> None:
    kwargs["axis_labels"] = tuple(labels)
    if any(label in sizes for label in labels):
        kwargs["scale"] = tuple(sizes[label][0] if label in sizes else 1.0 for label in labels)
        kwargs["units"] = tuple(sizes[label][1] if label in sizes else "pixel" for label in labels)


# --------------------------------------------------------------------------------------------------------------
# zarr / OME-Zarr
# --------------------------------------------------------------------------------------------------------------


def read_zarr(path: str | os.PathLike) -> list[LayerData]:
    """An OME-Zarr image (multiscale, with axes, scale and channels), a plain zarr array, or a group's arrays."""
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    name = Path(path).name.split(".")[0]
    if isinstance(node, zarr.Array):
        return [(da.from_zarr(node), {"name": name}, "image")]
    attrs = dict(node.attrs)
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not multiscales:
        return [(da.from_zarr(array), {"name": f"{name} {key}"}, "image")
                for key, array in node.arrays() if array.ndim >= 2]
    meta = multiscales[0]
    datasets = meta["datasets"]
    data = [da.from_zarr(node[d["path"]]) for d in datasets]
    axes = [a["name"].lower() if isinstance(a, dict) else str(a).lower() for a in meta.get("axes", [])]
    if len(axes) != data[0].ndim:
        axes = ["t", "c", "z", "y", "x"][-data[0].ndim:] if data[0].ndim <= 5 else [str(i) for i in range(data[0].ndim)]
    units = [a.get("unit", "pixel") if isinstance(a, dict) else "pixel" for a in meta.get("axes", [])]
    scale, translate = _ome_transforms(meta, datasets[0], len(axes))
    kwargs: dict[str, Any] = {"name": meta.get("name") or name}
    if len(data) > 1:
        kwargs["multiscale"] = True
    keep = list(range(len(axes)))
    if "c" in axes:
        channel_axis = axes.index("c")
        kwargs["channel_axis"] = channel_axis
        keep.remove(channel_axis)
        channels = ((attrs.get("ome") or attrs).get("omero") or {}).get("channels") or []
        names = [c.get("label") for c in channels if isinstance(c, dict)]
        if len(names) == data[0].shape[channel_axis] and all(names):
            kwargs["name"] = names
    kwargs["axis_labels"] = tuple(axes[i] for i in keep)
    kwargs["scale"] = tuple(scale[i] for i in keep)
    kwargs["translate"] = tuple(translate[i] for i in keep)
    if len(units) == len(axes):
        kwargs["units"] = tuple(_unit(units[i] or "pixel") for i in keep)
    return [(data if len(data) > 1 else data[0], kwargs, "image")]


def _ome_transforms(meta: dict, dataset: dict, ndim: int) -> tuple[list[float], list[float]]:
    scale, translate = [1.0] * ndim, [0.0] * ndim
    for transforms in (meta.get("coordinateTransformations") or [], dataset.get("coordinateTransformations") or []):
        for transform in transforms:
            if transform.get("type") == "scale" and len(transform.get("scale", [])) == ndim:
                scale = [a * b for a, b in zip(scale, transform["scale"])]
            elif transform.get("type") == "translation" and len(transform.get("translation", [])) == ndim:
                translate = [a + b for a, b in zip(translate, transform["translation"])]
    return scale, translate
