"""core.io: one lazy reader for TIFF, OME-TIFF, ImageJ TIFF, zarr, OME-Zarr and .npy, with axes and pixel sizes."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.io import file_kind, read_image, read_images, tiff_dims


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, size=(5, 2, 24, 32), dtype=np.uint16)


def ome_zarr(path, data, axes, scales, *, version="0.4", omero=None, translation=None, zarr_format=2):
    """An OME-Zarr image with one level per entry of ``scales`` (each level halves Y and X)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for index, scale in enumerate(scales):
        step = 2**index
        group.create_array(str(index), data=data[..., ::step, ::step])
        transforms = [{"type": "scale", "scale": scale}]
        if translation is not None:
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": str(index), "coordinateTransformations": transforms})
    meta = {"version": version, "axes": axes, "datasets": datasets}
    attrs = {"multiscales": [meta], **({"omero": omero} if omero else {})}
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", **attrs}
    else:
        group.attrs.update(attrs)
    return path


def space(name, unit="micrometer"):
    return {"name": name, "type": "space", "unit": unit}


# --------------------------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------------------------


def test_plain_tiff_is_lazy_with_pages_in_z(tmp_path, stack, monkeypatch):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack[:, 0])
    reads = []
    original = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: reads.append(1) or original(self, *a, **k))
    image = read_image(path)
    assert reads == [], "opening reads no pixels"
    assert isinstance(image.data, zarr.Array) and not isinstance(image.data, np.ndarray)
    assert image.axes == "ZYX" and image.dims == ("Z", "Y", "X")
    assert image.scale == (None, None, None) and image.metadata is None
    assert image.voxel_size("ZYX") is None, "a file without sizes gives none"
    assert image.data.chunks == (1, 24, 32), "one chunk per page: indexing a plane reads that page only"
    np.testing.assert_array_equal(image.data[3], stack[3, 0])


def test_imagej_tiff_spacing_and_resolution(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack[:, 0], imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    image = read_image(path)
    assert image.axes == "ZYX" and image.metadata == "ImageJ"
    assert image.scale == pytest.approx((2.0, 0.5, 0.5)) and image.units == ("um", "um", "um")
    assert image.voxel_size("ZYX") == pytest.approx((2.0, 0.5, 0.5))


def test_uncalibrated_imagej_tiff_gives_no_voxel_size(tmp_path, stack):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, stack[:, 0], imagej=True, metadata={"axes": "ZYX"})
    image = read_image(path)
    assert image.units[1:] == ("pixel", "pixel")
    assert image.voxel_size("ZYX") is None, "sizes in pixels say nothing about Z against Y and X"


def test_ome_tiff_axes_and_physical_sizes(tmp_path, stack):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "ZCYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5,
        "PhysicalSizeZUnit": "µm"})
    image = read_image(path)
    assert image.axes == "ZCYX" and image.metadata == "OME-TIFF"
    assert image.scale == (1.5, None, 0.25, 0.25) and image.units[0] == "um"
    assert image.voxel_size("ZCYX") == (1.5, 0.25, 0.25)
    assert image.voxel_size("CZYX") is None, "axes read otherwise than the file says get no sizes"
    np.testing.assert_array_equal(image.data[2, 1], stack[2, 1])


def test_sizes_in_different_length_units_are_given_in_one(tmp_path, stack):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack[:, 0], ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 100, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 100,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5, "PhysicalSizeZUnit": "µm"})
    image = read_image(path)
    assert image.units == ("um", "um", "um") and image.scale == pytest.approx((0.5, 0.1, 0.1))
    assert image.voxel_size("ZYX") == pytest.approx((0.5, 0.1, 0.1)), "Z 5 times the pixel, not 1/200"
    odd = tmp_path / "odd.ome.tif"
    tifffile.imwrite(odd, stack[:, 0], ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 1, "PhysicalSizeXUnit": "parsec", "PhysicalSizeY": 1,
        "PhysicalSizeYUnit": "parsec", "PhysicalSizeZ": 0.5, "PhysicalSizeZUnit": "µm"})
    assert read_image(odd).voxel_size("ZYX") is None, "units that cannot be compared give no voxel size"


