"""Live mode of the Fine-tune dock: training in a child process in rounds, strokes sent when the user pauses, better
versions re-segmenting the view except where the user edited, and a clean stop that keeps the versions.

Each test starts a training child (a few seconds), so they are few."""
from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import numpy as np
import pytest

import child_training
from napari_unet.core.library import library_dir
from napari_unet.synthetic import generate_nuclei
from napari_unet.widgets._predictions import prediction_of


def _training_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "napari-unet fine-tuning"]


@pytest.fixture
def segmented(qtbot, viewer, segment_widget, finetune_widget, run_segment):
    """A 160 x 160 image segmented by the tiny model, its output layer added as the training pair, and the
    Live tick every 300 ms."""
    image, _ = generate_nuclei((160, 160), seed=1)
    viewer.add_image(image, name="cells")
    assert run_segment(segment_widget) == "done"
    labels = viewer.layers["cells labels"]
    assert prediction_of(labels) is not None
    viewer.layers.selection.active = labels
    finetune_widget.add_button.click()
    finetune_widget.live.timer.setInterval(300)
    yield labels
    if finetune_widget.live.running:  # a failed test must not leave a child training
        with qtbot.waitSignal(finetune_widget.live.stopped, timeout=30_000):
            finetune_widget.live_button.setChecked(False)


def corrected_nuclei(layer) -> tuple[np.ndarray, np.ndarray]:
    """The tiny model labels everything as one object: make the layer's labels (and their kept prediction) the
    true nuclei of the image, as if Segment had found them, then edit them as a user does: a new object painted
    in and most of an object erased (a new outline, so Live may write new outlines of the others). Returns the
    nuclei and the labels before the edits."""
    from napari_unet.widgets._predictions import keep_prediction

    nuclei = generate_nuclei((160, 160), seed=1)[1]
    layer.data[:] = nuclei
    assert keep_prediction(layer)
    before = layer.data.copy()
    layer.paint((80, 80), 77)
    rows, cols = np.nonzero(nuclei == 5)
    layer.data[rows.min():rows.max() + 1, cols.min():cols.min() + (cols.max() - cols.min()) * 3 // 4] = 0
    return nuclei, before


def test_live_trains_in_a_child_and_sends_a_stroke_at_the_next_tick(qtbot, viewer, finetune_widget, segmented,
                                                                    tmp_path, monkeypatch):
    from napari_unet.core import training

    def not_here(*args):
        raise AssertionError("training ran in the viewer's process")

    monkeypatch.setattr(training, "_train_step", not_here)
    child_training.use_live(monkeypatch, tmp_path)
    shown = []
    show = finetune_widget.progress_bar.set_progress
    monkeypatch.setattr(finetune_widget.progress_bar, "set_progress",
                        lambda done, total, text="": (shown.append(text), show(done, total, text)))
    # the whole image reviewed: every round has a held-out score, so it trains (unscored rounds stop at once)
    viewer.add_shapes([[[0, 0], [0, 159], [159, 159], [159, 0]]], shape_type="rectangle", name="reviewed")
    finetune_widget.rows[0].regions.set_layer(viewer.layers["reviewed"])
    finetune_widget.live_button.setChecked(True)
    assert finetune_widget.live.running and not finetune_widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: len(_training_children()) == 1, timeout=10_000)
    qtbot.waitUntil(lambda: (tmp_path / "snapshot-1.npy").exists(), timeout=30_000)
    assert not (np.load(tmp_path / "snapshot-1.npy") == 77).any()

    segmented.paint((40, 40), 77)  # napari's paint tool: one brush stroke, with its paint event
    assert (segmented.data == 77).any()
    qtbot.waitUntil(lambda: (tmp_path / "snapshot-2.npy").exists(), timeout=30_000)
    sent = np.load(tmp_path / "snapshot-2.npy")
    np.testing.assert_array_equal(sent == 77, segmented.data == 77)
    assert "round" in finetune_widget.live_line.text() and "using tiny" in finetune_widget.live_line.text()
    losses = finetune_widget.plot.series["loss"]  # the rounds' steps draw one rising loss curve
    assert len(losses) >= 2 and [x for x, _ in losses] == sorted({x for x, _ in losses})
    assert "Live" in finetune_widget.status.text() and "press Fine-tune" not in finetune_widget.status.text()
    assert any(text.startswith("round 1: ") for text in shown)  # the bar followed the round as it ran

    with qtbot.waitSignal(finetune_widget.live.stopped, timeout=30_000) as blocker:
        finetune_widget.live_button.setChecked(False)
    assert blocker.args == ["done"] and not _training_children()
    assert not finetune_widget.live_button.isChecked() and finetune_widget.run_button.isEnabled()


