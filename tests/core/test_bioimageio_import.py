"""Importing bioimage.io packages that another tool made: refused without trust, run with it through the tiled
engine, in agreement with bioimageio.core's own prediction, and tiled exactly.

Each package is built here: the network is ``foreign_architecture.py`` (beside this file), the description is
written by hand and checked by bioimageio.spec, as another tool would do it. Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

pytest.importorskip("bioimageio.core")

import foreign_architecture  # noqa: E402  (beside this file)

from napari_unet import segment  # noqa: E402
from napari_unet.core.errors import InvalidInputError, UntrustedCodeError  # noqa: E402
from napari_unet.core.models import load_model, save_model  # noqa: E402

HALO, MIN, STEP = 8, 24, 8
PERCENTILES = (1.0, 99.5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Blobs on a dim background, in raw camera counts."""
    noise = np.random.default_rng(seed).random(shape)
    return (200 + 3000 * ndimage.gaussian_filter(noise, 3) ** 4 * 50).astype(np.float32)


def _build(folder: Path, formats: tuple[str, ...], classes: int, tags: list[str]) -> Path:
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
    test_input = _image((1, 1, 64, 48), seed=0)
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


@pytest.fixture(scope="module", params=[("pytorch_state_dict", "torchscript"), ("torchscript",)],
                ids=["state-dict-and-torchscript", "torchscript-only"])
def package(request, tmp_path_factory):
    """A two-class semantic package; the first loads its state dict (preferred), the second its TorchScript."""
    return _build(tmp_path_factory.mktemp("foreign") / "semantic", request.param, 2, ["segmentation"]), request.param


def test_loading_without_trust_says_what_would_run_and_how_to_allow_it(package):
    path, formats = package
    with pytest.raises(UntrustedCodeError) as caught:
        load_model(path)
    message = str(caught.value)
    assert ("foreign_architecture.py" if formats[0] == "pytorch_state_dict" else "TorchScript") in message
    assert "trust=True" in message and "--trust" in message
    assert isinstance(caught.value, InvalidInputError) and isinstance(caught.value, ValueError)


def test_prediction_on_the_test_input_matches_bioimageio_core(package, one_thread):
    """bioimageio.core's pipeline for the package: preprocessing with the test image's own statistics, the
    image mirrored by the halo (the input's pad mode), the network, postprocessing, the halo cropped. (Its
    ``predict()`` mirrors before preprocessing, so its percentiles are those of the mirrored image; napari-unet,
    like the package's own test, takes the image's: that moved probabilities by up to 0.005 here.)"""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample
    from bioimageio.spec import load_model_description

    path, formats = package
    model = load_model(path, trust=True)
    assert model.weights_format == formats[0]
    descr = load_model_description(str(path))
    sample = get_test_input_sample(descr)
    test_input = sample.members["raw"].data.to_numpy()
    with create_prediction_pipeline(descr, weight_format=formats[0]) as pipeline:
        pipeline.apply_preprocessing(sample)
        theirs = pipeline.predict_sample_without_blocking(sample, skip_preprocessing=True)
    theirs = theirs.members["prob"].data.to_numpy()[0]
    ours = segment(test_input[0, 0], model, axes="YX", device="cpu", precision="float32")
    tolerance = descr.config.bioimageio.reproducibility_tolerance
    rtol, atol = (tolerance[0].relative_tolerance, tolerance[0].absolute_tolerance) if tolerance else (1e-3, 1e-3)
    assert ours.probabilities.shape == theirs.shape == (2, 64, 48)
    np.testing.assert_allclose(ours.probabilities, theirs, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(ours.labels, np.argmax(theirs, axis=0))  # semantic: the most probable class
    assert model.config.task == "semantic" and model.config.classes == ("c0", "c1")
    # beyond the halo, the package's own test output (its network on the unmirrored test input)
    expected = np.load(io.BytesIO(descr.outputs[0].test_tensor.get_reader().read()))[0]
    inner = (slice(None), slice(HALO, -HALO), slice(HALO, -HALO))
    np.testing.assert_allclose(ours.probabilities[inner], expected[inner], rtol=rtol, atol=atol)


def test_tiled_prediction_equals_the_whole_image(package, one_thread):
    path, _ = package
    model = load_model(path, trust=True)
    image = _image((150, 133), seed=1)
    whole = segment(image, model, axes="YX", device="cpu", precision="float32", tile_shape=512)
    tiled = segment(image, model, axes="YX", device="cpu", precision="float32", tile_shape=48)
    assert whole.tile_shape[0] > 150 and tiled.tile_shape == (48, 48)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    assert 0 < (whole.labels == 1).mean() < 1  # the comparison means something: both classes occur


def test_instance_like_foreground_map_gives_connected_components(tmp_path, one_thread):
    path = _build(tmp_path / "nuclei", ("torchscript",), 1, ["segmentation", "instance-segmentation"])
    model = load_model(path, trust=True)
    assert model.config.task == "instance"
    image = _image((96, 80), seed=2)
    result = segment(image, model, axes="YX", device="cpu", precision="float32", tile_shape=48)
    foreground = result.probabilities[1]
    expected, count = ndimage.label(foreground > 0.5)
    assert count > 1 and result.objects == count
    # the same objects, whatever the numbering
    pairs = np.unique(np.stack([expected.ravel(), result.labels.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == count + 1
    np.testing.assert_allclose(result.probabilities[0], 1 - foreground)


def test_imported_model_cannot_be_saved_or_fine_tuned(package, tmp_path):
    from napari_unet import Sample, finetune

    model = load_model(package[0], trust=True)
    with pytest.raises(InvalidInputError, match="another tool's bioimage.io package"):
        save_model(model, tmp_path / "copy")
    image = _image((64, 64), seed=4)
    with pytest.raises(InvalidInputError, match="only napari-unet's own U-Nets can be fine-tuned"):
        finetune(model, [Sample(image, (image > np.median(image)).astype(np.int32), axes="YX")], steps=1)


def test_unsupported_preprocessing_is_refused_naming_it(tmp_path):
    import zipfile

    import yaml

    path = _build(tmp_path / "odd", ("torchscript",), 2, ["segmentation"])
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    rdf = yaml.safe_load(files["rdf.yaml"])
    scale_range = next(op for op in rdf["inputs"][0]["preprocessing"] if op["id"] == "scale_range")
    scale_range["kwargs"]["axes"] = ["x"]  # per row: no single statistic per image
    files["rdf.yaml"] = yaml.safe_dump(rdf).encode()
    odd = tmp_path / "odd-rows.zip"
    with zipfile.ZipFile(odd, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(InvalidInputError, match="scale_range over the axes \\['x'\\] cannot be expressed"):
        load_model(odd, trust=True)


def test_cli_segment_runs_a_package_only_with_trust(package, tmp_path, capsys, one_thread):
    from napari_unet.cli import main

    path, _ = package
    image = _image((70, 60), seed=3)
    np.save(tmp_path / "image.npy", image)
    command = ["segment", str(tmp_path / "image.npy"), "-o", str(tmp_path / "labels.npy"), "--model", str(path),
               "--device", "cpu", "--precision", "float32", "-q"]
    assert main(command) != 0
    assert "--trust" in capsys.readouterr().err and not (tmp_path / "labels.npy").exists()
    assert main(command + ["--trust"]) == 0
    expected = segment(image, load_model(path, trust=True), axes="YX", device="cpu", precision="float32")
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected.labels)
