"""Model files: round trips, atomic saves, and a clear refusal of every damaged or mismatched file."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.core.errors import InvalidInputError, ModelExistsError, ModelFileError
from napari_unet.core.library import library_dir, list_models, rename_model, delete_model, unique_name
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.unet import UNetConfig


def tiny_model(seed: int = 0, **network) -> Model:
    settings = dict(padding="same", depth=2, base_features=4, out_channels=3, norm="batch") | network
    return Model.from_config(ModelConfig(UNetConfig(**settings), description="test model"), seed=seed)


def folder_digest(folder: Path) -> dict[str, str]:
    """Names and content hashes of every file below ``folder``: what 'nothing changed' means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(model: Model, image: np.ndarray) -> torch.Tensor:
    model.network.eval()
    with torch.no_grad():
        return model.network(torch.from_numpy(model.preprocess(image))[None])


@pytest.fixture
def saved(tmp_path):
    """A saved model in the library and the library's digest before the test touches anything."""
    model = tiny_model()
    folder = save_model(model, "cells")
    return model, folder


def test_round_trip_gives_identical_outputs(saved):
    model, folder = saved
    image = np.random.default_rng(1).random((32, 48)).astype(np.float32)
    loaded = nu.load_model("cells")
    assert loaded.path == folder and loaded.name == "cells"
    assert loaded.config.network == model.config.network
    assert loaded.config.description == "test model"
    assert torch.equal(predict(model, image), predict(loaded, image))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]


def test_load_by_path_and_by_file_inside_the_folder(saved):
    _, folder = saved
    assert load_model(folder).name == "cells"
    assert load_model(folder / "config.json").name == "cells"


def test_saving_never_overwrites_silently(saved):
    model, folder = saved
    before = folder_digest(folder)
    other = tiny_model(seed=5)
    with pytest.raises(ModelExistsError, match="cells-2' is free"):
        save_model(other, "cells")
    assert folder_digest(folder) == before
    save_model(other, "cells", overwrite=True)
    assert folder_digest(folder) != before
    assert not [p for p in library_dir().iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_a_failing_save_leaves_the_old_model_and_no_temporary_files(saved, monkeypatch):
    model, folder = saved
    before = folder_digest(folder)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_model(tiny_model(seed=3), "cells", overwrite=True)
    assert folder_digest(folder) == before
    assert sorted(p.name for p in library_dir().iterdir()) == ["cells"]
    load_model("cells")


def test_a_saved_model_gets_the_permissions_of_any_new_folder(tmp_path):
    """Shared with colleagues through a group folder, a model must be as readable as the user's umask says."""
    previous = os.umask(0o022)
    try:
        folder = save_model(tiny_model(), tmp_path / "shared" / "nuclei-lab")
    finally:
        os.umask(previous)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "weights.safetensors").stat().st_mode & 0o777 == 0o644


def test_attachments_are_saved_beside_the_weights():
    model = tiny_model()
    model.attachments["annotations.npz"] = b"snapshot"
    folder = save_model(model, "with-notes")
    assert (folder / "annotations.npz").read_bytes() == b"snapshot"
    assert load_model("with-notes").name == "with-notes"


def _expect_refusal(folder: Path, match: str) -> None:
    """Loading fails with a ModelFileError naming the problem, and nothing in the library changes."""
    before = folder_digest(library_dir())
    with pytest.raises(ModelFileError, match=match):
        load_model(folder)
    assert folder_digest(library_dir()) == before


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_weights_are_refused(saved, fraction):
    _, folder = saved
    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * fraction)])
    _expect_refusal(folder, "weights.safetensors.*(truncated|corrupt)")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs pointer"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML page"),
        (np.random.default_rng(0).bytes(4096), "truncated or corrupt|corrupt header"),
        (struct.pack("<Q", 2**60) + b"{}", "truncated or corrupt"),
        (struct.pack("<Q", 10) + b"not json!!" + b"\0" * 16, "corrupt header"),
    ],
    ids=["empty", "git-lfs", "html", "random", "gigantic-header", "corrupt-header"],
)
def test_damaged_weights_are_refused(saved, content, match):
    _, folder = saved
    (folder / "weights.safetensors").write_bytes(content)
    _expect_refusal(folder, match)


def test_weights_of_another_architecture_are_refused(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["network"]["base_features"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    _expect_refusal(folder, "has shape .* different models")


def test_missing_and_extra_tensors_are_refused(saved):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    tensors = load_file(folder / "weights.safetensors")
    name = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != name}, folder / "weights.safetensors")
    _expect_refusal(folder, "missing 1 tensor")
    save_file({**tensors, "extra.weight": torch.zeros(3)}, folder / "weights.safetensors")
    _expect_refusal(folder, "1 unexpected tensor")


def test_nan_weights_are_refused(saved):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    tensors = load_file(folder / "weights.safetensors")
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key][...] = float("nan")
    save_file(tensors, folder / "weights.safetensors")
    _expect_refusal(folder, "NaN")


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ("[1, 2]", "JSON list"),
                                         ('{"format": "other"}', "not a napari-unet model config"),
                                         ('{"format": "napari-unet-model", "format_version": "1"}', "format_version"),
                                         ('{"format": "napari-unet-model", "format_version": null}', "format_version")])
