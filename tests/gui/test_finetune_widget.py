"""The Fine-tune widget: pairs from layers, a real training run (in a child process) with a live plot, a new
version selected, its held-out score beside its parent's, and a roll back to the parent."""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from qtpy.QtCore import Qt

import child_training
from napari_unet.core.library import library_dir
from napari_unet.core.versions import read_annotations
from napari_unet.widgets._layers import output_record
from napari_unet.widgets._regions import regions_mask


def test_add_current_layers_pairs_the_output_with_its_image(viewer, finetune_widget, nuclei):
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="corrected")
    regions = viewer.add_shapes([[[10, 10], [10, 60], [60, 60], [60, 10]]], shape_type="rectangle", name="reviewed")
    viewer.layers.selection.active = viewer.layers["corrected"]
    finetune_widget.add_button.click()
    (row,) = finetune_widget.rows
    assert (row.image.layer.name, row.labels.layer.name, row.regions.layer) == ("cells", "corrected", regions)
    finetune_widget.add_button.click()
    assert len(finetune_widget.rows) == 1, "the same pair is not added twice"


def test_finetune_runs_end_to_end_and_selects_the_new_version(qtbot, viewer, segment_widget, finetune_widget,
                                                              nuclei):
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    painted = viewer.add_labels(labels.copy(), name="corrected")
    viewer.layers.selection.active = painted
    finetune_widget.add_button.click()
    assert finetune_widget.model_picker.model_name == "tiny"

    with qtbot.waitSignal(finetune_widget.run_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(finetune_widget.run_button, Qt.MouseButton.LeftButton)
        assert finetune_widget.run_button.text() == "Stop"
        painted.data[:10] = 99  # the user goes on painting: training uses the copy taken at start
    assert blocker.args == ["done"]
    assert finetune_widget.run_button.text() == "Fine-tune"

    saved = finetune_widget.saved_path
    assert saved is not None and saved.parent == library_dir() and saved.name == "tiny-v2"
    assert segment_widget.model_picker.model_path == saved, "the new version is selected for segmenting"
    assert finetune_widget.segment_again_button.isEnabled()
    losses = finetune_widget.plot.series["loss"]
    assert len(losses) == 4 and all(np.isfinite(value) for _, value in losses)
    (trained_labels, _, axes), = read_annotations(saved)
    np.testing.assert_array_equal(trained_labels, labels)
    assert axes == "YX"

    with qtbot.waitSignal(segment_widget.run_finished, timeout=30_000) as segmented:
        qtbot.mouseClick(finetune_widget.segment_again_button, Qt.MouseButton.LeftButton)
    assert segmented.args == ["done"]
    assert output_record(viewer.layers["cells labels"])["model"] == "tiny-v2"


def test_segment_again_while_segment_runs_says_so_and_changes_nothing(segment_widget, finetune_widget,
                                                                       make_tiny_model, monkeypatch):
    from napari_unet.widgets.segment_widget import SegmentWidget

    make_tiny_model("tiny-v2")
    finetune_widget.saved_path = library_dir() / "tiny-v2"
    monkeypatch.setattr(SegmentWidget, "running", property(lambda self: True))
    finetune_widget.segment_again()
    assert "still running" in finetune_widget.status.text() and "tiny-v2" in finetune_widget.status.text()
    assert segment_widget.model_picker.model_name == "tiny", "the model of the run on screen stays selected"


def test_a_pair_whose_layer_is_removed_takes_no_other_layer_in_its_place(viewer, finetune_widget):
    first_image, first_labels = viewer.add_image(np.zeros((32, 32)), name="a"), viewer.add_labels(
        np.zeros((32, 32), np.int32), name="a labels")
    second_image, second_labels = viewer.add_image(np.ones((32, 32)), name="b"), viewer.add_labels(
        np.ones((32, 32), np.int32), name="b labels")
    row = finetune_widget.add_pair(first_image, first_labels)
    finetune_widget.add_pair(second_image, second_labels)
    viewer.layers.remove(first_labels)
    viewer.add_labels(np.ones((32, 32), np.int32), name="another")  # the pickers are rebuilt again
    assert row.labels.layer is None and row.image.layer == first_image, "not b's labels, nor the newest"
    assert row.labels.currentIndex() == -1 and "removed" in row.labels.placeholderText()  # what the row shows
    with pytest.raises(ValueError, match="pair 1"):
        finetune_widget.samples()
    row.labels.set_layer(second_labels)  # the user chooses again
    assert row.labels.layer == second_labels


def test_a_pair_whose_reviewed_regions_are_removed_does_not_train_on_the_whole_labels(viewer, finetune_widget):
    """Without its reviewed regions, a pair of partly corrected labels would train on everything the user never
    checked: it waits for the user to choose a regions layer again, or 'none' on purpose."""
    image, labels = viewer.add_image(np.zeros((32, 32))), viewer.add_labels(np.ones((32, 32), np.int32))
    regions = viewer.add_shapes([[[2, 2], [2, 20], [20, 20], [20, 2]]], shape_type="rectangle", name="reviewed")
    viewer.add_shapes([[[0, 0], [0, 9], [9, 9], [9, 0]]], shape_type="rectangle", name="other shapes")
    row = finetune_widget.add_pair(image, labels, regions)
    viewer.layers.remove(regions)
    assert row.regions.layer is None and row.regions.currentIndex() == -1, "neither 'none' nor the other shapes"
    assert "removed" in row.regions.placeholderText()
    with pytest.raises(ValueError, match="pair 1.*reviewed"):
        finetune_widget.samples()
    row.regions.set_layer(None)  # the user chooses 'none': the whole labels train
    (sample,) = finetune_widget.samples()
    assert sample.mask is None


def test_plot_is_drawn(qtbot, finetune_widget):
    finetune_widget.plot.add(1, loss=0.9)
    finetune_widget.plot.add(2, loss=0.7, val_loss=0.8, val_dice=0.4)
    image = finetune_widget.plot.grab().toImage()
    colours = {image.pixelColor(x, y).name() for x in range(0, image.width(), 2) for y in range(0, image.height(), 2)}
    assert len(colours) > 5, "the curves and axes are painted"


def test_stop_saves_the_best_so_far(qtbot, viewer, finetune_widget, nuclei):
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="corrected")
    finetune_widget.add_current_layers()
    finetune_widget.steps_spin.setValue(0)
    finetune_widget.budget_spin.setValue(600)
    with qtbot.waitSignal(finetune_widget.run_finished, timeout=60_000) as blocker:
        finetune_widget.run_button.click()
        qtbot.waitUntil(lambda: len(finetune_widget.plot.series["loss"]) >= 2, timeout=30_000)
        finetune_widget.run_button.click()
        assert finetune_widget.run_button.text() == "Stopping..."
    assert blocker.args == ["done"] and (library_dir() / "tiny-v2").is_dir()
    # stopped before a validation beat the start: the best so far is the start itself, and the widget says so
    assert "Stopped early" in finetune_widget.status.text()


