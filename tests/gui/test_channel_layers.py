"""Channels opened as separate image layers, fed together to a multi-channel model by the Segment and Fine-tune docks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.layers import Labels

import napari_unet
import napari_unet.core.inference as inference
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei
from napari_unet.widgets import segment_widget as segment_module
from napari_unet.widgets.finetune_widget import FinetuneWidget


def _save_model(name: str, channels: int, balance_on: np.ndarray | None = None) -> Model:
    """A tiny untrained instance model for ``channels`` input channels. An untrained network predicts one class
    everywhere; with ``balance_on`` (an image) its class scores are sharpened and centred on that image, so that
    it draws objects whose shapes depend on what each channel holds."""
    network = UNetConfig(in_channels=channels, out_channels=3, depth=2, base_features=4, padding="same",
                         upsampling="bilinear", norm="batch")
    model = Model.from_config(ModelConfig(network, name=name), seed=1)
    if balance_on is not None:
        head = model.network.eval().head
        with torch.no_grad():
            head.weight.mul_(20)
            scores = model.network(torch.from_numpy(np.asarray(model.preprocess(balance_on)))[None])[0]
            head.bias.sub_(scores.mean(dim=(1, 2)))
    save_model(model, name)
    return model


A = generate_nuclei((96, 96), seed=1)[0]
B = generate_nuclei((96, 96), seed=2)[0][::-1].copy()  # another image: different objects in other places


@pytest.fixture
def two_channel(segment_widget) -> Model:
    model = _save_model("two", 2, balance_on=np.stack([A, B]))
    assert segment_widget.select_model("two")
    return model


@pytest.fixture
def channels(viewer) -> tuple[np.ndarray, np.ndarray]:
    """Two different single-channel images of the same size, added as layers 'a' and 'b'."""
    viewer.add_image(A, name="a", scale=(0.5, 0.5), translate=(3, 4))
    viewer.add_image(B, name="b", scale=(0.5, 0.5), translate=(3, 4))
    return A, B


@pytest.fixture
def received(monkeypatch) -> list[np.ndarray]:
    """The images the Segment worker hands the core, read in full."""
    seen: list[np.ndarray] = []
    real = inference.segment_steps

    def recording(image, *args, **kwargs):
        seen.append(np.asarray(image))
        return (yield from real(image, *args, **kwargs))

    monkeypatch.setattr(inference, "segment_steps", recording)
    return seen


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(segment_module, "show_warning", shown.append)
    return shown


def _pick(widget, first, *others) -> None:
    widget.image_picker.set_layer(first)
    for picker, layer in zip(widget.channel_pickers.pickers, others, strict=True):
        picker.set_layer(layer)


def test_two_layers_segment_as_the_channels_of_one_image(viewer, segment_widget, two_channel, channels, received,
                                                         run_segment):
    a, b = channels
    _pick(segment_widget, viewer.layers["a"], viewer.layers["b"])
    assert segment_widget.axes_edit.text() == "CYX"
    assert "a, b" in segment_widget.axes_note.text()
    assert run_segment(segment_widget) == "done"

    np.testing.assert_array_equal(received[-1], np.stack([a, b]))
    output = viewer.layers["a labels"]
    assert isinstance(output, Labels) and output.data.shape == a.shape
    assert tuple(output.scale) == (0.5, 0.5) and tuple(output.translate) == (3, 4)
    expected = napari_unet.segment(np.stack([a, b]), load_model("two"), axes="CYX", probabilities=False).labels
    assert expected.max() > 0, "the model finds something, so the comparison means something"
    np.testing.assert_array_equal(output.data, expected)


def test_the_order_of_the_channel_layers_matters(viewer, segment_widget, two_channel, channels, received,
                                                 run_segment):
    a, b = channels
    _pick(segment_widget, viewer.layers["a"], viewer.layers["b"])
    assert run_segment(segment_widget) == "done"
    _pick(segment_widget, viewer.layers["b"], viewer.layers["a"])
    assert run_segment(segment_widget) == "done"

    np.testing.assert_array_equal(received[-1], np.stack([b, a]))
    swapped = napari_unet.segment(np.stack([b, a]), load_model("two"), axes="CYX", probabilities=False).labels
    assert swapped.max() > 0
    np.testing.assert_array_equal(viewer.layers["b labels"].data, swapped)
    assert not np.array_equal(viewer.layers["a labels"].data, viewer.layers["b labels"].data)


@pytest.mark.parametrize("case", ["shape", "channel axis"])
def test_channel_layers_that_do_not_fit_are_refused_before_any_work(viewer, segment_widget, two_channel, channels,
                                                                    received, warnings, case):
    a, _ = channels
    if case == "shape":
        odd = viewer.add_image(a[:64, :80], name="small")
        wanted = ["'a' (96, 96)", "'small' (64, 80)"]
    else:
        odd = viewer.add_image(np.stack([a, a]), name="two-channel", axis_labels=("c", "y", "x"))
        wanted = ["'two-channel'", "channel axis"]
    _pick(segment_widget, viewer.layers["a"], odd)
    segment_widget.run_button.click()

    assert segment_widget.run_button.text() == "Segment" and not segment_widget.running
    assert received == [], "no worker started"
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert all(part in segment_widget.status.text() for part in wanted), segment_widget.status.text()
    assert warnings and all(part in warnings[-1] for part in wanted)


def test_some_channels_chosen_and_others_not_is_refused(viewer, segment_widget, channels, received, warnings):
    _save_model("three", 3)
    assert segment_widget.select_model("three")
    _pick(segment_widget, viewer.layers["a"], viewer.layers["b"], None)
    segment_widget.run_button.click()
    assert received == [] and not segment_widget.running
    assert "Channel 3 is 'none'" in segment_widget.status.text() and warnings


def test_channel_rows_follow_the_model_and_the_layers(viewer, segment_widget, channels):
    pickers = segment_widget.channel_pickers
    assert segment_widget.model_picker.model_name == "tiny"
    assert pickers.pickers == [] and pickers.layers == []

    _save_model("three", 3)
    assert segment_widget.select_model("three")
    assert len(pickers.pickers) == 2
    assert all(picker.isVisibleTo(segment_widget) for picker in pickers.pickers)
    assert [picker.itemText(0) for picker in pickers.pickers] == ["none", "none"]

    _save_model("two", 2)
    assert segment_widget.select_model("two")
    assert len(pickers.pickers) == 1 and not pickers._pickers[1].isVisibleTo(segment_widget)
    pickers.pickers[0].set_layer(viewer.layers["b"])
    assert segment_widget.axes_edit.text() == "CYX"
    viewer.layers.remove("b")
    assert pickers.layers == [None], "a removed layer is no longer offered"
    assert segment_widget.axes_edit.text() != "CYX"

    assert segment_widget.select_model("tiny")
    assert pickers.pickers == [] and not any(p.isVisibleTo(segment_widget) for p in pickers._pickers)


def test_finetune_trains_on_channel_layers(qtbot, viewer, segment_widget, two_channel, channels):
    a, b = channels
    labels = viewer.add_labels(generate_nuclei((96, 96), seed=1)[1], name="corrected")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(widget, FinetuneWidget) and widget.model_picker.model_name == "two"
    widget.steps_spin.setValue(2)
    widget.batch_spin.setValue(2)
    row = widget.add_pair(viewer.layers["a"], labels)
    assert len(row.channels.pickers) == 1 and row.channels.pickers[0].isVisibleTo(widget)

    small = viewer.add_image(b[:64], name="small")
    row.channels.pickers[0].set_layer(small)
    with pytest.raises(ValueError, match=r"training pair 1: .*'small' \(64, 96\)"):
        widget.samples()
    row.channels.pickers[0].set_layer(viewer.layers["b"])
    (sample,) = widget.samples()
    assert sample.image.shape == (2, 96, 96) and sample.axes == "CYX"
    np.testing.assert_array_equal(np.asarray(sample.image), np.stack([a, b]))

    with qtbot.waitSignal(widget.run_finished, timeout=120_000) as blocker:
        widget.run_button.click()
    assert blocker.args == ["done"], widget.status.text()
    assert "Saved as 'two-v2'" in widget.status.text()  # selected or not, depending on its validation score
    tuned = load_model("two-v2")
    assert tuned.config.network.in_channels == 2 and len(widget.plot.series["loss"]) == 2
    assert all(np.isfinite(loss) for _, loss in widget.plot.series["loss"])

    widget.model_picker.select("tiny")
    assert row.channels.pickers == [] and not row.channels._pickers[0].isVisibleTo(widget)