def test_ome_tiff_without_z_size_gives_no_voxel_size(tmp_path, stack):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack[:, 0], ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.3,
                                                            "PhysicalSizeY": 0.3})
    image = read_image(path)
    assert image.scale == (None, 0.3, 0.3)
    assert image.voxel_size("ZYX") is None
    assert image.voxel_size("TYX") == (0.3, 0.3), "read as a time-lapse, only Y and X need a size"


def test_rgb_tiff_has_colour_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, size=(16, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif")
    assert image.rgb and image.axes == "YXC"


def test_pyramid_levels(tmp_path):
    base = np.random.default_rng(2).integers(0, 255, size=(128, 128), dtype=np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(base[::2, ::2], subfiletype=1, tile=(64, 64))
    image = read_image(path)
    assert [level.shape for level in image.levels] == [(128, 128), (64, 64)]
    assert image.data is image.levels[0]


@pytest.mark.parametrize("letters, dims", [
    ("QYX", ("Z", "Y", "X")),
    ("IZYX", ("i", "Z", "Y", "X")),  # Z taken by the file's own Z axis
    ("QSYX", ("Z", "C", "Y", "X")),
    ("SCYX", ("s", "C", "Y", "X")),
    ("TZCYXS", ("T", "Z", "C", "Y", "X", "s")),
    ("RYX", ("r", "Y", "X")),
])
def test_tiff_axis_letters(letters, dims):
    assert tiff_dims(letters) == dims


# --------------------------------------------------------------------------------------------------------------
# zarr / OME-Zarr / npy
# --------------------------------------------------------------------------------------------------------------


def test_plain_zarr_array_stays_zarr(tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.create_array(str(path), data=np.arange(600, dtype=np.float32).reshape(20, 30), chunks=(10, 10))
    image = read_image(path)
    assert isinstance(image.data, zarr.Array) and not isinstance(image.data, np.ndarray)
    assert image.axes is None and image.scale == (None, None)


def test_ome_zarr_axes_scale_units_and_channels(tmp_path, stack):
    data = np.moveaxis(stack, 1, 0)  # C, Z, Y, X
    axes = [{"name": "c", "type": "channel"}, space("z"), space("y"), space("x")]
    path = ome_zarr(tmp_path / "cells.ome.zarr", data, axes, [[1, 2.0, 0.5, 0.5], [1, 2.0, 1.0, 1.0]],
                    omero={"channels": [{"label": "DAPI"}, {"label": "GFP"}]}, translation=[0, 3.0, 1.0, 1.0])
    image = read_image(path)
    assert image.axes == "CZYX" and image.metadata == "OME-Zarr"
    assert image.scale == (1.0, 2.0, 0.5, 0.5) and image.units == (None, "micrometer", "micrometer", "micrometer")
    assert image.translate == (0.0, 3.0, 1.0, 1.0)
    assert image.channel_names == ("DAPI", "GFP") and len(image.levels) == 2
    assert image.voxel_size("CZYX") == (2.0, 0.5, 0.5)
    assert isinstance(image.data, zarr.Array)
    np.testing.assert_array_equal(image.data[1, 4], stack[4, 1])


def test_ome_zarr_multiscale_transforms_apply_after_the_dataset_ones(tmp_path):
    path = ome_zarr(tmp_path / "image.zarr", np.zeros((4, 16, 16), np.uint8), [space("z"), space("y"), space("x")],
                    [[1.0, 0.5, 0.5]], translation=[0.0, 2.0, 2.0])
    group = zarr.open_group(str(path), mode="r+")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["coordinateTransformations"] = [{"type": "scale", "scale": [3.0, 2.0, 2.0]}]
    group.attrs["multiscales"] = multiscales
    image = read_image(path)
    assert image.scale == (3.0, 1.0, 1.0)
    assert image.translate == (0.0, 4.0, 4.0), "the dataset's translation is scaled by the multiscale scale"


def test_ome_zarr_0_5_in_zarr_v3(tmp_path):
    path = ome_zarr(tmp_path / "v3.ome.zarr", np.zeros((3, 16, 16), np.uint8),
                    [{"name": "t", "type": "time", "unit": "second"}, space("y"), space("x")],
                    [[10.0, 0.2, 0.2]], version="0.5", zarr_format=3)
    image = read_image(path)
    assert image.axes == "TYX" and image.scale == (10.0, 0.2, 0.2)
    assert image.voxel_size("TYX") == (0.2, 0.2)


def test_ome_zarr_with_axes_that_do_not_fit_has_no_axes(tmp_path):
    path = ome_zarr(tmp_path / "odd.zarr", np.zeros((3, 16, 16), np.uint8), [space("y"), space("x")], [[1, 1, 1]])
    assert read_image(path).axes is None


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((6, 7), np.uint8))
    image = read_image(tmp_path / "a.npy")
    assert isinstance(image.data, np.memmap) and image.axes is None


def test_a_group_of_plain_arrays(tmp_path):
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", data=np.zeros((8, 8), np.uint8))
    group.create_array("b", data=np.zeros((9, 9), np.uint8))
    group.create_array("tiny", data=np.zeros(4, np.uint8))  # not an image
    images = read_images(tmp_path / "two.zarr")
    assert sorted(image.name for image in images) == ["two a", "two b"]
    with pytest.raises(InvalidInputError, match="two.zarr is a zarr group with 2 image arrays"):
        read_image(tmp_path / "two.zarr")


def test_file_kind_looks_at_the_path_only(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"II*\x00")
    (tmp_path / "x.npy").write_bytes(b"")
    (tmp_path / "x.png").write_bytes(b"")
    zarr.create_array(str(tmp_path / "y.zarr"), data=np.zeros((2, 2)))
    assert [file_kind(tmp_path / n) for n in ("x.tif", "x.npy", "x.png", "y.zarr", "none.tif")] == \
        ["tiff", "npy", None, "zarr", None]
    assert file_kind(tmp_path) is None


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InvalidInputError, match="none.tif does not exist"):
        read_image(tmp_path / "none.tif")
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(InvalidInputError, match=r"a.png: unsupported image type '.png'; use .tif"):
        read_image(tmp_path / "a.png")


def test_a_damaged_tiff_names_the_file_and_what_was_expected(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(InvalidInputError, match="broken.tif could not be read as a TIFF image") as error:
        read_image(tmp_path / "broken.tif")
    assert "expected a TIFF, OME-TIFF or ImageJ TIFF file" in str(error.value)


def test_a_damaged_npy(tmp_path):
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY nonsense")
    with pytest.raises(InvalidInputError, match="broken.npy could not be read as a NumPy array"):
        read_image(tmp_path / "broken.npy")


def test_a_folder_that_is_not_zarr(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    with pytest.raises(InvalidInputError, match="pictures is a folder but not a zarr array or group"):
        read_image(folder)


def test_ome_zarr_naming_a_missing_level(tmp_path):
    path = ome_zarr(tmp_path / "image.zarr", np.zeros((16, 16), np.uint8), [space("y"), space("x")], [[1, 1]])
    group = zarr.open_group(str(path), mode="r+")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["datasets"][0]["path"] = "missing"
    group.attrs["multiscales"] = multiscales
    with pytest.raises(InvalidInputError, match="image.zarr: the OME-Zarr multiscales metadata names resolution"):
        read_image(path)


def test_a_group_without_images(tmp_path):
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(InvalidInputError, match="empty.zarr is a zarr group without an image"):
        read_image(tmp_path / "empty.zarr")
