"""Where models live: the bundled models, the user's library, and names that resolve to folders.

This module reads only small JSON files and never imports torch, so the widgets can fill their model pickers
without the cost of loading PyTorch.

The user's library is the platform's user data folder (``~/.local/share/napari-unet/models`` on Linux),
or ``$NAPARI_UNET_HOME/models`` where that variable is set.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from napari_unet.core.errors import ModelExistsError, ModelFileError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
ANNOTATIONS_FILE = "annotations.npz"  # the annotations a fine-tuned model was trained on, beside its weights
MAX_CONFIG_BYTES = 16 * 2**20
STALE_STAGING_S = 3600.0  # a save's hidden staging folder older than this was left by a process that died
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


@dataclass(frozen=True)
class ModelInfo:
    """What a model picker shows: read from ``config.json`` only."""

    name: str
    source: str  # "bundled" or "library"
    path: Path
    description: str
    task: str
    axes: str
    parent: str | None = None


def home_dir() -> Path:
    """The plugin's user data folder (``NAPARI_UNET_HOME`` overrides the platform default)."""
    override = os.environ.get("NAPARI_UNET_HOME")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-unet", appauthor=False))


def library_dir() -> Path:
    """The folder that holds the user's own models (created on first save)."""
    return home_dir() / "models"


def bundled_dir() -> Path:
    """The folder of models shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "models"


#: names Windows reserves for devices, with or without an extension: never a model folder
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def check_name(name: str) -> str:
    """A model name is a folder name: letters, digits and ``._@+-``, no path separators, no ``..``, nothing
    hidden, no name a file system reserves. A name never leads out of the library."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".") or _RESERVED.match(name):
        raise ModelFileError(
            f"{name!r} is not a valid model name: use letters, digits and . _ @ + - (at most 128 characters, "
            "starting with a letter or digit, not ending in '.', not a reserved name such as CON or NUL); to "
            "save into a folder, pass a pathlib.Path"
        )
    return name


def library_name(text: str) -> str:
    """A valid model name made from ``text`` (a folder's name, say): runs of other characters become one ``-``,
    and ends that are not letters or digits go; ``model`` when nothing is left. Valid names come back as they are."""
    name = re.sub(r"[^A-Za-z0-9._@+-]+", "-", text).strip("._@+-")[:128].rstrip("._@+-") or "model"
    return f"{name}-model" if _RESERVED.match(name) else name


def check_new_name(name: str) -> str:
    """A valid name that does not belong to a bundled model: a library model of that name would hide it."""
    check_name(name)
    root = bundled_dir()
    bundled = {p.name.lower() for p in root.iterdir() if _is_model_folder(p)} if root.is_dir() else set()
    if name.lower() in bundled:
        raise ModelExistsError(f"'{name}' is the name of a bundled model; a library model of that name would hide "
                               f"it. Choose another name, such as '{unique_name(name + '-mine')}'")
    return name


def _is_model_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def list_models() -> list[ModelInfo]:
    """Bundled models first, then the user's library, each sorted by name. Unreadable folders are skipped."""
    found = []
    for source, root in (("bundled", bundled_dir()), ("library", library_dir())):
        if not root.is_dir():
            continue
        if source == "library":
            restore_replaced(root)
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            info = read_info(folder, source)
            if info is not None:
                found.append(info)
    return found


def read_info(folder: Path, source: str = "path") -> ModelInfo | None:
    """A :class:`ModelInfo` for a model folder, or None if it has no readable config."""
    try:
        data = read_config_json(folder / CONFIG_FILE)
    except ModelFileError:
        return None
    provenance = data.get("provenance") or {}
    return ModelInfo(
        name=folder.name,
        source=source,
        path=folder,
        description=str(data.get("description", "")),
        task=str(data.get("task", "")),
        axes=str(data.get("axes", "")),
        parent=provenance.get("parent") if isinstance(provenance, dict) else None,
    )


