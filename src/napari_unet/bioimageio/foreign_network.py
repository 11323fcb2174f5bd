"""A foreign package's network as napari-unet's engine runs it: its size rule for the tile planner, and a
wrapper that takes and gives napari-unet's layout.

:class:`PackageNetworkConfig` stands where a napari-unet model has its :class:`~napari_unet.core.unet.UNetConfig`
and tells :mod:`~napari_unet.core.tiling` what it needs: valid input sizes ``min + k * step``, the output size
for an input size, tiles starting on multiples of ``step``, and the pad mode for the image border. The tile
planner treats it like a valid-padding network: every tile's input reaches ``halo`` pixels beyond the outputs
it keeps, the image border is mirrored by that much (what ``bioimageio.core``'s prediction does), and the
network crops the halo itself. A tiled run therefore equals a whole-image run whenever the package's halo
covers the network's reach; napari-unet cannot measure that for a foreign network and takes the package at its
word.

:class:`PackageNetwork` wraps the loaded network (eager or TorchScript): it rearranges napari-unet's
``(N, C, *spatial)`` batch into the package's axis order (dropping a missing batch or channel axis), runs the
network, brings the output back, crops the halo, applies the package's elementwise postprocessing and, for a
single-channel map that the package calls instance segmentation, gives background / interior / boundary
channels (``1 - p``, ``p``, 0), so that napari-unet's instance labelling makes the connected components of
``p > 0.5`` its objects.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

#: activation memory assumed per input pixel when the package does not say (that of a 64-feature U-Net)
DEFAULT_BYTES_PER_PIXEL = 9 * 64 * 4


@dataclass(frozen=True)
class PackageNetworkConfig:
    """The shape rules of a package's network, in the terms the tile planner asks for."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    min_size: int  # smallest valid input length along every spatial axis
    size_step: int  # valid lengths are min_size + k * size_step (0: only min_size)
    step: int  # tiles start on multiples of this (size_step, or for a fixed size the power of two dividing it)
    halo: int  # outputs the network wrapper crops on each side of a tile
    shrink: int = 0  # how much smaller than its input the network's own output is (valid convolutions)
    pad_mode: str = "symmetric"  # how the image border is extended: the package's pad mode
    padding: str = "valid"  # to the planner: a network that crops itself, tiled edge to edge
    bytes_per_pixel: int = DEFAULT_BYTES_PER_PIXEL

    def output_size(self, size: int) -> int | None:
        """Output length for an input length, or None if the network does not take that length."""
        if size < self.min_size or (size - self.min_size) % max(self.size_step, 1) \
                or (self.size_step == 0 and size != self.min_size):
            return None
        out = size - self.shrink - 2 * self.halo
        return out if out >= 1 else None

    def sizes_near(self, size: int) -> list[int]:
        """The largest valid input length <= ``size`` and the smallest > ``size`` (those that exist)."""
        if self.size_step == 0:
            return [self.min_size]
        k = max((size - self.min_size) // self.size_step, -1)  # -1: size is below the smallest
        below, above = self.min_size + k * self.size_step, self.min_size + (k + 1) * self.size_step
        return [n for n in (below, above) if n >= self.min_size and self.output_size(n) is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PackageNetwork(nn.Module):
    """A package's network between napari-unet's engine and the package's axes; outputs probabilities."""

    outputs_probabilities = True  # core.runner.Network applies no softmax of its own

    def __init__(self, inner: nn.Module, spatial: Sequence[str], input_axes: Sequence[str],
                 output_axes: Sequence[str], halo: int, postprocessing: Sequence[tuple[str, Any]] = (),
                 foreground_instances: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.spatial_dims = len(spatial)
        self.layout = ("batch", "channel", *spatial)
        self.input_axes, self.output_axes = tuple(input_axes), tuple(output_axes)
        self.halo = halo
        self.postprocessing = tuple(postprocessing)
        self.foreground_instances = foreground_instances

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "batch" not in self.input_axes:  # one sample at a time
            return torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(_arrange(x, self.layout, self.input_axes))
        if isinstance(y, (tuple, list)):
            y = y[0]
        y = _arrange(y, self.output_axes, self.layout).float()
        if self.halo:
            h = self.halo
            y = y[(slice(None), slice(None)) + (slice(h, -h),) * self.spatial_dims]
        for kind, value in self.postprocessing:
            y = _postprocess(kind, value, y)
        if self.foreground_instances:
            p = y[:, :1]
            y = torch.cat([1 - p, p, torch.zeros_like(p)], dim=1)
        return y


def _arrange(x: torch.Tensor, have: Sequence[str], want: Sequence[str]) -> torch.Tensor:
    """``x`` with dimensions named ``have`` as dimensions named ``want``: missing ones (of length 1) dropped
    or added, the rest permuted."""
    for i in reversed(range(len(have))):
        if have[i] not in want:
            x = x.squeeze(i)
    kept = [a for a in have if a in want]
    x = x.permute([kept.index(a) for a in want if a in kept])
    for i, a in enumerate(want):
        if a not in kept:
            x = x.unsqueeze(i)
    return x


def _postprocess(kind: str, value: Any, y: torch.Tensor) -> torch.Tensor:
    """One elementwise postprocessing op on a (N, C, *spatial) output; ``value`` holds its parameters, per
    channel where they are tensors of shape (C,)."""
    def per_channel(v: Any) -> Any:
        return v.to(y.device).reshape((1, -1) + (1,) * (y.ndim - 2)) if isinstance(v, torch.Tensor) else v

    if kind == "sigmoid":
        return torch.sigmoid(y)
    if kind == "softmax":
        return torch.softmax(y, dim=value)
    if kind == "scale_linear":
        return y * per_channel(value[0]) + per_channel(value[1])
    if kind == "clip":
        return torch.clamp(y, min=value[0], max=value[1])
    if kind == "binarize":
        return (y > per_channel(value)).float()
    raise AssertionError(f"unknown postprocessing {kind}")  # foreign.py only builds the kinds above
