"""The Segment widget, driven through its real buttons in a napari viewer."""
from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels
from qtpy.QtCore import Qt

import napari_unet.core.inference as inference
from napari_unet.core.inference import segment
from napari_unet.core.models import load_model
from napari_unet.widgets import segment_widget as segment_module
from napari_unet.widgets._layers import is_edited, output_record


@pytest.fixture
def notes(notes_of) -> list[tuple[str, str]]:
    """The notifications the widget shows, as (severity, text); failures arrive as napari ErrorNotifications."""
    return notes_of(segment_module, ("info", "warning"))


@pytest.fixture
def slow_core(monkeypatch):
    """The real core, paced so a test can act between tile batches; counts batches run after a cancel."""
    stats = {"after_cancel": 0, "events": 0}
    real = inference.segment_steps

    def paced(image, model, *args, cancel=None, **kwargs):
        steps = real(image, model, *args, cancel=cancel, **kwargs)
        try:
            while True:
                event = next(steps)
                stats["events"] += 1
                stats["total"] = event.total
                stats["after_cancel"] += bool(cancel is not None and cancel.cancelled)
                yield event
                __import__("time").sleep(0.05)
        except StopIteration as stop:
            return stop.value
        finally:
            stats["ended"] = True

    monkeypatch.setattr(inference, "segment_steps", paced)
    return stats


def test_labels_layer_matches_core_segment(qtbot, viewer, segment_widget, nuclei, run_segment):
    image, _ = nuclei
    viewer.add_image(image, name="cells", scale=(0.5, 0.5), translate=(3, 4), axis_labels=("y", "x"))
    assert segment_widget.axes_edit.text() == "YX"
    assert run_segment(segment_widget) == "done"

    output = viewer.layers["cells labels"]
    assert isinstance(output, Labels) and output.data.shape == image.shape
    assert tuple(output.scale) == (0.5, 0.5) and tuple(output.translate) == (3, 4)
    assert output.axis_labels == ("y", "x")
    expected = segment(image, load_model("tiny"), axes="YX", probabilities=False).labels
    np.testing.assert_array_equal(output.data, expected)
    assert output_record(output)["source"] == "cells" and not output_record(output)["partial"]
    assert segment_widget.run_button.text() == "Segment" and "Segmented cells" in segment_widget.status.text()


def test_second_run_replaces_own_output_but_never_an_edited_one(viewer, segment_widget, nuclei, run_segment):
    image, _ = nuclei
    viewer.add_image(image, name="cells")
    run_segment(segment_widget)
    first = viewer.layers["cells labels"]
    run_segment(segment_widget)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells labels"], "unedited output was reused"
    assert viewer.layers["cells labels"] is first

    first.paint((10, 10), 77)  # napari's paint tool: a user correction
    assert is_edited(first)
    corrected = first.data.copy()
    run_segment(segment_widget)
    assert len([layer for layer in viewer.layers if isinstance(layer, Labels)]) == 2, "a new layer was made"
    np.testing.assert_array_equal(first.data, corrected)


def test_duplicated_output_is_not_reused(qtbot, viewer, segment_widget, nuclei, run_segment):
    image, _ = nuclei
    viewer.add_image(image, name="cells")
    run_segment(segment_widget)
    original = viewer.layers["cells labels"]
    copy = Labels(original.data.copy(), name="cells labels copy", metadata=dict(original.metadata))
    viewer.add_layer(copy)
    copy.data[:5] = 5
    run_segment(segment_widget)
    assert (copy.data[:5] == 5).all(), "a copy carries the metadata but is not the plugin's to overwrite"


def test_cancel_stops_within_a_batch_and_marks_the_layer_partial(qtbot, viewer, segment_widget, slow_core, nuclei):
    image = np.tile(nuclei[0], (3, 3))  # 288 x 288: dozens of tiles
    viewer.add_image(image, name="cells")
    segment_widget.tile_spin.setValue(96)
    segment_widget.batch_spin.setValue(1)
    with qtbot.waitSignal(segment_widget.run_finished, timeout=60_000) as blocker:
        qtbot.mouseClick(segment_widget.run_button, Qt.MouseButton.LeftButton)
        assert segment_widget.run_button.text() == "Cancel"
        qtbot.waitUntil(lambda: segment_widget.progress_bar.done >= 10, timeout=30_000)  # some blocks labelled
        qtbot.mouseClick(segment_widget.run_button, Qt.MouseButton.LeftButton)
    assert blocker.args == ["cancelled"]
    assert slow_core["after_cancel"] <= 1, "the run stops at the next tile batch"
    assert slow_core["events"] < slow_core["total"]
    partial = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert len(partial) == 1 and partial[0].name.endswith("(partial)") and output_record(partial[0])["partial"]
    assert segment_widget.run_button.text() == "Segment" and segment_widget.run_button.isEnabled()


