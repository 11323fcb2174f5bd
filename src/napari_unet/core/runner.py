"""Running a U-Net on batches of tiles: device, precision, memory layout, and sizes that fit in memory.

:class:`Network` wraps a private copy of the caller's network prepared for inference (eval mode, batch-norm
folded into the preceding convolution, channels-last weights, moved to the device), so nothing the caller holds
changes. It takes a numpy batch and returns numpy class probabilities, optionally averaged over flips (test-time
augmentation). Tile sizing lives here alone: :func:`auto_tile_shape` and :func:`auto_batch_size` choose sizes
from the memory available (free GPU memory on CUDA, a fixed budget on the CPU, where large tiles also fall out
of cache), and :func:`smaller_tile_shape` shrinks tiles after an out-of-memory failure.
"""
from __future__ import annotations

import copy
import gc
import itertools
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from napari_unet.core.memory import total_memory as physical_memory  # one home, torch-free
from napari_unet.core.unet import UNet, UNetConfig

PRECISIONS = ("auto", "float32", "bfloat16", "float16")

#: largest tile edge on a CPU; bigger tiles waste less on margins but run slower per pixel once they leave
#: the cache (measured by bench/tiling_vs_monai.py)
CPU_TILE_EDGE = {2: 1024, 3: 256}
#: activation memory one CPU batch may use (at most an eighth of the machine's memory)
CPU_BUDGET_BYTES = 3 * 2**29
#: share of free GPU memory one batch may use (the rest absorbs fragmentation and cuDNN workspaces)
GPU_SHARE = 0.4


class Network:
    """An inference-ready copy of a network on one device; ``network(batch)`` gives class probabilities.

    A network whose ``outputs_probabilities`` attribute is true (one from another tool's bioimage.io package,
    whose own postprocessing ends in probabilities) is taken as it is; any other gets a softmax (a sigmoid for
    one class) over its scores.
    """

    def __init__(self, network: nn.Module, device: torch.device, precision: str = "auto", tta: bool = False) -> None:
        self.device = device
        self.tta = tta
        if precision == "bfloat16" and device.type == "cpu" and not cpu_has_native_bfloat16():
            warnings.warn("bfloat16 was asked for, but this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX): "
                          "PyTorch emulates it, which is slower than float32 and less exact. Use precision 'auto' "
                          "or 'float32' here", UserWarning, stacklevel=2)
        self.autocast = autocast_dtype(device, precision)
        self.half = self.autocast is not None
        self.precision_name = str(self.autocast).replace("torch.", "") if self.half else "float32"
        self.activate = not getattr(network, "outputs_probabilities", False)
        with warnings.catch_warnings():  # moving a TorchScript module reads its parameters' .grad, and warns
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
            net = fold_batchnorm(_cpu_copy(network).eval())
            self.spatial_dims = _spatial_dims(net)
            self.memory_format = None
            if device.type in ("cpu", "cuda"):
                self.memory_format = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
            self.net = net.to(device=device, memory_format=self.memory_format or torch.contiguous_format)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (sigmoid for one class), float32, for a float32 (N, C, *spatial) batch."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        flip_sets = _flips(self.spatial_dims) if self.tta else [()]
        with torch.inference_mode(), self._autocast():
            total = None
            for dims in flip_sets:
                y = self.net(x.flip(dims) if dims else x).float()
                if self.activate:
                    y = torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
                y = y.flip(dims) if dims else y
                total = y if total is None else total + y
            probabilities = total / len(flip_sets) if len(flip_sets) > 1 else total
        return np.ascontiguousarray(probabilities.cpu().numpy(), dtype=np.float32)

    def _autocast(self) -> Any:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def free(self) -> None:
        """Return cached device memory after a failed attempt."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()


def _cpu_copy(network: nn.Module) -> nn.Module:
    """A copy of ``network`` on the CPU, made without allocating on the device it may live on (which may be full)."""
    if isinstance(network, UNet):
        clone = UNet(network.config)
        clone.load_state_dict(network.state_dict())
        return clone
    return copy.deepcopy(network).cpu()


def _spatial_dims(net: nn.Module) -> int:
    config = getattr(net, "config", None)
    if isinstance(config, UNetConfig):
        return config.spatial_dims
    if isinstance(getattr(net, "spatial_dims", None), int):  # a package network (TorchScript hides its layers)
        return net.spatial_dims
    return 3 if any(isinstance(m, nn.Conv3d) for m in net.modules()) else 2


def _flips(dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial tensor dimensions (2.. of N, C, *spatial), the identity first."""
    spatial = range(2, 2 + dims)
    return [tuple(d for d, on in zip(spatial, bits) if on) for bits in itertools.product((0, 1), repeat=dims)]


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """Fold every eval-mode batch-norm that directly follows a convolution into it (in place; returns it).

    Saves one pass over every feature map; the result equals the original to float32 round-off.
    """
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(norm, (nn.BatchNorm2d, nn.BatchNorm3d)) \
                    and norm.track_running_stats and not norm.training:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return network


