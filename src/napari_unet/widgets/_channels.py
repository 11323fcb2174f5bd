"""Several image layers as the channels of one multi-channel image.

napari's reader, like most files opened in napari, puts each channel of an image in its own Image layer, while
a model made for N channels needs them together. The Segment and Fine-tune docks therefore offer, for such a
model, N-1 extra pickers ("Channel 2" ... "Channel N") next to the image picker, which is channel 1.
:func:`stack_channels` turns the picked layers into one lazy, channels-first array (nothing is copied or read
on the main thread) or explains why it cannot.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from napari.layers import Image
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QFormLayout

from napari_unet.widgets._layers import LayerPicker, full_resolution, infer_axes

NONE_TEXT = "none"


@dataclass(frozen=True)
class ChannelStack:
    """The picked layers stacked as channels: ``data`` is channels first, the layers' own axes follow."""

    data: Any  # a dask array, (C, *layer shape)
    layer_axes: str  # the axes of each layer's data (no C)
    names: tuple[str, ...]  # the layers, in channel order

    @property
    def axes(self) -> str:
        return "C" + self.layer_axes


class ChannelPickers(QObject):
    """Pickers "Channel 2" ... "Channel N" for an N-channel model, hidden for a model with one channel.

    The rows go into a form of the dock (at ``row``), so that their labels line up with the dock's other rows.
    Pickers are created as needed and only hidden (never deleted) when a model with fewer channels is chosen,
    so a choice survives switching models back and forth.
    """

    changed = Signal()  # a picker's choice changed, or the number of pickers shown did

    def __init__(self, viewer: Any, form: QFormLayout, row: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._form = form
        self._row = row
        self._pickers: list[LayerPicker] = []
        self._shown = 0

    @property
    def layers(self) -> list[Any]:
        """The layer chosen for channels 2..N (None where "none" is chosen)."""
        return [picker.layer for picker in self.pickers]

    @property
    def pickers(self) -> list[LayerPicker]:
        """The pickers shown, for channels 2..N."""
        return self._pickers[: self._shown]

    def set_channels(self, channels: int) -> None:
        """Show one picker for each channel after the first of a ``channels``-channel model."""
        wanted = max(channels - 1, 0)
        while len(self._pickers) < wanted:
            self._add_picker(len(self._pickers) + 2)
        for index in range(len(self._pickers)):
            self._form.setRowVisible(self._row + index, index < wanted)
        if wanted != self._shown:
            self._shown = wanted
            self.changed.emit()

    def _add_picker(self, channel: int) -> None:
        picker = LayerPicker(self._viewer, (Image,), none_text=NONE_TEXT)
        picker.setToolTip(f"The image layer holding channel {channel} of the model's input (the image picked "
                          "above is channel 1). 'none' for every channel: the image itself has a channel axis.")
        picker.currentIndexChanged.connect(lambda *args: self.changed.emit())
        self._form.insertRow(self._row + len(self._pickers), f"Channel {channel}", picker)
        self._pickers.append(picker)


def stack_channels(first: Any, others: Sequence[Any], spatial_dims: int = 2) -> ChannelStack | None:
    """``first`` and ``others`` stacked as channels, in order; None when no other layer is chosen (the image is
    used as it is, with its own channel axis).

    Raises a ValueError (:class:`~napari_unet.core.errors.InvalidInputError`) naming the layers when only some
    channels are chosen, when a chosen layer has a channel axis of its own, or when the shapes differ: a
    stack of those would silently feed the network something other than what the user meant.
    """
    from napari_unet.core.errors import InvalidInputError

    if all(layer is None for layer in others):
        return None
    missing = [f"Channel {number}" for number, layer in enumerate(others, 2) if layer is None]
    if missing:
        raise InvalidInputError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} '{NONE_TEXT}' while other channels are "
            f"layers: choose a layer for every channel, or '{NONE_TEXT}' for all to use '{first.name}' as an "
            "image with a channel axis")
    layers = [first, *others]
    axes = [infer_axes(layer, spatial_dims, 1) for layer in layers]
    for layer, letters in zip(layers, axes):
        if "C" in letters:
            raise InvalidInputError(
                f"the layer '{layer.name}' (shape {_shape(layer)}, axes {letters}) has a channel axis of its own; "
                f"pick single-channel layers as channels, or '{NONE_TEXT}' for all to use one multi-channel image")
    if len({_shape(layer) for layer in layers}) > 1:
        listed = ", ".join(f"'{layer.name}' {_shape(layer)}" for layer in layers)
        raise InvalidInputError(f"the channel layers must all have the same shape, but they are {listed}")
    return ChannelStack(_lazy_stack(layers), axes[0], tuple(layer.name for layer in layers))


def _lazy_stack(layers: Sequence[Any]) -> Any:
    """The layers' full-resolution data stacked along a new first axis as a dask array: no pixel is read or
    copied here (``name=False`` spares dask hashing every pixel of an in-memory array to name it)."""
    import dask.array as da

    arrays = []
    for layer in layers:
        data = full_resolution(layer)
        arrays.append(data if isinstance(data, da.Array) else da.from_array(data, name=False))
    return da.stack(arrays)


def _shape(layer: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in full_resolution(layer).shape)
