"""A newer model's objects go in around the user's edits whole or not at all: no rims, no pieces cut at the edge
of the region in view, no object removed without its replacement."""
from __future__ import annotations

import numpy as np

from napari_unet.core.unedited import region_edges, unedited_objects


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def write(current: np.ndarray, new: np.ndarray, unedited: np.ndarray, edges: np.ndarray | None = None) -> np.ndarray:
    written = unedited_objects(current, new, unedited, np.zeros(current.shape, bool) if edges is None else edges)
    out = current.copy()
    out[written] = np.where(new > 0, new + 100, 0)[written]
    return out


def test_the_faces_inside_the_array_are_edges_and_a_single_plane_is_not():
    edges = region_edges((slice(10, 20), slice(0, 30)), (40, 30))
    assert edges[0].all() and edges[-1].all() and edges[1:-1].sum() == 0
    plane = region_edges((slice(2, 3), slice(0, 30), slice(5, 30)), (5, 30, 30))
    assert plane.shape == (1, 30, 25) and plane[0, :, 0].all() and not plane[0, :, 1:].any()


def test_a_new_object_larger_than_the_users_leaves_no_rim_and_others_are_replaced():
    shape = (60, 60)
    current = np.zeros(shape, np.int32)
    current[disk(shape, (15, 15), 6)] = 7  # the user repainted the model's object there as object 7
    current[disk(shape, (40, 40), 5)] = 2  # the model's object, not edited
    unedited = current != 7
    new = np.zeros(shape, np.int32)
    new[disk(shape, (15, 15), 8)] = 1  # the newer model's version of the user's object, a little larger
    new[disk(shape, (40, 40), 7)] = 2  # and of the other one
    out = write(current, new, unedited)
    assert set(np.unique(out[disk(shape, (15, 15), 9)])) == {0, 7}, "no rim around the user's object"
    np.testing.assert_array_equal(out == 102, new == 2)  # the other object replaced whole


def test_objects_cut_by_the_edge_of_the_region_stay_as_they_were():
    shape = (40, 60)
    current = np.zeros(shape, np.int32)
    current[disk(shape, (0, 20), 6)] = 3  # goes on above the region (row 0 is an edge)
    new = np.zeros(shape, np.int32)
    new[disk(shape, (0, 20), 8)] = 1
    new[disk(shape, (25, 40), 6)] = 2
    edges = np.zeros(shape, bool)
    edges[0] = True
    out = write(current, new, np.ones(shape, bool), edges)
    np.testing.assert_array_equal(out[:15], current[:15])  # the old object whole, no new piece beside it
    np.testing.assert_array_equal(out == 102, new == 2)


def test_an_object_is_not_removed_when_its_replacement_cannot_be_written():
    shape = (40, 60)
    current = np.zeros(shape, np.int32)
    current[10:20, 10:20] = 5  # edited by the user
    current[10:20, 22:32] = 6  # the model's, free
    unedited = current != 5
    new = np.zeros(shape, np.int32)
    new[10:20, 12:32] = 1  # one new object over both: it touches the user's edit, so it is not written
    out = write(current, new, unedited)
    np.testing.assert_array_equal(out, current)  # and object 6 stays rather than vanishing


def test_a_new_object_that_grazes_a_kept_one_is_written_without_the_grazed_pixels():
    shape = (40, 60)
    current = np.zeros(shape, np.int32)
    current[10:20, 10:20] = 5  # painted by the user
    current[10:20, 21:31] = 6  # the model's, beside it
    unedited = current != 5
    new = np.zeros(shape, np.int32)
    new[10:20, 19:31] = 1  # the newer model's version of 6, one column over the user's object
    out = write(current, new, unedited)
    assert (out == 5).sum() == 100 and (out == 101).sum() == 110 and not (out == 6).any()
