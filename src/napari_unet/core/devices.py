"""Choosing where to compute: CUDA, then Apple MPS, then the CPU.

Also sets the CPU thread count once: on a small machine PyTorch's default of one thread per core leaves the
GUI thread no room, so interactive sessions keep a core free (see :func:`configure_cpu_threads`).
"""
from __future__ import annotations

import os

import torch

from napari_unet.core.errors import InvalidInputError


def available_devices() -> list[str]:
    """Device names that really work here, "auto" first: e.g. ["auto", "cuda:0", "mps", "cpu"]."""
    names = ["auto"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto", "cuda", "cuda:1", "mps", "cpu" or a torch.device into a usable torch.device."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device {device!r} was requested but PyTorch sees no CUDA GPU; use 'auto' or 'cpu'")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise InvalidInputError(f"device {device!r} does not exist; this machine has "
                                    f"{torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise InvalidInputError("device 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InvalidInputError(f"unknown device {device!r}; use one of {available_devices()}")


def configure_cpu_threads(interactive: bool) -> int:
    """Set torch's intra-op threads: all cores for batch work, all but one for an interactive viewer.

    ``NAPARI_UNET_THREADS`` overrides. Returns the thread count in use.
    """
    override = os.environ.get("NAPARI_UNET_THREADS")
    cores = os.cpu_count() or 1
    threads = int(override) if override else (max(1, cores - 1) if interactive else cores)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