# --------------------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------------------


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32."""
    if precision == "float32":
        return None
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return None


def cpu_has_native_bfloat16() -> bool:
    """True on CPUs with bfloat16 arithmetic in hardware (AVX512-BF16 or AMX), where autocast pays off.

    Elsewhere PyTorch emulates bfloat16, which is slower than float32 and less exact.
    """
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = handle.read(1 << 16).split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --------------------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------------------


def bytes_per_pixel(config: UNetConfig, half: bool) -> int:
    """Peak activation memory per input pixel of a tile during inference, with some slack.

    Measured with PyTorch 2 on a CPU: 26-35 bytes per top-level feature per pixel (the skip connection, the
    up-sampled features, their concatenation and two convolution outputs are alive at once at the top level;
    the deeper levels add less). Half precision halves it. A package network states its own (float32) estimate.
    """
    if not isinstance(config, UNetConfig):
        return config.bytes_per_pixel // (2 if half else 1)
    return 9 * config.base_features * (2 if half else 4)


def auto_batch_size(config: UNetConfig, tile_shape: Sequence[int], device: torch.device, half: bool) -> int:
    """Tiles per batch: one on a CPU (larger batches only thrash its cache), as many as fit on a GPU."""
    if device.type == "cpu":
        return 1
    tile_bytes = bytes_per_pixel(config, half) * int(np.prod(tile_shape))
    return int(max(1, min(16, _device_budget(device) // max(tile_bytes, 1))))


def auto_tile_shape(config: UNetConfig, shape: Sequence[int], device: torch.device, half: bool,
                    overlap: int | None = None) -> tuple[int, ...]:
    """The largest tile for a plane of ``shape``: the whole plane if it fits the memory budget, else the
    cheapest split (fewest pixels computed, margins included) among tiles that do."""
    from napari_unet.core.tiling import grid_step, plan_tiles

    g = grid_step(config)
    edge = CPU_TILE_EDGE[config.spatial_dims] if device.type == "cpu" else 4096
    budget = _device_budget(device)
    limit = max(budget // bytes_per_pixel(config, half), g**config.spatial_dims)
    options = []
    for n in shape:
        sizes = {}
        for cap in range(g, min(-(-n // g) * g, edge) + g, g):
            try:
                axis = plan_tiles(config, (n,), (cap,), overlap).axes[0]
            except ValueError:
                continue
            sizes.setdefault(len(axis.starts), (axis.in_size, cap))
        options.append(sorted(sizes.items()))
    best = None
    for combo in itertools.product(*options):
        pixels = int(np.prod([size for _, (size, _) in combo]))
        if pixels > limit and best is not None:
            continue
        cost = int(np.prod([count * size for count, (size, _) in combo]))
        key = (pixels > limit, cost, -pixels)
        if best is None or key < best[0]:
            best = (key, tuple(cap for _, (_, cap) in combo))
    return best[1]


def smaller_tile_shape(config: UNetConfig, shape: Sequence[int], tile_shape: Sequence[int],
                       overlap: int | None = None) -> tuple[int, ...] | None:
    """Tiles that need less memory than ``tile_shape`` after an out-of-memory failure: about half its longest
    side, if a plane of ``shape`` can still be tiled that way; None when it cannot shrink."""
    from napari_unet.core.errors import InvalidInputError
    from napari_unet.core.tiling import grid_step, plan_tiles

    current = list(tile_shape)
    axis = int(np.argmax(current))
    step = grid_step(config)
    for size in range(current[axis] // 2, current[axis], step):
        tiles = current[:axis] + [size] + current[axis + 1:]
        try:
            plan = plan_tiles(config, shape, tiles, overlap)
        except InvalidInputError:
            continue
        if np.prod(plan.tile_shape) < np.prod(tile_shape):
            return tuple(tiles)
    return None


def _device_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_SHARE)
    if device.type == "cpu":
        return min(CPU_BUDGET_BYTES, physical_memory() // 8)
    return CPU_BUDGET_BYTES


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means a device (or the host) ran out of memory, in any of the ways PyTorch says it."""
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                              or "can't allocate memory" in text)
