"""Importing bioimage.io packages that another tool made: refused without trust, run with it through the tiled
engine, in agreement with bioimageio.core's own prediction, and tiled exactly.

Each package is built by ``foreign_packages.py`` (beside this file) as another tool would build it: its own
network file, a description written by hand and checked by bioimageio.spec. Nothing is downloaded.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("bioimageio.core")

from foreign_packages import HALO, build_package, raw_image  # noqa: E402  (beside this file)
from napari_unet import segment  # noqa: E402
from napari_unet.core.errors import InvalidInputError, UntrustedCodeError  # noqa: E402
from napari_unet.core.models import load_model, save_model  # noqa: E402


@pytest.fixture(scope="module", params=[("pytorch_state_dict", "torchscript"), ("torchscript",)],
                ids=["state-dict-and-torchscript", "torchscript-only"])
def package(request, tmp_path_factory):
    """A two-class semantic package; the first loads its state dict (preferred), the second its TorchScript."""
    path = build_package(tmp_path_factory.mktemp("foreign") / "semantic", request.param, 2, ["segmentation"])
    return path, request.param


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


def test_tiled_prediction_equals_the_wholeraw_image(package, one_thread):
    path, _ = package
    model = load_model(path, trust=True)
    image = raw_image((150, 133), seed=1)
    whole = segment(image, model, axes="YX", device="cpu", precision="float32", tile_shape=512)
    tiled = segment(image, model, axes="YX", device="cpu", precision="float32", tile_shape=48)
    assert whole.tile_shape[0] > 150 and tiled.tile_shape == (48, 48)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    assert 0 < (whole.labels == 1).mean() < 1  # the comparison means something: both classes occur


def test_instance_like_foreground_map_gives_connected_components(tmp_path, one_thread):
    path = build_package(tmp_path / "nuclei", ("torchscript",), 1, ["segmentation", "instance-segmentation"])
    model = load_model(path, trust=True)
    assert model.config.task == "instance"
    image = raw_image((96, 80), seed=2)
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
    image = raw_image((64, 64), seed=4)
    with pytest.raises(InvalidInputError, match="only napari-unet's own U-Nets can be fine-tuned"):
        finetune(model, [Sample(image, (image > np.median(image)).astype(np.int32), axes="YX")], steps=1)


def rewritten(path, target, edit):
    """A copy of the package at ``path`` written to ``target`` with its description changed by ``edit(rdf)``."""
    import zipfile

    import yaml

    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    rdf = yaml.safe_load(files["rdf.yaml"])
    edit(rdf)
    files["rdf.yaml"] = yaml.safe_dump(rdf).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return target


def test_unsupported_preprocessing_is_refused_naming_it(tmp_path):
    def per_row(rdf):
        scale_range = next(op for op in rdf["inputs"][0]["preprocessing"] if op["id"] == "scale_range")
        scale_range["kwargs"]["axes"] = ["x"]  # per row: no single statistic per image

    path = build_package(tmp_path / "odd", ("torchscript",), 2, ["segmentation"])
    odd = rewritten(path, tmp_path / "odd-rows.zip", per_row)
    with pytest.raises(InvalidInputError, match="scale_range over the axes \\['x'\\] cannot be expressed"):
        load_model(odd, trust=True)


def test_fixed_mean_and_deviation_before_and_after_the_network_are_applied(tmp_path, one_thread):
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample
    from bioimageio.spec import load_model_description

    def fixed(rdf):
        rdf["inputs"][0]["preprocessing"] = [
            {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 100.0, "std": 20.0}}]
        rdf["outputs"][0]["postprocessing"] = [
            {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": [0.5, 0.2], "std": [2.0, 4.0],
                                                               "axis": "channel"}}]

    path = rewritten(build_package(tmp_path / "fixed", ("torchscript",), 2, ["segmentation"]),
                     tmp_path / "fixed.zip", fixed)
    model = load_model(path, trust=True)  # it raised AttributeError (these steps have no eps in the spec)
    descr = load_model_description(str(path))
    sample = get_test_input_sample(descr)
    test_input = sample.members["raw"].data.to_numpy()
    with create_prediction_pipeline(descr, weight_format="torchscript") as pipeline:
        theirs = pipeline.predict_sample_without_blocking(sample).members["prob"].data.to_numpy()[0]
    ours = segment(test_input[0, 0], model, axes="YX", device="cpu", precision="float32")
    inner = (slice(None), slice(HALO, -HALO), slice(HALO, -HALO))
    np.testing.assert_allclose(ours.probabilities[inner], theirs[inner], rtol=1e-3, atol=1e-3)


def test_cli_segment_runs_a_package_only_with_trust(package, tmp_path, capsys, one_thread):
    from napari_unet.cli import main

    path, _ = package
    image = raw_image((70, 60), seed=3)
    np.save(tmp_path / "image.npy", image)
    command = ["segment", str(tmp_path / "image.npy"), "-o", str(tmp_path / "labels.npy"), "--model", str(path),
               "--device", "cpu", "--precision", "float32", "-q"]
    assert main(command) != 0
    assert "--trust" in capsys.readouterr().err and not (tmp_path / "labels.npy").exists()
    assert main(command + ["--trust"]) == 0
    expected = segment(image, load_model(path, trust=True), axes="YX", device="cpu", precision="float32")
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected.labels)