def test_a_better_version_resegments_the_view_only_where_the_user_did_not_edit(qtbot, viewer, segment_widget,
                                                                              finetune_widget, segmented,
                                                                              monkeypatch):
    import napari_unet.widgets._live_training as live_module
    from napari_unet.widgets._scope import plan_scope

    from scipy import ndimage

    nuclei, data_before = corrected_nuclei(segmented)
    data = segmented.data
    edited = data != data_before
    kept = data.copy()
    camera = viewer.scene.camera
    camera.center, camera.zoom = (80, 80), 8.0  # the view covers the middle of the image only
    view = segment_widget._view_bounds(viewer.layers["cells"], "YX")
    y0, y1 = (int(v) for v in view["Y"])
    assert y1 - y0 < 140, "part of the image is out of view"
    region = plan_scope((160, 160), "YX", "view", (80, 80), view=view).output_index

    truth = ndimage.grey_dilation(nuclei, size=3)[region]  # the new version finds them a pixel larger
    asked = []

    def segment_in_worker(crop, version, token, options):
        asked.append((crop.shape, version))
        return SimpleNamespace(labels=truth)
        yield

    monkeypatch.setattr(live_module, "segment_in_worker", segment_in_worker)
    child_training.use_live_versions(monkeypatch)
    written = {}
    import threading

    import napari_unet.widgets._predictions as predictions
    planned_in = []
    plan = predictions.unedited_objects
    monkeypatch.setattr(predictions, "unedited_objects",
                        lambda *args: (planned_in.append(threading.current_thread()), plan(*args))[1])

    def capture(name):
        written.setdefault("version", name)
        written.setdefault("labels", segmented.data.copy())
        written.setdefault("prediction", prediction_of(segmented))

    finetune_widget.live.resegmented.connect(capture)
    with qtbot.waitSignal(finetune_widget.live.resegmented, timeout=60_000):
        finetune_widget.live_button.setChecked(True)
    assert asked[0] == (truth.shape, library_dir() / written["version"]), "the view, with the new version"
    assert planned_in and threading.main_thread() not in planned_in, "object by object, off the viewer's thread"
    assert segment_widget.model_picker.model_path.parent == library_dir(), "a new version is selected"
    labels = written["labels"]
    np.testing.assert_array_equal(labels[edited], kept[edited])  # the user's pixels are never overwritten

    # in view: the new objects (ids shifted past the layer's) that do not cover the user's objects or reach an
    # edge of the view; out of view: unchanged
    ours, free = labels[region], ~edited[region]
    shifted = np.where(truth > 0, truth + kept.max(), 0)
    changed = ours != kept[region]
    new_ids = np.unique(ours[ours > kept.max()])
    assert changed[free].any() and new_ids.size, "the view was re-segmented"
    for new_id in new_ids:  # whole, less at most a quarter where it grazes what stays: no rim and no piece
        mine, theirs = ours == new_id, shifted == new_id
        assert not (mine & ~theirs).any() and mine.sum() >= 0.75 * theirs.sum()
    np.testing.assert_array_equal(ours[changed], shifted[changed])
    assert new_ids.size < np.unique(truth).size - 1, "objects at an edit or at the edge of the view are not written"
    touched = np.unique(kept[edited])
    assert not changed[np.isin(kept[region], touched[touched > 0])].any(), "the objects the user edited stay"
    outside = np.ones(labels.shape, bool)
    outside[region] = False
    np.testing.assert_array_equal(labels[outside], kept[outside])
    assert np.array_equal(written["prediction"][region][free], ours[free]), "the kept prediction follows"
    np.testing.assert_array_equal(written["prediction"][edited], data_before[edited])  # edits stay corrections


