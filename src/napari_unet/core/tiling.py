"""Overlap-tile planning: where tiles go, which part of each tile's output is kept, and reading tile inputs.

The goal is a tiled prediction that equals one whole-image forward pass to float32 round-off, so that no seam
can appear. Two facts make that possible.

*Alignment.* A U-Net max-pools ``depth`` times by 2, so its output is only translation-equivariant for shifts
by multiples of ``g = 2**depth``. Every tile therefore starts on a multiple of ``g`` in the coordinates of the
whole-image pass, and a tiled run sees exactly the pooling grid the whole image would.

*Context.* An output pixel is exact when every input pixel that can influence it lies inside its tile. For
valid-padding networks (the paper's) the output is smaller than the input by a fixed halo and every output pixel
is exact: output tiles are placed edge to edge and the image border is extended by mirroring, the paper's
overlap-tile strategy. For same-padding networks, zero padding at every level makes outputs near a tile edge
depend on where the edge is; they are discarded, keeping each tile's centre with a margin equal to the
network's reach. Tiles at the image border keep their outer part (the whole-image pass pads there too) and are
shifted inward rather than the image being padded. The reach is *measured* (:func:`boundary_margin`), not
guessed: bilinear up-sampling, for one, reaches a little further than the kernel sizes suggest.

The whole-image pass this matches is: for valid networks, the image mirrored by the halo on every side; for
same networks, the image padded with zeros (after normalisation) at the far end of each axis up to a multiple
of ``g``, which the network needs anyway.

A network from another tool's bioimage.io package is planned like a valid network: its config (not a
:class:`UNetConfig`) states its own size rule (``min + k * step``), its output size and its halo, which its
network crops itself, and how the image border is mirrored (the package's pad mode); tiles start on
multiples of ``step``. See :mod:`napari_unet.bioimageio.foreign`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.unet import UNet, UNetConfig, min_input_size, output_size, valid_sizes_near


@functools.lru_cache(maxsize=64)
def boundary_margin(config: UNetConfig) -> tuple[int, int]:
    """Outputs to discard next to a tile's (start, end) edge so that the rest match a whole-image pass.

    Measured from the architecture: a probe network with the same depth, padding and up-sampling (what an
    input pixel can reach does not depend on feature counts or weights) gets all-positive weights and average-
    instead of max-pooling, so every path from an input to an output adds a positive amount and nothing can
    cancel; the outputs that respond to a bright pixel are exactly those it can influence. That reach depends
    on the pixel's position in the pooling grid, so it is measured at every alignment. An output is exact when
    no pixel beyond the tile edge reaches it; the margin is the furthest such reach, less the halo a valid
    network drops anyway (zero for the paper's network). Cached per architecture.

    A package network's halo is declared by its package and cropped by the network: nothing more to drop.
    """
    if not isinstance(config, UNetConfig):
        return 0, 0
    config = replace(config, spatial_dims=2)  # kernels are isotropic: the reach along an axis is the same in 3D
    g = 2**config.depth
    probe = _probe_network(config)
    valid = config.padding == "valid"
    other = min_input_size(config) if valid else g
    length = 8 * g + 32
    while True:
        size = _valid_at_least(config, length) if valid else -(-length // g) * g
        out = output_size(config, size)
        halo = (size - out) // 2
        centre = (size // 2) // g * g
        x = torch.zeros((g, 1, size, other), dtype=torch.float64)
        for c in range(g):
            x[c, 0, centre + c] = 1.0
        with torch.no_grad(), _one_thread():
            hit = (probe(x)[:, 0] > 0).reshape(g, out, -1).any(-1)  # (alignment, output position)
        touched = torch.nonzero(hit.any(0))[:, 0]
        if touched[0] > 0 and touched[-1] < out - 1:
            break
        length *= 2
    reach_left, reach_right = [], []  # per alignment: how far a pixel reaches outputs before / after itself
    for c in range(g):
        where = torch.nonzero(hit[c])[:, 0] + halo  # output index -> input coordinate
        reach_left.append(int(centre + c - where.min()))
        reach_right.append(int(where.max() - centre - c))
    tile_class = size % g  # all valid input sizes share it; 0 for same padding
    start = max(reach_right[(-1 - k) % g] - k for k in range(g))  # pixels just before the tile
    end = max(reach_left[(tile_class + k) % g] - k for k in range(g))  # pixels just after it
    drop = halo if valid else 0
    return max(0, start - drop), max(0, end - drop)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the probe is hundreds of tiny operations, for which waking more threads costs
    far more than it saves (on a busy machine, twenty times more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _valid_at_least(config: UNetConfig, n: int) -> int:
    while _output_size(config, n) is None:
        n += 1
    return n


def grid_step(config: Any) -> int:
    """Tiles start on multiples of this: the pooling grid of a U-Net, the size step of a package network."""
    return 2**config.depth if isinstance(config, UNetConfig) else config.step


def _output_size(config: Any, size: int) -> int | None:
    return output_size(config, size) if isinstance(config, UNetConfig) else config.output_size(size)


def _sizes_near(config: Any, size: int) -> list[int]:
    """The largest valid input length <= ``size`` and the smallest > ``size`` (those that exist), sorted."""
    if isinstance(config, UNetConfig):
        return valid_sizes_near(config, size, count=1)
    return config.sizes_near(size)


def _probe_network(config: UNetConfig) -> nn.Module:
    """A one-feature copy of the architecture whose response to an impulse shows the reach of every path."""
    net = UNet(replace(config, in_channels=1, out_channels=1, base_features=1)).double().eval()
    generator = torch.Generator().manual_seed(0)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (nn.MaxPool2d, nn.MaxPool3d)):
                pool = nn.AvgPool2d(2) if isinstance(child, nn.MaxPool2d) else nn.AvgPool3d(2)
                setattr(module, name, pool)
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            with torch.no_grad():
                w = torch.rand(module.weight.shape, generator=generator, dtype=torch.float64) + 0.5
                module.weight.copy_(w / w[0].sum())
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            module.reset_parameters()
    return net


# --------------------------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one axis.

    Tile ``k`` reads input ``[starts[k], starts[k] + in_size)`` (image coordinates; may reach beyond the image,
    see :func:`read_tile`) and produces ``out_size`` outputs, output ``j`` being image position
    ``starts[k] + offset + j``. It keeps image positions ``cores[k]``; the cores partition ``[0, length)``.
    """

    length: int
    in_size: int
    out_size: int
    offset: int
    starts: tuple[int, ...]
    cores: tuple[tuple[int, int], ...]

    def kept(self, k: int) -> slice:
        """The slice of tile ``k``'s output that it keeps."""
        first = self.starts[k] + self.offset
        return slice(self.cores[k][0] - first, self.cores[k][1] - first)


@dataclass(frozen=True)
class TilePlan:
    """Tiles of one plane: the product of the per-axis plans, in C order (last axis fastest)."""

    axes: tuple[AxisPlan, ...]
    margin: tuple[int, int]  # outputs dropped after a tile's start and before its end (inner edges only)
    mode: str  # "zeros" (same networks: zero padding), else how the image is mirrored (see read_tile)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        return tuple(a.in_size for a in self.axes)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(len(a.starts) for a in self.axes)

    def __len__(self) -> int:
        return math.prod(self.grid)

    def tile(self, index: Sequence[int]) -> tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]:
        """Input start, kept part of the output and its place in the image, for the tile at grid ``index``."""
        start = tuple(a.starts[k] for a, k in zip(self.axes, index))
        kept = tuple(a.kept(k) for a, k in zip(self.axes, index))
        place = tuple(slice(*a.cores[k]) for a, k in zip(self.axes, index))
        return start, kept, place

    def indices(self) -> list[tuple[int, ...]]:
        return [tuple(int(i) for i in np.unravel_index(flat, self.grid)) for flat in range(len(self))]


