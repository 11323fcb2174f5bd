"""Model files: a folder with ``config.json`` and ``weights.safetensors``, loaded without unpickling.

Loading checks everything before it trusts anything: the config is parsed as JSON, the safetensors header is
read and bounds-checked by hand before the weights are mapped, the weights must match the network the config
describes name for name and shape for shape, and must be finite. Any problem raises :class:`ModelFileError`
naming the file and what is wrong; nothing is executed and nothing on disk changes.

Saving writes into a hidden temporary folder beside the target and renames it into place, so a crash or a full
disk leaves the previous model intact, and an existing model is never replaced unless asked.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from napari_unet import __version__
from napari_unet.core.errors import InvalidInputError, ModelExistsError, ModelFileError
from napari_unet.core.library import (
    ANNOTATIONS_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    library_dir,
    read_config_json,
    resolve_model_folder,
    staging_folder,
    target_folder,
    unique_name,
)
from napari_unet.core.normalization import Normalization
from napari_unet.core.postprocess import ObjectFilter
from napari_unet.core.unet import UNet, UNetConfig

FORMAT = "napari-unet-model"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 2**20
_SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                       "BOOL": 1}
INSTANCE_CLASSES = ("background", "interior", "boundary")


@dataclass
class ModelConfig:
    """Everything about a model except its weights; stored as ``config.json``."""

    network: UNetConfig
    task: Literal["instance", "semantic"] = "instance"
    classes: tuple[str, ...] = INSTANCE_CLASSES
    axes: str = "YX"  # the network's spatial axes: "YX" for 2D models, "ZYX" for 3D
    normalization: Normalization = field(default_factory=Normalization)
    name: str = ""
    description: str = ""
    ignore_value: int | None = None  # label value that marks unannotated pixels in training data
    object_filter: ObjectFilter = field(default_factory=ObjectFilter)  # instance models: which objects to drop
    object_diameter: float | None = None  # typical object diameter (px) of the training data, for rescaling
    z_step: float | None = None  # 3D models: Z step of the training voxels in pixel sizes (1.0: isotropic)
    card: dict[str, Any] = field(default_factory=dict)  # intended images, training data, metrics, limits
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per training run
    provenance: dict[str, Any] = field(default_factory=dict)  # parent, date, data fingerprint, versions

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if self.task not in ("instance", "semantic"):
            raise InvalidInputError(f"task must be 'instance' or 'semantic', not {self.task!r}")
        if self.task == "instance" and self.classes != INSTANCE_CLASSES:
            raise InvalidInputError(f"instance models predict the classes {INSTANCE_CLASSES}, not {self.classes}")
        if len(self.classes) != self.network.out_channels:
            raise InvalidInputError(
                f"the config names {len(self.classes)} classes but the network has {self.network.out_channels} "
                "output channels"
            )
        if self.object_diameter is not None and not (isinstance(self.object_diameter, (int, float))
                                                     and 0 < self.object_diameter < math.inf):
            raise InvalidInputError(f"object_diameter must be a positive number of pixels, not "
                                    f"{self.object_diameter!r}")
        if self.z_step is not None and not (isinstance(self.z_step, (int, float)) and 0 < self.z_step < math.inf):
            raise InvalidInputError(f"z_step must be a positive number of pixel sizes, not {self.z_step!r}")
        expected_axes = "YX" if self.network.spatial_dims == 2 else "ZYX"
        if self.axes != expected_axes:
            raise InvalidInputError(f"a {self.network.spatial_dims}D network has axes {expected_axes!r}, not {self.axes!r}")

    @property
    def in_channels(self) -> int:
        return self.network.in_channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "task": self.task,
            "classes": list(self.classes),
            "axes": self.axes,
            "network": self.network.to_dict(),
            "normalization": self.normalization.to_dict(),
            "ignore_value": self.ignore_value,
            "object_filter": self.object_filter.to_dict(),
            "object_diameter": self.object_diameter,
            "z_step": self.z_step,
            "card": self.card,
            "history": self.history,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if data.get("format") != FORMAT:
            raise InvalidInputError(f"not a napari-unet model config (format is {data.get('format')!r})")
        version = data.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInputError(f"format_version must be a whole number, not {version!r}: the config is damaged")
        if version > FORMAT_VERSION:
            raise InvalidInputError(
                f"model format version {data.get('format_version')} is newer than this napari-unet "
                f"({__version__}) understands; update napari-unet"
            )
        try:
            return cls(
                network=UNetConfig.from_dict(data["network"]),
                task=data.get("task", "instance"),
                classes=tuple(data.get("classes", INSTANCE_CLASSES)),
                axes=data.get("axes", "YX"),
                normalization=Normalization.from_dict(data.get("normalization", {})),
                name=str(data.get("name", "")),
                description=str(data.get("description", "")),
                ignore_value=data.get("ignore_value"),
                object_filter=ObjectFilter.from_dict(data.get("object_filter") or {}),
                object_diameter=data.get("object_diameter"),
                z_step=data.get("z_step"),
                card=dict(data.get("card") or {}),
                history=list(data.get("history") or []),
                provenance=dict(data.get("provenance") or {}),
            )
        except KeyError as exc:
            raise InvalidInputError(f"model config lacks the key {exc}") from None
        except TypeError as exc:
            raise InvalidInputError(f"model config has a wrong value: {exc}") from None


class Model:
    """A U-Net with the configuration that says how to feed it and read its output.

    ``network`` is a plain ``torch.nn.Module`` so that any tool can run it; ``preprocess`` turns an image into
    the float32 network input exactly as :func:`napari_unet.segment` does.
    """

    def __init__(self, network: UNet, config: ModelConfig, path: Path | None = None) -> None:
        self.network = network
        self.config = config
        self.path = path  # the folder it was loaded from or saved to; None for a model only in memory
        self.attachments: dict[str, bytes] = {}  # extra files saved beside the weights (e.g. annotations)
        self.history: list[dict[str, Any]] = []  # per-step records of the latest training run (not saved)

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int | None = None) -> Model:
        """A new, randomly initialised model (``seed`` makes the initialisation repeatable)."""
        if seed is None:
            return cls(UNet(config.network), config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(UNet(config.network), config)

    @property
    def name(self) -> str:
        return self.config.name

    def preprocess(self, image: Any, stats: np.ndarray | None = None) -> np.ndarray:
        """The float32 network input for ``image``: channel-first (C, *spatial), or spatial only for 1 channel.

        ``stats`` are the normalisation statistics of the whole image; tiles of one image must share them.
        """
        array = np.asarray(image)
        if array.ndim == self.config.network.spatial_dims:
            array = array[np.newaxis]
        if array.shape[0] != self.config.in_channels:
            raise InvalidInputError(
                f"model {self.name or '(unnamed)'} takes {self.config.in_channels} channel(s) first, got an array "
                f"of shape {array.shape}"
            )
        if stats is None:
            stats = self.config.normalization.statistics(array)
        return self.config.normalization.apply(array, stats)

    def copy(self) -> Model:
        """An independent copy (weights included) that can be trained without touching this model."""
        clone = Model(copy.deepcopy(self.network), copy.deepcopy(self.config), self.path)
        clone.attachments = dict(self.attachments)
        return clone

    def __repr__(self) -> str:
        net = self.config.network
        return (f"Model(name={self.name!r}, task={self.config.task!r}, axes={self.config.axes!r}, "
                f"in_channels={net.in_channels}, classes={list(self.config.classes)}, depth={net.depth}, "
                f"base_features={net.base_features}, padding={net.padding!r})")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", trust: bool = False) -> Model:
    """Load a bundled model by name, a model of the user's library by name, a model folder by path, or a
    bioimage.io package (a ``.zip``, or the ``rdf.yaml`` of an unpacked one).

    Packages napari-unet exported load like model folders. Packages other tools made run their own code (an
    architecture file or a TorchScript program), so they load only with ``trust=True``; without it
    :class:`~napari_unet.core.errors.UntrustedCodeError` says what would run. See
    :mod:`napari_unet.bioimageio.foreign` for what such packages may contain.
    """
    from napari_unet.bioimageio import is_package, load_bioimageio

    if is_package(name_or_path):
        return load_bioimageio(name_or_path, device, trust)
    folder = resolve_model_folder(name_or_path)
    config = read_model_config(folder / CONFIG_FILE)
    config.name = folder.name  # the folder is the model's identity: a renamed folder is a renamed model
    weights_path = folder / WEIGHTS_FILE
    return model_from_weights(config, read_safetensors(weights_path), weights_path, device, folder)


def read_model_config(path: Path) -> ModelConfig:
    """A model's ``config.json``, parsed and checked; any problem raises :class:`ModelFileError` naming ``path``."""
    try:
        return ModelConfig.from_dict(read_config_json(path))
    except ModelFileError:
        raise
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def model_from_weights(config: ModelConfig, tensors: dict[str, torch.Tensor], weights_path: Path,
                       device: str | torch.device = "cpu", folder: Path | None = None) -> Model:
    """The network ``config`` describes, with ``tensors`` (read from ``weights_path``) as its weights, in eval
    mode. The weights must match the network name for name and shape for shape and be finite: whatever file
    format they came in, a mismatch is a :class:`ModelFileError` naming ``weights_path``."""
    network = UNet(config.network)
    _check_weights(weights_path, tensors, network.state_dict())
    network.load_state_dict(tensors, strict=True)
    network.eval()
    return Model(network.to(device), config, folder)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU after checking its header by hand.

    The checks catch the usual damage (empty or truncated downloads, git-lfs pointers, HTML error pages, a
    corrupt or absurdly large header) with a message that says what the file is, before any tensor is read.
    """
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(min(size, 8 + MAX_HEADER_BYTES))
    problem = _describe_non_safetensors(head, size)
    if problem:
        raise ModelFileError(f"{path} {problem}")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise ModelFileError(
            f"{path} has a header of {header_len} bytes but the file has {size}: it is truncated or corrupt"
        )
    try:
        header = json.loads(head[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path} has a corrupt header: it is damaged or not a safetensors file") from None
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            itemsize = _SAFETENSORS_DTYPES[entry["dtype"]]
            count = int(np.prod(entry["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path} has a corrupt entry for tensor {name!r}") from None
        if not (0 <= start <= end <= data_len) or end - start != count * itemsize:
            raise ModelFileError(f"{path}: tensor {name!r} lies outside the file; the file is truncated or corrupt")
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except Exception as exc:  # the library's own errors are not ValueErrors
        raise ModelFileError(f"{path} could not be read as safetensors: {exc}") from None


def _describe_non_safetensors(head: bytes, size: int) -> str | None:
    if size == 0:
        return "is empty; the download or copy did not complete"
    if size < 8:
        return f"is only {size} bytes long; it is truncated"
    if head.startswith(b"version https://git-lfs"):
        return "is a git-lfs pointer, not the weights; run `git lfs pull` in the repository you cloned it from"
    lowered = head[:512].lstrip().lower()
    if lowered.startswith((b"<!doctype", b"<html")):
        return "is an HTML page, not weights; the download saved a web page (use the file's raw/download link)"
    if head.startswith(b"PK\x03\x04") or head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return ("is a PyTorch pickle, which napari-unet never loads because unpickling can run code; "
                "save the weights with safetensors instead")
    return None


def _check_weights(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensor(s) such as {missing[:3]}")
        if extra:
            detail.append(f"{len(extra)} unexpected tensor(s) such as {extra[:3]}")
        raise ModelFileError(
            f"{path} does not match the architecture in {CONFIG_FILE}: " + "; ".join(detail)
            + ". The config and the weights come from different models"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} but the architecture in {CONFIG_FILE} "
                f"needs {tuple(expected[name].shape)}; the config and the weights come from different models"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{path}: tensor {name!r} contains NaN or infinite values; the model is broken")


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------


def save_model(model: Model, name_or_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save ``model`` into the user's library (a name, as a str) or into a folder (a path object such as a
    ``pathlib.Path``); return the folder. A str is never taken as a path: separators, ``..`` and absolute
    paths are refused, and so are the names of bundled models.

    An existing model is only replaced with ``overwrite=True``; without it :class:`ModelExistsError` says which
    names are free. The folder appears complete or not at all.
    """
    if not isinstance(model.config.network, UNetConfig):
        raise InvalidInputError(f"{model.name or 'this model'} came from another tool's bioimage.io package and is "
                                "not a napari-unet U-Net, so it cannot be saved as a napari-unet model; keep "
                                "using the package itself")
    folder = target_folder(name_or_path)
    if folder.exists() and not overwrite:
        hint = f"; '{unique_name(folder.name)}' is free" if folder.parent.resolve() == _library_root() else ""
        raise ModelExistsError(f"a model already exists at {folder}{hint}. Choose another name or pass overwrite=True")
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = replace(model.config, name=folder.name)
    config.provenance = {"package_version": __version__, **config.provenance}
    staging = staging_folder(folder)
    try:
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").contiguous() for k, v in model.network.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
        (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
        # safetensors writes its file 0600; give it the mode the umask gave the config, as for any new file
        os.chmod(staging / WEIGHTS_FILE, (staging / CONFIG_FILE).stat().st_mode & 0o777)
        for name, data in model.attachments.items():
            (staging / Path(name).name).write_bytes(data)
        _carry_extra_files(model, staging)
        _fsync_folder(staging)
        _move_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    model.config = config
    model.path = folder
    return folder


def _carry_extra_files(model: Model, staging: Path) -> None:
    """Copy the annotations a model was trained on from the folder it was loaded from, unless it holds its own:
    a model saved again, under a new name or over itself, keeps them."""
    source = None if model.path is None else Path(model.path) / ANNOTATIONS_FILE
    if source is not None and source.is_file() and not (staging / ANNOTATIONS_FILE).exists():
        shutil.copyfile(source, staging / ANNOTATIONS_FILE)


def _library_root() -> Path:
    return library_dir().resolve()


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an old folder is moved aside first and removed only afterwards."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    backup = folder.with_name(f".{folder.name}.replaced-{os.getpid()}")
    os.rename(folder, backup)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(backup, folder)
        raise
    shutil.rmtree(backup, ignore_errors=True)
