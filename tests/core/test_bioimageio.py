"""bioimage.io export: the packages pass bioimageio.core's own test and describe the model faithfully.

``test_model`` reruns the package's test input through the description (its preprocessing, then each weight
format) and compares with the test output napari-unet wrote, and runs the network at several valid sizes and
batch sizes: so a wrong percentile, a wrong size rule or a broken weight file fails here.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_unet.bioimageio import ARCHITECTURE_FILE, export_bioimageio, test_package, training_data_citations
from napari_unet.cli import main
from napari_unet.core.errors import InvalidInputError, ModelFileError
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.normalization import Normalization
from napari_unet.core.tiling import boundary_margin
from napari_unet.core.unet import UNetConfig, output_size
from tiny_models import tiny_unet

DSB = ('Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl", '
       "Nature Methods 16, 1247-1253 (2019)")


def _read(package: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(package) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return yaml.safe_load(files["rdf.yaml"]), files


def _assert_passes(package: Path) -> None:
    summary = test_package(package)
    assert summary.status == "passed", summary.format()
    tested = " ".join(detail.name for detail in summary.details)
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in tested
    assert "Reproduce test outputs from test inputs (torchscript)" in tested


@pytest.fixture(scope="module")
def instance_package(tmp_path_factory, one_thread):
    model = tiny_unet(history=[{"date": "2026-12-01", "parent": None, "steps": 12, "time_s": 3.0, "samples": 2,
                            "metrics": {"val_dice": 0.5}}],
                  card={"training data": "two images", "metrics": "F1 0.5 on nothing"},
                  provenance={"real_data": {"name": "DSB", "citation": DSB}})
    model.network.eval()
    path = export_bioimageio(model, tmp_path_factory.mktemp("export") / "tiny.zip")
    return model, path


def test_instance_model_package_passes_bioimageio_test_model(instance_package):
    model, path = instance_package
    start = time.perf_counter()
    _assert_passes(path)
    print(f"test_model: {time.perf_counter() - start:.1f} s")


def test_description_states_sizes_halo_normalisation_and_citations(instance_package):
    model, path = instance_package
    rdf, files = _read(path)
    net = model.config.network
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy", "weights.pt",
            "weights_torchscript.pt", ARCHITECTURE_FILE, "config.json"} <= set(files)
    assert "weights.safetensors" not in files, "the weights once per format the spec runs, not a third time"
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert [a.get("id") for a in inp["axes"][2:]] == ["y", "x"]
    assert out["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    size = inp["axes"][2]["size"]
    halo = max(boundary_margin(net))
    assert size["step"] == 2**net.depth and out["axes"][2]["halo"] == halo > 0
    valid = [n for n in range(1, size["min"] + 10 * size["step"]) if output_size(net, n) is not None]
    declared = [size["min"] + k * size["step"] for k in range(10)]
    assert set(declared) <= set(valid), "every size the package declares is one the network takes"
    assert size["min"] > 2 * halo and size["min"] - size["step"] <= 2 * halo, "the smallest size with output left"
    assert out["axes"][2]["size"] == {"tensor_id": "input", "axis_id": "y", "offset": 0}
    ops = [op["id"] for op in inp["preprocessing"]]
    assert "scale_range" in ops and "scale_linear" not in ops
    scale = next(op for op in inp["preprocessing"] if op["id"] == "scale_range")["kwargs"]
    assert scale["min_percentile"] == 1.0 and scale["max_percentile"] == 99.8 and scale["axes"] == ["y", "x"]
    dois = {c.get("doi") for c in rdf["cite"]}
    assert {"10.1007/978-3-319-24574-4_28", "10.1038/s41592-019-0612-7"} <= dois
    weights = rdf["weights"]["pytorch_state_dict"]
    assert weights["architecture"]["kwargs"] == net.to_dict() and weights["architecture"]["sha256"]
    readme = files["README.md"].decode()
    for words in ("watershed", "eval mode", "two images", "| 2026-12-01 |", "Data Science Bowl", "## Validation"):
        assert words in readme
    test_output = np.load(__import__("io").BytesIO(files["test_output.npy"]))
    np.testing.assert_allclose(test_output.sum(axis=1), 1.0, atol=1e-5)  # probabilities, not logits


def test_architecture_file_needs_only_torch(instance_package, monkeypatch, tmp_path):
    model, path = instance_package
    _, files = _read(path)
    source = tmp_path / ARCHITECTURE_FILE
    source.write_bytes(files[ARCHITECTURE_FILE])
    monkeypatch.setitem(sys.modules, "napari_unet", None)  # any import of napari_unet fails
    spec = importlib.util.spec_from_file_location("standalone_unet", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "standalone_unet", module)
    spec.loader.exec_module(module)
    net = module.UNetProbabilities(**model.config.network.to_dict())
    net.load_state_dict(model.network.state_dict(), strict=True)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = torch.softmax(model.network.eval()(x), dim=1)
        np.testing.assert_allclose(net.eval()(x).numpy(), expected.numpy(), atol=1e-6)


def test_inverted_semantic_valid_padding_model_passes(tmp_path, one_thread):
    model = tiny_unet(network={"padding": "valid", "upsampling": "transposed", "norm": "none", "out_channels": 2},
                  task="semantic", classes=("background", "cell"), normalization=Normalization(invert=True))
    path = export_bioimageio(model, tmp_path / "inverted.zip")
    rdf, _ = _read(path)
    ops = rdf["inputs"][0]["preprocessing"]
    assert {"id": "scale_linear", "kwargs": {"gain": -1.0, "offset": 1.0}} in ops, "1 - x after scale_range"
    out_y = rdf["outputs"][0]["axes"][2]
    size = rdf["inputs"][0]["axes"][2]["size"]
    assert "halo" not in out_y, "a valid network crops its own border"
    assert out_y["size"]["offset"] == output_size(model.config.network, size["min"]) - size["min"] < 0
    _assert_passes(path)


def test_3d_model_with_two_channels_passes(tmp_path, one_thread):
    model = tiny_unet(network={"spatial_dims": 3, "depth": 1, "base_features": 2, "in_channels": 2}, axes="ZYX")
    for module in model.network.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_var.fill_(2.0)
    path = export_bioimageio(model, tmp_path / "stack.zip")
    rdf, _ = _read(path)
    axes = rdf["inputs"][0]["axes"]
    assert [a.get("id") for a in axes[2:]] == ["z", "y", "x"] and len(axes[1]["channel_names"]) == 2
    scale = next(op for op in rdf["inputs"][0]["preprocessing"] if op["id"] == "scale_range")
    assert scale["kwargs"]["axes"] == ["z", "y", "x"], "percentiles per channel"
    _assert_passes(path)


def test_bundled_nuclei_exports_and_passes(tmp_path, one_thread):
    start = time.perf_counter()
    model = load_model("nuclei")
    path = export_bioimageio(model, tmp_path / "nuclei.zip")
    _assert_passes(path)
    weights = (model.path / "weights.safetensors").stat().st_size
    assert path.stat().st_size < 2 * weights, "the weights once as a state dict, once as TorchScript, no third copy"
    print(f"nuclei export and test_model: {time.perf_counter() - start:.1f} s")


def test_cli_export_writes_a_package_and_keeps_an_existing_file(tmp_path, one_thread, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_THREADS", "1")  # the command sets torch's threads for the whole process
    folder = save_model(tiny_unet(), tmp_path / "tiny")
    out = tmp_path / "tiny.zip"
    assert main(["export", str(folder), str(out), "--author", "A. Person", "--license", "CC-BY-4.0"]) == 0
    rdf, _ = _read(out)
    assert rdf["authors"] == [{"name": "A. Person"}] and rdf["license"] == "CC-BY-4.0"
    before = out.read_bytes()
    assert main(["export", str(folder), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_wrong_target_or_sample_is_a_clear_error(tmp_path):
    model = tiny_unet()
    with pytest.raises(InvalidInputError, match=r"\.zip"):
        export_bioimageio(model, tmp_path / "model.tar")
    with pytest.raises(InvalidInputError, match="spatial sizes"):
        export_bioimageio(model, tmp_path / "model.zip", sample=np.zeros((50, 61), np.float32))
    with pytest.raises(InvalidInputError, match="SPDX.*BSD-3-Clause"):
        export_bioimageio(model, tmp_path / "model.zip", license="BSD-3")
    with pytest.raises(InvalidInputError, match="authors"):
        export_bioimageio(model, tmp_path / "model.zip", authors="A. Person")
    assert not (tmp_path / "model.zip").exists()
    (tmp_path / "model.zip").write_bytes(b"mine")
    with pytest.raises(InvalidInputError, match="overwrite"):
        export_bioimageio(model, tmp_path / "model.zip")
    assert (tmp_path / "model.zip").read_bytes() == b"mine"


def test_training_data_citations_found_in_card_provenance_and_parents(tmp_path):
    parent = ModelConfig(UNetConfig(out_channels=3), provenance={"real_data": {"citation": DSB}})
    folder = save_model(Model.from_config(parent), tmp_path / "parent")
    config = ModelConfig(UNetConfig(out_channels=3), card={"cite": "Data, https://example.org/data"},
                         provenance={"run": {"data": {"citation": "X et al. doi 10.1234/abc.5."}},
                                     "parent": "parent", "parent_path": str(folder)})
    entries = training_data_citations(config)
    assert {"text": "Data, https://example.org/data", "url": "https://example.org/data"} in entries
    assert any(e.get("doi") == "10.1234/abc.5" for e in entries)
    assert {"text": DSB, "doi": "10.1038/s41592-019-0612-7"} in entries, "the parent's training data counts too"


def test_a_package_loads_back_as_the_same_model(instance_package, one_thread):
    from napari_unet import segment

    model, path = instance_package
    loaded = load_model(path)
    assert loaded.name == "tiny" and loaded.path is None
    for field in ("network", "task", "classes", "normalization", "history", "card", "object_filter"):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    original = model.network.state_dict()
    for name, tensor in loaded.network.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    image = np.random.default_rng(0).random((96, 80), dtype=np.float32)
    a = segment(image, model, device="cpu", precision="float32")
    b = segment(image, loaded, device="cpu", precision="float32")
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_a_package_exported_before_weights_pt_was_read_back_loads_from_its_safetensors(instance_package, tmp_path,
                                                                                     one_thread):
    """Earlier versions also wrote the model's ``weights.safetensors`` (named in the description's napari_unet
    config); such packages load from that file, with its checks."""
    model, path = instance_package
    rdf, _ = _read(path)
    safetensors = (save_model(model.copy(), tmp_path / "plain") / "weights.safetensors").read_bytes()
    rdf["config"]["napari_unet"]["weights"] = "weights.safetensors"
    rdf["attachments"].append({"source": "weights.safetensors", "sha256": hashlib.sha256(safetensors).hexdigest()})
    old = _rezip(path, tmp_path / "old.zip", replace={"rdf.yaml": yaml.safe_dump(rdf).encode()})
    with zipfile.ZipFile(old, "a") as archive:
        archive.writestr("weights.safetensors", safetensors)
    loaded = load_model(old)
    original = model.network.state_dict()
    assert all(torch.equal(t, original[k]) for k, t in loaded.network.state_dict().items())
    truncated = _rezip(old, tmp_path / "truncated.zip", replace={"weights.safetensors": safetensors[:1000]})
    with pytest.raises(ModelFileError, match="truncated.zip.*weights.safetensors.*truncated"):
        load_model(truncated)  # read, not passed over for weights.pt


def _rezip(source: Path, target: Path, drop=(), replace=None) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name not in drop:
                new.writestr(name, (replace or {}).get(name, old.read(name)))
    return target


def test_foreign_damaged_and_non_packages_are_refused_clearly(instance_package, tmp_path):
    _, path = instance_package
    foreign = _rezip(path, tmp_path / "foreign.zip", drop=("config.json",))
    with pytest.raises(ModelFileError, match="foreign.zip is not a valid bioimage.io model package"):
        load_model(foreign)  # read as another tool's package, whose description names files it lacks
    weights = _read(path)[1]["weights.pt"]
    damaged = _rezip(path, tmp_path / "damaged.zip", replace={"weights.pt": weights[: len(weights) // 2]})
    with pytest.raises(ModelFileError, match="damaged.zip.*weights.pt.*truncated"):
        load_model(damaged)
    no_rdf = _rezip(path, tmp_path / "plain.zip", drop=("rdf.yaml",))
    with pytest.raises(ModelFileError, match="without rdf.yaml"):
        load_model(no_rdf)
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ModelFileError, match="not a readable zip"):
        load_model(tmp_path / "text.zip")


def test_description_gives_the_models_foreground_and_seed_thresholds():
    from napari_unet.bioimageio.describe import _readme
    from napari_unet.core.postprocess import ObjectFilter

    plain = _readme(tiny_unet(), [], 16, 4, 4, 0)
    assert "background is not the most probable class" in plain and "interior is the most probable class" in plain
    tuned = _readme(tiny_unet(object_filter=ObjectFilter(12, 0.1, foreground=0.3, seed=0.45)), [], 16, 4, 4, 0)
    assert "P(background) < 0.3" in tuned and "P(interior) > 0.45" in tuned and "smaller than 12 pixels" in tuned


def test_cli_export_reads_its_sample_as_segment_reads_images(tmp_path, one_thread, capsys, monkeypatch):
    import zarr

    monkeypatch.setenv("NAPARI_UNET_THREADS", "1")
    folder = save_model(tiny_unet(), tmp_path / "tiny")
    sample = np.random.default_rng(0).random((64, 72)).astype(np.float32)
    zarr.save_array(str(tmp_path / "sample.zarr"), sample)
    out = tmp_path / "tiny.zip"
    assert main(["export", str(folder), str(out), "--sample", str(tmp_path / "sample.zarr")]) == 0
    _, files = _read(out)
    test_input = np.load(__import__("io").BytesIO(files["test_input.npy"]))
    assert test_input.shape[-2:] == sample.shape  # the package's test input is the sample itself
    assert main(["export", str(folder), str(tmp_path / "b.zip"), "--sample", str(tmp_path / "nothing.tif")]) == 2
    assert "nothing.tif" in capsys.readouterr().err and not (tmp_path / "b.zip").exists()