def test_closing_the_dock_stops_the_child_and_keeps_the_versions(qtbot, viewer, finetune_widget, segmented,
                                                                 monkeypatch):
    from napari_unet.core.models import load_model

    corrected_nuclei(segmented)  # a version needs held-out corrections to be judged by
    child_training.use_live_versions(monkeypatch)
    with qtbot.waitSignal(finetune_widget.live.resegmented, timeout=60_000):
        finetune_widget.live_button.setChecked(True)
    assert (library_dir() / "tiny-v2").is_dir()
    with qtbot.waitSignal(finetune_widget.live.stopped, timeout=30_000) as blocker:
        viewer.window.remove_dock_widget(finetune_widget)  # what the dock's close button does
    assert blocker.args == ["done"]
    qtbot.waitUntil(lambda: not _training_children(), timeout=10_000)
    versions = sorted(p.name for p in library_dir().iterdir())
    assert versions[0] == "tiny" and "tiny-v2" in versions and all(not n.startswith(".") for n in versions)
    for name in versions:
        load_model(library_dir() / name)
    assert "stay in the library" in finetune_widget.live_line.text()


def test_labels_in_reviewed_regions_are_never_resegmented(qtbot, viewer, finetune_widget, segmented, monkeypatch):
    import napari_unet.widgets._live_training as live_module

    from scipy import ndimage

    nuclei, before = corrected_nuclei(segmented)
    viewer.add_shapes([[[0, 0], [0, 100], [100, 100], [100, 0]]], shape_type="rectangle", name="reviewed")
    finetune_widget.rows[0].regions.set_layer(viewer.layers["reviewed"])
    reviewed = np.zeros(before.shape, bool)
    reviewed[:101, :101] = True

    def segment_in_worker(crop, version, token, options):  # the new version outlines every nucleus a pixel wider
        assert crop.shape == nuclei.shape, "the whole image is in view"
        return SimpleNamespace(labels=ndimage.grey_dilation(nuclei, size=3))
        yield

    monkeypatch.setattr(live_module, "segment_in_worker", segment_in_worker)
    child_training.use_live_versions(monkeypatch)
    kept = segmented.data.copy()
    with qtbot.waitSignal(finetune_widget.live.resegmented, timeout=60_000):
        finetune_widget.live_button.setChecked(True)
    labels = segmented.data
    np.testing.assert_array_equal(labels[reviewed], kept[reviewed])  # checked by the user: left as it is
    assert (labels[~reviewed] != kept[~reviewed]).any(), "outside, the objects were outlined anew"


def test_a_stroke_made_while_the_view_is_resegmented_is_kept(qtbot, viewer, finetune_widget, segmented,
                                                             monkeypatch):
    import napari_unet.widgets._live_training as live_module

    nuclei, _ = corrected_nuclei(segmented)
    late = (slice(100, 112), slice(100, 112))

    def segment_in_worker(crop, version, token, options):
        segmented.data[late] = 99  # the user paints while the new version segments the view
        return SimpleNamespace(labels=np.zeros(crop.shape, np.int32))  # the new version finds nothing
        yield

    monkeypatch.setattr(live_module, "segment_in_worker", segment_in_worker)
    child_training.use_live_versions(monkeypatch)
    with qtbot.waitSignal(finetune_widget.live.resegmented, timeout=60_000):
        finetune_widget.live_button.setChecked(True)
    assert (segmented.data[late] == 99).all(), "planned on the labels as they were, written on them as they are"


def test_switching_live_off_stops_a_resegmentation_in_progress(qtbot, viewer, finetune_widget, segmented,
                                                               monkeypatch):
    import threading
    import time

    import napari_unet.widgets._live_training as live_module
    from napari_unet.core.cancel import raise_if_cancelled

    corrected_nuclei(segmented)
    started = threading.Event()

    def segment_in_worker(crop, version, token, options):
        started.set()
        deadline = time.monotonic() + 5
        while not token.cancelled and time.monotonic() < deadline:  # a slow re-segmentation
            time.sleep(0.02)
        raise_if_cancelled(token)
        return SimpleNamespace(labels=np.zeros(crop.shape, np.int32))  # would erase the unedited objects
        yield

    monkeypatch.setattr(live_module, "segment_in_worker", segment_in_worker)
    child_training.use_live_versions(monkeypatch)
    finetune_widget.live_button.setChecked(True)
    qtbot.waitUntil(started.is_set, timeout=60_000)
    before = segmented.data.copy()
    written = []
    finetune_widget.live.resegmented.connect(written.append)
    with qtbot.waitSignal(finetune_widget.live.stopped, timeout=30_000):
        finetune_widget.live_button.setChecked(False)
    qtbot.wait(6000)  # longer than the re-segmentation would have taken
    assert not written, "after Stop, no version writes into the labels"
    np.testing.assert_array_equal(segmented.data, before)


