"""Export a model as a bioimage.io package (model description format 0.5) that other tools run, and load such
a package back.

A package is a zip with ``rdf.yaml`` (the description), the weights in two formats, a standalone architecture
file, a test input and the model's own output for it, a cover picture and a README with the model card. Tools
that read bioimage.io models (Fiji with deepImageJ, QuPath, ilastik, BiaPy, ``bioimageio.core``) then run the
network with the same normalisation and tile it with the right sizes and margins.

What the description says and why:

* **Input**: ``(batch, channel, [z,] y, x)``, float32. Valid spatial sizes are ``min + k * step``: ``step`` is
  ``2**depth`` (every pooling halves), ``min`` the smallest size the network takes (see ``core/unet.py``) and,
  for same-padding networks, one whose output is larger than twice the halo.
* **Preprocessing** expresses ours exactly with the spec's operations: percentile normalisation is
  ``scale_range`` with the model's percentiles, per channel over the spatial axes; an inverted model
  (``normalization.invert``) adds ``scale_linear`` with gain -1 and offset 1, which is 1 - x. (Not expressible:
  we set NaN/Inf pixels to 0 after normalising; the spec adds 1e-6 to the percentile range, we floor it at a
  tiny value instead: neither matters for real images.)
* **Output**: class probabilities ``(batch, channel, [z,] y, x)``. The softmax (a sigmoid for one class) is
  part of the exported network rather than a ``softmax`` postprocessing step, so that tools which do not
  implement that newer operation still get probabilities. Same-padding networks declare a **halo**: the
  outputs next to a tile edge depend on the padding there and are to be cropped; it is the reach measured by
  ``core.tiling.boundary_margin``. Valid-padding networks crop themselves: their output is smaller by a fixed
  amount, declared as a size offset.
* **Instance labelling** (seeded watershed of the background / interior / boundary probabilities) has no
  operation in the spec; the package's README describes it step by step.
* **Weights**: ``pytorch_state_dict`` with ``unet_architecture.py`` (``core/unet.py`` made standalone, plus
  the softmax wrapper) and ``torchscript`` (traced, checked at a second size). The network has batch-norm: it
  must run in eval mode (running statistics), which every consumer does for inference. No ONNX: it is only
  offered where it passes the same test, and ONNX tooling is not a dependency of this package.

The package also carries the model's own ``config.json`` and ``weights.safetensors`` (as attachments), which
is what :func:`load_bioimageio` reads back: ``load_model("model.zip")`` gives the same model, with no
unpickling and no code from the package run. Packages from other sources are refused with a clear message.

``bioimageio.spec`` and ``bioimageio.core`` are imported only here and only when an export runs: they are the
optional extra ``napari-unet[bioimageio]``. Loading needs neither.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet import __version__
from napari_unet.core.errors import InvalidInputError, ModelFileError
from napari_unet.core.library import CONFIG_FILE, WEIGHTS_FILE

UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. "
            "MICCAI 2015",
    "doi": "10.1007/978-3-319-24574-4_28",
}
ARCHITECTURE_FILE = "unet_architecture.py"
ARCHITECTURE_CALLABLE = "UNetProbabilities"
DEFAULT_AUTHOR = "napari-unet contributors"
DEFAULT_LICENSE = "BSD-3-Clause"
INSTALL_HINT = "install the optional extra: pip install 'napari-unet[bioimageio]'"

_WRAPPER = '''

class UNetProbabilities(UNet):
    """The U-Net followed by a softmax over the classes (a sigmoid for one class): class probabilities.

    Built from the keyword arguments of UNetConfig; the state dict is the plain UNet's. The network has
    batch-norm: run it in eval mode.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(UNetConfig(**kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
'''


def architecture_source() -> str:
    """``core/unet.py`` as a file that imports nothing of napari-unet, with the probability wrapper appended."""
    from napari_unet.core import unet

    source = Path(unet.__file__).read_text(encoding="utf-8")
    line = "from napari_unet.core.errors import InvalidInputError\n"
    if line not in source:
        raise RuntimeError("core/unet.py no longer imports InvalidInputError as the exporter expects; update "
                           "napari_unet.bioimageio.architecture_source")
    source = source.replace(line, "\n\nclass InvalidInputError(ValueError):\n"
                                  '    """A wrong configuration or input size."""\n')
    if "napari_unet" in re.sub(r'""".*?"""', "", source, flags=re.S):
        raise RuntimeError("core/unet.py imports more of napari-unet than the exporter can make standalone")
    header = (f"# The U-Net of napari-unet {__version__} (src/napari_unet/core/unet.py), standalone.\n"
              "# Needs only torch. Exported with `napari-unet export`.\n")
    return header + source + _WRAPPER


def export_bioimageio(model: Any, path: str | os.PathLike, *, sample: np.ndarray | None = None,
                      authors: Sequence[str] | None = None, license: str = DEFAULT_LICENSE,
                      check: bool = False, overwrite: bool = False) -> Path:
    """Write ``model`` (a :class:`~napari_unet.Model`, or a name or folder for ``load_model``) as a
    bioimage.io package (format 0.5) to ``path`` (a ``.zip``); return the path.

    ``sample`` is the test image, with the model's spatial axes and, for several channels, the channel axis
    first; by default a generated nuclei image (the same in every channel; inverted for an inverted model).
    ``authors`` are names (default: the napari-unet contributors); ``license`` is an SPDX id. With ``check``
    the finished package is run through ``bioimageio.core``'s ``test_model`` and a failure raises. An existing
    file is only replaced with ``overwrite``; the package appears complete or not at all.
    """
    spec = _import_spec()
    from napari_unet.core.models import Model, load_model

    if not isinstance(model, Model):
        model = load_model(model)
    _check_license(license)
    if authors is not None and (isinstance(authors, str) or not authors
                                or not all(isinstance(a, str) and a.strip() for a in authors)):
        raise InvalidInputError(f"authors must be a list of one or more names, not {authors!r}")
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise InvalidInputError(f"a bioimage.io package is a .zip file; got {path}")
    if not path.parent.is_dir():
        raise InvalidInputError(f"the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")

    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        folder = Path(tmp)
        rdf = _write_package_files(model, folder, sample, list(authors or [DEFAULT_AUTHOR]), license)
        from bioimageio.spec import ValidationContext, build_description

        with ValidationContext(root=folder, perform_io_checks=True):
            descr = build_description(rdf)
        if not isinstance(descr, spec.model.v0_5.ModelDescr):
            raise RuntimeError("the generated bioimage.io description is invalid:\n"
                               + descr.validation_summary.format())
        staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            spec.save_bioimageio_package(descr, output_path=staging)
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)
    if check:
        summary = test_package(path)
        if summary.status != "passed":
            raise RuntimeError(f"bioimageio.core's test of {path} failed (the package is written; please report "
                               f"this as a napari-unet bug):\n{summary.format()}")
    return path


def test_package(path: str | os.PathLike) -> Any:
    """Run ``bioimageio.core.test_model`` on a package; returns its validation summary (``.status``)."""
    _import_spec()
    import gc

    from bioimageio.core import test_model

    gc.freeze()  # test_model collects garbage after every model it loads; over a heap with torch that takes
    try:         # most of its time, and the objects that exist before the test are not its garbage
        return test_model(str(path))
    finally:
        gc.unfreeze()


test_package.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


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


# --------------------------------------------------------------------------------------------------------------
# The files of the package
# --------------------------------------------------------------------------------------------------------------


def _check_license(license: str) -> None:
    """Refuse a licence that bioimage.io does not accept, naming the nearest SPDX ids."""
    import difflib
    from typing import get_args

    try:
        from bioimageio.spec._internal.license_id import LicenseIdLiteral
    except ImportError:  # a future layout of the library: its own validation still catches it
        return
    known = get_args(LicenseIdLiteral)
    if license not in known:
        close = (sorted((k for k in known if k.lower().startswith(str(license).lower())), key=len)[:3]
                 or difflib.get_close_matches(str(license), known, n=3, cutoff=0.6))
        raise InvalidInputError(f"{license!r} is not an SPDX licence id that bioimage.io accepts"
                                + (f"; did you mean {', '.join(close)}?" if close else "")
                                + " Common choices: CC-BY-4.0, BSD-3-Clause, MIT")


def _import_spec() -> Any:
    try:
        import bioimageio.core  # noqa: F401  (test_model and the weight formats' backends)
        import bioimageio.spec
    except ImportError as exc:
        raise ImportError(f"bioimage.io export needs bioimageio.core and bioimageio.spec ({exc}); "
                          f"{INSTALL_HINT}") from None
    return bioimageio.spec


def _write_package_files(model: Any, folder: Path, sample: np.ndarray | None, authors: list[str],
                         license: str) -> dict[str, Any]:
    import torch

    from napari_unet.core.tiling import boundary_margin
    from napari_unet.core.unet import halo as valid_halo
    from napari_unet.core.unet import min_input_size, output_size

    config = model.config
    net_config = config.network
    spatial = config.axes.lower()  # "yx" or "zyx"
    step = 2**net_config.depth
    valid = net_config.padding == "valid"
    margin = max(boundary_margin(net_config))  # outputs near a tile edge to crop (0 for the paper's network)
    smallest = min_input_size(net_config)
    while output_size(net_config, smallest) is None or output_size(net_config, smallest) <= 2 * margin:
        smallest += step if output_size(net_config, smallest) is not None else 1
    shrink = 2 * valid_halo(net_config, smallest) if valid else 0

    image = _test_image(model, sample, smallest, step, margin)  # (C, *spatial)
    x = model.preprocess(image)
    net = _export_network(model)
    with torch.no_grad():
        y = net(torch.from_numpy(x[None]).float()).numpy().astype(np.float32)
    test_input = image[None].astype(np.float32)
    np.save(folder / "test_input.npy", test_input)
    np.save(folder / "test_output.npy", y)
    import tifffile  # the same arrays as pictures, for people and the bioimage.io website

    tifffile.imwrite(folder / "sample_input.tif", test_input, photometric="minisblack")
    tifffile.imwrite(folder / "sample_output.tif", y, photometric="minisblack")

    torch.save({k: v.detach().cpu() for k, v in model.network.state_dict().items()}, folder / "weights.pt")
    _write_native_files(model, folder)
    (folder / ARCHITECTURE_FILE).write_text(architecture_source(), encoding="utf-8")
    _trace(net, x, smallest, step, folder / "weights_torchscript.pt")
    _cover(x, y, config, folder / "cover.png")
    citations = [UNET_CITATION, *training_data_citations(config)]
    (folder / "README.md").write_text(_readme(model, citations, smallest, step, margin, shrink), encoding="utf-8")

    channel_names = [f"channel{i}" for i in range(net_config.in_channels)]
    input_axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": channel_names}]
    output_axes: list[dict[str, Any]] = [{"type": "batch"},
                                         {"type": "channel", "channel_names": [str(c) for c in config.classes]}]
    for axis in spatial:
        input_axes.append({"type": "space", "id": axis, "size": {"min": smallest, "step": step}})
        out_axis: dict[str, Any] = {"type": "space", "id": axis,
                                    "size": {"tensor_id": "input", "axis_id": axis, "offset": -shrink}}
        if margin:
            out_axis["halo"] = margin
        output_axes.append(out_axis)

    preprocessing: list[dict[str, Any]] = []
    norm = config.normalization
    if norm.method == "percentile":
        preprocessing.append({"id": "scale_range", "kwargs": {
            "axes": list(spatial), "min_percentile": float(norm.low), "max_percentile": float(norm.high)}})
    if norm.invert:
        preprocessing.append({"id": "scale_linear", "kwargs": {"gain": -1.0, "offset": 1.0}})
    preprocessing.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})

    torch_version = torch.__version__.split("+")[0]
    name = config.name or "napari-unet model"
    description = (config.description or f"A {net_config.spatial_dims}D U-Net ({config.task} segmentation) "
                   "made with napari-unet")
    rdf: dict[str, Any] = {
        "type": "model",
        "format_version": _format_version(),
        "name": _rdf_name(name),
        "description": description[:1024],
        "authors": [{"name": a} for a in authors],
        "cite": [c for c in citations if c.get("doi") or c.get("url")],  # the spec needs one; all in README
        "license": license,
        "tags": _tags(config),
        "documentation": {"source": "README.md", "sha256": _sha256(folder / "README.md")},
        "covers": [{"source": "cover.png", "sha256": _sha256(folder / "cover.png")}],
        "inputs": [{
            "id": "input",
            "description": "the raw image, channels first; normalised by the preprocessing",
            "axes": input_axes,
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(folder / "test_input.npy")},
            "sample_tensor": {"source": "sample_input.tif", "sha256": _sha256(folder / "sample_input.tif")},
            "data": {"type": "float32"},
            "preprocessing": preprocessing,
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "class probabilities (softmax over the channel axis)"[:128],
            "axes": output_axes,
            "test_tensor": {"source": "test_output.npy", "sha256": _sha256(folder / "test_output.npy")},
            "sample_tensor": {"source": "sample_output.tif", "sha256": _sha256(folder / "sample_output.tif")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt", "sha256": _sha256(folder / "weights.pt"),
                "architecture": {"source": ARCHITECTURE_FILE, "sha256": _sha256(folder / ARCHITECTURE_FILE),
                                 "callable": ARCHITECTURE_CALLABLE, "kwargs": net_config.to_dict()},
                "pytorch_version": torch_version,
                "comment": "U-Net with batch-norm: run in eval mode",
            },
            "torchscript": {
                "source": "weights_torchscript.pt", "sha256": _sha256(folder / "weights_torchscript.pt"),
                "pytorch_version": torch_version, "parent": "pytorch_state_dict",
            },
        },
        "attachments": [{"source": name, "sha256": _sha256(folder / name)} for name in (CONFIG_FILE, WEIGHTS_FILE)],
        "config": {"napari_unet": {"version": __version__, "config": CONFIG_FILE, "weights": WEIGHTS_FILE}},
    }
    return rdf


def _format_version() -> str:
    from bioimageio.spec.model.v0_5 import ModelDescr

    return ModelDescr.implemented_format_version


def _rdf_name(name: str) -> str:
    """The spec allows letters, digits, spaces and a few signs in a name, at least 5 characters."""
    clean = re.sub(r"[^A-Za-z0-9 _\-()]", " ", name).strip() or "napari-unet model"
    return clean if len(clean) >= 5 else f"{clean} (napari-unet)"


def _tags(config: Any) -> list[str]:
    tags = ["unet", "pytorch", "napari-unet", f"{config.network.spatial_dims}d", "segmentation",
            "instance-segmentation" if config.task == "instance" else "semantic-segmentation"]
    text = f"{config.name} {config.description}".lower()
    for word in ("nuclei", "cells", "fluorescence", "histology", "brightfield"):
        if word in text:
            tags.append(word)
    return tags


def training_data_citations(config: Any) -> list[dict[str, str]]:
    """The training data's citations named anywhere in the model's card or provenance (keys ``citation``,
    ``cite``), as bioimage.io cite entries; an entry needs a DOI or URL, so text without one is left to the
    README."""
    found: list[str] = []

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 6:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key).lower() in ("citation", "cite", "training data citation") and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)

    walk(config.card)
    walk(config.provenance)
    for ancestor in _ancestors(config.provenance):  # a fine-tuned model learned from its parents' data too
        walk(ancestor.get("card"))
        walk(ancestor.get("provenance"))
    entries = []
    for text in dict.fromkeys(found):
        doi = re.search(r"10\.\d{4,9}/[^\s,;]+[^\s,;.)]", text) or _known_doi(text)
        url = re.search(r"https?://[^\s,;]+[^\s,;.)]", text)
        if doi:
            entries.append({"text": text, "doi": doi.group(0)})
        elif url:
            entries.append({"text": text, "url": url.group(0)})
        else:
            entries.append({"text": text})
    return entries


def _ancestors(provenance: dict[str, Any], limit: int = 20) -> list[dict[str, Any]]:
    """The configs of the models a model was fine-tuned from, nearest first, as far as they can be found."""
    from napari_unet.core.library import read_config_json, resolve_model_folder

    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(found) < limit and isinstance(provenance, dict):
        parent = provenance.get("parent_path") or provenance.get("parent")
        if not isinstance(parent, str) or parent in seen:
            break
        seen.add(parent)
        try:
            data = read_config_json(resolve_model_folder(parent) / CONFIG_FILE)
        except (ValueError, OSError):
            break
        found.append(data)
        provenance = data.get("provenance") or {}
    return found


#: DOIs of data sets whose citations napari-unet's own scripts record without one
KNOWN_DOIS = {"2018 Data Science Bowl": "10.1038/s41592-019-0612-7"}


def _known_doi(text: str) -> Any:
    for words, doi in KNOWN_DOIS.items():
        if words.lower() in text.lower():
            return re.search(".+", doi)
    return None


def _write_native_files(model: Any, folder: Path) -> None:
    """The model's own ``config.json`` and ``weights.safetensors``, so that napari-unet loads the package back
    exactly and without unpickling. Annotations a fine-tuned model keeps are not exported."""
    from napari_unet.core.models import Model, save_model

    with tempfile.TemporaryDirectory() as tmp:
        plain = save_model(Model(model.network, copy.deepcopy(model.config)), Path(tmp) / (model.name or "model"))
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(plain / name, folder / name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_network(model: Any) -> Any:
    """A CPU float32 copy of the model's network in eval mode that outputs probabilities."""
    import importlib.util
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / ARCHITECTURE_FILE
        file.write_text(architecture_source(), encoding="utf-8")
        spec = importlib.util.spec_from_file_location("napari_unet_exported_architecture", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
    net = getattr(module, ARCHITECTURE_CALLABLE)(**model.config.network.to_dict())
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
             for k, v in copy.deepcopy(model.network.state_dict()).items()}
    net.load_state_dict(state, strict=True)
    return net.float().eval()


def _trace(net: Any, x: np.ndarray, smallest: int, step: int, target: Path) -> None:
    """Trace the network for TorchScript and check it at another valid size against the eager network."""
    import torch

    example = torch.from_numpy(x[None]).float()
    other = torch.rand((1, x.shape[0]) + (smallest + step,) * (x.ndim - 1), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes: the crop offsets are constant per model
        traced = torch.jit.trace(net, example, check_trace=False)
        for probe in (example, other):
            if not torch.allclose(traced(probe), net(probe), atol=1e-5):
                raise RuntimeError("the traced TorchScript network differs from the network; cannot export it")
    traced.save(str(target))


def _test_image(model: Any, sample: np.ndarray | None, smallest: int, step: int, margin: int) -> np.ndarray:
    """The test input, channel first: ``sample`` checked, or a generated nuclei image of a valid size."""
    from napari_unet.core.unet import output_size

    config = model.config
    dims = config.network.spatial_dims
    channels = config.network.in_channels
    if sample is not None:
        image = np.asarray(sample)
        if image.ndim == dims:
            image = image[None]
        if image.ndim != dims + 1 or image.shape[0] != channels:
            raise InvalidInputError(f"the sample must have the model's axes {config.axes} (channels first for a "
                                    f"{channels}-channel model); got shape {image.shape}")
        for n in image.shape[1:]:
            if n < smallest or (n - smallest) % step:
                raise InvalidInputError(f"the sample's spatial sizes must be {smallest} + k * {step}; got "
                                        f"{image.shape[1:]}")
        return image.astype(np.float32)
    from napari_unet import synthetic

    edge = max(128 if dims == 2 else 32, smallest, 2 * margin + 2 * step)
    size = smallest + -(-(edge - smallest) // step) * step
    assert output_size(config.network, size) is not None
    if dims == 3:
        image, _ = synthetic.generate_nuclei((size, size, size), seed=1)
    else:
        image, _ = synthetic.generate_nuclei((size, size), seed=1)
    image = image.astype(np.float32)
    if config.normalization.invert:
        image = image.max() - image
    return np.repeat(image[None], channels, axis=0)


def _cover(x: np.ndarray, y: np.ndarray, config: Any, target: Path) -> None:
    """cover.png: the normalised test input beside its probabilities (2:1), the middle plane of a stack."""
    import imageio.v3 as iio

    if x.ndim == 4:
        x, y = x[:, x.shape[1] // 2], y[:, :, y.shape[2] // 2]
    grey = np.clip(x[0], 0, 1)
    probs = y[0]
    colours = np.array([[0, 0, 0], [0.1, 0.9, 0.2], [0.95, 0.2, 0.8], [0.2, 0.5, 1], [1, 0.8, 0.1],
                        [0.1, 0.9, 0.9], [0.9, 0.4, 0.1]], dtype=np.float32)
    if probs.shape[0] == 1:
        right = np.repeat(probs[0][..., None], 3, axis=-1)
    else:
        palette = colours[np.arange(probs.shape[0]) % len(colours)]
        palette[0] = 0  # background stays black
        right = np.tensordot(np.moveaxis(probs, 0, -1), palette, axes=1)
    canvas = np.zeros(grey.shape + (3,), dtype=np.float32)  # valid networks: the output is smaller, centred
    dy, dx = (grey.shape[0] - right.shape[0]) // 2, (grey.shape[1] - right.shape[1]) // 2
    canvas[dy:dy + right.shape[0], dx:dx + right.shape[1]] = right
    picture = np.concatenate([np.repeat(grey[..., None], 3, axis=-1), canvas], axis=1)
    scale = max(1, 256 // grey.shape[0])
    picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    iio.imwrite(target, (np.clip(picture, 0, 1) * 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------------------------
# README.md of the package: the model card, how to run it, training history
# --------------------------------------------------------------------------------------------------------------


def _readme(model: Any, citations: list[dict[str, str]], smallest: int, step: int, margin: int,
            shrink: int) -> str:
    config = model.config
    net = config.network
    norm = config.normalization
    lines = [f"# {config.name or 'napari-unet model'}", "", config.description or "", ""]
    lines += [f"Exported from napari-unet {__version__} on "
              f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d')}. In napari-unet the model segments "
              "with `napari_unet.segment(image, model)`; this package lets other tools run the same network.",
              ""]
    if config.card:
        lines += ["## Model card", ""]
        lines += [f"- **{key}**: {value}" for key, value in config.card.items()]
        lines.append("")
    lines += ["## Network", "",
              f"A {net.spatial_dims}D U-Net (Ronneberger et al. 2015): depth {net.depth}, {net.base_features} "
              f"features at the top level, {net.padding} padding, {net.upsampling} up-sampling, "
              f"{'batch-norm' if net.norm == 'batch' else 'no normalisation layers'}, {net.in_channels} input "
              f"channel(s), {net.out_channels} classes: {', '.join(config.classes)}."
              + (" Batch-norm uses its running statistics: run the network in eval mode (every bioimage.io "
                 "consumer does), never in training mode, or a tile's output depends on the tile." if
                 net.norm == "batch" else ""), "",
              f"Input sizes: {smallest} + k x {step} pixels along every spatial axis ({', '.join(config.axes)}).",
              ""]
    if margin:
        lines += [f"Tiling: the outputs within {margin} pixels of a tile edge depend on the zero padding there; "
                  "crop them (the description's output halo) and overlap tiles by twice that. Tiles should start "
                  f"at multiples of {step} pixels, as the network pools {net.depth} times.", ""]
    if shrink:
        lines += [f"Tiling: valid padding, so the output is {shrink} pixels smaller than the input along every "
                  f"spatial axis ({shrink // 2} on each side) and every output pixel is exact: place output "
                  "tiles edge to edge and mirror the image at its border.", ""]
    lines += ["## Preprocessing", ""]
    if norm.method == "percentile":
        lines.append(f"Per channel, percentile {norm.low:g} of the whole image becomes 0 and percentile "
                     f"{norm.high:g} becomes 1 (`scale_range`). Compute the percentiles once per image, not per "
                     "tile, so that tiles agree.")
    else:
        lines.append("None: the network takes the raw intensities as float32.")
    if norm.invert:
        lines.append("Then x becomes 1 - x (`scale_linear` with gain -1 and offset 1): the model was trained on "
                     "dark objects on a bright background and sees them inverted, bright on dark.")
    lines += ["NaN and infinite pixels are set to 0 after normalising (napari-unet does; the spec has no step "
              "for it).", ""]
    lines += ["## Output and postprocessing", "",
              "The output is the class probabilities (softmax over the classes, part of the network; a sigmoid "
              "for a one-class model), one channel per class: " + ", ".join(config.classes) + ".", ""]
    if config.task == "instance":
        flt = config.object_filter
        foreground = ("P(background) < " + f"{flt.foreground:g}" if flt.foreground is not None
                      else "background is not the most probable class")
        seeds = (f"P(interior) > {flt.seed:g}" if flt.seed is not None else "interior is the most probable class")
        lines += ["To get one label per object, as napari-unet does:", "",
                  f"1. foreground (classes > 0) = the pixels where {foreground}; interior = the foreground pixels "
                  f"where {seeds};",
                  "2. seeds = the connected components of the interior pixels (face connectivity);",
                  "3. grow the seeds over interior and boundary pixels by a seeded watershed on 1 - P(interior) "
                  "(`skimage.segmentation.watershed(1 - p[1], seeds, mask=classes > 0, connectivity=1)`);",
                  f"4. drop objects smaller than {flt.min_size} pixels or than {flt.min_fraction:g} x the "
                  "median object size of the image, and number the rest 1..N.", ""]
    else:
        lines += ["Class labels: the most probable class per pixel (for one class: probability above 0.5).", ""]
    if config.object_diameter:
        lines += [f"Object size: trained on objects about {config.object_diameter:g} pixels across; resample "
                  "images whose objects differ much from that first.", ""]
    lines += ["## Validation", ""]
    metrics = {k: v for k, v in config.card.items() if "metric" in str(k).lower()}
    lines += [f"- {key}: {value}" for key, value in metrics.items()]
    if config.provenance.get("metrics"):
        lines.append("- last training run, on its held-out part of the training images: "
                     + ", ".join(f"{k} {v}" for k, v in config.provenance["metrics"].items()))
    if not metrics and not config.provenance.get("metrics"):
        lines.append("No validation recorded for this model.")
    lines += ["- export check: the test input through this package reproduces napari-unet's output "
              "(`bioimageio.core` `test_model`).", ""]
    lines += ["## Training history", ""]
    if config.history:
        lines += ["| date | parent | steps | time (s) | samples | metrics |", "|---|---|---:|---:|---:|---|"]
        for run in config.history:
            metrics = ", ".join(f"{k} {v}" for k, v in (run.get("metrics") or {}).items())
            lines.append(f"| {run.get('date', '')} | {run.get('parent') or '-'} | {run.get('steps', '')} | "
                         f"{run.get('time_s', '')} | {run.get('samples', '')} | {metrics} |")
    else:
        lines.append("No training runs recorded.")
    lines.append("")
    prov = config.provenance
    if prov:
        lines += ["## Provenance", ""]
        for key in ("date", "parent", "package_version", "data_fingerprint", "seed", "steps", "stopped"):
            if prov.get(key) is not None:
                lines.append(f"- {key}: {prov[key]}")
        lines.append("")
    lines += ["## Cite", ""]
    lines += [f"- {c['text']}" + (f" doi:{c['doi']}" if c.get("doi") else f" {c['url']}" if c.get("url") else "")
              for c in citations]
    lines.append("")
    return "\n".join(lines)
