"""``napari-unet finetune`` on image files: trains, prints progress, saves a new version; bad input exits 2."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.cli import main
from napari_unet.cli.finetune import guess_axes
from napari_unet.core import library
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.unet import UNetConfig
from napari_unet.core.versions import read_annotations
from napari_unet.synthetic import generate_nuclei


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A tiny 'nuclei' in the library (the bundled one hidden: a library model may not shadow it) and files."""
    monkeypatch.setattr(library, "bundled_dir", lambda: tmp_path / "no-bundled-models")
    torch.set_num_threads(1)
    network = UNetConfig(depth=2, base_features=4, padding="same", norm="batch", out_channels=3,
                         upsampling="bilinear")
    save_model(Model.from_config(ModelConfig(network), seed=0), "nuclei")
    paths = {}
    for index in range(2):
        image, labels = generate_nuclei((48, 48), "dense", seed=index)
        paths[f"image{index}"] = tmp_path / f"image{index}.tif"
        paths[f"labels{index}"] = tmp_path / f"labels{index}.tif"
        tifffile.imwrite(paths[f"image{index}"], image)
        tifffile.imwrite(paths[f"labels{index}"], labels)
    mask = np.zeros((48, 48), np.uint8)
    mask[:, :30] = 1
    paths["mask"] = tmp_path / "mask.tif"
    tifffile.imwrite(paths["mask"], mask)
    return paths


def test_finetune_on_tiff_pairs_saves_the_next_version(files, capsys):
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
                 "--image", str(files["image1"]), "--labels", str(files["labels1"]), "--steps", "3",
                 "--batch-size", "2", "--validation-fraction", "0", "--seed", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pair 2: image1.tif (48, 48) axes YX" in out
    assert "trained 3 steps" in out and "saved nuclei-v2 at" in out
    tuned = load_model("nuclei-v2")
    assert tuned.config.provenance["parent"] == "nuclei" and tuned.config.provenance["seed"] == 4
    assert len(read_annotations(tuned)) == 2


def test_masks_and_an_output_name(files, capsys):
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
                 "--mask", str(files["mask"]), "--steps", "2", "--batch-size", "2", "--output", "mine"])
    assert code == 0 and "saved mine at" in capsys.readouterr().out
    (_, annotated, _), = read_annotations(load_model("mine"))
    assert annotated[:, :30].all() and not annotated[:, 30:].any()


def test_bad_input_exits_with_status_2_and_a_message(files, tmp_path, capsys):
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--image", str(files["image1"]),
                 "--labels", str(files["labels0"]), "--steps", "1"])
    assert code == 2 and "one labels file per image" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "float.tif", np.ones((48, 48), np.float32))
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels",
                 str(tmp_path / "float.tif"), "--steps", "1"])
    assert code == 2 and "integers" in capsys.readouterr().err
    code = main(["finetune", "--model", "nuclei", "--image", str(tmp_path / "none.tif"), "--labels",
                 str(files["labels0"]), "--steps", "1"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_axes_are_guessed_from_the_shapes():
    assert guess_axes((64, 64), (64, 64), "YX", 1) == "YX"
    assert guess_axes((5, 64, 64), (5, 64, 64), "YX", 1) == "ZYX"
    assert guess_axes((64, 64, 3), (64, 64), "YX", 3) == "YXC"
    assert guess_axes((2, 64, 64), (64, 64), "YX", 2) == "CYX"
    assert guess_axes((64, 80, 3), (64, 80), "YX", 1) == "YXC", "a colour image, as segment reads it"
    assert guess_axes((5, 2, 64, 64), (5, 64, 64), "ZYX", 2) == "ZCYX"


def test_output_is_a_library_name_or_a_folder(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
              "--steps", "1", "--batch-size", "2", "--validation-fraction", "0"]
    assert main([*common, "--output", "models/mine"]) == 0
    assert (tmp_path / "models" / "mine" / "config.json").is_file()
    assert main([*common, "--output", str(tmp_path / "absolute")]) == 0
    assert (tmp_path / "absolute" / "config.json").is_file()
    capsys.readouterr()
    assert main([*common, "--output", "bad name!"]) == 2
    assert "not a valid model name" in capsys.readouterr().err


def test_an_output_that_is_taken_is_refused_before_training(files, tmp_path, capsys, monkeypatch):
    from napari_unet.core import training

    monkeypatch.setattr(training, "finetune_steps", lambda *args, **kwargs: pytest.fail("trained"))
    monkeypatch.chdir(tmp_path)
    common = ["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
              "--steps", "1"]
    assert main([*common, "--output", "nuclei"]) == 2  # the library model the run starts from
    assert "already" in (err := capsys.readouterr().err) and "'nuclei-2'" in err
    (tmp_path / "taken" / "config.json").parent.mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    assert main([*common, "--output", "./taken"]) == 2 and "already" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "-5", "nan"])