def test_damaged_config_is_refused(saved, text, match):
    _, folder = saved
    (folder / "config.json").write_text(text)
    _expect_refusal(folder, match)


class _WritesAFile:
    """Unpickling this object would create a file: the proof that nothing was unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran"))


def test_a_malicious_pickle_is_never_unpickled(tmp_path, saved):
    _, folder = saved
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(_WritesAFile(marker))
    (tmp_path / "model.pt").write_bytes(payload)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(tmp_path / "model.pt")
    torch.save({"x": _WritesAFile(marker)}, folder / "weights.safetensors")  # a pickle under the right name
    _expect_refusal(folder, "pickle")
    (folder / "weights.safetensors").write_bytes(payload)
    _expect_refusal(folder, "pickle|corrupt|truncated")
    assert not marker.exists()


def test_unknown_names_list_what_is_available(saved):
    with pytest.raises(ModelFileError, match="no model named 'nope'.*cells"):
        load_model("nope")
    with pytest.raises(ModelFileError, match="without config.json"):
        load_model(library_dir())


def test_library_listing_rename_delete_and_unique_names(saved):
    assert [m.name for m in list_models() if m.source == "library"] == ["cells"]
    assert unique_name("cells") == "cells-2" and unique_name("fresh") == "fresh"
    save_model(tiny_model(), "other")
    with pytest.raises(ModelExistsError):
        rename_model("cells", "other")
    rename_model("cells", "renamed")
    assert load_model("renamed").name == "renamed"
    delete_model("renamed")
    assert [m.name for m in list_models() if m.source == "library"] == ["other"]
    with pytest.raises(ModelFileError, match="not a valid model name"):
        save_model(tiny_model(), "bad name!")


def test_library_location_follows_napari_unet_home(isolated_home):
    assert library_dir() == isolated_home / "models"


def test_config_consistency_is_checked():
    with pytest.raises(InvalidInputError, match="3 classes but the network has 2"):
        ModelConfig(UNetConfig(out_channels=2))
    with pytest.raises(InvalidInputError, match="3D network has axes 'ZYX'"):
        ModelConfig(UNetConfig(spatial_dims=3, out_channels=3), axes="YX")


def test_preprocess_checks_channels_and_uses_whole_image_statistics():
    model = tiny_model(in_channels=2)
    image = np.stack([np.linspace(0, 100, 64 * 64).reshape(64, 64)] * 2)
    x = model.preprocess(image)
    assert x.dtype == np.float32 and x.shape == (2, 64, 64)
    assert np.percentile(x[0], 1) == pytest.approx(0, abs=1e-3)
    with pytest.raises(InvalidInputError, match="takes 2 channel"):
        model.preprocess(image[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_weights_saved_on_a_gpu_load_on_the_cpu():
    model = tiny_model()
    model.network.to("cuda")
    save_model(model, "from-gpu")
    loaded = load_model("from-gpu", device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.network.parameters())


def test_saved_tensors_are_plain_cpu_tensors_whatever_the_device(saved):
    from safetensors import safe_open

    _, folder = saved
    with safe_open(folder / "weights.safetensors", framework="pt", device="cpu") as handle:
        assert handle.metadata() == {"format": "napari-unet-model"}
        assert all(handle.get_tensor(k).device.type == "cpu" for k in handle.keys())


@pytest.mark.parametrize("name", ["../../evil", "../evil", "sub/model", "ABSOLUTE", "~/evil", "..", ".hidden",
                                  "CON", "nul", "com1", "lpt9", "model.", "a\\b"])
def test_a_model_name_is_a_name_never_a_path(name, tmp_path, monkeypatch):
    """A str is always a name: nothing is written outside the library, whatever the string says."""
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)  # "../../evil" would land in tmp_path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # "~/evil" would land there
    name = str(tmp_path / "evil") if name == "ABSOLUTE" else name
    with pytest.raises(ModelFileError, match="not a valid model name"):
        save_model(tiny_model(), name)
    assert [p for p in tmp_path.rglob("*") if p != inside and p not in inside.parents] == []
    assert not library_dir().exists() or list(library_dir().iterdir()) == []


def test_a_path_object_is_where_the_api_takes_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = save_model(tiny_model(), Path("elsewhere") / "my-model")
    assert folder.resolve() == tmp_path / "elsewhere" / "my-model" and (folder / "config.json").is_file()
    assert load_model(folder).name == "my-model"


def test_a_library_model_may_not_shadow_a_bundled_one():
    bundled = [m.name for m in list_models() if m.source == "bundled"]
    assert "nuclei" in bundled
    with pytest.raises(ModelExistsError, match="bundled"):
        save_model(tiny_model(), "nuclei")
    save_model(tiny_model(), "mine")
    with pytest.raises(ModelExistsError, match="bundled"):
        rename_model("mine", "nuclei")
    assert [m.name for m in list_models() if m.source == "library"] == ["mine"]
