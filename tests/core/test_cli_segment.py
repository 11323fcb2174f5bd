"""``napari-unet segment``: files in, labels out, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.cli import main
from napari_unet.core.inference import segment
from napari_unet.core.models import Model, ModelConfig, save_model
from napari_unet.core.unet import UNetConfig


@pytest.fixture
def model():
    """A tiny random model saved in the (test's own) library as 'tiny'."""
    net = UNetConfig(in_channels=1, out_channels=3, depth=1, base_features=4, padding="same", norm="batch")
    tiny = Model.from_config(ModelConfig(net), seed=0)
    tiny.network.eval()
    save_model(tiny, "tiny")
    return tiny


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return (rng.random((2, 40, 52)) * 4000).astype(np.uint16)


def expected_labels(model, image, axes):
    torch.set_num_threads(1)
    return segment(image, model, axes=axes, device="cpu").labels


def test_tiff_in_tiff_out(tmp_path, model, image, capsys):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, image, metadata={"axes": "TYX"})
    target = tmp_path / "labels.tif"
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "--device", "cpu"]) == 0
    labels = tifffile.imread(target)
    np.testing.assert_array_equal(labels, expected_labels(model, image, "TYX"))
    assert "labels (2, 40, 52) (TYX)" in capsys.readouterr().err


def test_zarr_in_zarr_out_with_probabilities(tmp_path, model, image):
    source = tmp_path / "image.zarr"
    stored = zarr.open_array(str(source), mode="w", shape=image[0].shape, chunks=(16, 16), dtype=image.dtype)
    stored[:] = image[0]
    target, probabilities = tmp_path / "labels.zarr", tmp_path / "probabilities.zarr"
    status = main(["segment", str(source), "-o", str(target), "--model", "tiny", "--device", "cpu", "--tile", "32",
                   "--probabilities", str(probabilities), "--quiet"])
    assert status == 0
    expected = segment(image[0], model, device="cpu", tile_shape=32)
    np.testing.assert_array_equal(zarr.open_array(str(target), mode="r")[:], expected.labels)
    np.testing.assert_allclose(zarr.open_array(str(probabilities), mode="r")[:], expected.probabilities, atol=1e-6)


def test_npy_with_explicit_axes(tmp_path, model, image):
    source = tmp_path / "image.npy"
    np.save(source, np.moveaxis(image, 0, -1))  # Y, X, 2 planes
    target = tmp_path / "labels.npy"
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "--axes", "YXZ", "-q"]) == 0
    expected = expected_labels(model, np.moveaxis(image, 0, -1), "YXZ")
    np.testing.assert_array_equal(np.load(target), expected)


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, model, image, capsys):
    source = tmp_path / "image.tif"
    tifffile.imwrite(source, image[0])
    target = tmp_path / "labels.tif"
    target.write_bytes(b"precious")
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "-q"]) == 2
    assert "exists" in capsys.readouterr().err and target.read_bytes() == b"precious"
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "-q", "--overwrite"]) == 0
    assert tifffile.imread(target).shape == (40, 52)


@pytest.mark.parametrize("name", ["labels.tif", "labels.zarr"])
def test_an_overwrite_that_fails_keeps_the_old_output(tmp_path, model, image, capsys, name):
    source = tmp_path / "image.tif"
    tifffile.imwrite(source, image[0])
    target = tmp_path / name
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "-q"]) == 0
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "-q", "--overwrite",
                 "--scale", "-1", "1"]) == 2  # a user error found only once segmenting starts
    assert "scale" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "the old output stays, and nothing else is left"


@pytest.mark.parametrize("args, words", [
    (["--model", "tiny", "--axes", "CYX"], "input channel"),
    (["--model", "tiny", "--tile", "8", "9", "10"], "tile_shape"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_user_errors_exit_2_with_a_message_and_leave_no_output(tmp_path, model, image, capsys, args, words):
    source = tmp_path / "image.tif"
    tifffile.imwrite(source, image)
    target = tmp_path / "labels.zarr"
    assert main(["segment", str(source), "-o", str(target), *args]) == 2
    assert words in capsys.readouterr().err
    assert not target.exists()


def test_missing_input_and_bad_output_type(tmp_path, model, capsys):
    assert main(["segment", str(tmp_path / "none.tif"), "-o", str(tmp_path / "x.tif"), "--model", "tiny"]) == 2
    assert "does not exist" in capsys.readouterr().err
    np.save(tmp_path / "a.npy", np.zeros((8, 8)))
    assert main(["segment", str(tmp_path / "a.npy"), "-o", str(tmp_path / "x.png"), "--model", "tiny"]) == 2
    assert "must end in" in capsys.readouterr().err


def test_ome_zarr_axes_come_from_its_metadata(tmp_path, model, image):
    source = tmp_path / "image.ome.zarr"
    data = np.moveaxis(image, 0, -1)  # Y, X, T: only the metadata can tell
    group = zarr.open_group(str(source), mode="w")
    level = group.create_array("0", shape=data.shape, chunks=(20, 26, 2), dtype=data.dtype)
    level[:] = data
    group.attrs["multiscales"] = [{"axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"},
                                            {"name": "t", "type": "time"}], "datasets": [{"path": "0"}]}]
    target = tmp_path / "labels.npy"
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "-q"]) == 0
    np.testing.assert_array_equal(np.load(target), expected_labels(model, data, "YXT"))


