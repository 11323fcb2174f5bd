"""Layers as the widgets see them: pickers kept in sync, axes inferred from a layer, the plugin's output layers.

The plugin must never overwrite a Labels layer the user has worked on, so every output layer carries a small
record in ``layer.metadata`` (which image it came from, which model, whether it is partial), and the layers
this session made are watched: napari's ``paint`` and ``data`` events mark them edited. A later run may
reuse an output layer only while it is unedited.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QWidget

META_KEY = "napari_unet"
_EDITED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_SOURCES: weakref.WeakKeyDictionary[Any, weakref.ref] = weakref.WeakKeyDictionary()  # output -> its image
_DERIVED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # a run's derived layers: their name
OUTPUT_DTYPE = np.uint16  # see fit_labels_dtype
_LABEL_ALIASES = {"t": "T", "time": "T", "z": "Z", "depth": "Z", "c": "C", "channel": "C", "channels": "C",
                  "y": "Y", "x": "X"}


# --------------------------------------------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------------------------------------------


def infer_axes(layer: Any, spatial_dims: int = 2, in_channels: int = 1) -> str:
    """The axes letters (T, Z, C, Y, X) of an Image layer's data, for a model of the given kind.

    The layer's own axis labels win when they are axis names (the reader sets them from a file's metadata);
    otherwise :func:`napari_unet.core.axes.infer_axes` reads the shape, told whether the layer is RGB.
    """
    from napari_unet.core.axes import infer_axes as infer_from_shape

    shape = tuple(layer.data[0].shape if getattr(layer, "multiscale", False) else layer.data.shape)
    rgb = bool(getattr(layer, "rgb", False))
    letters = [_LABEL_ALIASES.get(str(label).lower()) for label in getattr(layer, "axis_labels", ())]
    if len(letters) == len(shape) - rgb and all(letters) and len(set(letters)) == len(letters):
        return "".join(letters) + ("C" if rgb else "")
    return infer_from_shape(shape, spatial_dims=spatial_dims, in_channels=in_channels, rgb=rgb)


def geometry_kwargs(layer: Any, axes: str | None = None) -> dict[str, Any]:
    """scale, translate, axis labels and units of ``layer`` for a new layer over the same space.

    With ``axes`` (the layer's data axes), the channel axis is left out: labels have no channels. Axes with
    more letters than the layer has dimensions are those of the layer stacked with others as channels in front.
    """
    rgb = bool(getattr(layer, "rgb", False))
    ndim = len(layer.scale)
    own = axes[: len(axes) - rgb][-ndim:] if axes else ""
    keep = [i for i, letter in enumerate(own) if letter != "C"] if axes else range(ndim)
    kwargs: dict[str, Any] = {
        "scale": tuple(layer.scale[i] for i in keep),
        "translate": tuple(layer.translate[i] for i in keep),
        "axis_labels": tuple(layer.axis_labels[i] for i in keep),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        kwargs["units"] = tuple(units[i] for i in keep)
    return kwargs


def full_resolution(layer: Any) -> Any:
    """A layer's full-resolution data (the first level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_scale(layer: Any, axes: str, run_axes: str) -> tuple[float, ...]:
    """The layer's pixel size along the spatial axes of a run (an RGB layer's scale has no colour entry)."""
    sizes = dict(zip(axes.replace("C", "") if getattr(layer, "rgb", False) else axes, layer.scale))
    return tuple(float(sizes[a]) for a in run_axes if a in "ZYX")


# --------------------------------------------------------------------------------------------------------------
# Output layers and their edit flag
# --------------------------------------------------------------------------------------------------------------


def output_record(layer: Any) -> dict[str, Any] | None:
    """The plugin's record of an output layer (source image, model, partial), or None for other layers."""
    record = layer.metadata.get(META_KEY) if hasattr(layer, "metadata") else None
    return record if isinstance(record, dict) else None


def unwrap(obj: Any) -> Any:
    """The napari object behind the proxy napari hands plugin widgets (proxies are remade on every access)."""
    return getattr(obj, "__wrapped__", obj)


def mark_output(layer: Any, source: Any, model: str) -> None:
    """Record ``layer`` as the plugin's output for the image layer ``source`` and watch it for edits.

    The record in the metadata names the image (it travels with saved layers); the image layer itself is kept
    here, weakly, so that :func:`source_of` still finds it after it is renamed, and not another image that takes
    its old name."""
    layer.metadata[META_KEY] = {"source": source.name, "model": model, "partial": False}
    real = unwrap(layer)
    _EDITED[real] = False
    _SOURCES[real] = weakref.ref(unwrap(source))

    def edited(event: Any = None) -> None:
        _EDITED[real] = True

    layer.events.paint.connect(edited)
    layer.events.data.connect(edited)


def source_of(layer: Any, layers: Sequence[Any]) -> Any | None:
    """The image layer among ``layers`` that the output ``layer`` was segmented from, or None: the one kept when
    it was made, while it is there; for an output of which only the record is left (a duplicate), the image
    of the recorded name."""
    kept = _SOURCES.get(unwrap(layer))
    if kept is not None:
        image = kept()
        return next((other for other in layers if unwrap(other) is image), None)
    record = output_record(layer)
    name = record.get("source") if record else None
    return next((other for other in layers if other.name == name), None)


def add_derived_image(viewer: Any, data: Any, name: str, **kwargs: Any) -> Any:
    """Add an image layer a run derived (probabilities, uncertainty) as ``name``, in place of the one an earlier
    run added for that name (even if napari numbered its name). A layer of the user's that has the name is left
    alone, and napari numbers the new one's name: it may be theirs to keep. So is a derived layer the user
    renamed."""
    for earlier in [layer for layer in viewer.layers
                    if _DERIVED.get(unwrap(layer)) == name and layer.name.startswith(name)]:
        viewer.layers.remove(earlier)
    layer = viewer.add_image(data, name=name, **kwargs)
    _DERIVED[unwrap(layer)] = name
    return layer


def fit_labels_dtype(layer: Any, largest: int) -> None:
    """Widen an output layer's integer type (uint16 -> int32) when ``largest`` does not fit; keeps the edit flag.

    Output layers start as uint16 because napari shows 8- and 16-bit labels without converting every pixel
    (a 2048 x 2048 int32 layer costs several hundred milliseconds more to create and redraw); the rare result
    with more than 65535 objects gets the wider type when it arrives.
    """
    if largest <= np.iinfo(layer.data.dtype).max:
        return
    edited = is_edited(layer)
    layer.data = np.asarray(layer.data).astype(np.int32)
    if unwrap(layer) in _EDITED:
        _EDITED[unwrap(layer)] = edited


def is_edited(layer: Any) -> bool:
    """True unless ``layer`` is an output of this session that nobody has painted on or replaced.

    The flag lives here rather than in the layer's metadata, because napari copies metadata when a layer is
    duplicated and a copy must never pass for an untouched output.
    """
    return _EDITED.get(unwrap(layer), True)


def reusable_output(layers: Sequence[Any], source: Any, shape: tuple[int, ...], lazy: bool = False) -> Any | None:
    """The plugin's unedited Labels output for the image layer ``source`` with ``shape``, if there is one; held
    in memory (numpy), or with ``lazy`` on disk (a zarr array, for results too large for memory)."""
    for layer in reversed(list(layers)):
        if (output_record(layer) and not is_edited(layer) and source_of(layer, layers) == source
                and tuple(layer.data.shape) == tuple(shape) and isinstance(layer.data, np.ndarray) != lazy):
            return layer
    return None


# --------------------------------------------------------------------------------------------------------------
# Layer pickers
# --------------------------------------------------------------------------------------------------------------


class LayerPicker(QComboBox):
    """A combo box of the viewer's layers of some types, kept in sync as layers come, go and are renamed.

    When the chosen layer is removed, the picker falls back to the top layer of its kind, or with ``hold`` to
    nothing until the user chooses again (:attr:`lost`; not even to a "none" entry): a training pair must not
    quietly take another image's labels, nor train on all of its labels when its reviewed regions are gone."""

    def __init__(self, viewer: Any, kinds: tuple[type, ...], none_text: str | None = None,
                 parent: QWidget | None = None, hold: bool = False) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._hold = hold
        if hold:
            self.setPlaceholderText("removed: choose a layer")  # shown while nothing is chosen
        self._kinds = kinds
        self._none_text = none_text
        self._layers: list[Any] = []
        self._lost = False  # the chosen layer was removed: nothing is chosen until the user chooses again
        self.activated.connect(self._on_chosen)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(6)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.reordered):
            emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    @property
    def layer(self) -> Any | None:
        """The chosen layer, or None."""
        index = self.currentIndex() - (self._none_text is not None)
        return self._layers[index] if 0 <= index < len(self._layers) else None

    @property
    def lost(self) -> bool:
        """Whether the chosen layer was removed and nothing was chosen since (only with ``hold``)."""
        return self._lost

    def set_layer(self, layer: Any | None) -> None:
        """Choose ``layer`` (or the "none" entry) if it is offered."""
        self._lost = False
        if layer is None and self._none_text is not None:
            self.setCurrentIndex(0)
        elif layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer) + (self._none_text is not None))

    def _on_chosen(self, index: int) -> None:
        self._lost = False

    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Rebuild the entries, keeping the chosen layer when it is still there."""
        current = self.layer
        self._layers = [layer for layer in reversed(self._viewer.layers) if isinstance(layer, self._kinds)]
        self.blockSignals(True)
        self.clear()
        if self._none_text is not None:
            self.addItem(self._none_text)
        self.addItems([layer.name for layer in self._layers])
        self.blockSignals(False)
        if current in self._layers:
            self.set_layer(current)
        elif self._hold and (current is not None or self._lost):  # removed: no other layer takes its place
            self._lost = True
            self.setCurrentIndex(-1)
        elif self._layers and self._none_text is None:
            self.setCurrentIndex(0)
        if self.layer != current:  # napari hands plugins proxies: compare layers with ==, never with "is"
            self.currentIndexChanged.emit(self.currentIndex())
