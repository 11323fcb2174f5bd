"""Outputs that are complete or absent: each file is written under a hidden temporary name (ending in
``.partial``) beside its target and renamed into place when finished, and what writers that died left behind
is swept away after the run."""
from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL = ".partial"  # suffix of outputs being written; never a finished file
SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
_ZARR_CHUNK = 1024


def _partial_name(target: Path) -> Path:
    """A fresh temporary name beside ``target``: hidden, unique per writer, and recognisable as unfinished."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}")


def _commit(temporary: Path, target: Path) -> None:
    """Rename a finished temporary output into place (one atomic step on a POSIX file system)."""
    os.replace(temporary, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_partials(targets: Sequence[Path]) -> int:
    """Remove temporary outputs left beside ``targets`` by writers that died; returns how many were removed.

    Only call it while no task of the run is writing: a live writer's temporary file looks the same.
    """
    removed = 0
    for target in targets:
        for leftover in glob.glob(glob.escape(str(target.with_name(f".{target.name}."))) + "*" + PARTIAL):
            _remove(Path(leftover))
            removed += 1
    return removed


def write_labels(target: Path, labels: Any, axes: str, overwrite: bool = False) -> None:
    """Write ``labels`` to ``target`` (.tif, .tiff, .npy or .zarr) under a temporary name, then rename it."""
    temporary = _partial_name(target)
    try:
        _write_file(temporary, target.suffix.lower(), np.asarray(labels), axes)
        if overwrite and target.is_dir():
            _remove(target)  # os.replace cannot put a folder over a non-empty one
        _commit(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def _write_file(path: Path, kind: str, labels: np.ndarray, axes: str) -> None:
    """Write and flush ``labels`` in the format of the suffix ``kind`` (``path`` itself ends in .partial)."""
    if kind == ".zarr":
        import zarr

        chunks = tuple(min(n, _ZARR_CHUNK) if i >= labels.ndim - 2 else 1 for i, n in enumerate(labels.shape))
        array = zarr.open_array(str(path), mode="w-", shape=labels.shape, chunks=chunks, dtype=labels.dtype)
        array[...] = labels
        return
    with open(path, "wb") as handle:
        if kind == ".npy":
            np.save(handle, labels)
        else:
            import tifffile

            tifffile.imwrite(handle, labels, bigtiff=labels.nbytes > 2**31, compression="zlib",
                             photometric="minisblack", metadata={"axes": axes})
        handle.flush()
        os.fsync(handle.fileno())


def _save_tile(target: Path, probs: np.ndarray) -> None:
    temporary = _partial_name(target)
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, probs)
        _commit(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
