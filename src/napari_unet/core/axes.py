"""Axes: napari's letters T, Z, C, Y, X for the dimensions of an image, parsed, checked and inferred.

Images arrive in any layout: a plain 2D array, an RGB image with colour last (YXC), a multichannel stack with
channels first (CYX), a z-stack, a time-lapse, or all of them at once (TCZYX). A network sees one layout only:
channels first, then its spatial axes (YX for 2D models, ZYX for 3D models). This module maps between the two
without copying where the array type allows it: numpy and dask arrays are transposed as views, and zarr arrays
(which cannot be transposed lazily) are wrapped in :class:`AxesView`, which reads only the blocks asked for.

The same helpers serve inference (iterate a 2D model over the Z and T planes of a stack) and training
(bring an annotated image into channel-first order).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.errors import InvalidInputError

LETTERS = "TZCYX"
"""The axis letters napari-unet understands, in their canonical order (OME-Zarr's TCZYX)."""

_RGB_SIZES = (3, 4)


def check_axes(axes: str, ndim: int) -> str:
    """Return ``axes`` in upper case after checking it names each of ``ndim`` dimensions once, with Y and X."""
    if not isinstance(axes, str):
        raise InvalidInputError(f"axes must be a string of the letters {LETTERS}, such as 'ZYX', not {axes!r}")
    letters = axes.upper()
    unknown = sorted(set(letters) - set(LETTERS))
    if unknown:
        raise InvalidInputError(f"axes {axes!r} contain {unknown}; use only the letters {', '.join(LETTERS)} "
                                "(T time, Z depth, C channel, Y rows, X columns)")
    repeated = sorted({a for a in letters if letters.count(a) > 1})
    if repeated:
        raise InvalidInputError(f"axes {axes!r} name {repeated} more than once; each letter may appear once")
    if len(letters) != ndim:
        raise InvalidInputError(f"axes {axes!r} name {len(letters)} dimension(s) but the image has {ndim}; "
                                f"give one letter per dimension, e.g. {_example(ndim)!r}")
    if "Y" not in letters or "X" not in letters:
        raise InvalidInputError(f"axes {axes!r} need both Y and X (the image plane)")
    return letters


def _example(ndim: int) -> str:
    return {1: "X", 2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}.get(ndim, "TCZYX")


def infer_axes(shape: Sequence[int], *, spatial_dims: int = 2, in_channels: int = 1, rgb: bool | None = None,
               channel_axis: int | None = None) -> str:
    """Guess the axes of an image of ``shape`` for a model with ``spatial_dims`` and ``in_channels``.

    napari's own hints win: ``rgb=True`` puts colour last, ``channel_axis`` names the channel dimension. Without
    hints a last axis of 3 or 4 after a large plane is colour (an RGB(A) image), and for a multichannel model
    an axis whose length equals its channel count is C (where the usual orders CYX, CZYX, TCZYX put it, if
    that fits, else the first). The remaining axes are read from the right as
    X, Y, Z, T, so a 3D array is a z-stack (a 2D model then segments it plane by plane).
    """
    ndim = len(shape)
    if ndim < 2:
        raise InvalidInputError(f"an image needs at least two dimensions (Y, X); got shape {tuple(shape)}")
    channel: int | None = None
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise InvalidInputError(f"channel_axis {channel_axis} is out of range for an image of shape {tuple(shape)}")
        channel = channel_axis % ndim
    elif rgb or (rgb is None and _looks_rgb(shape)):
        channel = ndim - 1
    elif in_channels > 1:
        candidates = [i for i, n in enumerate(shape[:-2]) if n == in_channels]
        usual = {3: 0, 4: 0, 5: 1}.get(ndim)  # CYX, CZYX, TCZYX
        channel = usual if usual in candidates else (candidates[0] if candidates else None)
    rest = ndim - (channel is not None)
    if rest < 2:
        raise InvalidInputError(f"an image of shape {tuple(shape)} with a channel axis has no Y and X left")
    if rest > 4:
        raise InvalidInputError(f"cannot tell the axes of an image with {ndim} dimensions {tuple(shape)}; "
                                "pass axes explicitly, e.g. axes='TCZYX'")
    letters = list("TZYX"[4 - rest:])
    if channel is not None:
        letters.insert(channel, "C")
    return "".join(letters)


def _looks_rgb(shape: Sequence[int]) -> bool:
    return len(shape) >= 3 and shape[-1] in _RGB_SIZES and min(shape[-3], shape[-2]) > 8


def resolve_axes(axes: str | None, shape: Sequence[int], *, spatial_dims: int = 2, in_channels: int = 1,
                 rgb: bool | None = None, channel_axis: int | None = None) -> str:
    """The checked axes of an image for a model: ``axes`` as given, or inferred; raises with a suggested fix.

    Checks that a 3D model gets a Z axis and that the channel count matches the model's input channels.
    """
    if axes is None:
        letters = infer_axes(shape, spatial_dims=spatial_dims, in_channels=in_channels, rgb=rgb,
                             channel_axis=channel_axis)
        how = "inferred"
    else:
        letters = check_axes(axes, len(shape))
        how = "given"
    if spatial_dims == 3 and "Z" not in letters:
        raise InvalidInputError(f"this is a 3D model and needs a Z axis, but the image axes ({how}) are "
                                f"{letters!r} for shape {tuple(shape)}; pass axes with a Z, or use a 2D model")
    channels = shape[letters.index("C")] if "C" in letters else 1
    if channels != in_channels:
        raise InvalidInputError(_channel_message(letters, how, shape, channels, in_channels))
    return letters


def _channel_message(letters: str, how: str, shape: Sequence[int], channels: int, in_channels: int) -> str:
    head = (f"the model takes {in_channels} input channel(s) but the image (shape {tuple(shape)}, axes {letters!r} "
            f"{how}) has {channels}")
    if in_channels == 1 and "C" in letters:
        spare = next((a for a in "ZT" if a not in letters), None)
        fixed = letters.replace("C", spare) if spare else ""
        hint = f"; if that axis is not colour or channels, pass axes={fixed!r}" if fixed.endswith("YX") else ""
        return head + "; select one channel (e.g. image[..., 0] when colour is last) or convert to grayscale" + hint
    matching = [i for i, n in enumerate(shape[:-2]) if n == in_channels]
    if matching and len(shape) <= 5:
        rest = "TZYX"[5 - len(shape):]
        fixed = rest[:matching[0]] + "C" + rest[matching[0]:]
        return head + f"; if axis {matching[0]} (length {in_channels}) holds the channels, pass axes={fixed!r}"
    return head + f"; give the image {in_channels} channel(s) along a C axis, or choose a model made for it"


# --------------------------------------------------------------------------------------------------------------
# Moving axes
# --------------------------------------------------------------------------------------------------------------


def to_axes(array: Any, axes: str, target: str) -> Any:
    """``array`` (with ``axes``) rearranged to ``target``: axes moved, missing ones added with length 1.

    Letters of ``axes`` that ``target`` lacks must have length 1 and are dropped. numpy and dask arrays come
    back as views (lazy for dask); other array types (zarr) as an :class:`AxesView` that reads on demand.
    """
    axes = check_axes(axes, len(array.shape))
    target = target.upper()
    if len(set(target)) != len(target) or set(target) - set(LETTERS):
        raise InvalidInputError(f"target axes {target!r} must be distinct letters of {LETTERS}")
    view = AxesView(array, axes).arrange(target)
    if isinstance(array, np.ndarray) or type(array).__module__.startswith("dask."):
        return view.as_array_view()
    return view


class AxesView:
    """A read-only, lazily indexed view of an array with named axes.

    ``view[block]`` reads only that block from the underlying array (numpy, dask, zarr or anything with
    ``shape``, ``dtype`` and ``__getitem__``) and returns a numpy array in the view's axis order. An index of
    integers and full slices (``view[c]``) returns another lazy view instead, which is what
    :meth:`Normalization.statistics` does on a channel-first view, so a zarr image is never read whole. The
    view's letters may include *virtual* axes the source lacks (length 1), e.g. C for a single-channel image.
    """

    def __init__(self, array: Any, axes: str, fixed: dict[str, int] | None = None,
                 order: Sequence[str] | None = None) -> None:
        self.array = array
        self.source_axes = axes
        self.fixed = dict(fixed or {})
        self.axes = "".join(order) if order is not None else "".join(a for a in axes if a not in self.fixed)

    @property
    def shape(self) -> tuple[int, ...]:
        src = self.array.shape
        return tuple(int(src[self.source_axes.index(a)]) if a in self.source_axes else 1 for a in self.axes)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self.read((slice(None),) * self.ndim)
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"too many indices for a view of shape {self.shape}")
        ints = {a: int(k) for a, k in zip(self.axes, key) if isinstance(k, (int, np.integer))}
        if ints and all(isinstance(k, (int, np.integer)) or k == slice(None) for k in key):
            return self.select({a: i % self.shape[self.axes.index(a)] for a, i in ints.items()})
        return self.read(key)

    def select(self, index: dict[str, int]) -> AxesView:
        """Fix the given axes at an index, dropping them from the view."""
        index = {a.upper(): int(i) for a, i in index.items()}
        fixed = {**self.fixed, **{a: i for a, i in index.items() if a in self.source_axes}}
        return AxesView(self.array, self.source_axes, fixed, [a for a in self.axes if a not in index])

    def arrange(self, target: str) -> AxesView:
        """The view with exactly the axes of ``target``, in that order; dropped axes must have length 1."""
        drop = {a: 0 for a in self.axes if a not in target}
        for a in drop:
            if self.shape[self.axes.index(a)] != 1:
                raise InvalidInputError(f"cannot drop axis {a} of length {self.shape[self.axes.index(a)]} when "
                                        f"rearranging {self.axes!r} to {target!r}; select one index along it first")
        view = self.select(drop) if drop else self
        return AxesView(self.array, self.source_axes, view.fixed, list(target))

    def read(self, key: Sequence[Any]) -> np.ndarray:
        """Read the block ``key`` (integers and slices, in view order) as a numpy array in view order."""
        lookup = dict(zip(self.axes, key))
        index = tuple(self.fixed[a] if a in self.fixed else lookup[a] for a in self.source_axes)
        block = np.asarray(self.array[index])
        kept = [a for a in self.source_axes if a not in self.fixed and not isinstance(lookup[a], (int, np.integer))]
        wanted = [a for a, k in zip(self.axes, key) if not isinstance(k, (int, np.integer))]
        real = [a for a in wanted if a in self.source_axes]
        if kept != real:
            block = np.transpose(block, [kept.index(a) for a in real])
        virtual = [i for i, a in enumerate(wanted) if a not in self.source_axes]
        return np.expand_dims(block, tuple(virtual)) if virtual else block

    def as_array_view(self) -> Any:
        """The same view as a numpy or dask array (a view: no data is read)."""
        data = self.array[tuple(self.fixed.get(a, slice(None)) for a in self.source_axes)]
        kept = [a for a in self.source_axes if a not in self.fixed]
        real = [a for a in self.axes if a in self.source_axes]
        perm = [kept.index(a) for a in real]
        if perm != list(range(len(perm))):
            data = data.transpose(perm)
        for i, a in enumerate(self.axes):
            if a not in self.source_axes:
                data = data[(slice(None),) * i + (None,)]
        return data

    def __repr__(self) -> str:
        return f"AxesView(axes={self.axes!r}, shape={self.shape}, fixed={self.fixed}, dtype={self.dtype})"


