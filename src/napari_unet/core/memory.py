"""How large an output may be to be held in memory (numpy), before it must go to a chunked array on disk (zarr).

:func:`napari_unet.core.inference.segment` allocates its labels and probabilities in memory unless the caller
passes arrays to write into; an output larger than :func:`in_memory_limit` is refused there, and the Segment
widget writes such a result into a zarr array of its own instead. The limit is a quarter of the machine's memory
(:data:`IN_MEMORY_SHARE`), or the bytes given by the environment variable ``NAPARI_UNET_IN_MEMORY_LIMIT``
(a whole number, optionally with a K, M or G suffix for KiB, MiB, GiB), read at every call so that a test or a
user can lower or raise it without restarting. Numpy and the standard library only: the widgets ask this on
the main thread, where importing torch would stall the viewer.
"""
from __future__ import annotations

import os

IN_MEMORY_SHARE = 0.25
LIMIT_ENV = "NAPARI_UNET_IN_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def total_memory() -> int:
    """Bytes of RAM in this machine (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def in_memory_limit(memory: int | None = None) -> int:
    """Bytes one output array may take in memory: ``NAPARI_UNET_IN_MEMORY_LIMIT`` where it is set to a valid
    size, else :data:`IN_MEMORY_SHARE` of ``memory`` (the machine's memory when None)."""
    text = os.environ.get(LIMIT_ENV, "").strip().upper().removesuffix("B").removesuffix("I")
    if text:
        unit = text[-1] if text[-1] in _UNITS else ""
        number = text[: len(text) - len(unit)].strip()
        if number.isdigit():
            return int(number) * _UNITS[unit]
    return int((total_memory() if memory is None else memory) * IN_MEMORY_SHARE)
