"""Zarr stores for results too large for memory: where they live, and when they are deleted.

When the labels of an image would not fit in memory (:func:`napari_unet.core.memory.in_memory_limit`), the
Segment widget has the core write them, and the probabilities, into zarr arrays on disk, shown as lazy napari
layers. Each array is a folder ``scratch/<process id>-<random>`` in the plugin's user data folder
(``NAPARI_UNET_HOME``), not in the system's temporary folder, which is often held in memory (tmpfs).

A folder is deleted when the last layer showing it is removed from the viewer (never while a run still writes
to it), and every folder of this session is deleted when napari exits. Labels painted on such a layer live in
that folder: save the layer (File > Save Selected Layers) to keep them. Folders left by a session that
crashed are left alone (they may hold corrections); delete them by hand.
"""
from __future__ import annotations

import atexit
import os
import shutil
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

META_KEY = "napari_unet_scratch"  # layer.metadata: the scratch folder the layer's data lives in
CHUNK_EDGE = 512

_FOLDERS: dict[str, int] = {}  # this session's folders -> number of runs writing into them
_WATCHED: weakref.WeakSet[Any] = weakref.WeakSet()  # layer lists whose removals are followed


def scratch_root() -> Path:
    from napari_unet.core.library import home_dir

    return home_dir() / "scratch"


def create(shape: Sequence[int], dtype: Any) -> Any:
    """A new zarr array of zeros in a fresh scratch folder: chunks of one plane of up to 512 x 512 pixels."""
    import zarr

    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{os.getpid()}-{os.urandom(4).hex()}"
    chunks = tuple([1] * max(len(shape) - 2, 0) + [min(int(n), CHUNK_EDGE) for n in shape[-2:]])
    array = zarr.open_array(str(folder), mode="w", shape=tuple(int(n) for n in shape), chunks=chunks,
                            dtype=np.dtype(dtype), fill_value=0)
    _FOLDERS[str(folder)] = 0
    return array


def folder_of(array: Any) -> str | None:
    """The scratch folder ``array`` (a zarr array made by :func:`create`) lives in, or None."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    return str(root) if root is not None and str(root) in _FOLDERS else None


def attach(layers: Any, layer: Any, array: Any) -> None:
    """Record that ``layer`` shows ``array``; its folder goes when no layer of ``layers`` shows it any more."""
    folder = folder_of(array)
    if folder is None:
        return
    layer.metadata[META_KEY] = folder
    layers = getattr(layers, "__wrapped__", layers)
    if layers not in _WATCHED:
        _WATCHED.add(layers)
        layers.events.removed.connect(_on_removed)


def hold(folder: str | None) -> None:
    """A run writes into ``folder``: keep it until :func:`release`, even if its layer is removed."""
    if folder in _FOLDERS:
        _FOLDERS[folder] += 1


def release(folder: str | None, layers: Any) -> None:
    """The run writing into ``folder`` ended; delete the folder if no layer of ``layers`` shows it (its layer
    was removed during the run, or the run stopped before its probabilities were shown)."""
    if folder in _FOLDERS:
        _FOLDERS[folder] = max(0, _FOLDERS[folder] - 1)
        _collect(folder, layers)


def _on_removed(event: Any) -> None:
    folder = getattr(event.value, "metadata", {}).get(META_KEY)
    if folder in _FOLDERS:
        _collect(folder, event.source)


def _collect(folder: str, layers: Any) -> None:
    """Delete ``folder`` unless a run writes into it or a layer (a duplicate, say) still shows it."""
    if _FOLDERS.get(folder) or any(getattr(layer, "metadata", {}).get(META_KEY) == folder for layer in layers):
        return
    _delete(folder)


def _delete(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _FOLDERS.pop(folder, None)


@atexit.register
def _delete_all() -> None:
    for folder in list(_FOLDERS):
        _delete(folder)


class CropView:
    """The part ``output_index`` of a larger array, indexed like an array of that part's shape.

    Axes with ``fixed`` True are held at one index and are not axes of the view (the slice a "current slice"
    run covers). The core writes a cropped run's labels through it straight into the full-size zarr array that
    the layer shows; only basic indexing (integers, unit-step slices) is supported, which is all it uses.
    """

    def __init__(self, array: Any, output_index: Sequence[slice], fixed: Sequence[bool]) -> None:
        self.array = array
        self._index = tuple(output_index)
        self._fixed = tuple(fixed)
        self.shape = tuple(s.stop - s.start for s, f in zip(self._index, self._fixed) if not f)
        self.ndim = len(self.shape)
        self.dtype = array.dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = tuple(int(c) for c, f in zip(chunks, self._fixed) if not f) if chunks else None

    def _map(self, key: Any) -> tuple[Any, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices ({len(key)}) for a view of {self.ndim} axes")
        parts = iter(key + (slice(None),) * (self.ndim - len(key)))
        mapped: list[Any] = []
        for index, fixed in zip(self._index, self._fixed):
            if fixed:
                mapped.append(index.start)
                continue
            part, size = next(parts), index.stop - index.start
            if isinstance(part, (int, np.integer)):
                position = int(part) + (size if part < 0 else 0)
                if not 0 <= position < size:
                    raise IndexError(f"index {part} is out of bounds for an axis of size {size}")
                mapped.append(index.start + position)
            elif isinstance(part, slice):
                start, stop, step = part.indices(size)
                if step != 1:
                    raise IndexError("a cropped output takes slices with step 1 only")
                mapped.append(slice(index.start + start, index.start + max(start, stop)))
            else:
                raise IndexError(f"a cropped output takes integers and slices, not {type(part).__name__}")
        return tuple(mapped)

    def __getitem__(self, key: Any) -> Any:
        return self.array[self._map(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[self._map(key)] = value