def test_the_labels_cannot_be_painted_while_segment_writes_them(qtbot, viewer, segment_widget, slow_core, nuclei):
    viewer.add_image(np.tile(nuclei[0], (3, 3)), name="cells")
    segment_widget.tile_spin.setValue(96)
    segment_widget.batch_spin.setValue(1)
    with qtbot.waitSignal(segment_widget.run_finished, timeout=60_000):
        segment_widget.run_button.click()
        qtbot.waitUntil(lambda: "cells labels" in viewer.layers and slow_core["events"] >= 2, timeout=30_000)
        assert not viewer.layers["cells labels"].editable, "a stroke now would be overwritten by the next tiles"
    assert viewer.layers["cells labels"].editable, "the finished labels are the user's to correct"


def test_a_reused_output_takes_the_images_scale_and_position(viewer, segment_widget, nuclei, run_segment):
    viewer.add_image(nuclei[0], name="cells")
    run_segment(segment_widget)
    viewer.layers["cells"].scale, viewer.layers["cells"].translate = (0.5, 0.5), (100, 100)
    run_segment(segment_widget)
    output = viewer.layers["cells labels"]
    assert tuple(output.scale) == (0.5, 0.5) and tuple(output.translate) == (100, 100)


def test_closing_the_widget_mid_run_cancels_the_run(qtbot, viewer, segment_widget, slow_core, nuclei):
    viewer.add_image(np.tile(nuclei[0], (3, 3)), name="cells")
    segment_widget.tile_spin.setValue(96)
    segment_widget.batch_spin.setValue(1)
    segment_widget.run_button.click()
    qtbot.waitUntil(lambda: slow_core["events"] >= 2, timeout=30_000)
    viewer.window.remove_dock_widget(segment_widget)
    segment_widget.deleteLater()
    qtbot.waitUntil(lambda: slow_core.get("ended", False), timeout=30_000)
    assert slow_core["after_cancel"] <= 1 and slow_core["events"] < slow_core["total"]


def test_cancel_before_any_tile_leaves_no_layer(qtbot, viewer, segment_widget, nuclei, monkeypatch, run_segment):
    from napari_unet.core.errors import Cancelled

    def cancelled_at_once(*args, **kwargs):
        raise Cancelled("cancelled by the user")
        yield  # a generator, like the real one

    monkeypatch.setattr(inference, "segment_steps", cancelled_at_once)
    viewer.add_image(nuclei[0], name="cells")
    assert run_segment(segment_widget) == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_removing_the_source_layer_stops_the_run(qtbot, viewer, segment_widget, slow_core, notes, nuclei):
    image = np.tile(nuclei[0], (3, 3))
    source = viewer.add_image(image, name="cells")
    segment_widget.tile_spin.setValue(96)
    segment_widget.batch_spin.setValue(1)
    with qtbot.waitSignal(segment_widget.run_finished, timeout=60_000) as blocker:
        segment_widget.run_button.click()
        qtbot.waitUntil(lambda: segment_widget.progress_bar.done >= 1, timeout=30_000)
        viewer.layers.remove(source)
    assert blocker.args == ["cancelled"]
    assert any(severity == "warning" and "image layer 'cells' was removed" in text for severity, text in notes)
    assert segment_widget.run_button.text() == "Segment"


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "ran out of memory"),
    (RuntimeError("something deep inside torch"), "unexpected RuntimeError"),
    (ValueError("the model takes 3 channels"), "takes 3 channels"),
])
def test_worker_error_is_shown_and_the_button_returns(qtbot, viewer, segment_widget, notes, nuclei, monkeypatch,
                                                      error, expected, run_segment):
    real = inference.segment_steps

    def failing(*args, **kwargs):
        steps = real(*args, **kwargs)
        yield next(steps)
        raise error

    monkeypatch.setattr(inference, "segment_steps", failing)
    viewer.add_image(nuclei[0], name="cells")
    assert run_segment(segment_widget) == "failed"
    assert any(severity == "error" and expected in text for severity, text in notes), notes
    assert segment_widget.run_button.text() == "Segment" and segment_widget.run_button.isEnabled()
    labels = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert all(layer.name.endswith("(partial)") for layer in labels)


