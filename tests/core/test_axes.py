"""Axes: parsing, inference from shapes and napari hints, channel checks, and lazy rearranging."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_unet.core.axes import AxesView, Layout, check_axes, infer_axes, resolve_axes, to_axes
from napari_unet.core.errors import InvalidInputError


@pytest.mark.parametrize("axes, ndim", [("yx", 2), ("ZYX", 3), ("TCZYX", 5), ("YXC", 3), ("XY", 2)])
def test_check_axes_accepts_and_upper_cases(axes, ndim):
    assert check_axes(axes, ndim) == axes.upper()


@pytest.mark.parametrize("axes, ndim, words", [
    ("YXQ", 3, "letters"), ("YYX", 3, "more than once"), ("ZYX", 2, "one letter per dimension"),
    ("ZY", 2, "Y and X"), (3, 2, "string"),
])
def test_check_axes_rejects_with_a_hint(axes, ndim, words):
    with pytest.raises(InvalidInputError, match=words):
        check_axes(axes, ndim)


@pytest.mark.parametrize("shape, kwargs, expected", [
    ((64, 64), {}, "YX"),
    ((512, 512, 3), {"in_channels": 3}, "YXC"),
    ((512, 512, 3), {}, "YXC"),  # colour last is recognised even for a 1-channel model (which then complains)
    ((3, 64, 64), {}, "ZYX"),  # a 1-channel model reads a short first axis as planes
    ((3, 64, 64), {"in_channels": 3}, "CYX"),
    ((10, 64, 64), {"spatial_dims": 3}, "ZYX"),
    ((5, 10, 64, 64), {}, "TZYX"),
    ((5, 2, 10, 64, 64), {"in_channels": 2}, "TCZYX"),
    ((2, 10, 64, 64), {"channel_axis": 0}, "CZYX"),
    ((64, 64, 3), {"rgb": True, "in_channels": 3}, "YXC"),
    ((64, 64, 4), {"rgb": False}, "ZYX"),
])
def test_infer_axes(shape, kwargs, expected):
    assert infer_axes(shape, **kwargs) == expected


def test_infer_axes_refuses_what_it_cannot_tell():
    with pytest.raises(InvalidInputError, match="pass axes"):
        infer_axes((2, 3, 4, 5, 6, 7))
    with pytest.raises(InvalidInputError, match="two dimensions"):
        infer_axes((7,))


def test_resolve_axes_explains_a_channel_mismatch():
    with pytest.raises(InvalidInputError, match=r"takes 1 input channel.*has 3.*axes='ZYX'"):
        resolve_axes("CYX", (3, 64, 64), in_channels=1)
    with pytest.raises(InvalidInputError, match=r"convert to grayscale"):
        resolve_axes(None, (64, 64, 3), in_channels=1)
    with pytest.raises(InvalidInputError, match=r"axes='CYX'"):
        resolve_axes("ZYX", (2, 64, 64), in_channels=2)
    with pytest.raises(InvalidInputError, match="needs a Z axis"):
        resolve_axes("YX", (64, 64), spatial_dims=3)
    assert resolve_axes("cyx", (2, 64, 64), in_channels=2) == "CYX"


@pytest.mark.parametrize("wrap", [np.asarray, da.from_array, zarr.array])
def test_axes_view_reads_blocks_in_view_order(wrap):
    data = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.int32).reshape(2, 3, 4, 5, 6)  # TCZYX
    view = AxesView(wrap(data), "TCZYX").select({"T": 1}).arrange("CZYX")
    assert view.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(view[:, 2, 1:4, 3:5], data[1, :, 2, 1:4, 3:5])
    channel = view[2]  # integer index: still lazy
    assert isinstance(channel, AxesView) and channel.shape == (4, 5, 6)
    np.testing.assert_array_equal(np.asarray(channel), data[1, 2])


def test_axes_view_adds_virtual_axes_and_reorders():
    data = np.random.default_rng(0).random((5, 6, 3))  # YXC
    view = AxesView(data, "YXC").arrange("CZYX")
    assert view.shape == (3, 1, 5, 6)
    np.testing.assert_array_equal(np.asarray(view), np.moveaxis(data, -1, 0)[:, None])
    np.testing.assert_array_equal(view[1:, :, 2:4, 5], np.moveaxis(data, -1, 0)[1:, None, 2:4, 5])


def test_to_axes_keeps_numpy_and_dask_as_views():
    data = np.zeros((4, 5, 3))
    moved = to_axes(data, "YXC", "CYX")
    assert moved.shape == (3, 4, 5) and np.shares_memory(moved, data)
    lazy = to_axes(da.zeros((2, 4, 5), chunks=1), "ZYX", "TZCYX")
    assert isinstance(lazy, da.Array) and lazy.shape == (1, 2, 1, 4, 5)
    assert isinstance(to_axes(zarr.zeros((4, 5)), "YX", "CYX"), AxesView)
    with pytest.raises(InvalidInputError, match="cannot drop axis Z"):
        to_axes(data, "ZYX", "YX")


@pytest.mark.parametrize("axes, shape, spatial, iterated, out_shape", [
    ("YX", (7, 8), "YX", "", (7, 8)),
    ("YXC", (7, 8, 3), "YX", "", (7, 8)),
    ("CYX", (3, 7, 8), "YX", "", (7, 8)),
    ("ZYX", (4, 7, 8), "ZYX", "", (4, 7, 8)),
    ("ZYX", (4, 7, 8), "YX", "Z", (4, 7, 8)),
    ("TYX", (2, 7, 8), "YX", "T", (2, 7, 8)),
    ("TZYX", (2, 4, 7, 8), "ZYX", "T", (2, 4, 7, 8)),
    ("TCZYX", (2, 3, 4, 7, 8), "YX", "TZ", (2, 4, 7, 8)),
])
def test_layout_iterates_non_network_axes(axes, shape, spatial, iterated, out_shape):
    layout = Layout.create(axes, shape, spatial)
    assert layout.iterated == iterated
    assert layout.output_shape == out_shape
    planes = list(layout.planes())
    assert len(planes) == layout.plane_count == int(np.prod([layout.size(a) for a in iterated]))
    data = np.random.default_rng(1).random(shape)
    view = layout.plane_view(data, planes[-1])
    assert view.shape == (layout.channels, *layout.spatial_shape)


def test_layout_write_places_blocks_in_output_order():
    layout = Layout.create("TXZY", (2, 8, 4, 6), "ZYX")  # unusual order: network blocks are ZYX
    target = np.zeros(layout.output_shape, int)
    block = np.arange(4 * 3 * 5).reshape(4, 3, 5)  # Z, Y, X
    layout.write(target, {"T": 1}, (slice(0, 4), slice(2, 5), slice(1, 6)), block)
    np.testing.assert_array_equal(target[1, 1:6, :, 2:5], np.transpose(block, (2, 0, 1)))
    assert target[0].sum() == 0
