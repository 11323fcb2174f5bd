"""Loading a bioimage.io package that another tool made: a network with ``pytorch_state_dict`` or
``torchscript`` weights whose output is a semantic map (class probabilities or a foreground map), run by
napari-unet's own tiled engine.

What is checked, before anything runs: the description (``bioimageio.spec``, hashes included); one input and
one output; the input has batch (optional), channel (optional) and two or three spatial axes (y, x, and z)
whose valid sizes are ``min + k * step`` (or one fixed size), the same along every spatial axis; the output
has the input's spatial axes at the same scale, sized from them (``offset`` <= 0 for networks that crop
themselves), with one halo for all of them; the preprocessing is expressible
(:mod:`~napari_unet.bioimageio.preprocessing`) and the postprocessing elementwise; the weights are in a format
napari-unet runs.

Trust. Both formats are code: ``pytorch_state_dict`` needs the package's architecture (a Python file, imported,
or a library's class) and TorchScript is a program. Without ``trust=True`` loading stops with
:class:`~napari_unet.core.errors.UntrustedCodeError`, naming what would run. State dicts are read with
``torch.load(weights_only=True)``: never unpickled. ``pytorch_state_dict`` is preferred where a package has
both (as ``bioimageio.core`` does), so that napari-unet runs the network the package's tests ran first.

Labels: a one-channel output is a foreground map; with the tag ``instance-segmentation`` its connected
components above 0.5 are objects (an instance model), otherwise pixels above 0.5 are class 1. Several channels
are classes: each pixel gets the most probable one. Network output is taken as probabilities in [0, 1].
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from napari_unet.bioimageio.foreign_network import PackageNetwork, PackageNetworkConfig
from napari_unet.bioimageio.preprocessing import FIXED_EPS, PackageNormalization, preprocessing_steps
from napari_unet.core.errors import InvalidInputError, ModelFileError, UntrustedCodeError
from napari_unet.core.models import INSTANCE_CLASSES, Model, ModelConfig
from napari_unet.core.postprocess import ObjectFilter

#: weight formats in the order they are chosen
FORMATS = ("pytorch_state_dict", "torchscript")
_MIRRORS = ("symmetric", "reflect", "edge")


class PackageModel(Model):
    """A model loaded from another tool's bioimage.io package: it segments like any model, but it is not a
    napari-unet U-Net, so it cannot be fine-tuned, saved as a napari-unet model or exported again."""

    def __init__(self, network: PackageNetwork, config: ModelConfig, source: Path, weights_format: str) -> None:
        super().__init__(network, config, None)
        self.source = source
        self.weights_format = weights_format

    def copy(self) -> PackageModel:
        clone = super().copy()
        return PackageModel(clone.network, clone.config, self.source, self.weights_format)

    def __repr__(self) -> str:
        net = self.config.network
        return (f"PackageModel(name={self.name!r}, source={str(self.source)!r}, weights={self.weights_format!r}, "
                f"task={self.config.task!r}, axes={self.config.axes!r}, in_channels={net.in_channels}, "
                f"classes={list(self.config.classes)}, halo={net.halo})")


def load_foreign(path: Path, device: Any = "cpu", trust: bool = False) -> PackageModel:
    """Load another tool's package (``load_model`` calls this for packages without napari-unet's own files)."""
    descr = _read_description(path)
    where = f"{path}"
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise InvalidInputError(f"{where} has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                                "napari-unet runs packages with one input image and one output map")
    source, target = descr.inputs[0], descr.outputs[0]
    input_axes, spatial, channels, sizes = _input_axes(source, where)
    output_axes, classes, halo, shrink = _output_axes(target, source, spatial, where)
    try:
        steps = preprocessing_steps(source.preprocessing, channels, spatial)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    post = _postprocessing(target.postprocessing, len(classes), where)
    pad = "symmetric" if source.pad is None else str(source.pad.mode)
    if pad not in _MIRRORS:
        raise InvalidInputError(f"{where}: the input's pad mode {pad!r} cannot be expressed; napari-unet extends "
                                f"the image border by mirroring ({', '.join(_MIRRORS)})")
    weights_format, what = _choose_weights(descr, where)
    if not trust:
        raise UntrustedCodeError(
            f"loading {where} would run code from the package: {what}. Load packages only from sources you "
            "trust; to allow it pass trust=True (load_model(path, trust=True), or --trust on the command line)")
    inner = _load_network(descr, weights_format, where)

    tags = {str(t).lower().replace(" ", "-") for t in descr.tags}
    instances = len(classes) == 1 and "instance-segmentation" in tags
    minimum, size_step = sizes
    net_config = PackageNetworkConfig(
        spatial_dims=len(spatial), in_channels=channels, out_channels=3 if instances else len(classes),
        min_size=minimum, size_step=size_step, step=size_step or (minimum & -minimum), halo=halo,
        shrink=shrink, pad_mode=pad)
    network = PackageNetwork(inner, spatial, input_axes, output_axes, halo, post, foreground_instances=instances)
    network.eval()
    _check_runs(network, net_config, where)
    config = ModelConfig(
        network=net_config, task="instance" if instances else "semantic",
        classes=INSTANCE_CLASSES if instances else tuple(classes), axes="".join(spatial).upper(),
        normalization=PackageNormalization(steps), name=_name(path),
        description=str(descr.description or descr.name),
        object_filter=ObjectFilter(min_size=0, min_fraction=0.0),  # every connected component is an object
        card={"bioimage.io name": str(descr.name), "source": str(path)},
        provenance={"bioimageio": {"source": str(path), "weights": weights_format,
                                   "format_version": str(descr.format_version)}})
    with warnings.catch_warnings():  # moving a TorchScript module reads its parameters' .grad, and warns
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        network = network.to(device)
    return PackageModel(network, config, path, weights_format)


def _read_description(path: Path) -> Any:
    try:
        from bioimageio.spec import load_model_description
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        from napari_unet.bioimageio.export import INSTALL_HINT

        raise ImportError(f"{path} is a bioimage.io package that napari-unet did not export; reading it needs "
                          f"bioimageio.spec and bioimageio.core ({exc}): {INSTALL_HINT}") from None
    try:
        descr = load_model_description(str(path), format_version="latest", perform_io_checks=True)
    except ValueError as exc:
        raise ModelFileError(f"{path} is not a valid bioimage.io model package: {exc}") from None
    if not isinstance(descr, v0_5.ModelDescr):
        raise ModelFileError(f"{path} could not be read as a format 0.5 model description")
    return descr


def _input_axes(source: Any, where: str) -> tuple[list[str], list[str], int, tuple[int, int]]:
    """The input's axis ids in order, its spatial ids (z, y, x order), channels, and (min, step)."""
    from bioimageio.spec.model import v0_5

    ids, channels, sizes = [], 1, {}
    for axis in source.axes:
        kind, name = str(axis.type), str(axis.id)
        if kind == "channel":
            channels = len(axis.channel_names)
        elif kind == "space" and name in "zyx":
            if isinstance(axis.size, int):
                sizes[name] = (axis.size, 0)
            elif isinstance(axis.size, v0_5.ParameterizedSize):
                sizes[name] = (int(axis.size.min), int(axis.size.step))
            else:
                raise InvalidInputError(f"{where}: the input's {name} size refers to another tensor; napari-unet "
                                        "needs a fixed size or min + k * step")
        elif kind != "batch":
            raise InvalidInputError(f"{where}: the input has a {kind} axis {name!r}; napari-unet feeds a network "
                                    "images with channel and spatial (z, y, x) axes only")
        ids.append(name)
    spatial = [a for a in "zyx" if a in sizes]
    if spatial not in (["y", "x"], ["z", "y", "x"]):
        raise InvalidInputError(f"{where}: the input's spatial axes are {spatial}; napari-unet runs 2D (y, x) and "
                                "3D (z, y, x) networks")
    if len(set(sizes.values())) != 1:
        raise InvalidInputError(f"{where}: valid input sizes differ between axes ({sizes}, as (min, step)); "
                                "napari-unet tiles with one size rule for all spatial axes")
    return ids, spatial, channels, sizes[spatial[0]]