def plan_tiles(config: UNetConfig, shape: Sequence[int], tile_shape: Sequence[int],
               margin: int | None = None) -> TilePlan:
    """Plan the tiles for a plane of spatial ``shape`` with input tiles of (about) ``tile_shape``.

    ``margin`` overrides the measured :func:`boundary_margin` on both sides (smaller trades exactness for
    speed). Tile sizes are rounded to what the network accepts and shrunk for axes shorter than a tile.
    """
    if margin is not None and int(margin) < 0:
        raise InvalidInputError(f"overlap must be >= 0 pixels, got {margin}")
    m = boundary_margin(config) if margin is None else (int(margin), int(margin))
    plan = _plan_valid if config.padding == "valid" else _plan_same
    axes = tuple(plan(config, int(n), int(t), m) for n, t in zip(shape, tile_shape))
    mode = "zeros" if config.padding == "same" else getattr(config, "pad_mode", "reflect")
    return TilePlan(axes, m, mode)


def _plan_same(config: UNetConfig, n: int, tile: int, margin: tuple[int, int]) -> AxisPlan:
    g = 2**config.depth
    before, after = margin
    padded = -(-n // g) * g
    cap = max(tile // g * g, g)
    if cap >= padded:
        return AxisPlan(n, padded, padded, 0, (0,), ((0, n),))

    def count(size: int) -> int | None:  # tiles of this size needed, None if it leaves no room
        stride = (size - before - after) // g * g
        return None if stride < g else 1 + -(-(padded - size) // stride)

    tiles = count(cap)
    if tiles is None:
        raise InvalidInputError(f"tile length {tile} is too small for this network, which needs {before} + {after} "
                                f"pixels of context; use tiles of at least {-(-(before + after + g) // g) * g}")
    size = cap
    while size > g and count(size - g) == tiles:  # the smallest tiles that need no more of them
        size -= g
    starts = _spread(0, padded - size, tiles, g)
    lows = [0] + [s + before for s in starts[1:]]
    highs = [s + size - after for s in starts[:-1]] + [padded]
    return _partition(n, size, size, 0, starts, lows, highs)


def _plan_valid(config: Any, n: int, tile: int, margin: tuple[int, int]) -> AxisPlan:
    g = grid_step(config)
    before, after = margin
    first = -(-before // g) * g  # the first output tile starts this far before the image

    def origins(size: int) -> list[int] | None:  # output origins of tiles of this input size
        out = _output_size(config, size)
        stride = (out - before - after) // g * g
        if stride < g:
            return None
        last = max(-first, -(-(n + after - out) // g) * g)
        return _spread(-first, last, 1 + -(-(last + first) // stride), g)

    sizes = _sizes_near(config, max(tile, 1))
    size = ([s for s in sizes if s <= tile] or sizes[-1:])[-1]
    chosen = origins(size)
    if chosen is None:
        raise InvalidInputError(f"tile length {tile} is too small for this network; use tiles of at least "
                                f"{_valid_at_least(config, size + before + after + g)} pixels")
    while True:  # the smallest valid tiles that need no more of them
        below = _sizes_near(config, size - 1)
        smaller = [s for s in below if s < size]
        fewer = origins(smaller[-1]) if smaller else None
        if fewer is None or len(fewer) > len(chosen):
            break
        size, chosen = smaller[-1], fewer
    out = _output_size(config, size)
    halo = (size - out) // 2
    lows = [o + before for o in chosen]
    highs = [o + out - after for o in chosen]
    return _partition(n, size, out, halo, [o - halo for o in chosen], lows, highs)


def _spread(first: int, last: int, count: int, g: int) -> list[int]:
    """``count`` multiples of ``g`` from ``first`` to ``last`` (both multiples of ``g``), as evenly as possible."""
    if count <= 1:
        return [first]
    units, gaps = (last - first) // g, count - 1
    q, r = divmod(units, gaps)
    steps = [q + 1] * r + [q] * (gaps - r)
    return [first + g * int(u) for u in np.concatenate([[0], np.cumsum(steps)])]


def _partition(n: int, size: int, out: int, offset: int, starts: list[int], lows: list[int],
               highs: list[int]) -> AxisPlan:
    """Split ``[0, n)`` between tiles whose exact outputs are ``[lows[k], highs[k])``, cutting mid-overlap."""
    cuts = [0] + [(lows[k + 1] + highs[k]) // 2 for k in range(len(starts) - 1)] + [n]
    kept = [(k, max(cuts[k], 0), min(cuts[k + 1], n)) for k in range(len(starts))]
    kept = [(k, a, b) for k, a, b in kept if a < b]
    return AxisPlan(n, size, out, offset, tuple(starts[k] for k, _, _ in kept), tuple((a, b) for _, a, b in kept))


# --------------------------------------------------------------------------------------------------------------
# Reading tiles
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TileInput:
    """A normalised tile and what was learnt about its raw pixels on the way."""

    data: np.ndarray  # float32 (C, *tile_shape)
    bad: np.ndarray | None  # bool (*tile_shape): NaN or Inf in any channel, or None if there were none
    low: np.ndarray  # per-channel minimum of the finite raw values read (for constant-image detection)
    high: np.ndarray


def read_tile(view: Any, start: Sequence[int], shape: Sequence[int], mode: str, normalize: Any) -> TileInput:
    """Read the tile ``[start, start + shape)`` of a (C, *spatial) lazy ``view`` and normalise it.

    Only the part inside the image is read from ``view``. ``mode="zeros"`` fills the rest with zeros after
    normalisation (what same-padding convolutions see at the border), ``mode="reflect"`` mirrors the image
    (without repeating the edge pixel, as the U-Net paper does), as often as needed for tiny images;
    ``"symmetric"`` (repeating it) and ``"edge"`` are the other ways a bioimage.io package may ask for.
    ``normalize(raw)`` maps a raw (C, ...) block to float32.
    """
    spatial = view.shape[1:]
    if mode == "zeros":
        lo = [max(s, 0) for s in start]
        hi = [min(s + t, n) for s, t, n in zip(start, shape, spatial)]
        raw = np.asarray(view[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))])
        bad_raw, low, high = _inspect(raw)
        data = np.zeros((raw.shape[0], *shape), dtype=np.float32)
        inner = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        data[(slice(None),) + inner] = normalize(raw)
        bad = None
        if bad_raw is not None:
            bad = np.zeros(tuple(shape), dtype=bool)
            bad[inner] = bad_raw
    else:
        fold = _MIRRORS[mode]
        index = [fold(np.arange(s, s + t), n) for s, t, n in zip(start, shape, spatial)]
        raw = np.asarray(view[(slice(None),) + tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)])
        bad_raw, low, high = _inspect(raw)
        take = np.ix_(*[i - i.min() for i in index])
        data = normalize(raw)[(slice(None),) + take]
        bad = None if bad_raw is None else bad_raw[take]
    return TileInput(np.ascontiguousarray(data, dtype=np.float32), bad, low, high)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` like ``np.pad(mode="reflect")``, repeated for any distance."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.mod(index, period)
    return np.where(folded < n, folded, period - folded)


def _symmetric(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` like ``np.pad(mode="symmetric")`` (the edge pixel repeated)."""
    folded = np.mod(index, 2 * n)
    return np.where(folded < n, folded, 2 * n - 1 - folded)


_MIRRORS = {"reflect": _reflect, "symmetric": _symmetric, "edge": lambda index, n: np.clip(index, 0, n - 1)}


def _inspect(raw: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Where a (C, ...) block is NaN or Inf in any channel (None if nowhere), and each channel's finite range."""
    flat = raw.reshape(raw.shape[0], -1)
    if raw.dtype.kind == "f":
        finite = np.isfinite(flat)
        if not finite.all():
            low = np.array([f[ok].min() if ok.any() else np.inf for f, ok in zip(flat, finite)], dtype=np.float64)
            high = np.array([f[ok].max() if ok.any() else -np.inf for f, ok in zip(flat, finite)], dtype=np.float64)
            return ~finite.all(axis=0).reshape(raw.shape[1:]), low, high
    return None, flat.min(axis=1).astype(np.float64), flat.max(axis=1).astype(np.float64)
