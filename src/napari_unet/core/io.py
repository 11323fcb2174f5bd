"""The one image reader: TIFF, OME-TIFF, ImageJ TIFF, zarr, OME-Zarr and NumPy ``.npy``, opened lazily.

The napari reader, ``napari-unet segment`` and ``napari-unet finetune`` all open files here, so an image reads
the same everywhere: the same axes, the same pixel size, the same errors. Microscopy stacks are often larger
than memory, so nothing here reads pixels: TIFFs are opened through tifffile's zarr store (one chunk per page
or tile), zarr arrays stay zarr arrays and ``.npy`` files are memory-mapped. What the metadata says comes with
the array in an :class:`ImageFile`: a name per dimension (napari's T, Z, C, Y, X where known), and the
physical step per dimension with its unit (OME ``PhysicalSizeX/Y/Z``, ImageJ ``spacing`` and the resolution
tags, OME-Zarr ``coordinateTransformations``), which decides how a z-stack's Z is treated.

This module imports neither torch nor any GUI toolkit, and tifffile, zarr and numpy only when a file is read,
because napari imports the reader at start-up.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_unet.core.errors import InvalidInputError

NAPARI_LETTERS = "TZCYX"
TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup", ".zarray")
NO_UNIT = "pixel"  # ImageJ's word for an uncalibrated size: a step in pixels, not a physical size

# tifffile's axis letters that stand for a napari letter when the file has no axis of that name itself:
# S (samples, e.g. RGB) is a channel axis, I (image sequence) and Q (unknown, tifffile's guess) are pages in Z.
_TIFF_ALIASES = {"S": "C", "I": "Z", "Q": "Z"}
_UNIT_ALIASES = {"µm": "um", "μm": "um", "micron": "um", "microns": "um", "\\u00B5m": "um"}
# micrometres per unit, to put sizes given in different length units into one (OME allows any per axis)
_MICROMETRES = {"m": 1e6, "meter": 1e6, "metre": 1e6, "cm": 1e4, "centimeter": 1e4, "mm": 1e3, "millimeter": 1e3,
                "millimetre": 1e3, "um": 1.0, "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3,
                "nanometre": 1e-3, "pm": 1e-6, "picometer": 1e-6, "Å": 1e-4, "angstrom": 1e-4}
_RGB_SAMPLES = (3, 4)


@dataclass(frozen=True)
class ImageFile:
    """An image opened from a file, with what its metadata says about it.

    ``data`` is the full-resolution array (a zarr array for TIFF and zarr, a memory map for ``.npy``), read
    only where indexed; ``levels`` holds every resolution, ``data`` first. ``dims`` names each dimension:
    napari's upper-case T, Z, C, Y, X where the file says (or tifffile guesses) what it is, else the file's
    own name in lower case (``"angle"``, tifffile's ``"r"``), or its napari default (``"-3"``) where nothing
    names it. ``scale`` and ``units`` give the physical step per dimension where recorded (None elsewhere);
    a unit of ``"pixel"`` means the file was not calibrated. ``translate`` is the position of the first pixel
    (OME-Zarr only). ``metadata`` names where the sizes came from ("OME-TIFF", "ImageJ", "OME-Zarr").
    """

    path: Path
    data: Any
    dims: tuple[str, ...]
    scale: tuple[float | None, ...]
    units: tuple[str | None, ...]
    levels: tuple[Any, ...]
    translate: tuple[float, ...] | None = None
    rgb: bool = False  # the last axis holds each pixel's red, green, blue (and alpha) samples
    name: str = ""
    channel_names: tuple[str, ...] | None = None
    metadata: str | None = None

    def __post_init__(self) -> None:
        """Sizes of the spatial dimensions given in different length units (X in nm, Z in µm, say) are put into
        micrometres: their ratios decide how Z is treated, and napari compares the numbers as they are."""
        spatial = [i for i, d in enumerate(self.dims) if d in "ZYX" and self.scale[i] is not None]
        units = {self.units[i] for i in spatial}
        if len(units) < 2 or not all(unit in _MICROMETRES for unit in units):
            return
        scale, names = list(self.scale), list(self.units)
        for i in spatial:
            scale[i], names[i] = float(scale[i]) * _MICROMETRES[names[i]], "um"
        object.__setattr__(self, "scale", tuple(scale))
        object.__setattr__(self, "units", tuple(names))

    @property
    def axes(self) -> str | None:
        """napari axis letters, one per dimension (``"ZYX"``), or None when a dimension is not one of them."""
        letters = "".join(self.dims)
        ok = all(d in NAPARI_LETTERS for d in self.dims) and len(set(letters)) == len(letters) == len(self.dims)
        return letters if ok else None

    def voxel_size(self, axes: str) -> tuple[float, ...] | None:
        """The physical size per spatial axis (the Z, Y, X letters of ``axes``, in their order) when the file
        records one for each of them, else None. ``axes`` is how the image will be treated; a dimension the
        file names otherwise, or a size without a physical unit, gives None, since it would be a guess."""
        if len(axes) != len(self.dims):
            return None
        sizes, units = [], set()
        for index, letter in enumerate(axes.upper()):
            if letter not in "ZYX":
                continue
            value, unit = self.scale[index], self.units[index]
            if self.dims[index] != letter or value is None or not value > 0 or unit == NO_UNIT:
                return None
            sizes.append(float(value))
            units.add(unit)
        return tuple(sizes) if sizes and len(units) == 1 else None  # sizes in units that cannot be compared: none


def file_kind(path: str | os.PathLike) -> str | None:
    """``"tiff"``, ``"zarr"`` or ``"npy"`` from the path alone (no pixels read), or None for anything else."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
        return "tiff"
    if p.is_file() and p.suffix.lower() == ".npy":
        return "npy"
    if p.is_dir() and any((p / marker).exists() for marker in ZARR_MARKERS):
        return "zarr"
    return None


def read_image(path: str | os.PathLike) -> ImageFile:
    """The one image in a TIFF, ``.npy`` or zarr file (a zarr group must hold exactly one image array)."""
    images = read_images(path)
    if len(images) != 1:
        raise InvalidInputError(f"{path} is a zarr group with {len(images)} image arrays; pass the folder of one")
    return images[0]


def read_images(path: str | os.PathLike) -> list[ImageFile]:
    """Every image in a file: one for a TIFF, ``.npy``, zarr array or OME-Zarr image, one per array (of two
    or more dimensions) for a plain zarr group. Raises :class:`InvalidInputError` naming the file and what
    was expected when it cannot be read."""
    path = Path(path)
    kind = file_kind(path)
    if kind == "tiff":
        return [_read_tiff(path)]
    if kind == "npy":
        return [_read_npy(path)]
    if kind == "zarr":
        return _read_zarr(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder but not a zarr array or group (it holds no readable zarr "
                                "metadata); give a zarr folder, or a .tif, .tiff or .npy file")
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist")
    raise InvalidInputError(f"{path}: unsupported image type {path.suffix!r}; use .tif, .tiff, .npy or a zarr "
                            "folder")


def _short_name(path: Path) -> str:
    return path.name.split(".")[0]


def _unit(unit: str | None) -> str | None:
    return None if unit is None else _UNIT_ALIASES.get(unit, unit)


# --------------------------------------------------------------------------------------------------------------
# TIFF / OME-TIFF / ImageJ TIFF
# --------------------------------------------------------------------------------------------------------------


def _read_tiff(path: Path) -> ImageFile:
    """A TIFF's first image series through tifffile's zarr store, with every sub-resolution as a level."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            letters, shape, dtype, levels = series.axes, tuple(series.shape), series.dtype, len(series.levels)
            sizes, metadata = _tiff_sizes(tif)
        opened = zarr.open(tifffile.imread(path, aszarr=True, series=0), mode="r")
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as exc:
        raise InvalidInputError(f"{path} could not be read as a TIFF image ({exc}); expected a TIFF, OME-TIFF "
                                "or ImageJ TIFF file") from None
    arrays = tuple(opened[str(level)] for level in range(levels)) if levels > 1 else (opened,)
    dims = tiff_dims(letters)
    return ImageFile(
        path=path, data=arrays[0], dims=dims, levels=arrays, name=_short_name(path), metadata=metadata,
        scale=tuple(sizes[d][0] if d in sizes else None for d in dims),
        units=tuple(sizes[d][1] if d in sizes else None for d in dims),
        rgb=letters.endswith("S") and shape[-1] in _RGB_SAMPLES and dtype.itemsize == 1)


def tiff_dims(letters: str) -> tuple[str, ...]:
    """napari names for tifffile's axis letters: T, Z, C, Y, X as they are; S, I, Q stand for C, Z, Z where
    the file has no such axis itself (the first of them only); any other letter stays, in lower case."""
    taken = {letter for letter in letters if letter in NAPARI_LETTERS}
    dims = []
    for letter in letters:
        alias = _TIFF_ALIASES.get(letter)
        if letter in NAPARI_LETTERS:
            dims.append(letter)
        elif alias is not None and alias not in taken:
            taken.add(alias)
            dims.append(alias)
        else:
            dims.append(letter.lower())
    return tuple(dims)


def _tiff_sizes(tif: Any) -> tuple[dict[str, tuple[float, str]], str | None]:
    """Physical size and unit per napari letter (X, Y, Z and T) from OME or ImageJ metadata, and which."""
    if tif.is_ome and tif.ome_metadata:
        sizes = ome_xml_sizes(tif.ome_metadata)
        return sizes, "OME-TIFF" if sizes else None
    if tif.is_imagej and tif.imagej_metadata is not None:
        return _imagej_sizes(tif.imagej_metadata, tif.pages[0].tags), "ImageJ"
    return {}, None


def _imagej_sizes(meta: dict[str, Any], tags: Any) -> dict[str, tuple[float, str]]:
    """ImageJ keeps the pixel size in the resolution tags (pixels per unit), the Z step as ``spacing`` and
    the frame interval as ``finterval``, all in one ``unit`` ("pixel" when uncalibrated)."""
    unit = _unit(str(meta.get("unit", NO_UNIT))) or NO_UNIT
    sizes: dict[str, tuple[float, str]] = {}
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        value = tags.get(tag)
        if value is not None:
            num, den = value.value
            if num and den:
                sizes[axis] = (den / num, unit)
    if "spacing" in meta:
        sizes["Z"] = (float(meta["spacing"]), unit)
    if "finterval" in meta:
        sizes["T"] = (float(meta["finterval"]), "s")
    return sizes


def ome_xml_sizes(xml: str) -> dict[str, tuple[float, str]]:
    """``PhysicalSizeX/Y/Z`` and ``TimeIncrement`` of the first image in OME-XML, with their units (OME's
    default, µm or s, where a unit is not given); empty where the XML has none or cannot be parsed."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return {}
    sizes: dict[str, tuple[float, str]] = {}
    for axis in "XYZ":
        value = _positive(pixels.get(f"PhysicalSize{axis}"))
        if value is not None:
            sizes[axis] = (value, _unit(pixels.get(f"PhysicalSize{axis}Unit", "um")) or "um")
    interval = _positive(pixels.get("TimeIncrement"))
    if interval is not None:
        sizes["T"] = (interval, pixels.get("TimeIncrementUnit", "s"))
    return sizes


def _positive(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


# --------------------------------------------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------------------------------------------


def _read_npy(path: Path) -> ImageFile:
    """A ``.npy`` file memory-mapped; it records no axes and no pixel size."""
    import numpy as np

    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path} could not be read as a NumPy array ({exc}); expected a .npy file of "
                                "numbers") from None
    return ImageFile(path=path, data=data, dims=_unnamed(data.ndim), scale=(None,) * data.ndim,
                     units=(None,) * data.ndim, levels=(data,), name=_short_name(path))


def _unnamed(ndim: int) -> tuple[str, ...]:
    """napari's default axis labels ("-2", "-1"), for dimensions no metadata names."""
    return tuple(str(index - ndim) for index in range(ndim))


# --------------------------------------------------------------------------------------------------------------
# zarr / OME-Zarr
# --------------------------------------------------------------------------------------------------------------


def _read_zarr(path: Path) -> list[ImageFile]:
    """An OME-Zarr image (the first multiscale image of the group), a plain zarr array, or each array of a
    plain zarr group."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except (ValueError, OSError, KeyError):  # zarr says "not found" for a folder that holds no zarr node
        raise InvalidInputError(f"{path} is a folder but not a zarr array or group (it holds no readable zarr "
                                "metadata); give a zarr folder, or a .tif, .tiff or .npy file") from None
    name = _short_name(path)
    if isinstance(node, zarr.Array):
        return [_plain(path, node, name)]
    attrs = dict(node.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # OME-Zarr 0.5 nests under "ome"
    multiscales = ome.get("multiscales")
    if multiscales:
        return [_read_ome_zarr(path, node, multiscales[0], ome.get("omero") or {}, name)]
    images = [_plain(path, array, f"{name} {key}") for key, array in node.arrays() if array.ndim >= 2]
    if not images:
        raise InvalidInputError(f"{path} is a zarr group without an image: no OME-Zarr multiscales metadata and "
                                "no array of two or more dimensions")
    return images


def _plain(path: Path, array: Any, name: str) -> ImageFile:
    """A zarr array without metadata: no axes, no sizes."""
    return ImageFile(path=path, data=array, dims=_unnamed(array.ndim), scale=(None,) * array.ndim,
                     units=(None,) * array.ndim, levels=(array,), name=name)


def _read_ome_zarr(path: Path, group: Any, meta: dict[str, Any], omero: dict[str, Any], name: str) -> ImageFile:
    """One OME-Zarr multiscale image: its levels, axes (with units) and the scale and translation of level 0."""
    try:
        datasets = meta["datasets"]
        levels = tuple(group[d["path"]] for d in datasets)
    except (KeyError, TypeError, IndexError):
        raise InvalidInputError(f"{path}: the OME-Zarr multiscales metadata names resolution levels that are not "
                                "in the group; expected each dataset 'path' to be an array of the group") from None
    if not levels:
        raise InvalidInputError(f"{path}: the OME-Zarr multiscales metadata lists no datasets (resolution levels)")
    ndim = levels[0].ndim
    axes = meta.get("axes") or []
    dims, units = _ome_zarr_axes(axes) if len(axes) == ndim else (_unnamed(ndim), (None,) * ndim)
    scale, translate = _ome_zarr_transforms(meta, datasets[0], ndim)
    channels = omero.get("channels") or []
    labels = tuple(c.get("label") for c in channels if isinstance(c, dict))
    count = levels[0].shape[dims.index("C")] if "C" in dims else None
    return ImageFile(
        path=path, data=levels[0], dims=dims, levels=levels, units=units, translate=translate,
        scale=scale, name=meta.get("name") or name, metadata="OME-Zarr",
        channel_names=labels if count is not None and len(labels) == count and all(labels) else None)


def _ome_zarr_axes(axes: Sequence[Any]) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """Names (napari letters for t, c, z, y, x) and units of OME-Zarr axes (0.3 lists names, 0.4+ dicts)."""
    names = [str(a.get("name", "") if isinstance(a, dict) else a) for a in axes]
    dims = tuple(n.upper() if n.upper() in NAPARI_LETTERS and len(n) == 1 else n.lower() for n in names)
    units = tuple(_unit(a.get("unit")) if isinstance(a, dict) else None for a in axes)
    return dims, units


def _ome_zarr_transforms(meta: dict[str, Any], dataset: dict[str, Any], ndim: int
                         ) -> tuple[tuple[float | None, ...], tuple[float, ...] | None]:
    """Level 0's scale (None per dimension where none is given) and translation (None where none is given):
    the dataset's own transformations, then the multiscale-wide ones, composed in that order."""
    scale, translate = [1.0] * ndim, [0.0] * ndim
    has_scale = has_translate = False
    for transforms in (dataset.get("coordinateTransformations") or [], meta.get("coordinateTransformations") or []):
        for transform in transforms:
            kind = transform.get("type")
            if kind == "scale" and len(transform.get("scale", [])) == ndim:
                factors = [float(f) for f in transform["scale"]]
                scale = [a * f for a, f in zip(scale, factors)]
                translate = [a * f for a, f in zip(translate, factors)]
                has_scale = True
            elif kind == "translation" and len(transform.get("translation", [])) == ndim:
                translate = [a + float(b) for a, b in zip(translate, transform["translation"])]
                has_translate = True
    return (tuple(scale) if has_scale else (None,) * ndim), (tuple(translate) if has_translate else None)