def _output_axes(target: Any, source: Any, spatial: list[str], where: str) -> tuple[list[str], list[str], int, int]:
    """The output's axis ids in order, its class names, the halo and how much smaller than the input it is."""
    from bioimageio.spec.model import v0_5

    ids, classes, halos, offsets = [], ["foreground"], set(), set()
    scales = {str(a.id): getattr(a, "scale", 1.0) for a in source.axes if str(a.type) == "space"}
    for axis in target.axes:
        kind, name = str(axis.type), str(axis.id)
        if kind == "channel":
            classes = [str(c) for c in axis.channel_names]
        elif kind == "space" and name in spatial:
            size = axis.size
            if not (isinstance(size, v0_5.SizeReference) and str(size.tensor_id) == str(source.id)
                    and str(size.axis_id) == name and axis.scale == scales[name]):
                raise InvalidInputError(f"{where}: the output's {name} axis is not the input's {name} axis at the "
                                        "same scale; napari-unet needs an output the size of its input (or cropped "
                                        "by a fixed offset)")
            halos.add(int(getattr(axis, "halo", 0) or 0))
            offsets.add(int(size.offset))
        elif kind != "batch":
            raise InvalidInputError(f"{where}: the output has a {kind} axis {name!r}; napari-unet reads semantic "
                                    "maps with channel and spatial axes only")
        ids.append(name)
    missing = [a for a in spatial if a not in ids]
    if missing or len(halos) != 1 or len(offsets) != 1:
        raise InvalidInputError(f"{where}: the output needs the input's spatial axes {spatial} with one halo and "
                                f"one size offset for all of them (got halos {sorted(halos)}, offsets "
                                f"{sorted(offsets)})")
    offset = offsets.pop()
    if offset > 0 or offset % 2:
        raise InvalidInputError(f"{where}: the output is {offset} pixels larger than the input; napari-unet needs "
                                "an output the size of the input or smaller by an even number of pixels")
    return ids, classes, halos.pop(), -offset


