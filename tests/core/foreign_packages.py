"""Bioimage.io packages as another tool writes them, for the tests of loading and running them (in-process
and on Dask workers): the network is ``foreign_architecture.py`` (beside this file), the description is written
by hand and checked by bioimageio.spec. Nothing is downloaded. Needs bioimageio.core and bioimageio.spec."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import foreign_architecture

HALO, MIN, STEP = 8, 24, 8
PERCENTILES = (1.0, 99.5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Blobs on a dim background, in raw camera counts."""
    noise = np.random.default_rng(seed).random(shape)
    return (200 + 3000 * ndimage.gaussian_filter(noise, 3) ** 4 * 50).astype(np.float32)


def build_package(folder: Path, formats: tuple[str, ...], classes: int, tags: list[str]) -> Path:
    """A package as another tool writes one; returns the zip."""
    from bioimageio.spec import ValidationContext, build_description, save_bioimageio_package
    from bioimageio.spec.model.v0_5 import ModelDescr

    folder.mkdir()
    torch.manual_seed(3)
    net = foreign_architecture.TinySegmenter(classes=classes).eval()
    if classes == 1:  # a foreground map with objects: the bright blobs (normalised input above 1/2)
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.weight[0, 0, 1, 1] = 8.0
            net.head.bias.fill_(-4.0)
    shutil.copyfile(foreign_architecture.__file__, folder / "foreign_architecture.py")
    test_input = raw_image((1, 1, 64, 48), seed=0)
    low, high = np.percentile(test_input, PERCENTILES, axis=(2, 3), keepdims=True)
    with torch.no_grad():
        scores = net(torch.from_numpy((test_input - low) / (high - low + 1e-6)).float())
    test_output = (torch.softmax(scores, 1) if classes > 1 else torch.sigmoid(scores)).numpy()
    np.save(folder / "test_input.npy", test_input)
    np.save(folder / "test_output.npy", test_output)
    (folder / "README.md").write_text("A tiny network from another tool, for napari-unet's tests.\n")
    version = torch.__version__.split("+")[0]
    weights = {}
    if "pytorch_state_dict" in formats:
        torch.save(net.state_dict(), folder / "weights.pt")
        weights["pytorch_state_dict"] = {
            "source": "weights.pt", "sha256": _sha(folder / "weights.pt"), "pytorch_version": version,
            "architecture": {"source": "foreign_architecture.py", "sha256": _sha(folder / "foreign_architecture.py"),
                             "callable": "TinySegmenter", "kwargs": {"classes": classes}}}
    if "torchscript" in formats:
        torch.jit.script(net).save(str(folder / "weights_torchscript.pt"))
        weights["torchscript"] = {"source": "weights_torchscript.pt", "pytorch_version": version,
                                  "sha256": _sha(folder / "weights_torchscript.pt")}
        if "pytorch_state_dict" in formats:
            weights["torchscript"]["parent"] = "pytorch_state_dict"
    space = [{"type": "space", "id": a, "size": {"min": MIN, "step": STEP}} for a in "yx"]
    rdf = {
        "type": "model", "format_version": ModelDescr.implemented_format_version,
        "name": "Foreign tiny segmenter", "description": "A tiny network made by another tool",
        "authors": [{"name": "Another Tool"}], "license": "MIT", "tags": tags,
        "cite": [{"text": "Ronneberger et al. 2015", "doi": "10.1007/978-3-319-24574-4_28"}],
        "documentation": {"source": "README.md", "sha256": _sha(folder / "README.md")},
        "inputs": [{
            "id": "raw", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]}, *space],
            "test_tensor": {"source": "test_input.npy", "sha256": _sha(folder / "test_input.npy")},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": PERCENTILES[0],
                                                               "max_percentile": PERCENTILES[1]}}],
        }],
        "outputs": [{
            "id": "prob",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": [f"c{i}" for i in range(classes)]},
                     *[{"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}, "halo": HALO}
                       for a in "yx"]],
            "test_tensor": {"source": "test_output.npy", "sha256": _sha(folder / "test_output.npy")},
            "data": {"type": "float32"},
            "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}} if classes > 1 else {"id": "sigmoid"}],
        }],
        "weights": weights,
    }
    with ValidationContext(root=folder, perform_io_checks=True):
        descr = build_description(rdf)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    return save_bioimageio_package(descr, output_path=folder.with_suffix(".zip"))
