"""Annotations -> training targets: which pixels are annotated, the classes to learn, and the loss weights.

A user rarely annotates a whole image. Pixels carry loss only where they are *annotated*: inside the optional
mask, not equal to the model's ignore value, and, for a stack without a mask, only on the planes (Z slices or
time points) that carry at least one label, since an untouched slice of a fresh labels layer means "not
looked at", not "background".

Instance models learn three classes from instance labels (0 background, 1 interior, 2 boundary), weighted by
the U-Net paper's map ``w(x) = w_c(x) + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``: ``w_c`` balances the class
frequencies, and the second term, where ``d1`` and ``d2`` are the distances to the nearest and second-nearest
object, makes the thin background gaps and boundaries between touching objects expensive to get wrong, so
that touching nuclei come out separated. Semantic models learn class ids with the class-balance weights only.

Every target depends on annotated pixels only: labels outside the annotated area are set to unknown before
anything is derived from them, so changing them changes nothing.

*Corrections.* When the model's own output (the prediction the user started from) is known, the pixels the user
changed are found by comparing targets, not ids (:func:`changed_pixels`): a pixel whose class differs (a split
adds a boundary line, an erased object turns interior into background) or whose object membership changed (the
corrected objects and the predicted ones do not match one-to-one there). :func:`weight_corrections` grows that
area by :data:`CORRECTION_MARGIN` pixels and multiplies its loss weights, so that a few strokes are not drowned
by the thousands of pixels the user accepted as they were.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_unet.core.axes import resolve_axes, to_axes
from napari_unet.core.errors import InvalidInputError

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
MAX_CLASS_WEIGHT = 10.0  # a class seen on a handful of pixels must not dominate the loss
# px a correction is grown by before it is weighted: a painted stroke moves the edges next to it too, and the
# pixels beside a new boundary line are where the network has to change its mind
CORRECTION_MARGIN = 2


@dataclass
class Targets:
    """What the loss sees for one training item (spatial shape only, no channel axis).

    ``classes`` are the class ids to learn; ``weights`` the per-pixel loss weights (0 outside the annotated
    area); ``annotated`` the annotated area itself; ``instances`` the annotated instance labels (for object
    F1 in validation; None for semantic models). ``vouched`` is set when only part of the annotated area is
    the user's own word: labels that are a model's output with a few corrections (a prediction given, no
    reviewed-area mask) vouch only for what the user changed (:func:`vouched_pixels`).
    """

    classes: np.ndarray  # uint8
    weights: np.ndarray  # float32
    annotated: np.ndarray  # bool
    instances: np.ndarray | None = None  # int32
    corrected: np.ndarray | None = None  # bool: annotated pixels the user changed from the prediction
    vouched: np.ndarray | None = None  # bool: the annotated pixels the user stands behind; None: all of them


@dataclass
class Item:
    """One training item: a 2D image (or a 3D stack for 3D models), channel first, with its targets."""

    image: np.ndarray  # (C, *spatial) float32, normalised with statistics of its whole sample image
    targets: Targets
    sample_index: int


# --------------------------------------------------------------------------------------------------------------
# Checking samples and cutting them into items
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SampleArrays:
    """A sample in the order training reads it: the image as a channel-first view (lazy arrays stay lazy, so
    only the planes that are annotated are ever read), labels and mask as private copies."""

    image: Any  # (C, *other, *spatial): a numpy or dask view, or a lazy AxesView of a zarr array
    labels: np.ndarray  # (*other, *spatial)
    mask: np.ndarray | None
    axes: str  # the axes of labels and mask: other + spatial, e.g. "ZYX" for a stack and a 2D model
    prediction: np.ndarray | None = None  # (*other, *spatial): the model output the labels were corrected from


def read_sample(image: Any, labels: Any, mask: Any, axes: str | None, spatial: str,
                in_channels: int, prediction: Any = None) -> SampleArrays:
    """Check a sample against the model and bring it into training order. Labels, mask and prediction are
    copied, so the caller may go on editing them (the user painting while training runs); nothing is written
    back. ``axes=None`` infers the axes as inference does."""
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    axes = resolve_axes(axes, image.shape, spatial_dims=len(spatial), in_channels=in_channels)
    other = "".join(a for a in axes if a not in spatial and a != "C")
    view = to_axes(image, axes, "C" + other + spatial)
    label_axes = axes.replace("C", "")
    expected = tuple(image.shape[axes.index(a)] for a in label_axes)
    order = [label_axes.index(a) for a in other + spatial]
    labels_np = np.transpose(_check_labels(labels, expected, label_axes), order)
    mask_np = None
    if mask is not None:
        if tuple(np.shape(mask)) != expected:
            raise InvalidInputError(
                f"the mask has shape {tuple(np.shape(mask))} but the image's {label_axes!r} shape is {expected}; "
                "the mask marks annotated pixels and must cover the image without its channel axis"
            )
        mask_np = np.transpose(np.array(mask, dtype=bool, copy=True), order)
    prediction_np = None
    if prediction is not None:
        prediction_np = np.ascontiguousarray(np.transpose(_check_prediction(prediction, expected, label_axes), order))
    return SampleArrays(view, np.ascontiguousarray(labels_np), mask_np, other + spatial, prediction_np)


def _check_prediction(prediction: Any, expected: tuple[int, ...], label_axes: str) -> np.ndarray:
    """The prediction must be labels of the same grid: it is compared with the labels pixel for pixel."""
    array = _same_grid(prediction, expected, label_axes, "the prediction has", "pass the model's output labels the "
                       "corrections started from (the same shape as the labels), or no prediction")
    if array is None or array.min(initial=0) < 0:
        raise InvalidInputError(f"the prediction must be labels (integers, 0 background, positive ids), not "
                                f"{np.asarray(prediction).dtype} values; pass the segmentation's labels, not its "
                                "probabilities")
    return array


def _check_labels(labels: Any, expected: tuple[int, ...], label_axes: str) -> np.ndarray:
    array = _same_grid(labels, expected, label_axes, "the labels have", "labels must match the image pixel for "
                       "pixel (without its channel axis)")
    if array is None:
        raise InvalidInputError(
            f"labels must be integers (0 background, positive ids), not {np.asarray(labels).dtype}; if they are "
            "whole numbers stored as floats, convert them with labels.astype(int)"
        )
    _refuse_intensities(array)
    return array


def _same_grid(values: Any, expected: tuple[int, ...], label_axes: str, subject: str, hint: str) -> np.ndarray | None:
    """A private integer copy of label-like ``values`` (bool becomes int32), None if they are not integers;
    refused unless they have the image's shape without its channel axis."""
    shape = tuple(np.shape(values))
    if shape != expected:
        raise InvalidInputError(f"{subject} shape {shape} but the image's {label_axes!r} shape is {expected}; {hint}")
    array = np.array(values, copy=True)
    if array.dtype == bool:
        return array.astype(np.int32)
    return array if np.issubdtype(array.dtype, np.integer) else None