def _postprocessing(ops: Any, channels: int, where: str) -> list[tuple[str, Any]]:
    """The output's postprocessing as elementwise steps for :class:`PackageNetwork`; refuses the rest."""
    steps: list[tuple[str, Any]] = []
    for op in ops:
        name, kwargs = str(op.id), getattr(op, "kwargs", None)
        if name == "ensure_dtype":
            continue  # probabilities stay float32
        if name == "sigmoid":
            steps.append(("sigmoid", None))
        elif name == "softmax" and str(kwargs.axis) == "channel":
            steps.append(("softmax", 1))
        elif name == "scale_linear":
            steps.append(("scale_linear", (_channel_values(kwargs, "gain", channels, where),
                                           _channel_values(kwargs, "offset", channels, where))))
        elif name == "fixed_zero_mean_unit_variance":
            std = _channel_values(kwargs, "std", channels, where) + getattr(kwargs, "eps", FIXED_EPS)
            steps.append(("scale_linear", (1 / std, -_channel_values(kwargs, "mean", channels, where) / std)))
        elif name == "clip" and getattr(kwargs, "min_percentile", None) is None \
                and getattr(kwargs, "max_percentile", None) is None:
            steps.append(("clip", (kwargs.min, kwargs.max)))
        elif name == "binarize":
            steps.append(("binarize", _channel_values(kwargs, "threshold", channels, where)))
        else:
            raise InvalidInputError(
                f"{where}: the output's postprocessing {name!r} cannot be expressed: napari-unet tiles the output "
                "and so runs only elementwise steps (sigmoid, softmax over channels, scale_linear, "
                "fixed_zero_mean_unit_variance, clip with fixed bounds, binarize); statistics of the whole "
                "output and instance decoders (StarDist, Cellpose) are not. Run this package with bioimageio.core")
    return steps


def _channel_values(kwargs: Any, key: str, channels: int, where: str) -> Any:
    value, axis = getattr(kwargs, key), getattr(kwargs, "axis", None)
    if axis is None:
        return float(value)
    if str(axis) != "channel" or len(value) != channels:
        raise InvalidInputError(f"{where}: postprocessing along the axis {axis!r} cannot be expressed; napari-unet "
                                f"takes parameters per channel ({channels} values along 'channel')")
    return torch.tensor([float(v) for v in value])


