"""The model's output a user starts correcting from, kept so that Fine-tune can weigh their corrections.

When a Segment run finishes into an in-memory output layer, :func:`keep_prediction` takes a private, read-only
copy of the layer's labels. The user then paints on the layer; Fine-tune passes the copy as the ``prediction``
of the pair's :class:`~napari_unet.core.training.Sample`, and the pixels that differ from it (the corrections)
weigh more in training (``correction_weight`` of :func:`~napari_unet.core.training.finetune`).

The copies live in a module-level ``WeakKeyDictionary`` keyed by the real layer (behind the proxy napari hands
plugins, as ``_layers`` keeps its edit flags), not in ``layer.metadata``: napari shares a layer's metadata dict
with its duplicates (a duplicate the user paints on would pass for the model's output) and hands it, as part of
the layer's state, to every writer plugin, some of which serialise it; a full labels array does not belong
there. A weak key also frees the copy with the layer.

Live fine-tuning re-segments the part in view with each better version; :func:`write_unedited` writes the new
labels only where the layer still equals the copy, so the user's edits are never overwritten, and updates the
copy there.

No prediction is kept for a zarr-backed output (a result too large for memory: a copy would not fit either),
for outputs over :data:`MAX_BYTES`, for a run that was cancelled or failed, or for a layer whose data was
replaced afterwards (``layer.data = ...``, e.g. labels loaded from a file): the copy belongs to the array it
was taken from.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from napari_unet.core.change_kinds import corrected_kinds, writable_kinds
from napari_unet.core.unedited import region_edges, unedited_objects
from napari_unet.widgets._autosave import mark_changed
from napari_unet.widgets._layers import unwrap

MAX_BYTES = 512 * 2**20  # ~0.2 s to copy on a small CPU; larger stacks train without correction weights
_KEPT: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, weakref.ref]] = weakref.WeakKeyDictionary()


def keep_prediction(layer: Any) -> bool:
    """Keep a copy of ``layer``'s labels as the prediction the user starts from; replaces an earlier one.

    Called at the end of a successful Segment run (tiles arrive one by one, so only then is the layer the
    model's whole output). Returns whether a copy was kept (not for zarr-backed or very large layers).
    """
    forget_prediction(layer)
    data = unwrap(layer).data
    if not isinstance(data, np.ndarray) or data.nbytes > MAX_BYTES:
        return False
    copy = np.array(data, copy=True)
    copy.flags.writeable = False  # handed to training as is: nothing may change it
    _KEPT[unwrap(layer)] = (copy, weakref.ref(data))
    return True


def forget_prediction(layer: Any) -> None:
    """Drop ``layer``'s prediction: a new run is about to change its labels (a stopped run keeps none)."""
    _KEPT.pop(unwrap(layer), None)


def prediction_of(layer: Any, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """The prediction kept for ``layer`` (read-only), or None: for a layer Segment did not make, one whose data
    was replaced since, or where ``shape`` is given and differs."""
    real = unwrap(layer)
    kept = _KEPT.get(real)
    if kept is None:
        return None
    prediction, source = kept
    if source() is not real.data:
        return None
    if shape is not None and tuple(prediction.shape) != tuple(shape):
        return None
    return prediction


def plan_unedited(current: np.ndarray, kept: np.ndarray, new: np.ndarray, instance: bool,
                  reviewed: np.ndarray | None, index: tuple[slice, ...], shape: tuple[int, ...],
                  corrected: frozenset[str] = frozenset()) -> np.ndarray:
    """Where a newer model's ``new`` labels may go in the region ``index`` of a layer of ``shape`` whose labels
    there are ``current`` and whose kept prediction there is ``kept`` (``reviewed``: the region's reviewed mask
    or None): a mask, as :func:`write_unedited` decides it. Instance labels change only in the kinds of change the
    user made to the prediction in the region or elsewhere (``corrected``: the kinds made outside it) (objects
    split, removed, added, merged, reshaped: :mod:`napari_unet.core.change_kinds`), and new outlines where they
    drew an object (:func:`~napari_unet.core.change_kinds.writable_kinds`); any kind where they changed nothing.
    Pure, so Live mode runs it in a worker on copies (object by object it takes a noticeable part of a second on
    a large view)."""
    unedited = (current == kept) & (True if reviewed is None else ~reviewed)
    if not instance:
        return unedited
    allowed = writable_kinds(corrected_kinds(kept, current) | corrected)
    return unedited_objects(current, np.asarray(new).reshape(unedited.shape), unedited, region_edges(index, shape),
                            allowed)


def write_unedited(layer: Any, index: tuple[slice, ...], labels: np.ndarray, instance: bool,
                   reviewed: np.ndarray | None = None, planned: np.ndarray | None = None,
                   corrected: frozenset[str] = frozenset()) -> int | None:
    """Write a newer model's ``labels`` over the part ``index`` of ``layer``, only where the layer still holds
    the kept prediction: the pixels the user painted, erased or relabelled stay as they are. Instance labels
    are written object by object (:func:`~napari_unet.core.unedited.unedited_objects`), so that no rim or cut
    piece of an object is left behind. ``reviewed`` (a mask over the layer, from its reviewed-regions layer)
    counts as edited: labels the user checked and left as they were are theirs too. The kept copy then holds the
    new labels where they were written (and the old prediction where the user's edits are, which stay
    corrections). Instance ids are shifted past the layer's largest, so that no new object takes the id
    of one the user drew or of one outside ``index``. Returns the number of pixels written, or None (nothing
    written) when no prediction is kept for the layer: its edits cannot be told apart from the model's output.
    ``planned``: the mask :func:`plan_unedited` made of the layer as it is now (else it is made here, with the
    kinds of correction ``corrected`` outside ``index``).
    """
    real = unwrap(layer)
    kept = prediction_of(real, tuple(real.data.shape))
    if kept is None:
        return None
    data = real.data
    written = planned if planned is not None else plan_unedited(
        data[index], kept[index], labels, instance, None if reviewed is None else reviewed[index], index,
        data.shape, corrected)
    new = np.asarray(labels).reshape(written.shape)
    if instance:
        new = np.where(new > 0, new.astype(np.int64) + int(data.max(initial=0)), 0)
        if int(new.max(initial=0)) > np.iinfo(data.dtype).max:  # widen the ids' type; the copy follows
            data = data.astype(np.int32)
            real.data = data
    data[index][written] = new[written]
    updated = np.array(kept, copy=True)  # a new copy: training may be reading the old one in another thread
    updated[index][written] = new[written]
    updated.flags.writeable = False
    _KEPT[real] = (updated, weakref.ref(data))
    real.refresh()
    mark_changed(real)  # no napari event says so: the next autosave holds what the screen shows
    return int(written.sum())


def weighing_note(with_prediction: int) -> str:
    """For the status when training starts: how many pairs carry a prediction, and how much their corrections
    weigh (the core's default weight, which the dock uses); empty when none does."""
    if not with_prediction:
        return ""
    from napari_unet.core.training import CORRECTION_WEIGHT  # samples() has imported it already: no delay

    return f" ({with_prediction} with Segment's prediction: corrections weigh {CORRECTION_WEIGHT:g}x)"


def corrected_pixels(model_folder: Any) -> tuple[int, float] | None:
    """(pixels the user corrected, their weight) recorded in a tuned model's last history entry, or None where
    the model does not say. Reads the saved config.json (no torch: this runs on the main thread)."""
    from pathlib import Path

    from napari_unet.core.library import read_config_json

    try:
        history = read_config_json(Path(model_folder) / "config.json").get("history") or []
        last = history[-1] if history else {}
        return int(last["corrected_pixels"]), float(last.get("correction_weight", 1.0))
    except (ValueError, KeyError, TypeError, IndexError, OSError):
        return None


def corrections_message(model_folder: Any, with_prediction: int) -> str:
    """A sentence for the finished run's message on what the corrections counted for; empty when no pair
    carried a prediction (labels painted from scratch, or not on a Segment output)."""
    if not with_prediction:
        return ""
    counted = corrected_pixels(model_folder)
    if counted is None:
        return ""
    pixels, weight = counted
    if not pixels:
        return " The labels equal the model's prediction: there were no corrections to weigh more."
    return f" {pixels:,} corrected pixel{'s' if pixels != 1 else ''} weighed {weight:g}x."
