"""Model versions in the user's library: saving a fine-tuned model as the next version, listing a model's
family, renaming without breaking it, rolling back.

Fine-tuning never overwrites: ``nuclei`` fine-tuned becomes ``nuclei-v2``, fine-tuned again ``nuclei-v3``,
each recording its parent in ``config.json`` (``provenance.parent``), so a lineage can be walked back to the
bundled model it started from. Rolling back copies an older version as the newest one, so "the latest
version" is always the one in use and nothing is ever deleted by a rollback. Renaming and deleting models are
:func:`napari_unet.core.library.rename_model` and ``delete_model``; :func:`rename_version` also updates the
parent links of the renamed model's children.

The annotations a model learned from travel with it: :func:`annotation_snapshot` packs the samples' labels
and annotated areas into ``annotations.npz``, which :func:`read_annotations` reads back.

torch is imported only when a model is saved.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet import __version__
from napari_unet.core.errors import ModelExistsError, ModelFileError
from napari_unet.core.library import (
    ANNOTATIONS_FILE,
    CONFIG_FILE,
    check_name,
    library_dir,
    library_name,
    list_models,
    read_config_json,
    rename_model,
    resolve_model_folder,
    staging_folder,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.core.models import Model

_VERSION = re.compile(r"^(?P<base>.+)-v(?P<number>\d+)$")


@dataclass(frozen=True)
class VersionInfo:
    """One model of a family, as a version list shows it (read from ``config.json`` only)."""

    name: str
    path: Path
    source: str  # "bundled" or "library"
    parent: str | None
    date: str | None
    steps: int | None
    metrics: dict[str, Any] = field(default_factory=dict)


def version_base(name: str) -> str:
    """The family name of a model name: ``nuclei-v3`` -> ``nuclei``, ``nuclei`` -> ``nuclei``."""
    match = _VERSION.match(name)
    return match["base"] if match else name


def next_version_name(base: str) -> str:
    """The first version name after the newest existing one: ``base-v2`` if there is none yet."""
    check_name(base)
    numbers = [1]
    if library_dir().is_dir():
        for entry in library_dir().iterdir():
            match = _VERSION.match(entry.name)
            if match and match["base"] == base:
                numbers.append(int(match["number"]))
    return f"{base}-v{max(numbers) + 1}"


def save_version(tuned: Model, base_name: str | None = None) -> Path:
    """Save ``tuned`` as the next version of its family (``base_name``, else its parent's family) and
    return the folder. Existing models are never replaced: a name taken meanwhile moves on to the next."""
    from napari_unet.core.models import save_model

    # a model read from a folder anywhere may have a name no library model can have: its family takes a valid one
    base = base_name or library_name(version_base(tuned.config.provenance.get("parent") or tuned.name or "model"))
    for _ in range(100):
        try:
            return save_model(tuned, next_version_name(base))
        except ModelExistsError:
            continue  # another process saved the same version number first
    raise ModelExistsError(f"could not find a free version name for {base!r} in {library_dir()}")


def _version_info(folder: Path, source: str) -> VersionInfo | None:
    try:
        data = read_config_json(folder / CONFIG_FILE)
    except ModelFileError:
        return None
    provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    return VersionInfo(name=folder.name, path=folder, source=source, parent=provenance.get("parent"),
                       date=provenance.get("date"), steps=provenance.get("steps"),
                       metrics=dict(provenance.get("metrics") or {}))


def _all_versions() -> dict[str, VersionInfo]:
    """Every readable model by name; a library model hides a bundled one of the same name, as in loading."""
    found: dict[str, VersionInfo] = {}
    for info in list_models():
        version = _version_info(info.path, info.source)
        if version is not None:
            found[info.name] = version
    return found


def lineage(name: str) -> list[VersionInfo]:
    """``name`` and its ancestors, oldest first (the walk stops at a parent that no longer exists)."""
    models = _all_versions()
    if name not in models:
        folder = resolve_model_folder(name)  # raises a helpful error for unknown names
        models[name] = _version_info(folder, "path") or VersionInfo(name, folder, "path", None, None, None)
    return _chain(models, name)


def _chain(models: dict[str, VersionInfo], name: str) -> list[VersionInfo]:
    chain = [models[name]]
    while chain[-1].parent in models and all(v.name != chain[-1].parent for v in chain):
        chain.append(models[chain[-1].parent])
    return chain[::-1]


def list_versions(name: str) -> list[VersionInfo]:
    """Every model of ``name``'s family (all descendants of its oldest ancestor), the ancestor first, then
    by training date."""
    chain = lineage(name)
    models = _all_versions()
    members = [v for v in models.values() if _chain(models, v.name)[0].name == chain[0].name]
    if not members:  # a model outside the library and the bundled models: its own lineage is all there is
        return chain
    return sorted(members, key=lambda v: (v.name != chain[0].name, v.date or "", v.name))


def rollback(name: str) -> Path:
    """Make model ``name`` (an older version) current again: copy it as the newest version of its family,
    with ``name`` as parent. Returns the new folder; nothing is deleted or changed."""
    source = resolve_model_folder(name)
    library_dir().mkdir(parents=True, exist_ok=True)
    base = version_base(source.name)
    for _ in range(100):
        target = library_dir() / next_version_name(base)
        staging = staging_folder(target, library_dir())
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            config = read_config_json(staging / CONFIG_FILE)
            config["name"] = target.name
            config["provenance"] = {"parent": source.name, "rolled_back_from": source.name,
                                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                    "steps": 0, "package_version": __version__}
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
            if target.exists():
                continue
            os.rename(staging, target)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise ModelExistsError(f"could not find a free version name for {base!r} in {library_dir()}")


def rename_version(old: str, new: str) -> Path:
    """Rename a library model and point its children's ``provenance.parent`` at the new name."""
    folder = rename_model(old, new)
    for child in _all_versions().values():
        if child.source == "library" and child.parent == old:
            path = child.path / CONFIG_FILE
            config = read_config_json(path)
            config["provenance"]["parent"] = new
            temporary = path.with_name(f".{CONFIG_FILE}.{os.getpid()}")
            temporary.write_text(json.dumps(config, indent=2), encoding="utf-8")
            os.replace(temporary, path)
    return folder


# --------------------------------------------------------------------------------------------------------------
# What a tuned model carries: package versions and the annotations it learned from
# --------------------------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a training result."""
    import torch

    return {"napari_unet": __version__, "torch": torch.__version__, "numpy": np.__version__}


def annotation_snapshot(annotations: list[tuple[np.ndarray, np.ndarray, str]]) -> bytes:
    """A compressed npz of each sample's labels, annotated area and axes (``labels_0``, ``mask_0``,
    ``axes_0``, ...)."""
    arrays: dict[str, np.ndarray] = {}
    for index, (labels, annotated, axes) in enumerate(annotations):
        arrays[f"labels_{index}"] = labels
        arrays[f"mask_{index}"] = annotated
        arrays[f"axes_{index}"] = np.array(axes)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_annotations(model_or_folder: Any) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The (labels, annotated area, axes) a saved or freshly tuned model was trained on."""
    attachments = getattr(model_or_folder, "attachments", {})
    if ANNOTATIONS_FILE in attachments:
        source: Any = io.BytesIO(attachments[ANNOTATIONS_FILE])
    else:
        folder = getattr(model_or_folder, "path", None) or resolve_model_folder(model_or_folder)
        source = Path(folder) / ANNOTATIONS_FILE
        if not source.is_file():
            raise ModelFileError(f"{folder} holds no {ANNOTATIONS_FILE}; the model was not fine-tuned here")
    with np.load(source, allow_pickle=False) as data:
        count = sum(1 for key in data.files if key.startswith("labels_"))
        return [(data[f"labels_{i}"], data[f"mask_{i}"], str(data[f"axes_{i}"])) for i in range(count)]
