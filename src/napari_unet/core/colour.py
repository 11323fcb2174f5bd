"""Colour images for single-channel models: converted to grey (luminance), with a warning, in one place.

A model trained on one channel (the bundled ``nuclei`` among them) cannot take an RGB image as it is. Refusing
it makes a user convert it by hand, and a user who selects one channel (say red) loses most of the contrast of
a stained section; the luminance, the grey a monochrome camera would record, keeps it. So an image whose
channel axis is *last* and holds 3 (RGB) or 4 (RGBA) values - the layout of colour images, what napari shows
as ``rgb`` and what :func:`~napari_unet.core.axes.infer_axes` reads as ``...YXC`` - is converted to
``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601; alpha ignored) when it meets a 1-channel model, and a
:class:`UserWarning` says so (the napari widgets show warnings as notifications). Channels stored elsewhere
(``CYX``: fluorescence channels, not colours) are still refused with a message, since averaging stains is
rarely what a user wants.

:func:`segment` and fine-tuning both call :func:`grey_for_model`, so a model is trained on exactly the grey
it is later asked to segment. Lazy images (dask, zarr) stay lazy: the conversion happens block by block as
the tiles are read.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from napari_unet.core.axes import check_axes, infer_axes

LUMINANCE = (0.299, 0.587, 0.114)
"""Weights of R, G and B in the grey value (ITU-R BT.601 luma)."""

COLOUR_CHANNELS = (3, 4)


def to_grey(image: Any) -> Any:
    """The luminance of a colour image whose last axis holds R, G, B (and optionally alpha), as float32.

    numpy arrays are converted at once; other arrays (dask, zarr, anything with ``shape``, ``dtype`` and
    ``__getitem__``) come back as a :class:`GreyView` that converts only the blocks read from it.
    """
    if image.shape[-1] not in COLOUR_CHANNELS:
        raise ValueError(f"a colour image needs 3 (RGB) or 4 (RGBA) values on its last axis, not shape "
                         f"{tuple(image.shape)}")
    if isinstance(image, np.ndarray):
        return _luminance(image)
    return GreyView(image)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    weights = np.asarray(LUMINANCE, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32: Inf, which segment reports
        colour = rgb[..., :3].astype(np.float32, copy=False)
        return np.tensordot(colour, weights, axes=([-1], [0])).astype(np.float32)


class GreyView:
    """A read-only lazy grey view of a colour array (colour last): ``view[block]`` reads that block's pixels."""

    def __init__(self, array: Any) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape[:-1])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[(slice(None),) * self.ndim]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        return _luminance(np.asarray(self.array[key + (slice(None),)]))


def is_colour(axes: str, shape: tuple[int, ...] | Any, in_channels: int) -> bool:
    """Whether an image with these (checked) ``axes`` and ``shape`` is a colour image for a 1-channel model."""
    return in_channels == 1 and axes.endswith("C") and int(shape[-1]) in COLOUR_CHANNELS


def grey_for_model(image: Any, axes: str | None, spatial_dims: int, in_channels: int,
                   stacklevel: int = 3) -> tuple[Any, str | None, str | None]:
    """``(image, axes, note)`` ready for a model: a colour image for a 1-channel model becomes its grey.

    ``axes`` are inferred as :func:`~napari_unet.core.axes.infer_axes` does when None. Anything that is not a
    colour image for a 1-channel model comes back unchanged (axes as given, note None), for
    :func:`~napari_unet.core.axes.resolve_axes` to check as usual. A conversion warns (``UserWarning``) and
    returns the grey image, its axes without C, and the note for the caller's messages.
    """
    shape = tuple(int(n) for n in image.shape)
    if in_channels != 1 or len(shape) < 3 or shape[-1] not in COLOUR_CHANNELS:
        return image, axes, None
    try:
        letters = check_axes(axes, len(shape)) if axes is not None else infer_axes(
            shape, spatial_dims=spatial_dims, in_channels=in_channels)
    except ValueError:
        return image, axes, None  # resolve_axes reports the problem with its own message
    if not is_colour(letters, shape, in_channels):
        return image, axes, None
    grey_axes = letters[:-1]
    note = (f"the image is in colour (axes {letters!r}, {shape[-1]} channels) and the model takes one channel: "
            f"it was converted to grey (luminance {LUMINANCE[0]} R + {LUMINANCE[1]} G + {LUMINANCE[2]} B)")
    warnings.warn(note, UserWarning, stacklevel=stacklevel)
    return to_grey(image), grey_axes, note
