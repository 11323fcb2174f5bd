"""Fixtures for the widget tests: tiny models saved in the test's own library, a viewer with docked widgets."""
from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.models import Model, ModelConfig, save_model
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei


@pytest.fixture
def notes_of(monkeypatch):
    """``notes_of(module, severities)``: a list that collects the notifications a widget module shows, as
    (severity, text): its ``show_<severity>`` calls, and failures, which arrive as napari ErrorNotifications."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    listeners = []

    def record(module, severities=("info", "warning")) -> list[tuple[str, str]]:
        shown: list[tuple[str, str]] = []
        for severity in severities:
            monkeypatch.setattr(module, f"show_{severity}",
                                lambda text, severity=severity: shown.append((severity, text)))

        def error(notification):
            if isinstance(notification, ErrorNotification):
                shown.append(("error", str(notification.message)))

        notification_manager.notification_ready.connect(error)
        listeners.append(error)
        return shown

    yield record
    for listener in listeners:
        notification_manager.notification_ready.disconnect(listener)


def save_tiny_model(name: str = "tiny", spatial_dims: int = 2, in_channels: int = 1) -> Model:
    """A small untrained U-Net in the library: fast enough for a GUI test, any output is arbitrary."""
    network = UNetConfig(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=3, depth=2,
                         base_features=4, padding="same")
    model = Model.from_config(ModelConfig(network, axes="YX" if spatial_dims == 2 else "ZYX"), seed=0)
    save_model(model, name)
    return model


@pytest.fixture
def tiny_model() -> Model:
    return save_tiny_model()


@pytest.fixture
def make_tiny_model():
    """Save more tiny models: ``make_tiny_model(name, spatial_dims=2, in_channels=1)``."""
    return save_tiny_model


@pytest.fixture
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return generate_nuclei((96, 96), seed=1)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def segment_widget(viewer, tiny_model):
    """The Segment widget as napari docks it from the Plugins menu (napari hands it a proxy of the viewer)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert widget.select_model("tiny")  # not the bundled model, which would be listed first
    return widget


@pytest.fixture
def run_segment(qtbot):
    """``run_segment(widget)``: click Segment, wait for the run to end and return its status."""

    def run(widget, timeout: int = 30_000) -> str:
        with qtbot.waitSignal(widget.run_finished, timeout=timeout) as blocker:
            widget.run_button.click()
        return blocker.args[0]

    return run


@pytest.fixture
def finetune_widget(viewer, segment_widget):
    """The Fine-tune dock beside the Segment dock, set for short runs (4 steps, batches of 2)."""
    from napari_unet.widgets.finetune_widget import FinetuneWidget

    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert isinstance(widget, FinetuneWidget)
    widget.budget_spin.setValue(30)
    widget.steps_spin.setValue(4)
    widget.batch_spin.setValue(2)
    return widget
