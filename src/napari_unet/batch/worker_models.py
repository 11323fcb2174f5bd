"""The model on the Dask workers: a task carries a :class:`ModelRef` (a path) rather than the weights, and each
worker process loads the model once and keeps it, with its inference-ready network, while its files are
unchanged. A bioimage.io package from another tool runs its own code when loaded, so its reference carries
the caller's explicit trust to the workers; without it the package is refused in the caller, once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelRef:
    """A saved model by path: what a task carries instead of the weights. ``trust`` lets the workers load a
    package from another tool (``load_model(path, trust=True)``); it is set only where the caller was given
    ``trust=True`` (``--trust``)."""

    path: str
    trust: bool = False


_MODELS: dict[tuple[Any, ...], Any] = {}  # per worker process: the model last loaded and its key
_NETWORKS: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # per worker process and setting: (model, its ready copy)
_LOADS = [0]  # how often this process loaded a model (tests check that it is once)


def _model_ref(model: Any, trust: bool = False) -> Any:
    """A :class:`ModelRef` for a model that lives in a folder or package, else the model object itself.

    A name or path is resolved here, in the caller's process, so a typo fails at once and not on every worker;
    so is a package from another tool without ``trust`` (:class:`UntrustedCodeError`). A ``Model`` counts by its
    folder (``model.path``): save a model changed in memory before running a batch, or pass one without a path,
    which is then sent to every worker as it is. A model loaded from another tool's package counts by the
    package, which the workers load again, running its code: that too needs ``trust``.
    """
    if hasattr(model, "network") and hasattr(model, "config"):
        source = getattr(model, "source", None)  # set on models loaded from another tool's package
        if getattr(model, "path", None) is None and source is not None:
            if not trust:
                from napari_unet.core.errors import UntrustedCodeError

                raise UntrustedCodeError(f"{model.name} comes from another tool's package, {source}, whose code every "
                                         "worker would run to load it; pass trust=True (--trust) to allow that")
            return ModelRef(str(Path(source).resolve()), True)
        if getattr(model, "path", None) is None:
            return model
        return ModelRef(str(Path(model.path).resolve()))
    from napari_unet.bioimageio import is_package
    from napari_unet.core.library import resolve_model_folder

    if is_package(model):
        if not trust:
            from napari_unet.core.models import load_model

            load_model(model)  # another tool's package stops here, once, rather than on every worker
        return ModelRef(str(Path(model).resolve()), trust)
    return ModelRef(str(resolve_model_folder(model).resolve()))


def _model_key(ref: ModelRef) -> tuple[Any, ...]:
    """Path, trust and the modification times of its files: a model saved again under the same name is
    reloaded, and a model loaded with trust is never handed to a task that was given none."""
    path = Path(ref.path)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return (ref.path, ref.trust, tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()))


def worker_model(ref: Any) -> Any:
    """The model for ``ref`` in this process, loaded once and kept while its files are unchanged."""
    if not isinstance(ref, ModelRef):
        return ref
    key = _model_key(ref)
    model = _MODELS.get(key)
    if model is None:
        from napari_unet.core.models import load_model

        _MODELS.clear()  # one model per worker: a batch uses one, and weights take memory
        _NETWORKS.clear()
        model = load_model(ref.path, trust=ref.trust)
        _MODELS[key] = model
        _LOADS[0] += 1
    return model


def _worker_network(model: Any, device: str, precision: str, tta: bool) -> Any:
    """The inference-ready copy of the model's network (batch-norm folded, on the device), made once per
    process, model and setting: copying and folding for every group of tiles would cost more than small groups.

    The model is told by identity: a worker holds one object per model while a run lasts (loaded by
    :func:`worker_model`, or received once when scattered), and a model saved again or sent by a later run is
    a new object. The cache holds that object, so its ``id`` is never reused by another model while cached,
    and only the last model's copies are kept (a model sent in memory is a new one every run).
    """
    from napari_unet.core.devices import resolve_device
    from napari_unet.core.runner import Network

    if any(held is not model for held, _ in _NETWORKS.values()):
        _NETWORKS.clear()
    key = (device, precision, tta)
    if key not in _NETWORKS:
        _NETWORKS[key] = (model, Network(model.network, resolve_device(device), precision, tta))
    return _NETWORKS[key][1]
