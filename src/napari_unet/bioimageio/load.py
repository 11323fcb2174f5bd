"""Loading a package: napari-unet's own packages are read from the model's ``config.json`` and
``weights.safetensors`` inside, so that nothing is unpickled and no code from the package runs, and no
bioimage.io library is needed. Packages other tools made go to :mod:`~napari_unet.bioimageio.foreign`, which
needs ``bioimageio.spec`` and ``bioimageio.core`` and runs the package's code only with ``trust=True``."""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from napari_unet.core.errors import ModelFileError
from napari_unet.core.library import CONFIG_FILE, WEIGHTS_FILE


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

    A package napari-unet exported carries the model's own ``config.json`` and ``weights.safetensors`` beside
    the formats other tools use; they are read with every check :func:`~napari_unet.load_model` makes, so
    nothing is unpickled, no code from the package runs and ``trust`` is not needed. The model is named after
    the file and is not in the library until saved. Other packages are loaded by
    :func:`~napari_unet.bioimageio.foreign.load_foreign`, which runs their code only with ``trust=True``.
    """
    from napari_unet.core.library import check_name
    from napari_unet.core.models import load_model

    path = Path(os.fspath(path)).expanduser()
    if path.suffix.lower() != ".zip":
        folder = path.parent
        if all((folder / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            model = load_model(folder, device)
            model.path = None
            return model
        return _load_foreign(path, device, trust)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable zip file ({exc}); the package is damaged or incomplete") from None
    with archive, tempfile.TemporaryDirectory(prefix="napari-unet-package-") as tmp:
        entries = {info.filename: info for info in archive.infolist()}
        if "rdf.yaml" not in entries and "bioimageio.yaml" not in entries:
            raise ModelFileError(f"{path} is a zip file without rdf.yaml: not a bioimage.io model package")
        if any(name not in entries for name in (CONFIG_FILE, WEIGHTS_FILE)):
            return _load_foreign(path, device, trust)
        limits = {CONFIG_FILE: 16 * 2**20, WEIGHTS_FILE: MAX_WEIGHTS_BYTES}
        folder = Path(tmp) / "model"
        folder.mkdir()
        for name, limit in limits.items():
            if entries[name].file_size > limit:
                raise ModelFileError(f"{path}: {name} unpacks to {entries[name].file_size} bytes, more than a "
                                     "model file can be; the package is damaged")
            try:
                (folder / name).write_bytes(archive.read(entries[name]))
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC mismatch, truncated member
                raise ModelFileError(f"{path}: {name} cannot be read ({exc}); the package is damaged") from None
        try:
            model = load_model(folder, device)
        except ModelFileError as exc:
            raise ModelFileError(str(exc).replace(str(folder), f"{path} (inside)")) from None
    try:
        model.config.name = check_name(path.stem)
    except ModelFileError:
        model.config.name = "imported"
    model.path = None
    return model


def _load_foreign(path: Path, device: Any, trust: bool) -> Any:
    from napari_unet.bioimageio.foreign import load_foreign

    return load_foreign(path, device, trust)