def _refuse_intensities(labels: np.ndarray) -> None:
    """Labels that are really an intensity image (the image picked twice, a raw camera frame) hold thousands of
    ids of a pixel or two each; training on them would teach noise and still save a version."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    if values.size > 1000 and np.median(counts) <= 2:
        raise InvalidInputError(
            f"the labels look like an intensity image, not annotations: {values.size} ids, most of them one or "
            "two pixels; pass the corrected labels (0 background, one id per object)"
        )


def annotated_area(
    labels: np.ndarray, mask: np.ndarray | None, ignore_value: int | None, spatial_dims: int
) -> np.ndarray:
    """Which pixels are annotated: the mask, minus the ignore value; without a mask, for arrays with more
    than two dimensions, only the 2D planes that carry a label (a stack labelled on a few slices)."""
    if mask is not None:
        annotated = mask.copy()
    else:
        annotated = np.ones(labels.shape, dtype=bool)
    known = labels != ignore_value if ignore_value is not None else np.ones(labels.shape, dtype=bool)
    annotated &= known
    if labels.min(initial=0) < 0:
        bad = labels[(labels < 0) & known]
        if bad.size:
            hint = f" other than the ignore value {ignore_value}" if ignore_value is not None else ""
            raise InvalidInputError(
                f"labels contain negative values{hint} (e.g. {int(bad.flat[0])}); use 0 for background, positive "
                "ids for objects or classes, and a mask (or the model's ignore value) for unannotated pixels"
            )
    if mask is None and labels.ndim > 2:
        planes = ((labels > 0) & known).any(axis=(-2, -1))
        annotated &= planes[..., np.newaxis, np.newaxis]
    return annotated


def check_classes(labels: np.ndarray, annotated: np.ndarray, classes: tuple[str, ...]) -> None:
    """Semantic labels are class ids: each must name one of the model's classes."""
    top = int(labels[annotated].max(initial=0))
    if top >= len(classes):
        raise InvalidInputError(
            f"the labels hold class id {top} but the model predicts {len(classes)} classes "
            f"({', '.join(f'{i}={name}' for i, name in enumerate(classes))}); relabel the annotations or train "
            f"a model with more classes"
        )


