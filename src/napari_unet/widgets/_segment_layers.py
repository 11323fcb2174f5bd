"""The layers a Segment run fills: its Labels output, the probability layers beside it, and what a stop leaves.

The Segment dock decides *when* (on the main thread, as events arrive); this module decides *which* layer and
*how* it is marked. An unedited previous output of the plugin for the same image is reused, anything else is
a new layer; a run whose labels or probabilities would not fit in memory (:func:`too_large`) gets zarr-backed
layers that the core writes into (:mod:`._scratch`). A stopped run's layer is kept and named *(partial)*, so
that it is never mistaken for a finished result, or removed if nothing was written into the new layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.widgets import _scratch
from napari_unet.widgets._layers import (
    OUTPUT_DTYPE,
    add_derived_image,
    geometry_kwargs,
    mark_output,
    output_record,
    reusable_output,
)
from napari_unet.widgets._scope import Scope


def output_layer(viewer: Any, source: Any, axes: str, shape: tuple[int, ...], scope: Scope, model_name: str,
                 lazy: bool = False) -> tuple[Any, bool]:
    """(layer, created): the plugin's unedited previous output for this image, its part for this run cleared,
    or a new Labels layer (zarr-backed if ``lazy``: its part for this run is then cleared by the worker)."""
    out_shape = tuple(n for n, a in zip(shape, axes) if a != "C")
    layer = reusable_output(viewer.layers, source, out_shape, lazy)
    if layer is not None:
        if not lazy:
            layer.data[scope.output_index] = 0
        layer.metadata["napari_unet"].update(source=source.name, model=model_name, partial=False)
        layer.name = f"{source.name} labels"
        for key, value in geometry_kwargs(source, axes).items():  # the image may have moved or been rescaled
            setattr(layer, key, value)
        layer.refresh()
        return layer, False
    data = _scratch.create(out_shape, np.int32) if lazy else np.zeros(out_shape, dtype=OUTPUT_DTYPE)
    layer = viewer.add_labels(data, name=f"{source.name} labels", **geometry_kwargs(source, axes))
    _scratch.attach(viewer.layers, layer, data)
    mark_output(layer, source, model_name)
    return layer, True


def keep_partial(viewer: Any, output: Any, created: bool, written: bool) -> None:
    """After a stop: keep what was computed, clearly marked partial, or remove a new layer left empty."""
    if created and not written:
        viewer.layers.remove(output)
        return
    record = output_record(output)
    if record is not None:
        record["partial"] = True
    if not output.name.endswith("(partial)"):
        output.name = f"{output.name} (partial)"
    output.refresh()


def show_probabilities(viewer: Any, source: Any, output: Any, scope: Scope, result: Any, lazy: bool) -> None:
    """One image layer per foreground class, under the labels, replacing this image's previous ones.

    In memory, each covers the whole image (zeros outside the part segmented); for a run too large for memory
    each shows its class of the zarr array the core wrote, lazily, over the part segmented only."""
    kwargs = geometry_kwargs(output)
    if lazy:
        import dask.array as da

        part = scope.output_index
        kwargs["translate"] = tuple(t + s.start * scale for t, s, scale in
                                    zip(kwargs["translate"], part, kwargs["scale"]))
        shape = tuple(s.stop - s.start for s in part)
        planes = da.from_zarr(result.probabilities)
    else:
        probabilities = np.asarray(result.probabilities)
    classes = list(result.classes)
    for index in range(1, result.probabilities.shape[0]):
        name = f"{source.name} P({classes[index] if index < len(classes) else index})"
        if lazy:
            data = planes[index].reshape(shape)
        else:
            data = np.zeros(output.data.shape, np.float32)
            data[scope.output_index] = probabilities[index].reshape(data[scope.output_index].shape)
        layer = add_derived_image(viewer, data, name, colormap="magma", contrast_limits=(0, 1), blending="additive",
                                  **kwargs)
        if lazy:
            _scratch.attach(viewer.layers, layer, result.probabilities)
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(output))


def too_large(shape: tuple[int, ...], axes: str, scope: Scope, model_path: Path, probabilities: bool) -> bool:
    """Whether a run's labels (int32, the whole image's, as the output layer holds them) or probabilities
    (float32, the part segmented) would exceed the in-memory limit, so that they must go to zarr arrays."""
    from napari_unet.core.memory import in_memory_limit

    limit = in_memory_limit()
    labels = int(np.prod([n for n, a in zip(shape, axes) if a != "C"], dtype=np.int64)) * 4
    if labels > limit:
        return True
    part = int(np.prod([s.stop - s.start for s, fixed in zip(scope.output_index, scope.fixed) if not fixed],
                       dtype=np.int64))
    return probabilities and model_classes(model_path) * part * 4 > limit


def model_classes(folder: Path) -> int:
    """The number of classes a model predicts, from its config (no torch); 3 where it does not say."""
    from napari_unet.core.library import read_config_json

    try:
        return int((read_config_json(folder / "config.json").get("network") or {}).get("out_channels", 3))
    except (ValueError, TypeError):
        return 3