def test_a_bad_time_budget_names_the_flag(files, seconds, capsys):
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
                 f"--time={seconds}"])
    err = capsys.readouterr().err
    assert code == 2 and "--time" in err and "time_budget_s" not in err, err


def test_dark_objects_from_scratch_with_the_schedule_for_a_new_kind(files, tmp_path, capsys):
    image = tifffile.imread(files["image0"])
    tifffile.imwrite(tmp_path / "dark.tif", (image.max() - image).astype(image.dtype))
    code = main(["finetune", "--model", "nuclei", "--image", str(tmp_path / "dark.tif"), "--labels",
                 str(files["labels0"]), "--steps", "2", "--batch-size", "2", "--from-scratch", "--output", "dark"])
    out = capsys.readouterr().out
    assert code == 0 and "for a new kind of image" in out and "inverts its input" in out
    settings = load_model("dark").config.provenance["settings"]
    assert settings["from_scratch"] and settings["new_kind"] and settings["learning_rate"] == 3e-3


def test_labels_that_are_an_intensity_image_are_refused(files, tmp_path, capsys):
    image = (np.random.default_rng(0).random((48, 48)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "raw.tif", image)
    code = main(["finetune", "--model", "nuclei", "--image", str(tmp_path / "raw.tif"), "--labels",
                 str(tmp_path / "raw.tif"), "--steps", "1"])
    assert code == 2 and "intensity image" in capsys.readouterr().err
    assert not (library.library_dir() / "nuclei-v2").exists()


def test_a_run_without_a_completed_step_saves_nothing(files, capsys, monkeypatch):
    from napari_unet.core import training

    class SlowClock:  # every look at the clock finds the time budget spent
        perf_counter = iter(range(0, 10**6, 1000)).__next__

    monkeypatch.setattr(training, "time", SlowClock)
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels",
                 str(files["labels0"]), "--time", "1"])
    assert code == 2 and "nothing was saved" in capsys.readouterr().err
    assert not (library.library_dir() / "nuclei-v2").exists()


def test_zarr_images_labels_and_masks(files, tmp_path, capsys, monkeypatch):
    from napari_unet.core import training

    image_path, labels_path, mask_path = (tmp_path / name for name in ("image.zarr", "labels.ome.zarr", "mask.zarr"))
    zarr.create_array(str(image_path), data=tifffile.imread(files["image0"]), chunks=(16, 16))
    group = zarr.open_group(str(labels_path), mode="w")
    group.create_array("0", data=tifffile.imread(files["labels0"]))
    group.attrs["multiscales"] = [{"axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0"}]}]
    zarr.create_array(str(mask_path), data=tifffile.imread(files["mask"]))
    images = []
    real = training.finetune

    def spy(model, samples, **kwargs):
        images.extend(samples)
        return real(model, samples, **kwargs)

    monkeypatch.setattr(training, "finetune", spy)
    code = main(["finetune", "--model", "nuclei", "--image", str(image_path), "--labels", str(labels_path),
                 "--mask", str(mask_path), "--steps", "2", "--batch-size", "2", "--output", "from-zarr"])
    assert code == 0, capsys.readouterr().err
    assert "pair 1: image.zarr (48, 48) axes YX, labels labels.ome.zarr" in capsys.readouterr().out
    assert isinstance(images[0].image, zarr.Array), "the image is read where training needs it, not whole"
    (_, annotated, _), = read_annotations(load_model("from-zarr"))
    assert annotated[:, :30].all() and not annotated[:, 30:].any()


def test_a_prediction_file_weighs_the_corrections(files, tmp_path, capsys):
    labels = tifffile.imread(files["labels0"])
    predicted = labels.copy()
    predicted[predicted == labels.max()] = 0  # the model missed one nucleus; the labels have it
    tifffile.imwrite(tmp_path / "predicted.tif", predicted)
    common = ["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
              "--prediction", str(tmp_path / "predicted.tif"), "--steps", "1", "--batch-size", "2"]
    assert main([*common, "--correction-weight", "3", "--output", "corrected"]) == 0
    out = capsys.readouterr().out
    assert "corrected from predicted.tif" in out and "weighted 3x" in out
    settings = load_model("corrected").config.provenance["settings"]
    assert settings["correction_weight"] == 3.0 and settings["corrected_pixels"] >= (labels == labels.max()).sum()
    assert main([*common, "--correction-weight", "0.5"]) == 2
    assert "--correction-weight" in capsys.readouterr().err
    code = main(["finetune", "--model", "nuclei", "--image", str(files["image0"]), "--labels", str(files["labels0"]),
                 "--image", str(files["image1"]), "--labels", str(files["labels1"]), "--prediction",
                 str(tmp_path / "predicted.tif"), "--steps", "1"])
    assert code == 2 and "--prediction" in capsys.readouterr().err
