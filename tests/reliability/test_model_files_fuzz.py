"""Case 6: damaged model files fail with a specific message, run nothing, and change nothing on disk;
a save that fails (disk full, no permission, interrupted) leaves the previous model as it was."""
from __future__ import annotations

import errno
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_unet.core.models as models_module
from conftest import folder_bytes, leftovers, save_tiny
from napari_unet.core.errors import ModelFileError
from napari_unet.core.models import load_model, save_model
from napari_unet.core.versions import save_version

WEIGHTS = "weights.safetensors"


class _Payload:
    """Unpickling this would create a file: proof that a model file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _safetensors(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def _corruptions(original: bytes, marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, words the error message must contain)."""
    header = _safetensors(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')
    return {
        "empty": (b"", "empty"),
        "truncated-10": (original[: len(original) // 10], "truncated"),
        "truncated-50": (original[: len(original) // 2], "truncated"),
        "truncated-90": (original[: len(original) * 9 // 10], "truncated"),
        "random-bytes": (np.random.default_rng(0).bytes(4096), "corrupt"),
        "git-lfs-pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1234\n", "git lfs pull"),
        "html-page": (b"<!DOCTYPE html><html><body>Sign in to download</body></html>", "HTML page"),
        "corrupt-header": (_safetensors(b"{not json at all}" + b" " * 8, b"\0" * 64), "corrupt header"),
        "gigantic-header": (struct.pack("<Q", 2**62) + b"{}" + b"\0" * 64, "truncated or corrupt"),
        "tensor-beyond-file": (header, "outside the file"),
        "pickle-that-runs-code": (pickle.dumps(_Payload(marker), protocol=2), "pickle"),
        "zip-pickle": (b"PK\x03\x04" + pickle.dumps(_Payload(marker)), "pickle"),
    }


@pytest.mark.parametrize("case", ["empty", "truncated-10", "truncated-50", "truncated-90", "random-bytes",
                                  "git-lfs-pointer", "html-page", "corrupt-header", "gigantic-header",
                                  "tensor-beyond-file", "pickle-that-runs-code", "zip-pickle"])
def test_damaged_weights_are_refused_clearly(case, library, tmp_path):
    save_tiny("good")
    save_tiny("victim", seed=1)
    marker = tmp_path / "code-ran"
    content, words = _corruptions((library / "victim" / WEIGHTS).read_bytes(), marker)[case]
    (library / "victim" / WEIGHTS).write_bytes(content)
    before = folder_bytes(library)

    with pytest.raises(ModelFileError) as error:
        load_model("victim")
    assert words.lower() in str(error.value).lower()
    assert WEIGHTS in str(error.value), "the message names the file"
    assert not marker.exists(), "loading a model file never runs code"
    assert folder_bytes(library) == before, "a failed load changes nothing on disk"
    load_model("good")


def test_a_pickle_path_is_refused_before_it_is_opened(library, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(path)
    assert not marker.exists()


def test_nan_weights_are_refused(library):
    model = save_tiny("victim")
    with torch.no_grad():
        next(model.network.parameters())[...] = float("nan")
    save_model(model, "victim", overwrite=True)
    before = folder_bytes(library)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model("victim")
    assert folder_bytes(library) == before


@pytest.mark.parametrize("change, words", [
    ({"in_channels": 3}, "different models"),  # weights for one channel, config for three
    ({"depth": 3}, "does not match the architecture"),
    ({"base_features": 8}, "different models"),
])
def test_config_and_weights_from_different_models(change, words, library):
    save_tiny("victim")
    path = library / "victim" / "config.json"
    config = json.loads(path.read_text())
    config["network"].update(change)
    path.write_text(json.dumps(config))
    before = folder_bytes(library)
    with pytest.raises(ModelFileError, match=words):
        load_model("victim")
    assert folder_bytes(library) == before


@pytest.mark.parametrize("text, words", [("", "not valid JSON"), ("{", "not valid JSON"), ("[1, 2]", "JSON list"),
                                         ('{"format": "other"}', "not a napari-unet model")])
def test_damaged_config_is_refused(text, words, library):
    save_tiny("victim")
    (library / "victim" / "config.json").write_text(text)
    with pytest.raises(ModelFileError, match=words):
        load_model("victim")


# --------------------------------------------------------------------------------------------------------------
# Saving that fails half-way
# --------------------------------------------------------------------------------------------------------------


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # the user pressed Ctrl+C (or the process was stopped) mid-save


@pytest.mark.parametrize("fault", [_disk_full, _interrupted], ids=["disk-full", "interrupted"])
def test_failed_overwrite_leaves_the_old_model_intact(fault, library, monkeypatch):
    save_tiny("victim")
    before = folder_bytes(library)
    replacement = save_tiny("other", seed=5)
    import safetensors.torch

    with monkeypatch.context() as patch, pytest.raises((OSError, KeyboardInterrupt)):
        patch.setattr(safetensors.torch, "save_file", fault)
        save_model(replacement, "victim", overwrite=True)
    assert leftovers(library) == []
    assert {k: v for k, v in folder_bytes(library).items() if k.startswith("victim")} == \
        {k: v for k, v in before.items() if k.startswith("victim")}
    load_model("victim")


def test_permission_error_while_moving_into_place_restores_the_old_model(library, monkeypatch):
    save_tiny("victim")
    before = folder_bytes(library / "victim")
    replacement = save_tiny("other", seed=5)
    real_rename = os.rename

    def rename(source, target):
        if ".saving-" in str(source):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_rename(source, target)

    with monkeypatch.context() as patch, pytest.raises(PermissionError):
        patch.setattr(models_module.os, "rename", rename)
        save_model(replacement, "victim", overwrite=True)
    assert folder_bytes(library / "victim") == before
    assert leftovers(library) == []
    load_model("victim")


def test_failed_version_save_leaves_no_half_version(library, monkeypatch):
    base = save_tiny("victim")
    before = folder_bytes(library)
    tuned = base.copy()
    tuned.config.provenance["parent"] = "victim"
    monkeypatch.setattr(models_module, "_fsync_folder", _disk_full)
    with pytest.raises(OSError):
        save_version(tuned)
    assert folder_bytes(library) == before, "no 'victim-v2' folder, not even an empty one"
    assert leftovers(library) == []
