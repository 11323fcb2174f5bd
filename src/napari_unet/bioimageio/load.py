"""Loading a package: napari-unet's own packages are read from the model's ``config.json`` and the spec's
``pytorch_state_dict`` weights (``weights.pt``, read with ``torch.load(weights_only=True)``: tensors only, nothing
unpickled that could run code), so that no code from the package runs and no bioimage.io library is needed.
Packages exported by earlier versions also carry ``weights.safetensors``, which is then read instead. Packages
other tools made go to :mod:`~napari_unet.bioimageio.foreign`, which needs ``bioimageio.spec`` and
``bioimageio.core`` and runs the package's code only with ``trust=True``."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_unet.core.errors import ModelFileError
from napari_unet.core.library import CONFIG_FILE, WEIGHTS_FILE

#: the spec's pytorch_state_dict file in napari-unet's packages, from which napari-unet loads them back
STATE_DICT_FILE = "weights.pt"
_CONFIG_LIMIT = 16 * 2**20


def is_package(name_or_path: Any) -> bool:
    """Whether ``load_model`` should read ``name_or_path`` as a bioimage.io package: an existing ``.zip`` file,
    or a description file (``rdf.yaml``, ``bioimageio.yaml`` or ``*.bioimageio.yaml``) in an unpacked one."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return False
    path = Path(os.fspath(name_or_path)).expanduser()
    name = path.name.lower()
    description = name in ("rdf.yaml", "bioimageio.yaml") or name.endswith(".bioimageio.yaml")
    return (path.suffix.lower() == ".zip" or description) and path.is_file()


#: the largest weights file a package may hold (the bundled model's is 4 MB)
MAX_WEIGHTS_BYTES = 4 * 2**30


def load_bioimageio(path: str | os.PathLike, device: Any = "cpu", trust: bool = False) -> Any:
    """Load a bioimage.io package, a ``.zip`` or an unpacked one's ``rdf.yaml`` (``load_model`` calls this).

    A package napari-unet exported carries the model's own ``config.json`` beside the spec's files; with the
    ``pytorch_state_dict`` weights it gives the same model, checked as :func:`~napari_unet.load_model` checks a
    model folder: nothing is unpickled, no code from the package runs and ``trust`` is not needed. The model is
    named after the file and is not in the library until saved. Other packages are loaded by
    :func:`~napari_unet.bioimageio.foreign.load_foreign`, which runs their code only with ``trust=True``.
    """
    from napari_unet.core.library import check_name

    path = Path(os.fspath(path)).expanduser()
    if path.suffix.lower() != ".zip":
        folder = path.parent
        present = {name for name in (CONFIG_FILE, WEIGHTS_FILE, STATE_DICT_FILE) if (folder / name).is_file()}
        weights = _own_weights(present, (folder / CONFIG_FILE).read_bytes)
        if weights is None:
            return _load_foreign(path, device, trust)
        model = _load_own(folder, weights, device)
        model.path = None
        return model
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable zip file ({exc}); the package is damaged or incomplete") from None
    with archive, tempfile.TemporaryDirectory(prefix="napari-unet-package-") as tmp:
        entries = {info.filename: info for info in archive.infolist()}
        if "rdf.yaml" not in entries and "bioimageio.yaml" not in entries:
            raise ModelFileError(f"{path} is a zip file without rdf.yaml: not a bioimage.io model package")
        weights = _own_weights(set(entries), lambda: _read_member(archive, entries[CONFIG_FILE], _CONFIG_LIMIT, path))
        if weights is None:
            return _load_foreign(path, device, trust)
        folder = Path(tmp) / "model"
        folder.mkdir()
        for name, limit in ((CONFIG_FILE, _CONFIG_LIMIT), (weights, MAX_WEIGHTS_BYTES)):
            (folder / name).write_bytes(_read_member(archive, entries[name], limit, path))
        try:
            model = _load_own(folder, weights, device)
        except ModelFileError as exc:
            raise ModelFileError(str(exc).replace(str(folder), f"{path} (inside)")) from None
    try:
        model.config.name = check_name(path.stem)
    except ModelFileError:
        model.config.name = "imported"
    model.path = None
    return model


def _own_weights(names: set[str], config_bytes: Callable[[], bytes]) -> str | None:
    """The weights file to load a napari-unet package from, or None for another tool's package.

    Packages exported before the spec's state dict was read back carry ``weights.safetensors``: those are read.
    Newer ones are recognised by their ``config.json`` being a napari-unet model config (a package from another
    tool may well have a file of that name), and load from ``weights.pt``.
    """
    if CONFIG_FILE not in names:
        return None
    if WEIGHTS_FILE in names:
        return WEIGHTS_FILE
    if STATE_DICT_FILE not in names:
        return None
    from napari_unet.core.models import FORMAT

    try:
        config = json.loads(config_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return STATE_DICT_FILE if isinstance(config, dict) and config.get("format") == FORMAT else None


def _read_member(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    if entry.file_size > limit:
        raise ModelFileError(f"{path}: {entry.filename} unpacks to {entry.file_size} bytes, more than a model file "
                             "can be; the package is damaged")
    try:
        return archive.read(entry)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC mismatch, truncated member
        raise ModelFileError(f"{path}: {entry.filename} cannot be read ({exc}); the package is damaged") from None


def _load_own(folder: Path, weights: str, device: Any) -> Any:
    """The model in ``folder`` (its ``config.json`` and the weights file ``weights``), named after the folder."""
    from napari_unet.core.models import load_model, model_from_weights, read_model_config

    if weights == WEIGHTS_FILE:
        return load_model(folder, device)
    config = read_model_config(folder / CONFIG_FILE)
    config.name = folder.name
    return model_from_weights(config, read_state_dict(folder / weights), folder / weights, device, folder)


def read_state_dict(path: Path) -> dict[str, Any]:
    """A state dict written by ``torch.save``, read with ``weights_only=True``: tensors and plain containers
    only, so nothing is unpickled that could run code. Damage raises :class:`ModelFileError`."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own errors (RuntimeError, UnpicklingError) are not ValueErrors
        raise ModelFileError(f"{path} cannot be read as a PyTorch state dict ({exc}); the file is damaged, "
                             "truncated or holds more than tensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelFileError(f"{path} is not a state dict of named tensors")
    return dict(state)


def _load_foreign(path: Path, device: Any, trust: bool) -> Any:
    from napari_unet.bioimageio.foreign import load_foreign

    return load_foreign(path, device, trust)
