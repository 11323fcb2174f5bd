"""The "Recover labels" dock widget: autosaved Labels layers, listed newest first, restored as new layers.

Restoring never overwrites a layer: a snapshot comes back as a new Labels layer named after the one it was
saved from, with its scale and translation, so the user can compare and keep what they want. The checkbox is
the autosave setting itself.
"""
from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.widgets._autosave import autosaver_for


class RecoverWidget(QWidget):
    """List what can be recovered after a crash, restore it as a new layer, or discard it."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_unet.core.autosave import autosave_dir, autosave_enabled

        self.viewer = napari_viewer
        self.enabled_check = QCheckBox("Autosave the plugin's labels")
        self.enabled_check.setToolTip("Save the Labels layers the plugin creates, and the labels you fine-tune "
                                      "on, every few minutes while they change and when fine-tuning starts, so a "
                                      "crash does not take your corrections with it.")
        self.enabled_check.setChecked(autosave_enabled())
        self.enabled_check.toggled.connect(self._on_toggled)
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.list.itemDoubleClicked.connect(lambda item: self.restore([item]))
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Add the chosen snapshots as new Labels layers; no layer is overwritten.")
        self.restore_button.clicked.connect(lambda: self.restore(self.list.selectedItems()))
        self.discard_button = QPushButton("Discard")
        self.discard_button.clicked.connect(lambda: self.discard(self.list.selectedItems()))
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        self.note = QLabel(f"Snapshots are kept in {autosave_dir()}.")
        self.note.setWordWrap(True)
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        buttons = QHBoxLayout()
        for button in (self.restore_button, self.discard_button, self.refresh_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.enabled_check)
        layout.addWidget(QLabel("Autosaved labels:"))
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.note)
        autosaver_for(napari_viewer)  # start autosaving in this viewer even before a Segment widget exists
        self.refresh()

    def refresh(self) -> None:
        """List the snapshots on disk again."""
        from napari_unet.core.autosave import list_snapshots

        self.list.clear()
        for snapshot in list_snapshots():
            item = QListWidgetItem(snapshot.describe())
            item.setData(Qt.ItemDataRole.UserRole, snapshot.key)
            self.list.addItem(item)
        empty = self.list.count() == 0
        self.restore_button.setEnabled(not empty)
        self.discard_button.setEnabled(not empty)

    def restore(self, items: list[QListWidgetItem]) -> list[Any]:
        """Add the chosen snapshots as new Labels layers; returns the layers."""
        from napari_unet.core.autosave import load_snapshot

        layers = []
        for item in items:
            try:
                labels, snapshot = load_snapshot(item.data(Qt.ItemDataRole.UserRole))
            except ValueError as exc:
                show_warning(f"Could not restore: {exc}")
                continue
            saved = snapshot.saved.replace("T", " ")
            placed = {key: value for key, value in (("scale", snapshot.scale), ("translate", snapshot.translate))
                      if value is not None}
            layers.append(self.viewer.add_labels(labels, name=f"{snapshot.name} (recovered {saved})", **placed))
        if layers:
            show_info(f"Restored {len(layers)} labels layer(s) from the autosave.")
        return layers

    def discard(self, items: list[QListWidgetItem]) -> None:
        """Delete the chosen snapshots from disk."""
        from napari_unet.core.autosave import discard_snapshot

        for item in items:
            discard_snapshot(item.data(Qt.ItemDataRole.UserRole))
        self.refresh()

    def _on_toggled(self, enabled: bool) -> None:
        from napari_unet.core.autosave import set_autosave_enabled

        set_autosave_enabled(enabled)
