"""Loading a package back: only packages napari-unet exported, read from the model's own ``config.json`` and
``weights.safetensors`` inside, so that nothing is unpickled and no code from the package runs. Needs no
bioimage.io library."""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from napari_unet.core.errors import ModelFileError
from napari_unet.core.library import CONFIG_FILE, WEIGHTS_FILE


def is_package(name_or_path: Any) -> bool:
    """Whether ``load_model`` should read ``name_or_path`` as a bioimage.io package: an existing ``.zip`` file."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return False
    path = Path(os.fspath(name_or_path)).expanduser()
    return path.suffix.lower() == ".zip" and path.is_file()


#: the largest weights file a package may hold (the bundled model's is 4 MB)
MAX_WEIGHTS_BYTES = 4 * 2**30


def load_bioimageio(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """Load a bioimage.io package that napari-unet exported (``load_model("model.zip")`` calls this).

    Such a package carries the model's own ``config.json`` and ``weights.safetensors`` beside the formats
    other tools use; they are read with every check :func:`~napari_unet.load_model` makes, so nothing is
    unpickled and no code from the package runs. Other packages are refused with a message: their weights are
    PyTorch pickles or TorchScript programs, and their networks are not napari-unet's U-Net. Needs no
    bioimage.io library. The model is named after the file and is not in the library until saved.
    """
    from napari_unet.core.library import check_name
    from napari_unet.core.models import load_model

    path = Path(os.fspath(path)).expanduser()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable zip file ({exc}); the package is damaged or incomplete") from None
    with archive, tempfile.TemporaryDirectory(prefix="napari-unet-package-") as tmp:
        entries = {info.filename: info for info in archive.infolist()}
        if "rdf.yaml" not in entries and "bioimageio.yaml" not in entries:
            raise ModelFileError(f"{path} is a zip file without rdf.yaml: not a bioimage.io model package")
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in entries]
        if missing:
            raise ModelFileError(
                f"{path} is a bioimage.io package that napari-unet did not export (it has no {' or '.join(missing)}). "
                "napari-unet loads only its own packages: other packages' weights are PyTorch pickles or "
                "TorchScript programs, which napari-unet never runs from a file, for a network that is not its "
                "U-Net. Run such a package with bioimageio.core, or fine-tune a napari-unet model instead")
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
