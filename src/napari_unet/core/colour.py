"""Colour images for single-channel models: converted to one grey channel, with a warning, in one place.

A model trained on one channel (the bundled ``nuclei`` among them) cannot take an RGB image as it is. Refusing
it makes a user convert it by hand, and a user who selects one channel (say red) loses most of the contrast of
a stained section. So an image whose channel axis is *last* and holds 3 (RGB) or 4 (RGBA) values - the layout
of colour images, what napari shows as ``rgb`` and what :func:`~napari_unet.core.axes.infer_axes` reads as
``...YXC`` - is converted to one channel when it meets a 1-channel model (alpha ignored), and a
:class:`UserWarning` says how (the napari widgets show warnings as notifications). Which grey depends on the
light (:func:`choose_conversion`):

* **Transmitted light** (a stained section or brightfield image: most of the image is bright, the light that
  passed the glass) becomes its *optical density*, ``sum over R, G, B of log(white / value)`` (Beer-Lambert:
  proportional to the amount of stain, so stained nuclei are bright on a dark background, as a fluorescence
  model expects). On the colour histology of the train split of the 2018 Data Science Bowl data, the bundled
  model trained on luminance scored AP@0.5 0.34 on optical density against 0.21 on luminance (24 images).
* **Emitted light** (a dark background: fluorescence saved as RGB) becomes its luminance,
  ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601), the grey a monochrome camera would record.

Channels stored elsewhere (``CYX``: fluorescence channels, not colours) are still refused with a message,
since averaging stains is rarely what a user wants.

:func:`segment` and fine-tuning both call :func:`grey_for_model`, so a model is trained on exactly the grey
it is later asked to segment. Lazy images (dask, zarr) stay lazy: the conversion happens block by block as
the tiles are read.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.axes import check_axes, infer_axes, resolve_axes
from napari_unet.core.normalization import sample_pixels

LUMINANCE = (0.299, 0.587, 0.114)
"""Weights of R, G and B in the grey value (ITU-R BT.601 luma)."""

COLOUR_CHANNELS = (3, 4)

BRIGHT_BACKGROUND = 0.35
"""Transmitted light: the median luminance lies above this fraction of the way from its 1st to its 99th
percentile. Fluorescence lies near 0 (on the grey fluorescence images of the DSB 2018 train split, 95 % below
0.09), stained sections near 1 (on its colour images, 95 % above 0.62)."""

WHITE_PERCENTILE = 99.0
"""The white of transmitted light, per channel: this percentile of the channel (the empty glass)."""


@dataclass(frozen=True)
class Conversion:
    """How a colour image becomes one channel: ``"luminance"``, or ``"optical density"`` against ``white``
    (one value per colour channel)."""

    kind: str
    white: tuple[float, float, float] | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32: Inf, which segment reports
            colour = rgb[..., :3].astype(np.float32, copy=False)
            if self.kind == "luminance":
                weights = np.asarray(LUMINANCE, dtype=np.float32)
                return np.tensordot(colour, weights, axes=([-1], [0])).astype(np.float32)
            white = np.maximum(np.asarray(self.white, dtype=np.float32), np.float32(1e-6))
            transmitted = np.clip(colour, white / 256, white) / white  # 1 on glass, down to 1/256 under stain
            return (-np.log(transmitted)).sum(axis=-1).astype(np.float32)

    def describe(self) -> str:
        if self.kind == "luminance":
            return f"luminance {LUMINANCE[0]} R + {LUMINANCE[1]} G + {LUMINANCE[2]} B"
        return "optical density (a stained section in transmitted light: stain bright, glass dark)"


LUMINANCE_ONLY = Conversion("luminance")


def choose_conversion(image: Any) -> Conversion:
    """Optical density for an image in transmitted light (a bright background), luminance otherwise.

    Decided once per image from a sample spread over all of it (lazy images read a few blocks), so every block
    of a large image is converted alike."""
    grey = sample_pixels(ChannelView(image, LUMINANCE_ONLY))
    grey = grey[np.isfinite(grey)]
    if not grey.size:
        return LUMINANCE_ONLY
    low, median, high = np.percentile(grey, (1, 50, 99))
    if high <= low or (median - low) <= BRIGHT_BACKGROUND * (high - low):
        return LUMINANCE_ONLY
    white = tuple(float(np.percentile(sample_pixels(ChannelView(image, _channel(c))), WHITE_PERCENTILE))
                  for c in range(3))
    return Conversion("optical density", white)


def _channel(index: int) -> Any:
    return lambda rgb: np.asarray(rgb)[..., index].astype(np.float32)


def to_grey(image: Any, conversion: Conversion | None = None) -> Any:
    """One float32 channel from a colour image whose last axis holds R, G, B (and optionally alpha).

    ``conversion`` None chooses it from the image (:func:`choose_conversion`). numpy arrays are converted at
    once; other arrays (dask, zarr, anything with ``shape``, ``dtype`` and ``__getitem__``) come back as a
    :class:`ChannelView` that converts only the blocks read from it.
    """
    if image.shape[-1] not in COLOUR_CHANNELS:
        raise ValueError(f"a colour image needs 3 (RGB) or 4 (RGBA) values on its last axis, not shape "
                         f"{tuple(image.shape)}")
    conversion = choose_conversion(image) if conversion is None else conversion
    if isinstance(image, np.ndarray):
        return conversion(image)
    return ChannelView(image, conversion)


class ChannelView:
    """A read-only lazy one-channel view of a colour array (colour last): ``view[block]`` reads that block's
    pixels and converts them."""

    def __init__(self, array: Any, conversion: Any) -> None:
        self.array = array
        self.conversion = conversion

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
        return self.conversion(np.asarray(self.array[key + (slice(None),)]))


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
    conversion = choose_conversion(image)
    note = (f"the image is in colour (axes {letters!r}, {shape[-1]} channels) and the model takes one channel: "
            f"it was given its {conversion.describe()}")
    warnings.warn(note, UserWarning, stacklevel=stacklevel)
    return to_grey(image, conversion), grey_axes, note


def resolve_model_axes(axes: str | None, shape: tuple[int, ...], *, spatial_dims: int, in_channels: int,
                       rgb: bool | None = None) -> str:
    """The checked axes of an image as :func:`segment` will read it (what a widget checks before a run): as
    :func:`~napari_unet.core.axes.resolve_axes`, except that a colour image for a 1-channel model is accepted,
    since :func:`grey_for_model` converts it; its other axes are checked as those of the grey image."""
    shape = tuple(int(n) for n in shape)
    letters = check_axes(axes, len(shape)) if axes is not None else infer_axes(
        shape, spatial_dims=spatial_dims, in_channels=in_channels, rgb=rgb)
    if is_colour(letters, shape, in_channels):
        resolve_axes(letters[:-1], shape[:-1], spatial_dims=spatial_dims, in_channels=in_channels)
        return letters
    return resolve_axes(axes, shape, spatial_dims=spatial_dims, in_channels=in_channels, rgb=rgb)
