"""Model and device pickers shared by the Segment and Fine-tune widgets.

The model list is read from the models' ``config.json`` files only (:func:`napari_unet.core.library.list_models`
needs no torch), and re-read each time the list opens, so a model saved by a fine-tune run, by a script or by
the command line shows up without restarting napari.
"""
from __future__ import annotations

import atexit

import weakref
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QWidget

BROWSE = "Browse..."


def model_tooltip(folder: Path) -> str:
    """The model card as a tooltip: description, task, axes, parent and the card's entries."""
    from napari_unet.core.library import read_config_json

    try:
        config = read_config_json(folder / "config.json")
    except ValueError as exc:
        return str(exc)
    classes = ", ".join(config.get("classes") or [])
    lines = [str(config.get("description") or folder.name),
             f"task: {config.get('task')}, axes: {config.get('axes')}, classes: {classes}"]
    parent = (config.get("provenance") or {}).get("parent")
    if parent:
        lines.append(f"fine-tuned from: {parent}")
    lines += [f"{key}: {value}" for key, value in (config.get("card") or {}).items()]
    lines.append(str(folder))
    return "\n".join(lines)


def model_kind(folder: Path | None) -> tuple[int, int]:
    """(spatial dims, input channels) of a model, read from its config without torch; (2, 1) if unknown."""
    from napari_unet.core.library import read_config_json

    if folder is None:
        return 2, 1
    try:
        network = read_config_json(folder / "config.json").get("network") or {}
        return int(network.get("spatial_dims", 2)), int(network.get("in_channels", 1))
    except (ValueError, TypeError, AttributeError):  # damaged: loading the model says what is wrong
        return 2, 1


class ModelPicker(QComboBox):
    """Bundled and library models by name, folders chosen with "Browse...", each with its model card."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._extra: list[Path] = []  # folders the user browsed to, kept for the session
        self._last_index = -1
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(8)
        self.activated.connect(self._on_activated)
        self.currentIndexChanged.connect(self._update_tooltip)
        self.refresh()

    @property
    def model_path(self) -> Path | None:
        """The chosen model's folder, or None when there is no model at all."""
        data = self.currentData(Qt.ItemDataRole.UserRole)
        return Path(data) if data else None

    @property
    def model_name(self) -> str:
        path = self.model_path
        return path.name if path else ""

    def refresh(self) -> None:
        """Re-read the library, keeping the current choice."""
        from napari_unet.core.library import list_models

        current = self.model_path
        self.blockSignals(True)
        self.clear()
        for info in list_models():
            label = info.name if info.source != "bundled" else f"{info.name} (bundled)"
            self.addItem(label, str(info.path))
            self.setItemData(self.count() - 1, model_tooltip(info.path), Qt.ItemDataRole.ToolTipRole)
        for folder in self._extra:
            if self.findData(str(folder)) < 0:
                self.addItem(f"{folder.name} ({folder.parent})", str(folder))
                self.setItemData(self.count() - 1, model_tooltip(folder), Qt.ItemDataRole.ToolTipRole)
        self.addItem(BROWSE, None)
        self.blockSignals(False)
        if current is not None and self.findData(str(current)) >= 0:
            self.setCurrentIndex(self.findData(str(current)))
        else:
            self.setCurrentIndex(0 if self.count() > 1 else -1)
        self._last_index = self.currentIndex()
        self._update_tooltip()

    def select(self, name_or_path: str | Path) -> bool:
        """Choose a model by library/bundled name or by folder; returns False if there is no such model."""
        self.refresh()
        path = Path(name_or_path)
        if path.is_dir():
            if self.findData(str(path)) < 0:
                self._extra.append(path)
                self.refresh()
            self.setCurrentIndex(self.findData(str(path)))
            self._last_index = self.currentIndex()
            return True
        for index in range(self.count()):
            data = self.itemData(index, Qt.ItemDataRole.UserRole)
            if data and Path(data).name == str(name_or_path):
                self.setCurrentIndex(index)
                self._last_index = index
                return True
        return False

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self.refresh()
        super().showPopup()

    def _on_activated(self, index: int) -> None:
        if self.itemText(index) != BROWSE:
            self._last_index = index
            return
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder (with config.json)")
        if folder and (Path(folder) / "config.json").is_file():
            self.select(folder)
            return
        if folder:
            from napari.utils.notifications import show_warning

            show_warning(f"{folder} holds no config.json, so it is not a napari-unet model folder. Choose the "
                         "folder that contains config.json and weights.safetensors.")
        self.setCurrentIndex(self._last_index)

    def _update_tooltip(self, *args: Any) -> None:
        tip = self.itemData(self.currentIndex(), Qt.ItemDataRole.ToolTipRole) if self.currentIndex() >= 0 else None
        self.setToolTip(tip or "No model yet: browse to a model folder, or fine-tune one.")


class DevicePicker(QComboBox):
    """"auto" first, then what PyTorch really sees here (CUDA devices, MPS) and the CPU.

    Importing torch takes seconds, so the list starts as "auto" alone and is completed by a background
    warm-up, which also imports the inference and training code: the widget opens at once and the first run
    starts without that wait.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItem("auto")
        self.setToolTip("Where to compute. 'auto' picks a CUDA GPU, then Apple MPS, then the CPU.")
        _when_devices_known(self)

    @property
    def device(self) -> str:
        return self.currentText() or "auto"

    @property
    def ready(self) -> bool:
        """True once the devices PyTorch sees are listed."""
        return self.count() > 1

    def set_devices(self, names: list[str]) -> None:
        current = self.currentText()
        self.clear()
        self.addItems(names)
        self.setCurrentIndex(max(0, self.findText(current)))


_DEVICES: list[str] = []  # what available_devices() said, once the warm-up has run
_WAITING: list[weakref.ref[DevicePicker]] = []
_WARM_UP: list[Any] = []  # the running warm-up worker, kept alive until it is done


def _warm_up() -> list[str]:
    """Import torch and the core's heavy modules (in a worker thread) and list the devices."""
    import napari_unet.core.inference
    import napari_unet.core.training  # noqa: F401 - imported now so that the first run does not wait
    from napari_unet.core.devices import available_devices

    return available_devices()


def _when_devices_known(picker: DevicePicker) -> None:
    if _DEVICES:
        picker.set_devices(_DEVICES)
        return
    _WAITING.append(weakref.ref(picker))
    if _WARM_UP:
        return
    from napari.qt.threading import create_worker

    worker = create_worker(_warm_up, _start_thread=False)
    worker.returned.connect(_devices_known)
    worker.finished.connect(_WARM_UP.clear)
    _WARM_UP.append(worker)
    atexit.register(_finish_warm_up)
    worker.start()


def _finish_warm_up(timeout_s: float = 60.0) -> None:
    """At exit, let a warm-up that is still importing torch end first: a worker thread that outlives the
    interpreter's Qt objects aborts the process as napari quits (closing the viewer within seconds of opening
    a dock widget did)."""
    from qtpy.QtCore import QThreadPool

    if _WARM_UP:
        QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000))


def _devices_known(names: list[str]) -> None:
    from qtpy.compat import isalive

    _DEVICES[:] = names
    for ref in _WAITING:
        picker = ref()
        if picker is not None and isalive(picker):
            picker.set_devices(names)
    _WAITING.clear()