def test_mismatched_pair_is_refused_with_a_message(viewer, finetune_widget, nuclei):
    image, _ = nuclei
    viewer.add_image(image, name="cells")
    viewer.add_labels(np.zeros((50, 50), np.int32), name="wrong")
    finetune_widget.add_current_layers()
    finetune_widget.run_button.click()
    assert not finetune_widget.running
    assert "shape" in finetune_widget.status.text() and "wrong" in finetune_widget.status.text()


def test_regions_mask_from_rectangles_and_3d_shapes():
    from napari.layers import Labels, Shapes

    labels = Labels(np.zeros((4, 50, 60), np.int32), scale=(1, 2, 2))
    flat = Shapes([[[0, 0], [0, 20], [20, 20], [20, 0]]], shape_type="rectangle", scale=(2, 2))
    mask = regions_mask(flat, labels)
    assert mask.shape == labels.data.shape and mask[:, :20, :20].all() and not mask[:, 25:].any()
    assert mask.all(axis=0).sum() == mask[0].sum(), "a 2D shape marks every plane"

    placed = Shapes([[[2, 10, 10], [2, 10, 40], [2, 40, 40], [2, 40, 10]]], shape_type="rectangle")
    mask = regions_mask(placed, labels)
    assert mask[2, 12, 12] and not mask[1].any() and not mask[3].any()
    with pytest.raises(ValueError, match="rectangle"):
        regions_mask(Shapes([[[0, 0], [5, 5]]], shape_type="line"), labels)


def test_finetune_on_a_stack_with_reviewed_regions(qtbot, viewer, finetune_widget):
    from napari_unet.synthetic import generate_nuclei

    stack, labels = generate_nuclei((3, 64, 64), seed=3)
    viewer.add_image(stack, name="stack")
    viewer.add_labels(labels, name="stack corrected")
    viewer.add_shapes([[[0, 0], [0, 48], [48, 48], [48, 0]]], shape_type="rectangle", name="reviewed")
    row = finetune_widget.add_current_layers()
    assert row.regions.layer.name == "reviewed"
    (sample,) = finetune_widget.samples()
    assert sample.axes == "ZYX" and sample.mask.shape == stack.shape and sample.mask[:, :48, :48].all()
    finetune_widget.steps_spin.setValue(2)
    with qtbot.waitSignal(finetune_widget.run_finished, timeout=60_000) as blocker:
        finetune_widget.run_button.click()
    assert blocker.args == ["done"], finetune_widget.status.text()
    (_, annotated, axes), = read_annotations(finetune_widget.saved_path)
    assert axes == "ZYX" and not annotated[:, 50:, 50:].any(), "only the reviewed regions were trained on"