# --------------------------------------------------------------------------------------------------------------
# Layout of one inference run
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How an image with ``axes`` is fed to a network with ``spatial`` axes ("YX" or "ZYX").

    Every axis that is neither a channel nor a network axis (T, and Z for a 2D model) is iterated: each
    combination of indices along them is one *plane* the network sees as a separate image. The output (labels)
    keeps every axis of the image except C, in the image's order.
    """

    axes: str
    shape: tuple[int, ...]
    spatial: str

    @classmethod
    def create(cls, axes: str, shape: Sequence[int], spatial: str) -> Layout:
        return cls(axes, tuple(int(n) for n in shape), spatial)

    @property
    def iterated(self) -> str:
        return "".join(a for a in self.axes if a not in self.spatial and a != "C")

    @property
    def output_axes(self) -> str:
        return self.axes.replace("C", "")

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.size(a) for a in self.output_axes)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.size(a) for a in self.spatial)

    @property
    def channels(self) -> int:
        return self.size("C") if "C" in self.axes else 1

    def size(self, letter: str) -> int:
        return self.shape[self.axes.index(letter)]

    def planes(self) -> Iterator[dict[str, int]]:
        """Every combination of indices along the iterated axes, in C order (T slowest)."""
        sizes = [self.size(a) for a in self.iterated]
        for flat in range(math.prod(sizes)):
            yield {a: int(i) for a, i in zip(self.iterated, np.unravel_index(flat, sizes))}

    @property
    def plane_count(self) -> int:
        return math.prod(self.size(a) for a in self.iterated)

    def channel_first(self, image: Any) -> AxesView:
        """A lazy (C, *other axes in image order) view of the whole image, for normalisation statistics."""
        return AxesView(image, self.axes).arrange("C" + self.output_axes)

    def plane_view(self, image: Any, plane: dict[str, int]) -> AxesView:
        """A lazy (C, *spatial) view of one plane: what the network takes, block by block."""
        return AxesView(image, self.axes).select(plane).arrange("C" + self.spatial)

    def output_index(self, plane: dict[str, int], spatial: Sequence[slice]) -> tuple[Any, ...]:
        """Index into the labels array for a block of a plane (spatial slices in network order)."""
        lookup = dict(zip(self.spatial, spatial))
        return tuple(plane[a] if a in plane else lookup[a] for a in self.output_axes)

    def write(self, target: Any, plane: dict[str, int], spatial: Sequence[slice], block: np.ndarray,
              leading: int = 0) -> tuple[Any, ...]:
        """Write ``block`` (``leading`` extra axes, then network spatial order) into ``target``.

        ``target`` has the ``leading`` axes followed by the output axes (e.g. classes first for probabilities).
        Returns the index of the block in the output axes, which is how progress events name updated regions.
        """
        index = self.output_index(plane, spatial)
        order = [a for a in self.output_axes if a in self.spatial]
        perm = list(range(leading)) + [leading + self.spatial.index(a) for a in order]
        target[(slice(None),) * leading + index] = np.transpose(block, perm) if perm != sorted(perm) else block
        return index
