"""Segment keeps the prediction a user starts correcting from; Fine-tune passes it, so corrections weigh more."""
from __future__ import annotations

import numpy as np
import pytest

import napari_unet.core.inference as inference
from napari_unet.core.library import library_dir, read_config_json
from napari_unet.core.memory import LIMIT_ENV
from napari_unet.widgets._predictions import plan_unedited, prediction_of


@pytest.fixture
def segmented(viewer, segment_widget, nuclei, run_segment):
    """The nuclei image segmented by the Segment dock: its output Labels layer."""
    viewer.add_image(nuclei[0], name="cells")
    assert run_segment(segment_widget) == "done"
    return viewer.layers["cells labels"]


def _correct(layer) -> None:
    """A user's stroke that changes the labels: a new object painted over background (or erasing one)."""
    data = np.asarray(layer.data)
    background = np.argwhere(data == 0)
    if len(background):
        layer.paint(tuple(background[len(background) // 2]), int(data.max()) + 1)
    else:
        layer.paint((48, 48), 0)


def _train(qtbot, widget) -> dict:
    """Run Fine-tune to the end: the tuned version's last history entry, and the status when training started.
    The version is saved whether or not it beat its start (the test's library is fresh: it is tiny-v2)."""
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.start()
        started = widget.status.text()
    assert blocker.args == ["done"], widget.status.text()
    history = read_config_json(library_dir() / "tiny-v2" / "config.json")["history"]
    return {"started": started, **history[-1]}


def test_segment_keeps_a_private_copy_of_its_output(segmented):
    kept = prediction_of(segmented)
    assert kept is not None
    np.testing.assert_array_equal(kept, segmented.data)
    assert kept is not segmented.data and not kept.flags.writeable

    before = kept.copy()
    _correct(segmented)
    assert (segmented.data != before).any(), "the stroke changed the layer"
    np.testing.assert_array_equal(prediction_of(segmented), before)


def test_a_new_segment_replaces_the_prediction(viewer, segment_widget, segmented, run_segment, monkeypatch):
    first = prediction_of(segmented)
    real = inference.segment_steps

    def with_a_new_object(*args, **kwargs):
        result = yield from real(*args, **kwargs)
        result.labels = np.asarray(result.labels).copy()
        result.labels[:8, :8] = 500  # a result unlike the first
        return result

    monkeypatch.setattr(inference, "segment_steps", with_a_new_object)
    assert run_segment(segment_widget) == "done"
    assert viewer.layers["cells labels"] is segmented, "the unedited output was reused"
    second = prediction_of(segmented)
    assert second is not None and second is not first
    np.testing.assert_array_equal(second, segmented.data)
    assert (second[:8, :8] == 500).all() and not (first[:8, :8] == 500).all()


def test_a_stopped_run_leaves_no_prediction(segment_widget, segmented, run_segment, monkeypatch):
    from napari_unet.core.errors import Cancelled

    def cancelled_at_once(*args, **kwargs):
        raise Cancelled("cancelled by the user")
        yield  # a generator, like the real one

    assert prediction_of(segmented) is not None
    monkeypatch.setattr(inference, "segment_steps", cancelled_at_once)
    assert run_segment(segment_widget) == "cancelled"
    assert prediction_of(segmented) is None


def test_a_result_too_large_for_memory_keeps_no_prediction(viewer, segment_widget, nuclei, run_segment,
                                                           monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, str(16 * 1024))  # the 96 x 96 int32 labels take 36 KiB: a zarr-backed layer
    viewer.add_image(nuclei[0], name="cells")
    assert run_segment(segment_widget) == "done"
    output = viewer.layers["cells labels"]
    assert not isinstance(output.data, np.ndarray)
    assert prediction_of(output) is None


def test_an_output_over_the_size_cap_keeps_no_prediction(viewer, segment_widget, nuclei, run_segment, monkeypatch):
    from napari_unet.widgets import _predictions

    monkeypatch.setattr(_predictions, "MAX_BYTES", nuclei[0].size - 1)  # under the uint16 labels' bytes
    viewer.add_image(nuclei[0], name="cells")
    assert run_segment(segment_widget) == "done"
    assert isinstance(viewer.layers["cells labels"].data, np.ndarray)
    assert prediction_of(viewer.layers["cells labels"]) is None


def test_a_duplicate_has_no_prediction(viewer, segmented):
    from napari.layers._layer_actions import _duplicate_layer

    viewer.layers.selection = {segmented}
    _duplicate_layer(viewer.layers)
    copy = viewer.layers["cells labels copy"]
    np.testing.assert_array_equal(copy.data, segmented.data)
    assert prediction_of(copy) is None and prediction_of(segmented) is not None


def test_replaced_data_or_other_labels_have_no_prediction(viewer, segmented, finetune_widget, nuclei):
    image = viewer.layers["cells"]
    painted = viewer.add_labels(nuclei[1].copy(), name="mine")  # labels the user made: not from Segment
    finetune_widget.add_pair(image, painted)
    finetune_widget.add_pair(image, segmented)
    mine, from_segment = finetune_widget.samples()
    assert mine.prediction is None
    np.testing.assert_array_equal(from_segment.prediction, prediction_of(segmented))

    segmented.data = nuclei[1].astype(segmented.data.dtype)  # e.g. labels loaded from a file, same shape
    assert prediction_of(segmented) is None
    assert finetune_widget.samples()[1].prediction is None


@pytest.mark.parametrize("painted", [True, False])
def test_finetune_on_a_corrected_output_counts_the_corrections(qtbot, viewer, segmented, finetune_widget, painted):
    kept = prediction_of(segmented).copy()
    if painted:
        _correct(segmented)
    viewer.layers.selection.active = segmented
    (row,) = [finetune_widget.add_current_layers()]
    assert row.labels.layer == segmented and row.image.layer.name == "cells"
    (sample,) = finetune_widget.samples()
    np.testing.assert_array_equal(sample.prediction, kept)
    assert (sample.labels != sample.prediction).any() == painted

    history = _train(qtbot, finetune_widget)
    assert "corrections weigh 5x" in history["started"]
    message = finetune_widget.status.text()
    if painted:
        assert history["corrected_pixels"] > 0 and history["correction_weight"] == 5
        assert f"{history['corrected_pixels']:,} corrected pixels weighed 5x" in message
    else:
        assert history["corrected_pixels"] == 0
        assert "no corrections to weigh more" in message


def test_finetune_on_labels_the_user_made_has_no_corrections(qtbot, viewer, finetune_widget, nuclei):
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    viewer.layers.selection.active = viewer.add_labels(labels.copy(), name="mine")
    finetune_widget.add_button.click()
    assert finetune_widget.samples()[0].prediction is None
    history = _train(qtbot, finetune_widget)
    assert "weigh" not in history["started"] and "corrected" not in finetune_widget.status.text()
    assert history["corrected_pixels"] == 0


def test_live_writes_a_new_versions_split_like_the_users_and_keeps_its_other_changes_out():
    """Live writes only the kinds of change the user made, and new outlines where the user drew some
    (core.change_kinds)."""
    shape = (40, 80)
    kept = np.zeros(shape, np.int32)  # Segment's output
    kept[2:8, 2:14] = 1  # a merged pair: the user splits it
    kept[20:26, 2:14] = 2  # another merged pair, unedited
    kept[20:25, 30:35] = 3  # a nucleus, unedited
    kept[20:25, 50:55] = 4  # and another
    current = kept.copy()
    current[2:8, 8:14] = 9
    new = np.zeros(shape, np.int32)  # the new version's labels
    new[2:8, 2:8], new[2:8, 8:14] = 1, 2
    new[20:26, 2:8], new[20:26, 8:14] = 3, 4  # splits the other pair as the user did: written
    new[20:25, 50:55] = 5  # nucleus 3 gone: a removal, which the user never made
    new[30:36, 60:66] = 6  # a new object on background, which the user never drew
    kept[30:35, 20:25] = current[30:35, 20:25] = 7  # a nucleus the new version outlines a little wider
    new[30:35, 20:26] = 7
    whole = (slice(0, 40), slice(0, 80))
    written = plan_unedited(current, kept, new, True, None, whole, shape)
    assert written[20:26, 2:14].all(), "the split of the look-alike pair is written"
    assert not written[20:25, 30:35].any(), "nucleus 3 stays: the user removed nothing"
    assert not written[30:36, 60:66].any(), "no object is added: the user added none"
    assert not written[2:8, 8:14].any(), "the user's stroke stays"
    assert written[30:35, 20:26].all(), "the user drew outlines (of the split pair): new outlines are written"
    current = kept.copy()
    current[20:25, 30:35] = 0  # the user's only correction erases nucleus 3: they drew no outline
    written = plan_unedited(current, kept, new, True, None, whole, shape)
    assert not written[30:35, 20:26].any(), "no new outline of an object: the user drew none"
    assert not written[20:26, 2:14].any(), "and no split: the user split nothing"


def test_corrections_made_outside_the_view_say_what_a_new_version_may_change_in_it():
    """The user split a pair, then moved the view on: the region in view holds no correction of theirs."""
    shape = (30, 60)
    kept = np.zeros(shape, np.int32)
    kept[2:8, 2:14] = 1  # a merged pair
    kept[20:25, 30:35] = 2  # a nucleus
    new = np.zeros(shape, np.int32)
    new[2:8, 2:8], new[2:8, 8:14] = 3, 4  # the new version splits the pair
    whole = (slice(0, 30), slice(0, 60))
    written = plan_unedited(kept, kept, new, True, None, whole, shape, frozenset({"split"}))
    assert written[2:8, 2:14].all() and not written[20:25, 30:35].any(), "the split, not the removal"
    everything = plan_unedited(kept, kept, new, True, None, whole, shape)
    assert everything[20:25, 30:35].all(), "no correction anywhere: nothing to go by, every change is written"