def test_a_job_knows_the_kinds_of_correction_in_the_pair_as_last_sent():
    from napari_unet.core.training_data import Sample
    from napari_unet.widgets._live_training import _Job

    prediction = np.zeros((30, 30), np.int32)
    prediction[2:8, 2:14] = 1
    labels = prediction.copy()
    labels[2:8, 8:14] = 9  # the user split a merged pair
    sent = Sample(np.zeros((30, 30), np.float32), labels, prediction=prediction)
    job = _Job(None, (slice(10, 30), slice(0, 30)), None, {}, None, prediction[10:], prediction, sent)
    assert job.corrected == {"split"}
    assert _Job(None, (), None, {}, None, prediction, prediction).corrected == frozenset(), "nothing sent yet"


def test_a_pair_added_in_place_of_a_removed_one_does_not_take_its_corrections(qtbot, viewer, finetune_widget,
                                                                             segmented, tmp_path, monkeypatch):
    """What a new version may change in a pair's view follows that pair's own corrections as last sent, not
    those of whichever pair held its place in the list."""
    from napari_unet.widgets._predictions import keep_prediction

    child_training.use_live(monkeypatch, tmp_path)
    corrected_nuclei(segmented)  # pair 1: edited labels, sent when Live starts
    finetune_widget.live_button.setChecked(True)
    assert finetune_widget.live.running
    finetune_widget._remove_pair(finetune_widget.rows[0])
    image, nuclei = generate_nuclei((160, 160), seed=2)
    other = viewer.add_labels(nuclei, name="other labels")
    assert keep_prediction(other)  # Segment's output, not edited yet
    finetune_widget.add_pair(viewer.add_image(image, name="other"), other)
    (job,) = finetune_widget.live._jobs(finetune_widget.model_picker.model_path)
    assert job.labels == other and job.corrected == frozenset(), "pair 1's edits said nothing about this pair"


def test_the_live_line_says_what_a_round_trained_on_one_correction_waits_for(finetune_widget, tiny_model):
    import queue

    from napari_unet.core.cancel import CancelToken
    from napari_unet.core.live_training import LiveRound
    from napari_unet.widgets._live_training import _LiveRun

    live, path = finetune_widget.live, finetune_widget.model_picker.model_path
    run = _LiveRun(CancelToken(), queue.Queue(), path, path)
    live._on_event(run, LiveRound(1, 1, waiting=True, guessing=True))
    assert "your next one will test it" in finetune_widget.live_line.text()
    assert "no held-out correction yet" not in finetune_widget.live_line.text()
    live._on_event(run, LiveRound(1, 2, "val_f1", 0.0, 0.8, on_corrections=True, on_newer=True))
    assert "F1@0.5 on your newest corrections 0.800" in finetune_widget.live_line.text()
    assert "will test" not in finetune_widget.live_line.text()


def test_strokes_are_sent_once_the_user_pauses_not_at_the_next_tick(qtbot, viewer, finetune_widget, segmented):
    """A correction is several strokes: they go to training together, a moment after the last one, rather than
    at the periodic tick (up to five seconds later), so that the user's next correction judges a round sooner."""
    import queue

    from napari_unet.core.cancel import CancelToken
    from napari_unet.widgets._live_training import SETTLE_MS, _LiveRun

    live, path = finetune_widget.live, finetune_widget.model_picker.model_path
    live.timer.setInterval(600_000)  # the periodic tick out of the way: only the pause can send
    live._run = run = _LiveRun(CancelToken(), queue.Queue(), path, path)  # a live run without its child
    live._watch()
    try:
        for row in (30, 40, 50):  # one correction, three strokes in a row
            segmented.paint((row, 40), 77)
        assert run.outbox.empty(), "sent while the user was still painting"
        qtbot.waitUntil(lambda: not run.outbox.empty(), timeout=SETTLE_MS + 2_000)
        (sample,) = run.outbox.get()
        np.testing.assert_array_equal(np.asarray(sample.labels) == 77, segmented.data == 77)
        qtbot.wait(SETTLE_MS + 200)
        assert run.outbox.empty(), "the three strokes went as one snapshot"
    finally:
        live._run = None
        live._unwatch()
