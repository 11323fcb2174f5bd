"""napari-unet: U-Net segmentation and fine-tuning for napari.

The package root is deliberately light: napari imports it to read the plugin manifest, so torch, Qt and napari
are only imported when one of the public names below is first used (PEP 562 module ``__getattr__``).

>>> import napari_unet as nu
>>> model = nu.load_model("nuclei")
>>> result = nu.segment(image, model, axes="YX")
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "segment": "napari_unet.core.inference",
    "SegmentResult": "napari_unet.core.inference",
    "SegmentProgress": "napari_unet.core.inference",
    "finetune": "napari_unet.core.training",
    "TrainProgress": "napari_unet.core.training",
    "Sample": "napari_unet.core.training_data",
    "Model": "napari_unet.core.models",
    "ModelConfig": "napari_unet.core.models",
    "load_model": "napari_unet.core.models",
    "save_model": "napari_unet.core.models",
    "list_models": "napari_unet.core.library",
    "delete_model": "napari_unet.core.library",
    "ModelInfo": "napari_unet.core.library",
    "list_versions": "napari_unet.core.versions",
    "rollback": "napari_unet.core.versions",
    "rename_version": "napari_unet.core.versions",
    "read_annotations": "napari_unet.core.versions",
    "VersionInfo": "napari_unet.core.versions",
    "UNetConfig": "napari_unet.core.unet",
    "export_bioimageio": "napari_unet.bioimageio",
    "segment_many": "napari_unet.batch",
    "CancelToken": "napari_unet.core.cancel",
    "Cancelled": "napari_unet.core.errors",
    "InvalidInputError": "napari_unet.core.errors",
    "ModelFileError": "napari_unet.core.errors",
    "ModelExistsError": "napari_unet.core.errors",
    "UntrustedCodeError": "napari_unet.core.errors",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from napari_unet.batch import segment_many
    from napari_unet.bioimageio import export_bioimageio
    from napari_unet.core.cancel import CancelToken
    from napari_unet.core.errors import (Cancelled, InvalidInputError, ModelExistsError, ModelFileError,
                                         UntrustedCodeError)
    from napari_unet.core.inference import SegmentProgress, SegmentResult, segment
    from napari_unet.core.library import ModelInfo, delete_model, list_models
    from napari_unet.core.models import Model, ModelConfig, load_model, save_model
    from napari_unet.core.training import TrainProgress, finetune
    from napari_unet.core.training_data import Sample
    from napari_unet.core.unet import UNetConfig
    from napari_unet.core.versions import VersionInfo, list_versions, read_annotations, rename_version, rollback


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
