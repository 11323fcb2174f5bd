"""Intensity normalisation: statistics once per image, applied identically to every tile.

A tiled prediction only matches a whole-image prediction if every tile is normalised with the same numbers, so
the statistics (per-channel percentiles) are computed once, from a bounded subsample of the image, and passed
to :meth:`Normalization.apply` for each tile. The subsample reads at most a few million pixels in blocks, so a
lazy image larger than memory is never loaded whole.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from napari_unet.core.errors import InvalidInputError

Method = Literal["percentile", "none"]

#: pixels per channel read to estimate the percentiles; more adds time, not accuracy
SAMPLE_PIXELS = 2**22
#: a sample is read in blocks of up to PLANE_EDGE along Y and X (whole planes of small images, which are
#: mostly stored plane by plane) and BLOCK_EDGE along other axes, spread over at least MIN_BLOCKS places
PLANE_EDGE = 256
BLOCK_EDGE = 64
MIN_BLOCKS = 64


@dataclass(frozen=True)
class Normalization:
    """Map intensities so that the ``low`` percentile becomes 0 and the ``high`` percentile becomes 1.

    Percentiles rather than min/max make the mapping robust to hot pixels and to the bit depth: a 12-bit and
    an 8-bit recording of the same scene give the same network input.

    ``invert`` then maps x to 1 - x: a model fine-tuned on dark objects on a bright background (brightfield,
    stained histology in grey) sees them bright on dark, as in the fluorescence images its starting model
    learned from, so what it knew carries over (see ``training_data.match_polarity``).
    """

    method: Method = "percentile"
    low: float = 1.0
    high: float = 99.8
    invert: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "none"):
            raise InvalidInputError(f"unknown normalization method {self.method!r}; use 'percentile' or 'none'")
        if self.method == "percentile" and not 0 <= self.low < self.high <= 100:
            raise InvalidInputError(f"normalization percentiles must satisfy 0 <= low < high <= 100, got "
                                    f"low={self.low}, high={self.high}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.invert:  # models without it read as before, by older versions too
            del data["invert"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(**data)

    def statistics(self, image: Any) -> np.ndarray:
        """Per-channel (offset, scale) for a channel-first array-like ``image`` of shape (C, *spatial).

        Returns a float64 array of shape (C, 2). NaN and Inf pixels are ignored.
        """
        channels = image.shape[0]
        stats = np.zeros((channels, 2), dtype=np.float64)
        stats[:, 1] = 1.0
        if self.method == "none":
            return stats
        for c in range(channels):
            with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, left out just below
                values = sample_pixels(image[c])
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            lo, hi = np.percentile(values, [self.low, self.high])
            stats[c] = lo, max(hi - lo, 1e-6 * max(abs(hi), 1.0), 1e-12)
        return stats

    def apply(self, x: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Normalise a channel-first block with statistics from :meth:`statistics`; NaN/Inf become 0.

        Values beyond float32's range (float64 images) overflow to Inf and so become 0 as well, silently:
        inference has already warned the user once about the image's non-finite values, per tile would be noise.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(x, dtype=np.float32)
            shape = (-1,) + (1,) * (out.ndim - 1)
            out = ((out - stats[:, 0].astype(np.float32).reshape(shape))
                   / stats[:, 1].astype(np.float32).reshape(shape))
            if self.invert:
                out = 1.0 - out
        if not np.isfinite(out).all():
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out


def sample_pixels(array: Any, max_pixels: int = SAMPLE_PIXELS) -> np.ndarray:
    """A flat float32 sample of about ``max_pixels`` values (at most twice that) from a (possibly lazy) array.

    Small arrays are read whole. Larger ones are read as a regular grid of blocks spread over every axis, so
    the sample sees every region of the image, whatever its number of axes (a TZYX stack as fairly as a YX
    plane), while reading only a bounded number of chunks.
    """
    shape = tuple(int(n) for n in array.shape)
    if math.prod(shape) <= max_pixels:
        return np.asarray(array, dtype=np.float32).ravel()
    block = _block_shape(shape, max_pixels)
    counts = _block_counts(shape, block, max(1, max_pixels // math.prod(block)))
    starts = [np.unique(np.linspace(0, n - b, num=k).round().astype(int)) for n, b, k in zip(shape, block, counts)]
    pieces = []
    for origin in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape)):
        index = tuple(slice(int(o), int(o) + b) for o, b in zip(origin, block))
        pieces.append(np.asarray(array[index], dtype=np.float32).ravel())
    return np.concatenate(pieces)


def _block_shape(shape: tuple[int, ...], max_pixels: int) -> tuple[int, ...]:
    """Blocks of up to ``PLANE_EDGE`` along the last two axes (the image plane, whole where it is small) and
    ``BLOCK_EDGE`` along the others, within ``max_pixels / MIN_BLOCKS`` pixels: the axes nearest the plane get
    what is left, at least 1 each, so there are always enough blocks to spread over every axis."""
    budget = max(1, max_pixels // MIN_BLOCKS)
    block = [1] * len(shape)
    for axis in reversed(range(len(shape))):
        edge = PLANE_EDGE if axis >= len(shape) - 2 else BLOCK_EDGE
        block[axis] = max(1, min(edge, shape[axis], budget // math.prod(block)))
    return tuple(block)


def _block_counts(shape: tuple[int, ...], block: tuple[int, ...], wanted: int) -> list[int]:
    """Blocks per axis, at most ``wanted`` in all, spread as evenly over the axes as they allow: an axis with
    room for fewer blocks gets all of them, the others share the rest."""
    fits = [-(-n // b) for n, b in zip(shape, block)]  # ceil: the last block ends at the array's end
    counts = [1] * len(shape)
    free = [axis for axis, k in enumerate(fits) if k > 1]
    budget = float(wanted)
    while free:
        each = budget ** (1 / len(free))
        full = [axis for axis in free if fits[axis] <= each]
        if not full:
            for axis in free:
                counts[axis] = max(1, int(each + 1e-9))
            break
        for axis in full:
            counts[axis] = fits[axis]
            budget /= fits[axis]
        free = [axis for axis in free if axis not in full]
    while True:  # what rounding down left over: one more block along the least covered axis, while it fits
        room = [axis for axis in range(len(shape)) if counts[axis] < fits[axis]
                and math.prod(counts) // counts[axis] * (counts[axis] + 1) <= wanted]
        if not room:
            return counts
        counts[min(room, key=lambda axis: counts[axis] / fits[axis])] += 1
