"""The U-Net of Ronneberger et al. (2015), in 2D and 3D, built from one config dataclass.

The network reads top to bottom like Fig. 1 of the paper: a contracting path of double convolutions and 2x2
max-pooling, an expanding path of up-sampling, concatenation with the cropped skip connection and double
convolutions, and a 1x1 convolution to class scores.

Two paddings are supported. ``"valid"`` is the paper's: unpadded 3x3 convolutions, so the output is smaller than
the input and tiles can be placed edge to edge (the overlap-tile strategy). ``"same"`` keeps the spatial size,
which is simpler to train on small patches. Normalisation is batch-norm or none, never instance or group norm:
those normalise over each tile, which makes a tile's prediction depend on what else is in the tile and shows up
as seams in a tiled prediction.

The geometry helpers (:func:`output_size`, :func:`nearest_valid_sizes`, :func:`check_input_shape`) are pure
arithmetic, so tiling code can plan without building a network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from collections.abc import Iterator
from itertools import islice
from typing import Any, Literal

import torch
from torch import nn

from napari_unet.core.errors import InvalidInputError

Padding = Literal["valid", "same"]
Upsampling = Literal["transposed", "bilinear"]
Norm = Literal["batch", "none"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net. The defaults are the paper's network (Fig. 1)."""

    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 2
    depth: int = 4  # number of 2x2 poolings
    base_features: int = 64  # features at the top level, doubled at every level down
    padding: Padding = "valid"
    upsampling: Upsampling = "transposed"
    norm: Norm = "none"

    def __post_init__(self) -> None:
        checks = {
            "spatial_dims": self.spatial_dims in (2, 3),
            "in_channels": isinstance(self.in_channels, int) and self.in_channels >= 1,
            "out_channels": isinstance(self.out_channels, int) and self.out_channels >= 1,
            "depth": isinstance(self.depth, int) and 0 <= self.depth <= 8,
            "base_features": isinstance(self.base_features, int) and self.base_features >= 1,
            "padding": self.padding in ("valid", "same"),
            "upsampling": self.upsampling in ("transposed", "bilinear"),
            "norm": self.norm in ("batch", "none"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidInputError(
                f"invalid U-Net config: {values}. Expected spatial_dims 2 or 3, positive channel and feature "
                "counts, depth 0-8, padding 'valid' or 'same', upsampling 'transposed' or 'bilinear', "
                "norm 'batch' or 'none'."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown U-Net config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


# --------------------------------------------------------------------------------------------------------------
# Geometry: which input sizes a config accepts and what comes out
# --------------------------------------------------------------------------------------------------------------


def output_size(config: UNetConfig, size: int) -> int | None:
    """Output length along one axis for an input length, or None if the network cannot take that length.

    Every 2x2 pooling must see an even length (otherwise the expanding path cannot line up with the skip
    connection), and with valid padding every convolution must leave at least one pixel.
    """
    shrink = 4 if config.padding == "valid" else 0  # two unpadded 3x3 convs per level
    n = size
    for _ in range(config.depth):
        n -= shrink
        if n < 2 or n % 2:
            return None
        n //= 2
    n -= shrink
    if n < 1:
        return None
    for _ in range(config.depth):
        n = 2 * n - shrink
        if n < 1:
            return None
    return n


def halo(config: UNetConfig, size: int) -> int:
    """Pixels lost on each side of a valid input length (0 for same padding)."""
    out = output_size(config, size)
    if out is None:
        raise InvalidInputError(_size_message(config, size))
    return (size - out) // 2


def _scan(config: UNetConfig, size: int, direction: int) -> Iterator[int]:
    """Valid input lengths from ``size`` going down (-1) or up (+1).

    Above the smallest valid length they recur every 2**depth pixels, so 2**(depth + 4) bounds the search.
    """
    stop = 0 if direction < 0 else max(size, 1) + 2 ** (config.depth + 4)
    return (n for n in range(max(size, 1), stop, direction) if output_size(config, n) is not None)


def nearest_valid_sizes(config: UNetConfig, size: int) -> tuple[int | None, int | None]:
    """The largest valid input length <= ``size`` and the smallest >= ``size`` (None where there is none)."""
    return next(_scan(config, size, -1), None), next(_scan(config, size, +1), None)


def valid_sizes_near(config: UNetConfig, size: int, count: int = 3) -> list[int]:
    """Up to ``count`` valid input lengths below and ``count`` above ``size`` (sorted), to suggest or plan tiles."""
    below = list(islice(_scan(config, size, -1), count))
    above = list(islice(_scan(config, size + 1, +1), count))
    return sorted(below + above)


def min_input_size(config: UNetConfig) -> int:
    """The smallest input length the network accepts."""
    return next(_scan(config, 1, +1))


def _size_message(config: UNetConfig, size: int) -> str:
    below, above = nearest_valid_sizes(config, size)
    options = " or ".join(str(n) for n in (below, above) if n is not None)
    rule = (
        f"with valid padding and depth {config.depth} every level must leave an even length after its two "
        "3x3 convolutions"
        if config.padding == "valid"
        else f"with same padding and depth {config.depth} it must be a multiple of {2**config.depth}"
    )
    return f"input length {size} does not fit this U-Net ({rule}); use {options}"


def check_input_shape(config: UNetConfig, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Validate a spatial input shape and return the output shape, or raise naming the nearest valid sizes."""
    if len(shape) != config.spatial_dims:
        raise InvalidInputError(
            f"a {config.spatial_dims}D U-Net needs {config.spatial_dims} spatial axes, got shape {tuple(shape)}"
        )
    out = []
    for axis, size in enumerate(shape):
        n = output_size(config, int(size))
        if n is None:
            raise InvalidInputError(f"spatial axis {axis}: " + _size_message(config, int(size)))
        out.append(n)
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional batch-norm and a ReLU."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, padding: Padding, norm: Norm) -> None:
        conv = _conv(dims)
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for cin in (in_ch, out_ch):
            layers.append(conv(cin, out_ch, kernel_size=3, padding=pad, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(out_ch) if dims == 2 else nn.BatchNorm3d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pooling, then a double convolution that doubles the features."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, padding: Padding, norm: Norm) -> None:
        pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)
        super().__init__(pool, DoubleConv(dims, in_ch, out_ch, padding, norm))


class Up(nn.Module):
    """Up-sample, concatenate with the (centre-cropped) skip connection, double convolution."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, config: UNetConfig) -> None:
        super().__init__()
        if config.upsampling == "transposed":
            transposed = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.up: nn.Module = transposed(in_ch, out_ch, kernel_size=2, stride=2)
        else:
            mode = "bilinear" if dims == 2 else "trilinear"
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
                _conv(dims)(in_ch, out_ch, kernel_size=1),
            )
        self.conv = DoubleConv(dims, 2 * out_ch, out_ch, config.padding, config.norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))


def center_crop(x: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Crop the spatial axes of ``x`` to ``size`` around the centre (the paper's crop for valid padding)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """A 2D or 3D U-Net. ``forward`` takes (N, C, *spatial) and returns class scores (logits)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        dims, f = config.spatial_dims, config.base_features
        features = [f * 2**level for level in range(config.depth + 1)]
        self.inc = DoubleConv(dims, config.in_channels, features[0], config.padding, config.norm)
        self.down = nn.ModuleList(
            Down(dims, features[i], features[i + 1], config.padding, config.norm) for i in range(config.depth)
        )
        self.up = nn.ModuleList(
            Up(dims, features[i + 1], features[i], config) for i in reversed(range(config.depth))
        )
        self.head = _conv(dims)(features[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)


def count_conv_layers(network: nn.Module) -> int:
    """Number of convolution layers (transposed included), as counted in the paper's Fig. 1."""
    kinds = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return sum(isinstance(m, kinds) for m in network.modules())
