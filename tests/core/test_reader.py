"""The reader opens TIFF, OME-TIFF and OME-Zarr lazily, with axes and pixel sizes from the metadata."""
from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_unet._reader import get_reader
from napari_unet._sample_data import nuclei_2d, nuclei_3d


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, size=(6, 3, 40, 48), dtype=np.uint16)


def test_multipage_tiff_is_read_lazily(tmp_path, stack, monkeypatch):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack[:, 0])  # a plain multi-page TIFF, one page per plane
    reader = get_reader(str(path))
    assert reader is not None

    reads = []
    original = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: reads.append(1) or original(self, *a, **k))
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image" and isinstance(data, da.Array)
    assert data.shape == (6, 40, 48) and kwargs["axis_labels"] == ("z", "y", "x")
    assert len(data.chunks[0]) == 6, "one chunk per page, so napari reads only the plane it shows"
    plane = np.asarray(data[4])
    assert len(reads) <= 1, "only the displayed page is read"
    np.testing.assert_array_equal(plane, stack[4, 0])


def test_ome_tiff_channels_and_pixel_size(tmp_path, stack):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "ZCYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5})
    ((data, kwargs, _),) = get_reader(str(path))(str(path))
    assert data.shape == stack.shape
    assert kwargs["channel_axis"] == 1
    assert kwargs["axis_labels"] == ("z", "y", "x")
    assert kwargs["scale"] == pytest.approx((1.5, 0.25, 0.25))
    assert kwargs["name"] == "cells"
    np.testing.assert_array_equal(np.asarray(data[2, 1]), stack[2, 1])


def test_pyramidal_ome_tiff_is_multiscale(tmp_path):
    base = np.random.default_rng(2).integers(0, 255, size=(128, 128), dtype=np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(base[::2, ::2], subfiletype=1, tile=(64, 64))
    ((data, kwargs, _),) = get_reader(str(path))(str(path))
    assert kwargs["multiscale"] is True and [d.shape for d in data] == [(128, 128), (64, 64)]
    np.testing.assert_array_equal(np.asarray(data[1]), base[::2, ::2])


def test_imagej_tiff_spacing(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack[:, 0], imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    ((_, kwargs, _),) = get_reader(str(path))(str(path))
    assert kwargs["scale"] == pytest.approx((2.0, 0.25, 0.25))
    assert kwargs["units"] == ("um", "um", "um")


def test_rgb_tiff(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, size=(32, 40, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    ((data, kwargs, _),) = get_reader(str(path))(str(path))
    assert kwargs["rgb"] is True and kwargs["axis_labels"] == ("y", "x")
    np.testing.assert_array_equal(np.asarray(data), rgb)


def test_ome_zarr_multiscale(tmp_path):
    root = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w", zarr_format=2)
    levels = [np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32), np.zeros((2, 16, 16), np.uint16)]
    for index, level in enumerate(levels):
        root.create_array(str(index), data=level, chunks=(1, 16, 16))
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(i),
                      "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5 * 2**i, 0.5 * 2**i]}]}
                     for i in range(2)],
    }]
    root.attrs["omero"] = {"channels": [{"label": "DAPI"}, {"label": "GFP"}]}
    path = str(tmp_path / "image.ome.zarr")
    ((data, kwargs, _),) = get_reader(path)(path)
    assert kwargs["multiscale"] is True and [d.shape for d in data] == [(2, 32, 32), (2, 16, 16)]
    assert kwargs["channel_axis"] == 0 and kwargs["name"] == ["DAPI", "GFP"]
    assert kwargs["axis_labels"] == ("y", "x") and kwargs["scale"] == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(data[0][1]), levels[0][1])


def test_plain_zarr_array(tmp_path):
    path = str(tmp_path / "plain.zarr")
    zarr.create_array(path, data=np.ones((20, 30), np.float32))
    ((data, _, _),) = get_reader(path)(path)
    assert isinstance(data, da.Array) and data.shape == (20, 30)


def test_reader_declines_other_files(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path)) is None  # a folder that is not a zarr store
    assert get_reader([str(other), str(other)]) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None


def test_napari_opens_tiff_through_the_plugin(tmp_path, stack):
    napari = pytest.importorskip("napari")
    import npe2

    npe2.PluginManager.instance().discover()  # what napari does at start-up: find installed plugins
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZCYX"})
    viewer = napari.components.ViewerModel()
    layers = viewer.open(str(path), plugin="napari-unet")
    assert len(layers) == 3 and all(layer.data.shape == (6, 40, 48) for layer in layers)
    assert isinstance(layers[0].data, da.Array)


@pytest.mark.parametrize("sample, ndim", [(nuclei_2d, 2), (nuclei_3d, 3)])
def test_sample_data_has_image_and_ground_truth(sample, ndim):
    (image, image_kwargs, image_kind), (labels, labels_kwargs, labels_kind) = sample()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.ndim == ndim and image.shape == labels.shape
    assert labels.max() > 10, "the sample shows many nuclei"
    assert len(image_kwargs["axis_labels"]) == ndim and labels_kwargs["scale"] == image_kwargs["scale"]
    json.dumps({k: v for k, v in image_kwargs.items()})  # plain metadata only