def _choose_weights(descr: Any, where: str) -> tuple[str, str]:
    """The weight format napari-unet runs and a description of the code that loading it runs."""
    weights = descr.weights
    for name in FORMATS:
        entry = getattr(weights, name, None)
        if entry is None:
            continue
        if name == "torchscript":
            return name, f"the TorchScript program {_file_name(entry.source)}"
        architecture = entry.architecture
        if hasattr(architecture, "import_from"):
            return name, f"the network class {architecture.callable} of the Python library {architecture.import_from}"
        return name, (f"the Python file {_file_name(architecture.source)} (imported, for its network class "
                      f"{architecture.callable})")
    present = [name for name in type(weights).model_fields if getattr(weights, name, None) is not None]
    raise InvalidInputError(f"{where} has weights in {', '.join(present)}; napari-unet runs pytorch_state_dict or "
                            "torchscript weights. Convert them (bioimageio.core's weight converters) or run the "
                            "package with bioimageio.core")


def _load_network(descr: Any, weights_format: str, where: str) -> torch.nn.Module:
    """The package's network on the CPU in eval mode; state dicts are read with weights_only=True."""
    entry = getattr(descr.weights, weights_format)
    data = entry.get_reader().read()
    if weights_format == "torchscript":
        try:
            return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        except Exception as exc:  # torch's own errors are RuntimeErrors
            raise ModelFileError(f"{where}: the TorchScript weights cannot be loaded ({exc})") from None
    from bioimageio.core.digest_spec import import_callable

    architecture = entry.architecture
    try:
        network = import_callable(architecture)(**dict(architecture.kwargs))
    except Exception as exc:  # the package's own code: anything can go wrong
        raise InvalidInputError(f"{where}: the network {architecture.callable} cannot be built from the package's "
                                f"architecture ({type(exc).__name__}: {exc})") from None
    if not isinstance(network, torch.nn.Module):
        raise InvalidInputError(f"{where}: {architecture.callable} did not make a torch.nn.Module")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects beyond tensors: refused, never unpickled
        raise ModelFileError(f"{where}: the pytorch_state_dict weights are not a plain state dict that loads with "
                             f"weights_only=True ({exc}); napari-unet never unpickles objects") from None
    try:
        network.load_state_dict(state, strict=entry.strict)
    except RuntimeError as exc:
        raise ModelFileError(f"{where}: the weights do not fit the architecture ({exc})") from None
    return network.eval()


def _check_runs(network: PackageNetwork, config: PackageNetworkConfig, where: str) -> None:
    """Run the network once at its smallest size: a package whose network fails or whose output is not the
    declared shape is refused now, not halfway through an image."""
    size = config.min_size
    while config.output_size(size) is None:
        if config.size_step == 0 or size > config.min_size + 64 * config.size_step:
            raise InvalidInputError(f"{where}: no valid input size leaves any output after the halo "
                                    f"({config.halo} pixels per side)")
        size += config.size_step
    x = torch.zeros((1, config.in_channels) + (size,) * config.spatial_dims)
    try:
        with torch.no_grad():
            y = network(x)
    except Exception as exc:  # the package's own code
        raise InvalidInputError(f"{where}: the network fails on an input of valid size {tuple(x.shape)} "
                                f"({type(exc).__name__}: {exc})") from None
    expected = (1, config.out_channels) + (config.output_size(size),) * config.spatial_dims
    if tuple(y.shape) != expected:
        raise InvalidInputError(f"{where}: the network's output for an input of shape {tuple(x.shape)} has shape "
                                f"{tuple(y.shape)} after cropping the halo; the description promises {expected}")


def _file_name(source: Any) -> str:
    return os.path.basename(str(getattr(source, "path", source)).rstrip("/")) or str(source)


def _name(path: Path) -> str:
    """The model's name: the package file's (or, for an ``rdf.yaml``, its folder's), as a library name."""
    from napari_unet.core.library import check_name

    stem = path.parent.name if path.suffix.lower() in (".yaml", ".yml") else path.stem
    try:
        return check_name(re.sub(r"[^A-Za-z0-9_.-]", "-", stem))
    except ModelFileError:
        return "imported"
