"""Cases 1-3 and 8 in the widgets: faults, cancels and user actions mid-run, in a real viewer.

Every test runs twice (see ``plugin_viewer``): once with a plain viewer and once as napari docks a plugin,
through its proxy with ``NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1``, so that any napari object touched from the
worker thread raises. After each case the "nothing lost" checks of the issue hold: user labels unchanged,
model files byte-identical (or one new version after a completed run), no temporary files, the widget idle
with its button enabled, one notification naming the cause, no worker thread left.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch

import child_training
import napari_unet.core.inference as inference
from conftest import array_hash, assert_idle, folder_bytes, leftovers, no_worker_threads
from napari_unet.core.autosave import list_snapshots
from napari_unet.synthetic import generate_nuclei
from napari_unet.widgets._layers import output_record

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"


@pytest.fixture
def setup(plugin_viewer, tiny, library, qtbot):
    """A viewer with an image, a user's corrected Labels layer, and the Segment widget docked."""
    from napari_unet.widgets.segment_widget import SegmentWidget

    viewer, handed = plugin_viewer
    image, labels = generate_nuclei((96, 96), seed=1)
    viewer.add_image(np.tile(image, (2, 2)), name="cells")
    user = viewer.add_labels(np.tile(labels, (2, 2)).astype(np.int32), name="my corrections")
    widget = SegmentWidget(handed)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.image_picker.set_layer(viewer.layers["cells"])
    assert widget.select_model("tiny")
    widget.tile_spin.setValue(128)
    widget.batch_spin.setValue(1)
    return viewer, handed, widget, user


def _paced(monkeypatch, fault_at: int | None = None, error: BaseException | None = None,
           warn_at: int | None = None) -> dict[str, int]:
    """The real segment_steps, slowed to let the test act between batches, optionally failing or warning."""
    stats = {"events": 0}
    real = inference.segment_steps

    def steps(image, model, *args, **kwargs):
        run = real(image, model, *args, **kwargs)
        try:
            while True:
                event = next(run)
                stats["events"] += 1
                if stats["events"] == fault_at:
                    raise error
                if stats["events"] == warn_at:
                    warnings.warn("tile 2 had odd values", RuntimeWarning, stacklevel=1)
                yield event
                time.sleep(0.03)
        except StopIteration as stop:
            return stop.value

    monkeypatch.setattr(inference, "segment_steps", steps)
    return stats


def _run(qtbot, widget, timeout: int = 60_000) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=timeout) as blocker:
        widget.run_button.click()
    return blocker.args[0]


def _plugin_labels(viewer) -> list:
    return [layer for layer in viewer.layers if output_record(layer) is not None]


# --------------------------------------------------------------------------------------------------------------
# Case 1: worker faults
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("error, words", [
    (torch.OutOfMemoryError(CUDA_OOM), ("ran out of memory", "smaller tile")),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), ("unexpected RuntimeError", "CUDNN")),
    (ValueError("the tile was not what I expected"), ("failed", "not what I expected")),
], ids=["cuda-oom", "runtime", "value"])
def test_segment_fault_at_tile_k(k, error, words, setup, qtbot, notes, library, monkeypatch):
    viewer, _, widget, user = setup
    before, files = array_hash(user.data), folder_bytes(library)
    _paced(monkeypatch, fault_at=k, error=error)
    assert _run(qtbot, widget) == "failed"
    assert_idle(widget, "Segment")
    assert len(notes.severe()) == 1 and notes.about(*words) == notes.severe(), notes.shown
    assert array_hash(user.data) == before
    assert folder_bytes(library) == files and leftovers(library) == []
    outputs = _plugin_labels(viewer)
    if k == 1:  # nothing was computed: no empty layer left behind
        assert outputs == []
    for partial in outputs:  # whatever was shown stays, clearly marked partial
        assert partial.name.endswith("(partial)") and output_record(partial)["partial"]
    assert len(outputs) <= 1


def test_segment_warning_in_the_worker_does_not_stop_the_run(setup, qtbot, notes, monkeypatch):
    viewer, _, widget, user = setup
    _paced(monkeypatch, warn_at=2)
    assert _run(qtbot, widget) == "done"
    assert_idle(widget, "Segment")
    assert notes.severe() == notes.about("Segment", "tile 2 had odd values"), notes.shown
    assert len(notes.severe()) == 1, "the warning is shown, once"
    (output,) = _plugin_labels(viewer)
    assert not output_record(output)["partial"] and output.data.any()


@pytest.fixture
def finetune(setup, tiny):
    from napari_unet.widgets.finetune_widget import FinetuneWidget

    viewer, handed, segment, user = setup
    widget = FinetuneWidget(handed)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.add_pair(viewer.layers["cells"], user)
    widget.model_picker.select("tiny")
    widget.steps_spin.setValue(6)
    widget.batch_spin.setValue(2)
    return widget


@pytest.mark.parametrize("error, words", [
    (torch.OutOfMemoryError(CUDA_OOM), ("Fine-tuning ran out of memory",)),
    (RuntimeError("expected scalar type Float but found Half"), ("Fine-tuning failed", "scalar type")),
    (ValueError("bad target"), ("Fine-tuning failed", "bad target")),
], ids=["cuda-oom", "runtime", "value"])
def test_finetune_fault_at_step_k(error, words, setup, finetune, qtbot, notes, library, monkeypatch):
    _, _, _, user = setup
    before, files = array_hash(user.data), folder_bytes(library)
    child_training.use(monkeypatch, child_training.fail_at, k=3, error=error)  # training runs in a child
    assert _run(qtbot, finetune) == "failed"
    assert_idle(finetune, "Fine-tune")
    assert len(notes.severe()) == 1 and notes.about(*words) == notes.severe(), notes.shown
    assert array_hash(user.data) == before
    assert folder_bytes(library) == files, "no new version, the base model unchanged"
    assert leftovers(library) == [] and not finetune.segment_again_button.isEnabled()


