"""Outputs that are complete or absent: each file is written under a hidden temporary name (ending in
``.partial``) beside its target and renamed into place when finished, and what writers that died left behind
is swept away after the run."""
from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL = ".partial"  # suffix of outputs being written; never a finished file
SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
ZARR_CHUNK = 1024


def partial_name(target: Path) -> Path:
    """A fresh temporary name beside ``target``: hidden, unique per writer, and recognisable as unfinished."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}")


def commit(temporary: Path, target: Path, replace_folder: bool = False) -> None:
    """Rename a finished temporary output into place: one atomic step for a file (on a POSIX file system). A
    folder (zarr) already there is refused, or with ``replace_folder`` moved aside first and removed afterwards,
    so that the old output is never gone before the new one is in place."""
    if not (replace_folder and target.is_dir() and not target.is_symlink()):
        os.replace(temporary, target)
        return
    with set_aside(target):
        os.replace(temporary, target)


@contextmanager
def set_aside(target: Path) -> Iterator[None]:
    """Move an existing ``target`` out of the way (hidden, beside it) while a new one is made; remove it once the
    new one is there, and put it back if making it failed. Nothing happens where there is no ``target``."""
    if not target.exists() and not target.is_symlink():
        yield
        return
    aside = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.replaced")
    os.rename(target, aside)
    try:
        yield
    except BaseException:
        if not target.exists():
            os.rename(aside, target)
        raise
    remove(aside)


def remove(path: Path) -> None:
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
            remove(Path(leftover))
            removed += 1
    return removed


def write_labels(target: Path, labels: Any, axes: str, overwrite: bool = False) -> None:
    """Write ``labels`` to ``target`` (.tif, .tiff, .npy or .zarr) under a temporary name, then rename it."""
    temporary = partial_name(target)
    try:
        _write_file(temporary, target.suffix.lower(), np.asarray(labels), axes)
        commit(temporary, target, replace_folder=overwrite)
    except BaseException:
        remove(temporary)
        raise


def _write_file(path: Path, kind: str, labels: np.ndarray, axes: str) -> None:
    """Write and flush ``labels`` in the format of the suffix ``kind`` (``path`` itself ends in .partial)."""
    if kind == ".zarr":
        import zarr

        chunks = tuple(min(n, ZARR_CHUNK) if i >= labels.ndim - 2 else 1 for i, n in enumerate(labels.shape))
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
    temporary = partial_name(target)
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, probs)
        commit(temporary, target)
    except BaseException:
        remove(temporary)
        raise