def _train_on_nuclei(qtbot, viewer, finetune_widget, nuclei):
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    viewer.layers.selection.active = viewer.add_labels(labels.copy(), name="corrected")
    finetune_widget.add_button.click()
    with qtbot.waitSignal(finetune_widget.run_finished, timeout=60_000) as blocker:
        finetune_widget.start()
    return blocker.args


def test_start_from_random_weights_as_a_new_kind(qtbot, viewer, finetune_widget, nuclei):
    from napari_unet.core.models import load_model

    finetune_widget.start_picker.setCurrentIndex(1)
    finetune_widget.kind_picker.setCurrentIndex(1)
    assert _train_on_nuclei(qtbot, viewer, finetune_widget, nuclei) == ["done"]
    settings = load_model(finetune_widget.saved_path).config.provenance["settings"]
    assert settings["from_scratch"] and settings["new_kind"] and settings["learning_rate"] == 3e-3


def test_a_version_that_did_not_beat_its_start_is_not_selected(qtbot, viewer, segment_widget, finetune_widget,
                                                               monkeypatch):
    from napari_unet.synthetic import generate_nuclei

    child_training.use(monkeypatch, child_training.no_change)  # steps that change nothing
    base = segment_widget.model_picker.model_path
    assert _train_on_nuclei(qtbot, viewer, finetune_widget, generate_nuclei((128, 128), seed=1)) == ["done"]
    assert (library_dir() / "tiny-v2").is_dir(), "the version is kept, with its history"
    assert segment_widget.model_picker.model_path == base, "the starting model stays selected"
    assert finetune_widget.saved_path is None and not finetune_widget.segment_again_button.isEnabled()
    assert "did not beat tiny" in finetune_widget.status.text()