def test_finetune_warning_in_the_worker_is_shown_once_and_training_goes_on(setup, finetune, qtbot, notes,
                                                                           monkeypatch):
    child_training.use(monkeypatch, child_training.warning)
    assert _run(qtbot, finetune) == "done"
    assert_idle(finetune, "Fine-tune")
    assert notes.severe() == notes.about("Fine-tune", "the batch had odd values"), notes.shown
    assert len(notes.severe()) == 1
    assert finetune.segment_again_button.isEnabled()


# --------------------------------------------------------------------------------------------------------------
# Case 2: cancel
# --------------------------------------------------------------------------------------------------------------


def test_cancel_mid_inference(setup, qtbot, notes, monkeypatch):
    viewer, _, widget, user = setup
    before = array_hash(user.data)
    stats = _paced(monkeypatch)
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.run_button.click()
        qtbot.waitUntil(lambda: stats["events"] >= 3, timeout=30_000)
        widget.run_button.click()
    assert blocker.args == ["cancelled"]
    assert_idle(widget, "Segment")
    assert len(notes.about("stopped", "cancelled")) == 1 and notes.severe() == [], notes.shown
    assert array_hash(user.data) == before
    assert all(layer.name.endswith("(partial)") for layer in _plugin_labels(viewer))


def test_stop_mid_training_saves_only_a_new_version(setup, finetune, qtbot, notes, library, monkeypatch):
    _, _, _, user = setup
    base = folder_bytes(library / "tiny")
    finetune.steps_spin.setValue(0)
    finetune.budget_spin.setValue(600)
    child_training.use(monkeypatch, child_training.slow, seconds=0.05)
    with qtbot.waitSignal(finetune.run_finished, timeout=60_000) as blocker:
        finetune.run_button.click()
        qtbot.waitUntil(lambda: len(finetune.plot.series.get("loss", [])) >= 2, timeout=30_000)
        finetune.run_button.click()
    assert blocker.args == ["done"]
    assert_idle(finetune, "Fine-tune")
    assert folder_bytes(library / "tiny") == base
    assert (library / "tiny-v2").is_dir() and leftovers(library) == []
    # stopped before a validation beat the start: the version is kept and the warning says it is no better
    assert len(notes.about("Stopped early", "tiny-v2", "did not beat")) == 1, notes.shown
    assert [note for note in notes.severe() if "did not beat" not in note[1]] == [], notes.shown


def test_finetune_start_autosaves_the_corrections(setup, finetune, qtbot, library):
    _, _, _, user = setup
    finetune.steps_spin.setValue(1)
    assert _run(qtbot, finetune) == "done"
    (snapshot,) = list_snapshots()
    assert snapshot.name == "my corrections" and snapshot.shape == user.data.shape


# --------------------------------------------------------------------------------------------------------------
# Case 3: the user acts while a run goes on
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["remove-source", "remove-output", "rename-source", "reorder"])
def test_layers_changed_mid_run(action, setup, qtbot, notes, monkeypatch):
    viewer, _, widget, user = setup
    before = array_hash(user.data)
    stats = _paced(monkeypatch)
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.run_button.click()
        qtbot.waitUntil(lambda: stats["events"] >= 2, timeout=30_000)
        if action == "remove-source":
            viewer.layers.remove("cells")
        elif action == "remove-output":
            viewer.layers.remove(_plugin_labels(viewer)[0])
        elif action == "rename-source":
            viewer.layers["cells"].name = "renamed"
        else:
            viewer.layers.move(0, len(viewer.layers))
    expected = "cancelled" if action.startswith("remove") else "done"
    assert blocker.args == [expected]
    assert_idle(widget, "Segment")
    assert array_hash(user.data) == before
    if expected == "cancelled":
        assert len(notes.about("was removed")) == 1, notes.shown
    else:
        (output,) = _plugin_labels(viewer)
        assert not output_record(output)["partial"] and output.data.any()


def test_painting_on_the_output_while_it_fills(setup, qtbot, monkeypatch):
    viewer, _, widget, _ = setup
    stats = _paced(monkeypatch)
    with qtbot.waitSignal(widget.run_finished, timeout=60_000):
        widget.run_button.click()
        qtbot.waitUntil(lambda: stats["events"] >= 2, timeout=30_000)
        (output,) = _plugin_labels(viewer)
        output.paint((180, 180), 999)  # napari's paint tool, in a tile not computed yet
    assert_idle(widget, "Segment")
    output.undo()
    assert output.data[180, 180] != 999, "the user's stroke is undoable with one undo"


def test_segment_clicked_twice_and_finetune_pressed_while_segmenting(setup, finetune, qtbot, notes, monkeypatch):
    viewer, _, widget, user = setup
    stats = _paced(monkeypatch)
    with qtbot.waitSignal(widget.run_finished, timeout=60_000) as blocker:
        widget.segment()
        widget.segment()  # a second start while running is ignored
        qtbot.waitUntil(lambda: stats["events"] >= 2, timeout=30_000)
        with qtbot.waitSignal(finetune.run_finished, timeout=60_000) as tuned:
            finetune.steps_spin.setValue(1)
            finetune.run_button.click()
    assert blocker.args == ["done"] and tuned.args == ["done"]
    assert len(_plugin_labels(viewer)) == 1, "one run, one output layer"
    assert_idle(widget, "Segment")
    assert_idle(finetune, "Fine-tune")
    assert [note for note in notes.severe() if "did not beat" not in note[1]] == [], notes.shown  # one step
    assert no_worker_threads()
