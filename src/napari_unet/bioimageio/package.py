"""The files of a package, written to a folder: test tensors, weights in both formats, the architecture file,
the model's own ``config.json``, cover and README; returns the ``rdf.yaml`` description that names them all
with their sha256. The weights are stored once per format the spec runs: napari-unet loads its packages back
from the ``pytorch_state_dict`` file with the ``config.json``, so it needs no copy of its own."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet import __version__
from napari_unet.bioimageio.citations import UNET_CITATION, training_data_citations
from napari_unet.bioimageio.describe import _format_version, _rdf_name, _readme, _tags
from napari_unet.bioimageio.network import (ARCHITECTURE_CALLABLE, ARCHITECTURE_FILE, _export_network, _trace,
                                            architecture_source)
from napari_unet.bioimageio.load import STATE_DICT_FILE
from napari_unet.bioimageio.samples import _cover, _test_image
from napari_unet.core.library import CONFIG_FILE


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

    torch.save({k: v.detach().cpu() for k, v in model.network.state_dict().items()}, folder / STATE_DICT_FILE)
    _write_config(model, folder / CONFIG_FILE)
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
                "source": STATE_DICT_FILE, "sha256": _sha256(folder / STATE_DICT_FILE),
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
        "attachments": [{"source": CONFIG_FILE, "sha256": _sha256(folder / CONFIG_FILE)}],
        "config": {"napari_unet": {"version": __version__, "config": CONFIG_FILE, "weights": STATE_DICT_FILE}},
    }
    return rdf


def _write_config(model: Any, target: Path) -> None:
    """The model's own ``config.json``, as :func:`~napari_unet.save_model` writes it, so that napari-unet loads
    the package back as the same model (with the state dict). Annotations a fine-tuned model keeps are not
    exported."""
    config = copy.deepcopy(model.config)
    config.name = model.name or "model"
    config.provenance = {"package_version": __version__, **config.provenance}
    target.write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
