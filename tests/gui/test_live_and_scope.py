"""Labels shown while they are computed look exactly like a full redraw; run scopes map back to the layer."""
from __future__ import annotations

import numpy as np
import pytest

from napari_unet.widgets._live import LiveLabels, blocks
from napari_unet.widgets._scope import MIN_VIEW_SIZE, plan_scope, scope_titles


def _wait_idle(qtbot, live: LiveLabels) -> None:
    idle = []
    live.when_idle(lambda: idle.append(True))
    qtbot.waitUntil(lambda: bool(idle), timeout=10_000)


@pytest.mark.parametrize("shape", [(300, 260), (3, 300, 260)])
def test_piecewise_redraw_equals_a_full_refresh(qtbot, make_napari_viewer, shape):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing to compare
    layer = viewer.add_labels(np.zeros(shape, np.int32))
    if len(shape) == 3:
        viewer.dims.set_current_step(0, 1)
    live = LiveLabels(layer)
    values = np.arange(1, 1 + 200 * 150, dtype=np.int32).reshape(200, 150) % 37
    lead = (slice(1, 2),) if len(shape) == 3 else ()
    live.write((*lead, slice(50, 250), slice(100, 250)), values)
    live.write((*lead, slice(0, 40), slice(0, 40)), np.full((40, 40), 5))
    _wait_idle(qtbot, live)
    shown = viewer.screenshot(canvas_only=True, flash=False)
    assert len(np.unique(shown.reshape(-1, shown.shape[-1]), axis=0)) > 10, "the labels are on screen"
    layer.refresh()
    np.testing.assert_array_equal(shown, viewer.screenshot(canvas_only=True, flash=False))


def test_a_region_on_another_slice_changes_nothing_on_screen(qtbot, make_napari_viewer):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing to compare
    layer = viewer.add_labels(np.zeros((3, 64, 64), np.int32))
    layer.data[0, 10:20, 10:20] = 3
    layer.refresh()
    qtbot.wait(100)  # let the window settle to its size
    before = viewer.screenshot(canvas_only=True, flash=False)
    live = LiveLabels(layer)
    live.write((slice(2, 3), slice(0, 64), slice(0, 64)), np.full((64, 64), 9))
    _wait_idle(qtbot, live)
    assert (layer.data[2] == 9).all()
    np.testing.assert_array_equal(before, viewer.screenshot(canvas_only=True, flash=False))


def test_blocks_cover_a_region_exactly():
    region = (slice(2, 3), slice(10, 1100), slice(0, 700))
    parts = blocks(region, size=512)
    covered = np.zeros((3, 1200, 800), int)
    for part in parts:
        covered[part] += 1
    assert covered[region].min() == 1 and covered.sum() == 1090 * 700


def test_scopes():
    whole = plan_scope((4, 5, 100, 120), "TZYX", "whole", (1, 2, 50, 60), model_dims=2)
    assert whole.is_whole and whole.axes == "TZYX"

    flat = plan_scope((4, 5, 100, 120), "TZYX", "slice", (1.2, 3.6, 50, 60), model_dims=2)
    assert flat.image_index[:2] == (1, 4) and flat.axes == "YX" and flat.description == "t=1, z=4"
    assert flat.to_output((slice(0, 10), slice(5, 8))) == (slice(1, 2), slice(4, 5), slice(0, 10), slice(5, 8))

    volume = plan_scope((4, 5, 100, 120), "TZYX", "slice", (2, 3, 50, 60), model_dims=3)
    assert volume.axes == "ZYX" and volume.output_index[0] == slice(2, 3)
    assert volume.to_output((1, slice(0, 4), slice(0, 4)))[:2] == (slice(2, 3), slice(1, 2))

    channels = plan_scope((3, 100, 120), "CYX", "view", (0, 50, 60), view={"Y": (40.3, 60.2), "X": (-10, 500)})
    assert channels.axes == "CYX" and channels.image_index[0] == slice(None)
    (ys, xs) = channels.output_index
    assert ys.stop - ys.start == MIN_VIEW_SIZE and ys.start <= 40 and ys.stop >= 61, "widened around the view"
    assert xs == slice(0, 120), "clipped to the image"
    with pytest.raises(ValueError, match="scope"):
        plan_scope((10, 10), "YX", "everything")


def test_scope_titles_follow_the_axes():
    assert scope_titles("YX", 2)["whole"] == "Whole image" and scope_titles("YXC", 2)["whole"] == "Whole image"
    assert scope_titles("ZYX", 2) == {"whole": "Whole stack", "slice": "Current slice", "view": "Region in view"}
    assert scope_titles("TYX", 2)["slice"] == "Current time point"
    assert scope_titles("TZYX", 2)["slice"] == "Current slice / time point"
    assert scope_titles("ZYX", 3)["whole"] == "Whole stack" and scope_titles("TZYX", 3)["slice"] == "Current time point"