def read_config_json(path: Path) -> dict:
    """Parse a model's ``config.json`` with checks whose messages name the file and the problem."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path} is {path.stat().st_size} bytes, too large for a model config")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc}); the file is damaged or is not a model config") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} holds a JSON {type(data).__name__}, not a model config object")
    return data


def resolve_model_folder(name_or_path: str | os.PathLike) -> Path:
    """The folder of a model given by path, library name or bundled name (library names win over bundled)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.suffix.lower() in {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}:
        raise ModelFileError(
            f"{path} is a PyTorch pickle file. napari-unet never unpickles model files because unpickling can "
            "run arbitrary code; load it in PyTorch yourself if you trust it and save it with "
            "napari_unet.save_model() as a folder with config.json and weights.safetensors"
        )
    if path.is_file() and path.name in {CONFIG_FILE, WEIGHTS_FILE}:
        return path.parent
    if path.is_dir():
        if not _is_model_folder(path):
            raise ModelFileError(f"{path} is a folder without {CONFIG_FILE}; it does not hold a napari-unet model")
        return path
    if path.exists():
        raise ModelFileError(f"{path} is a file; a napari-unet model is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    if os.sep in text or (os.altsep and os.altsep in text):
        raise ModelFileError(f"no model folder at {path}")
    if library_dir().is_dir():
        restore_replaced(library_dir())
    for root in (library_dir(), bundled_dir()):
        candidate = root / text
        if _is_model_folder(candidate):
            return candidate
    names = ", ".join(info.name for info in list_models()) or "none"
    raise ModelFileError(f"no model named {text!r}; available models: {names}. Or pass a path to a model folder")


def target_folder(name_or_path: str | os.PathLike) -> Path:
    """Where saving under ``name_or_path`` writes: a str is a name, in the user's library (see
    :func:`check_new_name`); a path object (``pathlib.Path``) is that folder."""
    if isinstance(name_or_path, str):
        return library_dir() / check_new_name(name_or_path)
    return Path(os.fspath(name_or_path)).expanduser()


def staging_folder(target: Path, parent: Path | None = None) -> Path:
    """A new, empty hidden folder beside ``target`` (or in ``parent``) to write a model into before it is
    renamed into place.

    Unlike ``tempfile.mkdtemp`` (always 0700) it gets the permissions the user's umask gives any new folder,
    so that a model saved into a shared folder can be read by the colleagues it is shared with.
    """
    parent = target.parent if parent is None else parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(parent)
    while True:
        folder = parent / f".{target.name}.saving-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def restore_replaced(parent: Path) -> None:
    """Put back the models in ``parent`` whose overwrite died half-way: saving over a model moves the old folder
    aside (``.NAME.replaced-PID``) and then renames the new one into place, so a process killed between the two
    renames leaves no ``NAME``. A folder set aside by a process that is gone, with nothing in its place, is
    renamed back; one whose process still runs is left to it."""
    for folder in parent.glob(".*.replaced-*"):
        name, _, pid = folder.name[1:].rpartition(".replaced-")
        if not name or not pid.isdigit() or (parent / name).exists() or _process_alive(int(pid)):
            continue
        try:
            os.rename(folder, parent / name)
        except OSError:  # restored by someone else meanwhile, or not ours to rename
            continue


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run (POSIX; on Windows signal 0 is Ctrl+C, so it is never asked)."""
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):
        return True  # someone else's process, or a number the system cannot check: leave its folder alone
    return True


def _remove_stale_staging(parent: Path) -> None:
    """Delete staging folders in ``parent`` left by saves that never finished (a process killed mid-save): older
    than :data:`STALE_STAGING_S`, far longer than any save takes, so a save in progress elsewhere is never hit."""
    cutoff = time.time() - STALE_STAGING_S
    for folder in parent.glob(".*.saving-*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # gone meanwhile, or not ours to read
            continue


def unique_name(base: str) -> str:
    """``base`` if no library model has that name, else ``base-2``, ``base-3``... (the first free one)."""
    check_name(base)
    taken = {p.name for p in library_dir().iterdir()} if library_dir().is_dir() else set()
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def rename_model(old: str, new: str) -> Path:
    """Rename a model in the user's library; refuses to replace another model."""
    source = library_dir() / check_name(old)
    target = library_dir() / check_new_name(new)
    if not _is_model_folder(source):
        raise ModelFileError(f"no model named {old!r} in the library at {library_dir()}")
    if target.exists():
        raise ModelExistsError(f"a model named {new!r} already exists at {target}; choose another name")
    source.rename(target)
    return target


def delete_model(name: str) -> None:
    """Delete a model from the user's library (bundled models cannot be deleted)."""
    folder = library_dir() / check_name(name)
    if not _is_model_folder(folder):
        raise ModelFileError(f"no model named {name!r} in the library at {library_dir()}")
    shutil.rmtree(folder)