def test_an_unexpected_error_is_shown_with_its_traceback(qtbot, viewer, segment_widget, nuclei, monkeypatch,
                                                       run_segment):
    """napari's bundle has no console: the traceback is in the notification, behind 'View Traceback'."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    real = inference.segment_steps

    def failing_deep_inside(*args, **kwargs):
        steps = real(*args, **kwargs)
        yield next(steps)
        raise RuntimeError("something deep inside torch")

    monkeypatch.setattr(inference, "segment_steps", failing_deep_inside)
    shown = []
    notification_manager.notification_ready.connect(shown.append)
    try:
        viewer.add_image(nuclei[0], name="cells")
        assert run_segment(segment_widget) == "failed"
    finally:
        notification_manager.notification_ready.disconnect(shown.append)
    errors = [n for n in shown if isinstance(n, ErrorNotification)]
    assert len(errors) == 1, [str(n.message) for n in shown]
    (note,) = errors
    assert "unexpected RuntimeError: something deep inside torch" in note.message
    assert "console" not in note.message and "View Traceback" in note.message
    assert isinstance(note.exception, RuntimeError)
    assert "failing_deep_inside" in note.as_text(), "the traceback goes with the notification"


def test_stack_with_a_2d_model_and_current_slice_scope(qtbot, viewer, segment_widget, nuclei, run_segment):
    stack = np.stack([np.roll(nuclei[0], 7 * i, axis=1) for i in range(4)])
    viewer.add_image(stack, name="stack")
    assert segment_widget.axes_edit.text() == "ZYX"
    viewer.dims.set_current_step(0, 2)
    segment_widget.scope_picker.setCurrentIndex(segment_widget.scope_picker.findData("slice"))
    run_segment(segment_widget)
    output = viewer.layers["stack labels"]
    assert output.data.shape == stack.shape
    expected = segment(stack[2], load_model("tiny"), axes="YX", probabilities=False).labels
    np.testing.assert_array_equal(output.data[2], expected)
    assert not output.data[[0, 1, 3]].any(), "only the current slice was segmented"

    segment_widget.scope_picker.setCurrentIndex(segment_widget.scope_picker.findData("whole"))
    run_segment(segment_widget)
    assert viewer.layers["stack labels"] is output and output.data[0].any() and output.data[3].any()


def test_3d_model_on_a_stack(qtbot, viewer, segment_widget, run_segment, make_tiny_model):
    from napari_unet.synthetic import generate_nuclei

    make_tiny_model("tiny3d", spatial_dims=3)
    stack, _ = generate_nuclei((8, 48, 48), seed=2)
    viewer.add_image(stack, name="stack3d")
    assert segment_widget.select_model("tiny3d")
    assert run_segment(segment_widget) == "done"
    expected = segment(stack, load_model("tiny3d"), axes="ZYX", probabilities=False).labels
    np.testing.assert_array_equal(viewer.layers["stack3d labels"].data, expected)


def test_rgb_layer(qtbot, viewer, segment_widget, nuclei, run_segment, make_tiny_model):
    make_tiny_model("tiny-rgb", in_channels=3)
    rgb = np.stack([nuclei[0], nuclei[0] // 2, 255 - nuclei[0]], axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="he", rgb=True)
    segment_widget.select_model("tiny-rgb")
    assert segment_widget.axes_edit.text() == "YXC"
    assert run_segment(segment_widget) == "done"
    output = viewer.layers["he labels"]
    assert output.data.shape == rgb.shape[:2]
    expected = segment(rgb, load_model("tiny-rgb"), axes="YXC", probabilities=False).labels
    np.testing.assert_array_equal(output.data, expected)


def test_a_colour_layer_with_a_one_channel_model_is_converted_as_segment_converts_it(
        qtbot, viewer, segment_widget, nuclei, run_segment):
    """Histology opened in napari is RGB; the bundled model takes one channel: the dock must not refuse it."""
    rgb = np.stack([255 - nuclei[0], 255 - nuclei[0] // 2, 255 - nuclei[0] // 3], axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="he", rgb=True)
    assert segment_widget.axes_edit.text() == "YXC"
    assert "model takes 1 input channel" not in segment_widget.axes_note.text()
    assert run_segment(segment_widget) == "done"
    expected = segment(rgb, load_model("tiny"), axes="YXC", probabilities=False).labels
    np.testing.assert_array_equal(viewer.layers["he labels"].data, expected)
    assert "colour" in segment_widget.status.text()


def test_region_in_view_segments_only_what_is_visible(qtbot, viewer, segment_widget, run_segment):
    image = np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)
    viewer.add_image(image, name="big")
    viewer.scene.camera.center = (100, 300)
    viewer.scene.camera.zoom = viewer.canvas.size[0] / 80  # about 80 px of the image in view
    segment_widget.scope_picker.setCurrentIndex(segment_widget.scope_picker.findData("view"))
    run_segment(segment_widget)
    labelled = np.argwhere(viewer.layers["big labels"].data)
    assert labelled.size, "the region in view was segmented"
    assert labelled[:, 0].min() >= 30 and labelled[:, 0].max() <= 170
    assert labelled[:, 1].min() >= 150, "nothing far left of the view"


def test_axes_are_inferred_overridable_and_checked(qtbot, viewer, segment_widget, notes, nuclei):
    stack = np.stack([nuclei[0]] * 3)
    viewer.add_image(stack, name="stack")
    assert segment_widget.axes_edit.text() == "ZYX"
    segment_widget.axes_edit.clear()
    qtbot.keyClicks(segment_widget.axes_edit, "TYX")
    assert segment_widget.axes_edit.text() == "TYX" and "set by you" in segment_widget.axes_note.text()
    segment_widget.axes_edit.setText("QYX")
    segment_widget.run_button.click()
    assert not segment_widget.running and "QYX" in segment_widget.status.text()
    viewer.add_image(nuclei[0], name="flat")
    segment_widget.image_picker.set_layer(viewer.layers["flat"])
    assert segment_widget.axes_edit.text() == "YX", "choosing another image infers its axes again"


def test_pickers_follow_the_layer_list(viewer, segment_widget, nuclei):
    picker = segment_widget.image_picker
    assert picker.count() == 0 and picker.layer is None
    first = viewer.add_image(nuclei[0], name="a")
    viewer.add_labels(nuclei[1], name="not an image")
    viewer.add_image(nuclei[0], name="b")
    assert [picker.itemText(i) for i in range(picker.count())] == ["b", "a"]
    assert picker.layer is first, "adding a layer keeps the current choice"
    first.name = "renamed"
    assert picker.currentText() == "renamed"
    viewer.layers.remove(first)
    assert picker.layer is viewer.layers["b"]


def test_model_picker_lists_the_library_with_model_cards(qtbot, segment_widget, make_tiny_model):
    make_tiny_model("another")
    picker = segment_widget.model_picker
    picker.refresh()
    names = [picker.itemText(i) for i in range(picker.count())]
    assert names[-1] == "Browse..." and {"tiny", "another"} <= set(names)
    assert picker.select("another") and picker.model_name == "another"
    assert "task: instance" in picker.toolTip()
    devices = segment_widget.device_picker
    qtbot.waitUntil(lambda: devices.ready, timeout=30_000)  # listed by a background warm-up
    assert devices.itemText(0) == "auto" and "cpu" in [devices.itemText(i) for i in range(devices.count())]


@pytest.mark.parametrize("network", ['{"spatial_dims": "two"}', '[2, 1]', '{"in_channels": null}'])
def test_a_damaged_model_config_reads_as_an_ordinary_model_until_loading_says_what_is_wrong(tmp_path, network):
    from napari_unet.widgets._models import model_kind

    (tmp_path / "config.json").write_text(f'{{"format": "napari-unet-model", "network": {network}}}')
    assert model_kind(tmp_path) == (2, 1)


def test_probability_layers(qtbot, viewer, segment_widget, nuclei, run_segment):
    viewer.add_image(nuclei[0], name="cells")
    segment_widget.probabilities_check.setChecked(True)
    run_segment(segment_widget)
    interior = viewer.layers["cells P(interior)"]
    assert interior.data.shape == nuclei[0].shape and 0 <= interior.data.min() <= interior.data.max() <= 1
    assert "cells P(boundary)" in viewer.layers


def test_a_users_layer_named_like_a_probability_or_uncertainty_layer_is_never_replaced(qtbot, viewer, segment_widget,
                                                                                        nuclei, run_segment):
    viewer.add_image(nuclei[0], name="cells")
    mine = {name: viewer.add_image(np.full(nuclei[0].shape, 7.0), name=name)
            for name in ("cells P(interior)", "cells uncertainty")}
    segment_widget.probabilities_check.setChecked(True)
    segment_widget.doubts.check.setChecked(True)
    for _ in range(2):  # the second run replaces its own layers, and still not the user's
        assert run_segment(segment_widget) == "done"
        for name, layer in mine.items():
            assert layer in viewer.layers and (layer.data == 7).all() and layer.name == name
        made = [layer for layer in viewer.layers if layer.name.startswith("cells P(interior)") and layer not in
                mine.values()]
        assert len(made) == 1 and made[0].data.max() <= 1
        assert len([layer for layer in viewer.layers if "uncertainty" in layer.name]) == 2
    made[0].name = "P(interior) of the first run"  # renamed: the user keeps it
    assert run_segment(segment_widget) == "done"
    assert made[0] in viewer.layers


def test_output_widens_past_65535_objects_without_counting_as_an_edit():
    from napari_unet.widgets._layers import OUTPUT_DTYPE, fit_labels_dtype, mark_output

    layer = Labels(np.zeros((4, 4), OUTPUT_DTYPE))
    mark_output(layer, Image(np.zeros((4, 4)), name="cells"), "tiny")
    fit_labels_dtype(layer, 65535)
    assert layer.data.dtype == OUTPUT_DTYPE
    fit_labels_dtype(layer, 70_000)
    assert layer.data.dtype == np.int32 and not is_edited(layer)


def test_the_tta_tooltip_says_what_tta_does(segment_widget):
    from napari_unet.core.runner import _flips

    tip = segment_widget.tta_check.toolTip()
    assert "flip" in tip and "rotat" not in tip, "test-time augmentation flips; it does not rotate"
    assert f"{len(_flips(2))}x" in tip and f"{len(_flips(3))}x" in tip and "2D" in tip and "3D" in tip


def test_scope_titles_name_an_image_or_a_stack(viewer, segment_widget, nuclei):
    titles = lambda: [segment_widget.scope_picker.itemText(i) for i in range(segment_widget.scope_picker.count())]
    viewer.add_image(nuclei[0], name="flat")
    assert titles()[0] == "Whole image"
    viewer.add_image(np.stack([nuclei[0]] * 3), name="stack")
    segment_widget.image_picker.setCurrentIndex(segment_widget.image_picker.findText("stack"))
    assert titles()[:2] == ["Whole stack", "Current slice"]
    segment_widget.image_picker.setCurrentIndex(segment_widget.image_picker.findText("flat"))
    assert titles()[0] == "Whole image"
    assert segment_widget.scope_picker.itemData(0) == "whole", "only the words change"


def test_a_diameter_resamples_to_the_model_object_size(viewer, segment_widget, nuclei, run_segment):
    from napari_unet.core.models import Model, ModelConfig, save_model
    from napari_unet.core.unet import UNetConfig

    network = UNetConfig(in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    sized = Model.from_config(ModelConfig(network, object_diameter=10.0), seed=0)
    save_model(sized, "sized")
    image, _ = nuclei
    viewer.add_image(image, name="cells")
    segment_widget.select_model("sized")
    segment_widget.diameter_spin.setValue(20.0)
    assert run_segment(segment_widget) == "done"
    output = viewer.layers["cells labels"]
    assert output.data.shape == image.shape
    expected = segment(image, load_model("sized"), axes="YX", diameter=20.0, probabilities=False).labels
    np.testing.assert_array_equal(output.data, expected)
    assert "resampled by 0.50" in segment_widget.status.text()


def test_a_stack_layers_scale_sets_the_z_step_of_its_3d_objects(qtbot, viewer, segment_widget, nuclei, run_segment):
    stack = np.stack([np.roll(nuclei[0][:64, :64], 3 * i, axis=1) for i in range(4)])
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))  # Z steps four pixels apart
    assert run_segment(segment_widget) == "done"
    expected = segment(stack, load_model("tiny"), axes="ZYX", scale=(2.0, 0.5, 0.5), probabilities=False).labels
    np.testing.assert_array_equal(viewer.layers["stack labels"].data, expected)
    assert "Z resampled from 4 to 13 planes" in segment_widget.status.text()