def test_a_failure_is_shown_with_its_traceback(qtbot, viewer, finetune_widget, nuclei, monkeypatch):
    """napari's bundle has no console: the traceback is in the notification, behind 'View Traceback'."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    child_training.use(monkeypatch, child_training.failing)
    shown = []
    notification_manager.notification_ready.connect(shown.append)
    try:
        assert _train_on_nuclei(qtbot, viewer, finetune_widget, nuclei) == ["failed"]
    finally:
        notification_manager.notification_ready.disconnect(shown.append)
    (note,) = [n for n in shown if isinstance(n, ErrorNotification)]
    assert "something deep inside torch" in note.message and "View Traceback" in note.message
    assert "failing_step" in note.as_text(), "the traceback goes with the notification"
    assert not (library_dir() / "tiny-v2").exists()


def _training_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "napari-unet fine-tuning"]


def test_training_runs_in_a_child_and_roll_back_selects_the_parent(qtbot, viewer, segment_widget, finetune_widget,
                                                                   nuclei, monkeypatch):
    from napari_unet.core import training

    def not_here(*args):
        raise AssertionError("training ran in the viewer's process")

    monkeypatch.setattr(training, "_train_step", not_here)
    base = segment_widget.model_picker.model_path
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    viewer.layers.selection.active = viewer.add_labels(labels.copy(), name="corrected")
    finetune_widget.add_button.click()
    with qtbot.waitSignal(finetune_widget.run_finished, timeout=60_000) as blocker:
        finetune_widget.start()
        qtbot.waitUntil(lambda: len(_training_children()) == 1, timeout=10_000)
    assert blocker.args == ["done"], finetune_widget.status.text()
    assert len(finetune_widget.plot.series["loss"]) == 4, "each step's progress came back from the child"
    qtbot.waitUntil(lambda: not _training_children(), timeout=10_000)
    new = library_dir() / "tiny-v2"
    assert finetune_widget.saved_path == new and segment_widget.model_picker.model_path == new
    scores = finetune_widget.scores.text()
    assert finetune_widget.scores.isVisibleTo(finetune_widget)
    assert "F1@0.5" in scores and "tiny " in scores and "tiny-v2 " in scores, scores

    assert finetune_widget.rollback_button.isEnabled()
    qtbot.mouseClick(finetune_widget.rollback_button, Qt.MouseButton.LeftButton)
    assert segment_widget.model_picker.model_path == base, "the Segment dock follows"
    assert finetune_widget.model_picker.model_path == base
    assert new.is_dir(), "the new version stays in the library"
    assert not finetune_widget.rollback_button.isEnabled() and "Rolled back" in finetune_widget.status.text()


def test_closing_the_dock_stops_the_child(qtbot, viewer, finetune_widget, nuclei, monkeypatch):
    child_training.use(monkeypatch, child_training.slow, seconds=0.1)
    image, labels = nuclei
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="corrected")
    finetune_widget.add_current_layers()
    finetune_widget.steps_spin.setValue(0)
    finetune_widget.budget_spin.setValue(600)
    with qtbot.waitSignal(finetune_widget.run_finished, timeout=30_000):
        finetune_widget.start()
        qtbot.waitUntil(lambda: len(finetune_widget.plot.series["loss"]) >= 2, timeout=30_000)
        viewer.window.remove_dock_widget(finetune_widget)  # what the dock's close button does
    qtbot.waitUntil(lambda: not _training_children(), timeout=10_000)
    assert "Stopped early" in finetune_widget.status.text()


def test_a_version_that_scores_lower_on_the_held_out_annotations_is_not_selected(segment_widget, finetune_widget,
                                                                                 notes_of):
    """Held-out loss fell but fewer objects are right: the dock shows both scores and keeps the parent."""
    from napari_unet.core.cancel import CancelToken
    from napari_unet.core.training_process import TunedVersion
    from napari_unet.widgets import finetune_widget as module
    from napari_unet.widgets._workers import Outcome

    class Progress:
        def close(self):
            pass

    shown = notes_of(module)
    base = segment_widget.model_picker.model_path
    version = TunedVersion(library_dir() / "tiny-v2", base, {"val_loss": 0.5, "val_f1": 0.8},
                           {"val_loss": 0.4, "val_f1": 0.7}, improved=True)
    run = {"cancel": CancelToken(), "progress": Progress(), "base": "tiny", "predictions": 0}
    finetune_widget._finish(run, Outcome("done", value=version))
    assert segment_widget.model_picker.model_path == base and finetune_widget.saved_path is None
    assert not finetune_widget.rollback_button.isEnabled()
    assert "scores lower than tiny" in finetune_widget.status.text()
    assert [severity for severity, _ in shown] == ["warning"]
    assert "tiny 0.800" in finetune_widget.scores.text() and "tiny-v2 0.700" in finetune_widget.scores.text()

    finetune_widget._finish(run, Outcome("done", value=TunedVersion(library_dir() / "tiny-v3", base)))
    assert "No held-out score" in finetune_widget.scores.text(), "too few annotations to hold some out"


def test_a_colour_pair_for_a_one_channel_model_is_read_as_segment_reads_it(viewer, finetune_widget, nuclei):
    from napari_unet.core.library import resolve_model_folder
    from napari_unet.core.models import load_model
    from napari_unet.core.training_data import prepare_data

    image, labels = nuclei
    rgb = np.stack([255 - image, 255 - image // 2, 255 - image // 3], axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="he", rgb=True)
    viewer.add_labels(labels, name="corrected")
    viewer.layers.selection.active = viewer.layers["corrected"]
    finetune_widget.add_button.click()
    (sample,) = finetune_widget.samples()
    assert sample.axes == "YXC" and sample.labels.shape == rgb.shape[:2]
    with pytest.warns(UserWarning, match="colour"):
        data = prepare_data(load_model(resolve_model_folder("tiny")), [sample], None, 0.0, 10.0, 5.0)
    assert data.items[0].image.shape[-2:] == rgb.shape[:2]


def test_the_pair_and_segment_again_follow_the_image_an_output_was_made_from_not_its_old_name(viewer,
                                                                                             finetune_widget):
    from napari_unet.widgets._layers import mark_output, reusable_output

    made_from = viewer.add_image(np.zeros((32, 32)), name="cells")
    labels = viewer.add_labels(np.zeros((32, 32), np.int32), name="cells labels")
    mark_output(labels, made_from, "nuclei")
    made_from.name = "cells, day 1"
    newcomer = viewer.add_image(np.ones((32, 32)), name="cells")  # another image takes the old name
    viewer.layers.selection.active = labels
    row = finetune_widget.add_current_layers()
    assert row.image.layer == made_from
    assert reusable_output(viewer.layers, newcomer, (32, 32)) is None, "the newcomer's run must not overwrite it"
    assert reusable_output(viewer.layers, made_from, (32, 32)) == labels
