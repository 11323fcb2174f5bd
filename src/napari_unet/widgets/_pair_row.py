"""One training pair of the Fine-tune dock: the image (and, for a multi-channel model, its other channels), its
corrected labels, and optionally a Shapes layer of the regions the user reviewed."""
from __future__ import annotations

from typing import Any

from napari.layers import Image, Labels, Shapes
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QToolButton, QVBoxLayout, QWidget

from napari_unet.widgets._channels import ChannelPickers
from napari_unet.widgets._layers import LayerPicker


class PairRow(QWidget):
    """One training pair: an image (with, for a multi-channel model, the layers of its other channels), its
    corrected labels, and optionally the reviewed regions."""

    def __init__(self, viewer: Any, on_remove: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = LayerPicker(viewer, (Image,), hold=True)
        self.labels = LayerPicker(viewer, (Labels,), hold=True)
        self.regions = LayerPicker(viewer, (Shapes,), none_text="none", hold=True)
        self.image.setToolTip("The image that was segmented.")
        self.labels.setToolTip("Its corrected labels (0 = background).")
        self.regions.setToolTip("A Shapes layer whose rectangles mark the regions you reviewed; only they "
                                "are trained on. 'none' trains on all of the labels layer.")
        remove = QToolButton()
        remove.setText("✕")
        remove.setToolTip("Remove this pair")
        remove.clicked.connect(lambda: on_remove(self))
        layers = QHBoxLayout()
        for widget in (self.image, self.labels, self.regions):
            layers.addWidget(widget, 1)
        layers.addWidget(remove)
        channel_form = QFormLayout()  # the image's other channels, below it, as wide as the row
        self.channels = ChannelPickers(viewer, channel_form, 0, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(layers)
        layout.addLayout(channel_form)
