"""Judging a Live round by the strokes the user made after it started ("test, then train").

Live mode judges a round on held-out corrections (:mod:`napari_unet.core.holdout`), which needs two of them: with
one corrected object, holding it out leaves nothing to learn from, and the round could make no version until the
second correction had been trained on too (about 35 s on two CPU cores). But the strokes a user makes while a round
trains are ones it has never seen: they are held out of it by construction. So a round started with nothing to hold
out trains on all of the annotations for its whole time budget, and is then scored, beside the model in use, on the
objects changed by the strokes made meanwhile (or, if none, by the next ones) (:func:`newer_strokes_validation`):
the objects of the newer labels that touch a changed pixel or an object that held one, in a block around them, as
the held-out corrections are scored. The round made its guess before it saw the answer; the model in use made its
own (it got them wrong: that is why the user corrected them).

Measured on this project's DSB 2018 train split (``bench/live_offline.py``: 40 fluorescence images on which the
bundled model merges nuclei, a correction every 10 s, the first judged round): the judge put a version to use on 4
images, and the view it wrote (as Live writes it) was better than the corrections alone on 3 and the same on 1; of
the 35 rounds it refused, the views were worse on 8, better on 3, the same on 24.

Only 2D samples are scored this way (a stack trains plane by plane; a sample of large objects is scored at the scale
it trains at); a pair added, removed or resized between the snapshots gives no score. Without a score the round
makes no version, and the next round is judged on held-out corrections.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.holdout import Validation, held_out_block
from napari_unet.core.targets import objects_touching, vouched_pixels

MARGIN = 16  # px of the newer labels around the changed objects, in the block scored
MIN_SIDE = 48  # px: a block at least this wide, so that a small correction is seen with its neighbours


def newer_strokes_validation(model: Any, trained_on: Sequence[Any], newer: Sequence[Any]) -> Validation | None:
    """Blocks of the ``newer`` samples around what changed since ``trained_on`` (the samples a round trained on,
    the same pairs in the same order), scoring only the objects the newer strokes changed; None when nothing
    changed that can be scored (see the module). ``model`` is the model in use: its normalisation and object
    thresholds make the blocks, as for held-out corrections."""
    from napari_unet.core.training_data import prepare_data

    if len(trained_on) != len(newer):
        return None
    changed = {index: mask for index, mask in enumerate(map(_changed, trained_on, newer))
               if mask is not None and mask.any()}
    if not changed:
        return None
    indices = sorted(changed)  # only the pairs the newer strokes touched are prepared
    try:  # w0 and sigma (fine-tuning's defaults) weigh only the validation loss, the same for both models
        data = prepare_data(model, [newer[i] for i in indices], None, 0.0, 10.0, 5.0, polarity=False)
    except InvalidInputError:  # e.g. a pair's labels erased: the next round says why
        return None
    per_sample = Counter(item.sample_index for item in data.items)
    blocks = []
    for item in data.items:
        if per_sample[item.sample_index] > 1:
            continue  # a stack's plane: its labels are not the sample's
        index, factor = indices[item.sample_index], data.scales[item.sample_index]
        unpadded = _unpadded(item, *_at_scale(factor, changed[index], np.asarray(newer[index].labels)))
        if unpadded is None:
            continue
        box, where = unpadded
        targets = item.targets
        targets.vouched = vouched_pixels(targets.instances, where) if targets.instances is not None else where
        targets.vouched &= targets.annotated
        blocks.append(held_out_block(item, box, model.config.network, corrections_only=True))
    if not blocks:
        return None
    annotated = sum(int(block.annotated.sum()) for block in blocks)
    return Validation(blocks, model.config.task, annotated, model.config.object_filter)


def _changed(old: Any, new: Any) -> np.ndarray | None:
    """The pixels of the objects the newer strokes changed, as they were before (the part of a split object that
    kept its id changed too); None when the two snapshots of a pair cannot be compared."""
    before, after = np.asarray(old.labels), np.asarray(new.labels)
    if before.shape != after.shape or np.asarray(old.image).shape != np.asarray(new.image).shape:
        return None
    changed = before != after
    return changed | objects_touching(before, changed)


def _at_scale(factor: float, *masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """2D ``masks`` (or labels) at the scale their sample trains at (prepare_data's factor; large objects train
    resampled), as prepare_data resamples labels."""
    from napari_unet.core.sizing import resample_yx

    if factor == 1.0 or any(mask.ndim != 2 for mask in masks):
        return masks
    return tuple(resample_yx(mask, factor, 0) for mask in masks)


def _unpadded(item: Any, changed: np.ndarray | None, labels: Any) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(the block around the ``changed`` pixels, those pixels) in the coordinates of ``item`` (padded by
    prepare_data, evenly on both sides), ``changed`` and ``labels`` given at the item's scale; None where the
    item does not hold those labels pixel for pixel (then the pixels could not be found in it)."""
    if changed is None or not changed.any() or changed.ndim != 2:
        return None
    targets, shape = item.targets, item.targets.annotated.shape
    if len(shape) != 2 or any(s < c for s, c in zip(shape, changed.shape)):
        return None
    region = tuple(slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(shape, changed.shape))
    annotated = targets.annotated[region]
    ours = targets.instances[region] if targets.instances is not None else targets.classes[region]
    if not np.array_equal(ours[annotated] > 0, np.asarray(labels)[annotated] > 0):
        return None
    where = np.zeros(shape, dtype=bool)
    where[region] = changed
    box = []
    for axis, indices in enumerate(np.nonzero(where)):
        low, high = int(indices.min()), int(indices.max()) + 1
        side = min(max(high - low + 2 * MARGIN, MIN_SIDE), region[axis].stop - region[axis].start)
        first = min(max(region[axis].start, (low + high - side) // 2), region[axis].stop - side)  # kept inside
        box.append(slice(first, first + side))
    return tuple(box), where