# --------------------------------------------------------------------------------------------------------------
# Targets and weights
# --------------------------------------------------------------------------------------------------------------


def instance_classes(labels: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Background / interior / boundary from instance labels.

    A labelled pixel is boundary where a face neighbour is annotated and has another value (background or a
    different object), so touching objects are split by a two-pixel line. Unannotated neighbours do not make
    a boundary: an object cut by the edge of the mask keeps its interior there.
    """
    classes = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = labels[tuple(lo)], labels[tuple(hi)]
        differ = (a != b) & annotated[tuple(lo)] & annotated[tuple(hi)]
        boundary[tuple(lo)] |= differ & (a > 0)
        boundary[tuple(hi)] |= differ & (b > 0)
    classes[boundary] = BOUNDARY
    classes[~annotated] = BACKGROUND
    return classes


def class_balance(classes: np.ndarray, annotated: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights that give every class present the same total weight (capped), mean 1 over pixels."""
    counts = np.bincount(classes[annotated].ravel(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return np.minimum(weights, MAX_CLASS_WEIGHT)


def separation_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The paper's border term ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` for every pixel.

    ``d1`` and ``d2`` (distances to the nearest and second-nearest object) come from one distance transform
    per object, computed only on the object's bounding box grown by the reach of the term (4 sigma, beyond
    which it is below w0 * e^-8): the cost grows with the number of objects, not with objects x image size.
    """
    reach = math.ceil(4 * sigma)
    d1 = np.full(labels.shape, np.inf, dtype=np.float32)
    d2 = np.full(labels.shape, np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - reach, 0), min(s.stop + reach, n)) for s, n in zip(box, labels.shape))
        distance = ndimage.distance_transform_edt(labels[grown] != index + 1).astype(np.float32)
        near, second = d1[grown], d2[grown]  # views: updated in place
        np.copyto(second, np.where(distance < near, near, np.minimum(second, distance)))
        np.minimum(near, distance, out=near)
    total = d1 + d2
    term = np.zeros(labels.shape, dtype=np.float32)
    finite = np.isfinite(total)
    term[finite] = w0 * np.exp(-(total[finite] ** 2) / (2 * sigma**2))
    return term


def instance_targets(
    labels: np.ndarray, annotated: np.ndarray, w0: float = 10.0, sigma: float = 5.0
) -> Targets:
    """Targets for an instance model: three classes, class balance plus the separation term.

    The separation term is added on background and boundary pixels (the paper's background gaps; here the
    boundary class is the gap between objects that touch) and never on object interiors.
    """
    known = np.where(annotated, labels, 0)
    if known.max(initial=0) > np.iinfo(np.int32).max:
        raise InvalidInputError("label ids must fit in 32 bits; relabel the objects 1..N")
    known = known.astype(np.int32)
    classes = instance_classes(known, annotated)
    weights = class_balance(classes, annotated, 3)[classes].astype(np.float32)
    if w0 > 0:
        border = separation_weights(known, w0, sigma)
        weights += np.where(classes != INTERIOR, border, 0.0).astype(np.float32)
    weights[~annotated] = 0.0
    return Targets(classes=classes, weights=weights, annotated=annotated, instances=known)


def semantic_targets(labels: np.ndarray, annotated: np.ndarray, n_classes: int) -> Targets:
    """Targets for a semantic model: the class ids, weighted by class balance."""
    classes = np.where(annotated, labels, 0).astype(np.uint8)
    weights = class_balance(classes, annotated, n_classes)[classes].astype(np.float32)
    weights[~annotated] = 0.0
    return Targets(classes=classes, weights=weights, annotated=annotated)


# --------------------------------------------------------------------------------------------------------------
# Corrections: where the user changed the model's output
# --------------------------------------------------------------------------------------------------------------


def changed_pixels(labels: np.ndarray, prediction: np.ndarray, annotated: np.ndarray, task: str) -> np.ndarray:
    """Annotated pixels whose training target differs between the corrected ``labels`` and the model's
    ``prediction`` (the same grid).

    Ids are arbitrary, so instance labels are compared as targets: the instance classes of both, computed by
    :func:`instance_classes` exactly as for training, plus the pixels whose object membership changed
    (:func:`membership_changed`) - a split that follows an existing boundary, or a merge, changes which
    object a pixel is in even where its class stays interior. Semantic labels are class ids and compare
    directly.
    """
    if task != "instance":
        return (labels != prediction) & annotated
    known = np.where(annotated, labels, 0)
    predicted = np.where(annotated, prediction, 0)
    changed = instance_classes(known, annotated) != instance_classes(predicted, annotated)
    return (changed | membership_changed(known, predicted)) & annotated


def membership_changed(labels: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Object pixels (in both) whose corrected object and predicted object are not each other's best match.

    Each corrected object is paired with the predicted object it overlaps most and vice versa; pixels of a
    mutual pair are unchanged (a relabelled but untouched object), all others changed. A merged pair the user
    split leaves the smaller part unmatched, and two objects the user merged leave one predicted part unmatched.
    """
    both = (labels > 0) & (prediction > 0)
    changed = np.zeros(labels.shape, dtype=bool)
    if not both.any():
        return changed
    a = labels[both].astype(np.int64)
    b = prediction[both].astype(np.int64)
    span = int(b.max()) + 1
    keys, inverse, counts = np.unique(a * span + b, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")  # largest overlaps first; ties keep the lower ids
    mutual = _first_of_each(keys[order] // span, order) & _first_of_each(keys[order] % span, order)
    changed[both] = ~mutual[inverse.ravel()]
    return changed


def _first_of_each(ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A mask over the pairs (in their unsorted order) of the first pair, in ``order``, of each id."""
    first = np.zeros(order.size, dtype=bool)
    first[order[np.unique(ids, return_index=True)[1]]] = True
    return first


def objects_touching(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """A mask of the objects of ``labels`` (whole) that have a pixel in ``where``."""
    touched = np.unique(labels[where])
    return np.isin(labels, touched[touched > 0])


def vouched_pixels(labels: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    """What a user vouched for in labels made by a model and then corrected: the changed pixels and every
    object of ``labels`` that holds one of them (the objects as the user left them, whole). The rest is the
    model's output, which the user may not have looked at: it says nothing about a model's quality."""
    return corrected | objects_touching(labels, corrected)


def grow_corrections(corrected: np.ndarray, annotated: np.ndarray, margin: int = CORRECTION_MARGIN) -> np.ndarray:
    """The corrected pixels grown by ``margin`` px in the YX plane (not across the planes of a stack, whose Z
    sampling is coarser), kept inside the annotated area."""
    if margin <= 0 or not corrected.any():
        return corrected & annotated
    structure = np.zeros((3,) * corrected.ndim, dtype=bool)
    structure[(1,) * (corrected.ndim - 2)] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(corrected, structure, iterations=margin) & annotated


def weight_corrections(targets: Targets, factor: float, margin: int = CORRECTION_MARGIN) -> np.ndarray:
    """Multiply the loss weights of the (grown) corrected area by ``factor``, in place; returns that area.

    Called after the validation block is held out, so that its loss, which picks the kept state, measures
    the same thing with and without corrections. Weights outside the annotated area stay 0.
    """
    if targets.corrected is None:
        return np.zeros(targets.annotated.shape, dtype=bool)
    area = grow_corrections(targets.corrected, targets.annotated, margin)
    targets.weights[area] *= np.float32(factor)
    targets.weights[~targets.annotated] = 0.0
    return area
