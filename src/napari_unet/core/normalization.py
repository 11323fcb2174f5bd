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


@dataclass(frozen=True)
class Normalization:
    """Map intensities so that the ``low`` percentile becomes 0 and the ``high`` percentile becomes 1.

    Percentiles rather than min/max make the mapping robust to hot pixels and to the bit depth: a 12-bit and
    an 8-bit recording of the same scene give the same network input.
    """

    method: Method = "percentile"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "none"):
            raise InvalidInputError(f"unknown normalization method {self.method!r}; use 'percentile' or 'none'")
        if self.method == "percentile" and not 0 <= self.low < self.high <= 100:
            raise InvalidInputError(f"normalization percentiles must satisfy 0 <= low < high <= 100, got "
                                    f"low={self.low}, high={self.high}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        if not np.isfinite(out).all():
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out


def sample_pixels(array: Any, max_pixels: int = SAMPLE_PIXELS) -> np.ndarray:
    """A flat float32 sample of at most about ``max_pixels`` values from a (possibly lazy) array.

    Small arrays are read whole. Larger ones are read as a regular grid of blocks spread over the array, so
    the sample sees every region of the image while reading only a bounded number of chunks.
    """
    size = math.prod(array.shape)
    if size <= max_pixels:
        return np.asarray(array, dtype=np.float32).ravel()
    block = 64
    blocks_wanted = max(1, max_pixels // block**array.ndim)
    per_axis = max(1, round(blocks_wanted ** (1 / array.ndim)))
    starts = [
        np.unique(np.linspace(0, max(n - block, 0), num=min(per_axis, max(1, n // block))).astype(int))
        for n in array.shape
    ]
    pieces = []
    for origin in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, array.ndim):
        index = tuple(slice(int(o), int(o) + block) for o in origin)
        pieces.append(np.asarray(array[index], dtype=np.float32).ravel())
    return np.concatenate(pieces)
