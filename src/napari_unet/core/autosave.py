"""Autosave of Labels data: snapshots in the user data folder that survive a crash, and listing them for recovery.

Annotators spend hours correcting labels; a crash of napari (or of the machine) must not take those hours with
it. A snapshot is one ``.npz`` file per layer in ``home_dir()/autosave``, written to a temporary name in the
same folder, flushed to disk and renamed over the previous snapshot of that layer, so the folder only ever
holds complete snapshots: after a crash at any moment the last complete one is still there. The files hold no
pickles (the metadata is a JSON string), so reading one back runs no code.

This module is numpy and files only; the timer and the "Recover labels" dock live in the widgets.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.library import home_dir

SUFFIX = ".npz"
SETTINGS_FILE = "settings.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Snapshot:
    """One recoverable Labels layer: what it was called, where it came from, when it was saved."""

    key: str  # stable per layer and session; the file is ``<key>.npz``
    name: str  # the layer's name when it was saved
    source: str | None  # the image it was segmented from, where known
    saved: str  # ISO date and time, local
    shape: tuple[int, ...]
    dtype: str
    path: Path
    scale: tuple[float, ...] | None = None  # the layer's scale and translation, where saved: a restored
    translate: tuple[float, ...] | None = None  # layer lies over its image again

    def describe(self) -> str:
        """A line for a list: name, size, time."""
        size = " x ".join(str(n) for n in self.shape)
        return f"{self.name}  ({size} {self.dtype}, saved {self.saved.replace('T', ' ')})"


def autosave_dir() -> Path:
    """Where snapshots live: ``autosave`` in the plugin's user data folder."""
    return home_dir() / "autosave"


def new_key(name: str) -> str:
    """A key for a layer seen for the first time: its name made file-safe, plus the time and a random part,
    so two layers of the same name, or two sessions, never overwrite each other's snapshots."""
    stem = _UNSAFE.sub("_", name).strip("_")[:60] or "labels"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def save_snapshot(key: str, data: Any, name: str, source: str | None = None, scale: Any = None,
                  translate: Any = None) -> Snapshot:
    """Write ``data`` (an in-memory integer array) as the snapshot ``key``, atomically; returns it.

    ``scale`` and ``translate`` (one number per axis, as napari's layer has them) are kept with it.

    Only numpy arrays are saved: a lazy (dask, zarr) labels layer already lives on disk, and reading it whole
    could exhaust memory.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]+", key):
        raise InvalidInputError(f"an autosave key is letters, digits and . _ -, not {key!r}")
    if not isinstance(data, np.ndarray):
        raise InvalidInputError(f"only in-memory (numpy) labels are autosaved, not {type(data).__name__}")
    if data.dtype.kind not in "biu":
        raise InvalidInputError(f"labels must be integers or booleans to be autosaved, not {data.dtype}")
    folder = autosave_dir()
    folder.mkdir(parents=True, exist_ok=True)
    saved = _dt.datetime.now().isoformat(timespec="seconds")
    scale, translate = _per_axis(scale, data.ndim), _per_axis(translate, data.ndim)
    meta = {"name": name, "source": source, "saved": saved, "scale": scale, "translate": translate}
    handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez_compressed(file, labels=data, meta=np.array(json.dumps(meta)))
            file.flush()
            os.fsync(file.fileno())
        target = folder / f"{key}{SUFFIX}"
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Snapshot(key, name, source, saved, tuple(data.shape), str(data.dtype), target, scale, translate)


def list_snapshots() -> list[Snapshot]:
    """Every complete, readable snapshot, newest first. Damaged files are skipped, never deleted."""
    folder = autosave_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        if path.name.startswith("."):
            continue
        snapshot = _read_header(path)
        if snapshot is not None:
            found.append(snapshot)
    return sorted(found, key=lambda s: (s.saved, s.key), reverse=True)


def load_snapshot(key: str) -> tuple[np.ndarray, Snapshot]:
    """The labels of snapshot ``key`` and its description."""
    path = autosave_dir() / f"{key}{SUFFIX}"
    snapshot = _read_header(path)
    if snapshot is None:
        raise InvalidInputError(f"no readable autosaved labels named {key!r} in {autosave_dir()}")
    with np.load(path, allow_pickle=False) as archive:
        return archive["labels"], snapshot


def discard_snapshot(key: str) -> None:
    """Delete snapshot ``key`` (the user recovered it or does not want it)."""
    (autosave_dir() / f"{key}{SUFFIX}").unlink(missing_ok=True)


def _read_header(path: Path) -> Snapshot | None:
    """The description of a snapshot from its metadata and array header, without reading the labels."""
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open("meta.npy") as member:
                meta = json.loads(str(np.lib.format.read_array(member, allow_pickle=False)))
            with archive.open("labels.npy") as member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
        if np.dtype(dtype).kind not in "biu":
            return None  # not a snapshot this module wrote (an object array would need unpickling)
        return Snapshot(path.stem, str(meta.get("name", path.stem)), meta.get("source"),
                        str(meta.get("saved", "")), tuple(shape), str(dtype), path,
                        _per_axis(meta.get("scale"), len(shape)), _per_axis(meta.get("translate"), len(shape)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return None


def _per_axis(values: Any, ndim: int) -> tuple[float, ...] | None:
    """``values`` as one finite float per axis, or None where they are missing or are not that."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == ndim and all(np.isfinite(numbers)) else None


# --------------------------------------------------------------------------------------------------------------
# The setting
# --------------------------------------------------------------------------------------------------------------


def autosave_enabled() -> bool:
    """Whether the plugin autosaves the Labels layers it created (on unless the user turned it off)."""
    try:
        settings = json.loads((autosave_dir() / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return bool(settings.get("enabled", True)) if isinstance(settings, dict) else True


def set_autosave_enabled(enabled: bool) -> None:
    """Turn autosaving on or off; remembered across sessions."""
    folder = autosave_dir()
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{SETTINGS_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps({"enabled": bool(enabled)}), encoding="utf-8")
    os.replace(temporary, folder / SETTINGS_FILE)
