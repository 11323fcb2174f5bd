"""Model versions: a tuned model becomes the next version, keeps its provenance and annotations, and a family
can be listed, renamed and rolled back without losing anything."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from napari_unet.core import library
from napari_unet.core.errors import ModelFileError
from napari_unet.core.library import delete_model, library_dir, list_models
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.training import Sample, finetune
from napari_unet.core.unet import UNetConfig
from napari_unet.core.versions import (
    lineage,
    list_versions,
    next_version_name,
    read_annotations,
    rename_version,
    rollback,
    save_version,
    version_base,
)


@pytest.fixture
def base_model(tmp_path, monkeypatch) -> Model:
    """A tiny 'nuclei' in the library; the bundled one is hidden, as a library model may not shadow it."""
    monkeypatch.setattr(library, "bundled_dir", lambda: tmp_path / "no-bundled-models")
    torch.set_num_threads(1)
    network = UNetConfig(depth=1, base_features=4, padding="same", norm="batch", out_channels=3,
                         upsampling="bilinear")
    model = Model.from_config(ModelConfig(network, description="tiny"), seed=0)
    save_model(model, "nuclei")
    return load_model("nuclei")


def tune(model: Model, seed: int = 0) -> Model:
    labels = np.zeros((32, 32), np.int32)
    labels[8:16, 8:16] = 1
    labels[16:24, 12:20] = 2
    image = (labels > 0).astype(np.uint8) * 200
    return finetune(model, [Sample(image, labels)], steps=1, time_budget_s=None, seed=seed, batch_size=2)


def test_version_names():
    assert version_base("nuclei-v12") == "nuclei" and version_base("nuclei") == "nuclei"
    assert version_base("my-v-model") == "my-v-model"
    assert next_version_name("nuclei") == "nuclei-v2"


def test_a_tuned_model_is_saved_as_the_next_version_with_provenance_and_annotations(base_model):
    first = save_version(tune(base_model))
    assert first.name == "nuclei-v2"
    assert sorted(p.name for p in first.iterdir()) == ["annotations.npz", "config.json", "weights.safetensors"]
    loaded = load_model("nuclei-v2")
    provenance = loaded.config.provenance
    assert provenance["parent"] == "nuclei" and provenance["steps"] == 1
    assert provenance["data_fingerprint"].startswith("sha256:") and "versions" in provenance
    (labels, annotated, axes), = read_annotations(loaded)
    assert labels.max() == 2 and annotated.all() and axes == "YX"
    second = save_version(tune(loaded, seed=1))
    assert second.name == "nuclei-v3" and load_model("nuclei-v3").config.provenance["parent"] == "nuclei-v2"
    assert load_model("nuclei").config.provenance.get("parent") is None  # the start is untouched
    assert save_version(tune(base_model), base_name="other").name == "other-v2"


def test_lineage_and_family_listing(base_model):
    save_version(tune(base_model))
    save_version(tune(load_model("nuclei-v2")))
    save_model(tune(base_model), "custom-name")  # a child saved under its own name is still family
    assert [v.name for v in lineage("nuclei-v3")] == ["nuclei", "nuclei-v2", "nuclei-v3"]
    family = list_versions("nuclei-v2")
    assert family[0].name == "nuclei"
    assert {v.name for v in family} == {"nuclei", "nuclei-v2", "nuclei-v3", "custom-name"}
    assert all(v.steps == 1 for v in family[1:])
    with pytest.raises(ModelFileError, match="no model named"):
        lineage("missing")


def test_rollback_copies_an_older_version_as_the_newest_and_deletes_nothing(base_model):
    save_version(tune(base_model))
    save_version(tune(load_model("nuclei-v2"), seed=3))
    restored = rollback("nuclei-v2")
    assert restored.name == "nuclei-v4"
    assert {m.name for m in list_models()} >= {"nuclei", "nuclei-v2", "nuclei-v3", "nuclei-v4"}
    old, new = load_model("nuclei-v2"), load_model("nuclei-v4")
    for key, tensor in old.network.state_dict().items():
        assert torch.equal(tensor, new.network.state_dict()[key])
    assert new.config.provenance["parent"] == "nuclei-v2" and new.config.provenance["rolled_back_from"] == "nuclei-v2"
    assert new.name == "nuclei-v4" and (restored / "annotations.npz").is_file()
    assert not [p for p in library_dir().iterdir() if p.name.startswith(".")]  # no staging left behind


def test_renaming_keeps_the_family_linked_and_deleting_leaves_the_rest(base_model):
    save_version(tune(base_model))
    save_version(tune(load_model("nuclei-v2")))
    rename_version("nuclei-v2", "nuclei-good")
    config = json.loads((library_dir() / "nuclei-v3" / "config.json").read_text())
    assert config["provenance"]["parent"] == "nuclei-good"
    assert [v.name for v in lineage("nuclei-v3")] == ["nuclei", "nuclei-good", "nuclei-v3"]
    delete_model("nuclei-good")
    assert [v.name for v in lineage("nuclei-v3")] == ["nuclei-v3"]
    load_model("nuclei-v3")


def test_a_save_clears_staging_folders_left_by_dead_processes_but_not_recent_ones(base_model):
    library_dir().mkdir(parents=True, exist_ok=True)
    stale = library_dir() / ".nuclei-v7.saving-0bad0bad"
    recent = library_dir() / ".nuclei-v8.saving-0f00d000"  # another process may be saving right now
    for folder in (stale, recent):
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"half written")
    old = time.time() - library.STALE_STAGING_S - 60
    os.utime(stale, (old, old))
    save_model(base_model, "another")
    assert not stale.exists() and recent.is_dir()


def test_a_model_from_a_folder_whose_name_is_no_library_name_still_saves_its_versions(base_model, tmp_path):
    folder = save_model(base_model, tmp_path / "My nuclei (lab)")  # a folder anywhere may be named anyhow
    version = save_version(tune(load_model(folder)))
    assert version.name == "My-nuclei-lab-v2" and load_model(version.name).config.provenance["parent"]
    assert save_version(tune(load_model(save_model(base_model, tmp_path / "Kerne über")))).name == "Kerne-ber-v2"
    assert save_version(tune(load_model(save_model(base_model, tmp_path / "(( )).")))).name == "model-v2"


def test_a_loaded_model_saved_again_keeps_the_annotations_it_was_trained_on(base_model):
    first = save_version(tune(base_model))
    copy = save_model(load_model(first.name), "copy")
    assert sorted(p.name for p in copy.iterdir()) == ["annotations.npz", "config.json", "weights.safetensors"]
    (labels, _, _), = read_annotations(load_model("copy"))
    assert labels.max() == 2
    save_model(load_model("copy"), "copy", overwrite=True)  # over itself
    assert len(read_annotations(load_model("copy"))) == 1


def test_a_model_whose_overwrite_died_between_its_two_renames_comes_back(base_model):
    save_model(base_model, "mine")
    aside = library_dir() / ".mine.replaced-999999999"  # no such process: it died with the new model unsaved
    os.rename(library_dir() / "mine", aside)
    assert "mine" in [info.name for info in list_models()] and load_model("mine").config.description == "tiny"
    assert not aside.exists()
    busy = library_dir() / f".other.replaced-{os.getpid()}"  # a live process between its renames: left alone
    os.rename(save_model(base_model, "other"), busy)
    assert "other" not in [info.name for info in list_models()] and busy.is_dir()
