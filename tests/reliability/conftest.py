"""Shared checks of the reliability suite: what "nothing of the user's is lost" means, as assertions.

After every injected fault the suite checks the same things: user Labels layers hash as before, the model
files are byte-identical, no temporary files are left in the library, the widget is idle with its button
enabled, exactly one notification names the cause, and no worker thread is left running. GUI tests run twice:
with a plain viewer, and the way napari hands a viewer to a plugin (a ``PublicOnlyProxy``) with
``NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1``, under which setting any napari attribute off the main thread raises.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_unet.core.models import Model, ModelConfig, save_model
from napari_unet.core.unet import UNetConfig

TEMPORARY_MARKERS = (".saving-", ".replaced-", ".tmp", ".partial")


def save_tiny(name: str = "tiny", spatial_dims: int = 2, in_channels: int = 1, seed: int = 0) -> Model:
    """A small untrained U-Net saved in the test's library (any output is arbitrary, but deterministic)."""
    network = UNetConfig(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=3, depth=2,
                         base_features=4, padding="same")
    model = Model.from_config(ModelConfig(network, axes="YX" if spatial_dims == 2 else "ZYX"), seed=seed)
    save_model(model, name)
    return model


def array_hash(data: Any) -> str:
    """Content hash of an array: dtype, shape and bytes."""
    array = np.ascontiguousarray(np.asarray(data))
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) by relative path, with its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temporary files or folders a save or autosave may create, still lying under ``root``."""
    if not root.exists():
        return []
    return [str(p) for p in root.rglob("*") if any(marker in p.name for marker in TEMPORARY_MARKERS)]


@pytest.fixture
def tiny() -> Model:
    return save_tiny()


@pytest.fixture
def library(isolated_home) -> Path:
    return Path(isolated_home) / "models"


@dataclass
class Notes:
    """The napari notifications shown during a test, as (severity, message)."""

    shown: list[tuple[str, str]] = field(default_factory=list)

    def add(self, notification: Any) -> None:
        self.shown.append((str(notification.severity), str(notification.message)))

    def about(self, *words: str) -> list[tuple[str, str]]:
        """The notifications whose text contains every one of ``words`` (case-insensitive)."""
        return [note for note in self.shown if all(w.lower() in note[1].lower() for w in words)]

    def severe(self) -> list[tuple[str, str]]:
        return [note for note in self.shown if note[0] in ("warning", "error")]


@pytest.fixture
def notes() -> Notes:
    """Every notification napari dispatches (show_info/warning/error, worker warnings and errors)."""
    from napari.utils.notifications import notification_manager

    recorded = Notes()
    notification_manager.notification_ready.connect(recorded.add)
    yield recorded
    notification_manager.notification_ready.disconnect(recorded.add)


@pytest.fixture(params=["plain", "plugin-main-thread"])
def plugin_viewer(request, make_napari_viewer, monkeypatch) -> tuple[Any, Any]:
    """(viewer, what the plugin gets): the same viewer, or napari's plugin proxy with main-thread checks on.

    napari reads ``NAPARI_ENSURE_PLUGIN_MAIN_THREAD`` on every attribute set made through a ``PublicOnlyProxy``,
    which is what napari passes to a dock widget's ``napari_viewer`` argument.
    """
    viewer = make_napari_viewer()
    if request.param == "plain":
        return viewer, viewer
    from napari.utils._proxies import PublicOnlyProxy

    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    return viewer, PublicOnlyProxy(viewer)


def no_worker_threads(timeout_ms: int = 10_000) -> bool:
    """True once napari's worker pool has no thread running (waits up to ``timeout_ms``)."""
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    return pool.waitForDone(timeout_ms) and pool.activeThreadCount() == 0


def assert_idle(widget: Any, label: str) -> None:
    """The widget is ready for the next run: not running, its button enabled and back to ``label``."""
    assert not widget.running
    assert widget.run_button.isEnabled()
    assert widget.run_button.text() == label
    assert no_worker_threads(), "a worker thread is still running"