@pytest.mark.parametrize("option", ["-o", "--probabilities"])
def test_a_missing_output_folder_is_reported_before_segmenting(tmp_path, model, image, capsys, monkeypatch, option):
    import napari_unet.core.inference as inference

    ran = []
    monkeypatch.setattr(inference, "segment", lambda *args, **kwargs: ran.append(True))
    source = tmp_path / "image.npy"
    np.save(source, image[0])
    outputs = {"-o": str(tmp_path / "labels.tif"), "--probabilities": str(tmp_path / "probabilities.tif")}
    outputs[option] = str(tmp_path / "no-such-folder" / "out.tif")
    args = ["segment", str(source), "-o", outputs["-o"], "--probabilities", outputs["--probabilities"]]
    assert main([*args, "--model", "tiny", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no-such-folder" in err and "does not exist" in err, err
    assert ran == [], "nothing was segmented"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.npy"]


def test_a_folder_that_is_not_zarr_is_named_as_such(tmp_path, model, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    assert main(["segment", str(folder), "-o", str(tmp_path / "x.tif"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "pictures is a folder but not a zarr array or group" in err, err
    assert "Store" not in err and "found in" not in err, "no zarr internals"


def test_diameter_resamples_a_tiff_to_the_model_object_size(tmp_path, capsys):
    net = UNetConfig(in_channels=1, out_channels=3, depth=1, base_features=4, padding="same", norm="batch")
    sized = Model.from_config(ModelConfig(net, object_diameter=10.0), seed=0)
    save_model(sized, "sized")
    source, target = tmp_path / "plane.tif", tmp_path / "labels.tif"
    tifffile.imwrite(source, (np.random.default_rng(0).random((60, 80)) * 4000).astype(np.uint16))
    assert main(["segment", str(source), "-o", str(target), "--model", "sized", "--device", "cpu",
                 "--diameter", "20"]) == 0
    assert tifffile.imread(target).shape == (60, 80)
    assert "resampled by 0.50 to the model's 10 px" in capsys.readouterr().err


@pytest.fixture
def segment_calls(monkeypatch):
    """The ``scale`` each ``segment`` call of the command gets (the real segment still runs)."""
    import napari_unet.core.inference as inference

    scales = []

    def spy(*args, **kwargs):
        scales.append(kwargs.get("scale"))
        return segment(*args, **kwargs)

    monkeypatch.setattr(inference, "segment", spy)
    return scales


def test_the_voxel_size_of_an_imagej_tiff_is_used_and_scale_overrides_it(tmp_path, model, capsys, segment_calls):
    stack = (np.random.default_rng(3).random((4, 24, 28)) * 4000).astype(np.uint16)
    source, target = tmp_path / "stack.tif", tmp_path / "labels.tif"
    tifffile.imwrite(source, stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "--device", "cpu"]) == 0
    assert segment_calls == [pytest.approx((2.0, 0.5, 0.5))]
    err = capsys.readouterr().err
    assert "voxel size Z 2 um, Y 0.5 um, X 0.5 um from the ImageJ metadata of stack.tif" in err, err
    torch.set_num_threads(1)
    expected = segment(stack, model, axes="ZYX", device="cpu", scale=(2.0, 0.5, 0.5)).labels
    np.testing.assert_array_equal(tifffile.imread(target), expected)

    assert main(["segment", str(source), "-o", str(target), "--model", "tiny", "--device", "cpu", "--overwrite",
                 "--scale", "1", "1", "1"]) == 0
    assert segment_calls[-1] == [1.0, 1.0, 1.0]
    assert "metadata" not in capsys.readouterr().err


def test_a_tiff_without_sizes_is_taken_as_isotropic(tmp_path, model, image, segment_calls, capsys):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, image, metadata={"axes": "ZYX"})
    assert main(["segment", str(source), "-o", str(tmp_path / "labels.npy"), "--model", "tiny", "-q"]) == 0
    assert segment_calls == [None]
    assert capsys.readouterr().err == ""
