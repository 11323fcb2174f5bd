"""Images whose labels exceed the in-memory limit segment in the GUI into a zarr-backed Labels layer.

The limit is lowered with NAPARI_UNET_IN_MEMORY_LIMIT so that a small image counts as big.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_unet.core.inference import segment
from napari_unet.core.memory import LIMIT_ENV
from napari_unet.core.models import load_model
from napari_unet.synthetic import generate_nuclei
from napari_unet.widgets._scratch import META_KEY


@pytest.fixture
def big(monkeypatch):
    """A 256 x 256 image, over a limit of 64 KiB (its int32 labels take 256 KiB)."""
    monkeypatch.setenv(LIMIT_ENV, str(64 * 1024))
    return generate_nuclei((256, 256), seed=2)[0]


def _in_memory(image, monkeypatch, **kwargs):
    monkeypatch.delenv(LIMIT_ENV)
    try:
        return segment(image, load_model("tiny"), probabilities=True, **kwargs)
    finally:
        monkeypatch.setenv(LIMIT_ENV, str(64 * 1024))


def _scratch_folders(home):
    folder = home / "scratch"
    return sorted(p for p in folder.iterdir()) if folder.is_dir() else []


def test_a_big_image_segments_into_a_zarr_backed_labels_layer(qtbot, viewer, segment_widget, run_segment, big,
                                                              monkeypatch, isolated_home):
    from napari_unet.widgets._live import LiveLabels

    def no_copy(*args):
        raise AssertionError("the main thread copies no labels: the worker wrote them into the layer's array")

    monkeypatch.setattr(LiveLabels, "write", no_copy)
    viewer.add_image(big, name="big", scale=(0.5, 0.5), translate=(3, 4))
    assert run_segment(segment_widget) == "done", segment_widget.status.text()
    output = viewer.layers["big labels"]
    assert not isinstance(output.data, np.ndarray), "the labels stay on disk"
    assert type(output.data).__module__.startswith("zarr")
    assert tuple(output.scale) == (0.5, 0.5) and tuple(output.translate) == (3, 4)
    expected = _in_memory(big, monkeypatch, axes="YX").labels
    np.testing.assert_array_equal(output.data[:], expected)
    assert expected.max() > 0
    (folder,) = _scratch_folders(isolated_home)

    output.paint((10, 10), 7)  # napari's paint tool writes into the zarr array
    assert output.data[10, 10] == 7

    viewer.layers.remove(output)
    assert not folder.exists(), "removing the layer deletes its zarr store"


def test_a_big_stack_slice_with_probabilities(qtbot, viewer, segment_widget, run_segment, big, monkeypatch,
                                              isolated_home):
    stack = np.stack([big, big[::-1], big[:, ::-1]])
    viewer.add_image(stack, name="stack", axis_labels=("z", "y", "x"))
    viewer.dims.set_point(0, 1)
    segment_widget.scope_picker.setCurrentIndex(segment_widget.scope_picker.findData("slice"))
    segment_widget.probabilities_check.setChecked(True)
    assert run_segment(segment_widget) == "done", segment_widget.status.text()
    output = viewer.layers["stack labels"]
    assert not isinstance(output.data, np.ndarray) and output.data.shape == stack.shape
    expected = _in_memory(stack[1], monkeypatch, axes="YX")
    np.testing.assert_array_equal(output.data[1], expected.labels)
    assert not np.any(output.data[0]) and not np.any(output.data[2])

    interior = viewer.layers["stack P(interior)"]
    assert interior.data.shape == (1, 256, 256), "the probability layer of a slice is that slice"
    assert tuple(interior.translate) == (1, 0, 0)
    np.testing.assert_allclose(np.asarray(interior.data[0]), expected.probabilities[1], atol=1e-6)

    # a second run replaces the plugin's unedited output: the same zarr-backed layer, this slice cleared first
    viewer.dims.set_point(0, 2)
    assert run_segment(segment_widget) == "done", segment_widget.status.text()
    assert viewer.layers["stack labels"] is output or viewer.layers["stack labels"] == output
    np.testing.assert_array_equal(output.data[2], _in_memory(stack[2], monkeypatch, axes="YX").labels)
    np.testing.assert_array_equal(output.data[1], expected.labels)
    folders = {str(p) for p in _scratch_folders(isolated_home)}
    assert folders == {output.metadata[META_KEY], viewer.layers["stack P(interior)"].metadata[META_KEY]}, \
        "the labels and this run's probabilities; the replaced probabilities' store is gone"


def test_removing_the_output_mid_run_deletes_its_store_once_the_run_ends(qtbot, viewer, segment_widget, big,
                                                                         monkeypatch, isolated_home):
    import napari_unet.core.runner as runner

    real, calls = runner.Network.__call__, []

    def slow(self, batch):  # the worker spends its time inside a batch, and writes its tiles after it
        calls.append(1)
        __import__("time").sleep(0.3)
        return real(self, batch)

    monkeypatch.setattr(runner.Network, "__call__", slow)
    segment_widget.tile_spin.setValue(64)  # several tiles, so that the run is still going
    segment_widget.probabilities_check.setChecked(True)
    viewer.add_image(big, name="big")
    with qtbot.waitSignal(segment_widget.run_finished, timeout=60_000) as blocker:
        segment_widget.run_button.click()
        qtbot.waitUntil(lambda: len(calls) >= 2, timeout=30_000)
        assert len(_scratch_folders(isolated_home)) == 2, "labels and probabilities, written during the run"
        folder = viewer.layers["big labels"].metadata[META_KEY]
        viewer.layers.remove("big labels")
        assert Path(folder).is_dir(), "kept while the worker may still write into it"
    assert blocker.args == ["cancelled"]
    assert _scratch_folders(isolated_home) == [], "both stores go once the worker stopped writing"


def test_a_crop_view_indexes_its_part_of_the_full_array():
    """What a cropped run writes through lands in its part of the output: a fixed Z, an offset in Y and X."""
    from napari_unet.widgets._scratch import CropView

    full = np.zeros((3, 20, 30), np.int32)
    view = CropView(full, (slice(1, 2), slice(5, 15), slice(10, 30)), (True, False, False))
    assert view.shape == (10, 20) and view.ndim == 2 and view.dtype == np.int32
    view[2:4, -3:] = 7
    view[0] = 1
    view[..., 0] = 2
    expected = np.zeros_like(full)
    part = expected[1, 5:15, 10:30]
    part[2:4, -3:] = 7
    part[0] = 1
    part[..., 0] = 2
    np.testing.assert_array_equal(full, expected)
    np.testing.assert_array_equal(view[:, :], part)
    assert view[-1, -1] == part[-1, -1]
    with pytest.raises(IndexError):
        view[10, 0]
    with pytest.raises(IndexError):
        view[::2]
