"""Training data for fine-tuning: annotated samples -> padded training items -> batches of patches.

:func:`prepare_data` checks every :class:`Sample`, cuts it into items (one per annotated plane for a 2D model,
one per stack for a 3D one) with normalised images and targets (:mod:`napari_unet.core.targets`), holds a
validation block out of the annotated area, chooses the patch geometry and pads every item so that any
annotated pixel can lie in a patch's output. It also fingerprints the data and keeps the labels for the
model's annotation snapshot. :func:`sample_batch` then draws patches around random annotated pixels, each item
weighted by its annotated area, and augments them (:mod:`napari_unet.core.augment`).

A sample may carry the model's ``prediction`` the user corrected. The pixels they changed (see
:func:`~napari_unet.core.targets.changed_pixels`) then weigh ``correction_weight`` times more in the loss, and
:data:`CORRECTION_PATCH_FRACTION` of the patches are centred on them: a correction in a corner of a large
image would otherwise be in few patches, and its weight would rarely count.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_unet.core import sizing
from napari_unet.core.augment import Augmentation, extract_patch
from napari_unet.core.colour import grey_for_model
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.holdout import Validation, hold_out_validation
from napari_unet.core.models import Model
from napari_unet.core.targets import (
    Item,
    annotated_area,
    changed_pixels,
    check_classes,
    instance_targets,
    read_sample,
    semantic_targets,
    vouched_pixels,
    weight_corrections,
)
from napari_unet.core.unet import halo, min_input_size, nearest_valid_sizes, output_size

# Share of the patches centred on corrected pixels when a sample has corrections (each patch, at random). One
# merged pair split in a 256 x 256 generated dense image, 60 steps of 64 px patches, weight 5 (mean boundary
# probability on the pair's contact line, 3 pairs): 0.48 with no centred patches (no better than without the
# weight, 0.51: the correction is rarely in a patch), 0.68 with a quarter, 0.72 with a half. A quarter keeps
# three patches in four for the rest of the annotated area, which the user also vouched for.
CORRECTION_PATCH_FRACTION = 0.25


@dataclass
class Sample:
    """One annotated image. ``labels`` has the image's shape without its channel axis; 0 is background (or
    class 0), positive values are object ids (instance models) or class ids (semantic models). Only pixels
    inside ``mask`` (if given) and not equal to the model's ignore value carry loss. ``axes=None`` (the
    default) infers the axes exactly as :func:`~napari_unet.core.inference.segment` does: a colour image is
    ``YXC``, and a 1-channel model trains on its grey (:mod:`~napari_unet.core.colour`).

    ``prediction`` (optional, the labels' shape) is the model's output the user started correcting from: the
    pixels where ``labels`` differ from it are the user's corrections and weigh more in the loss (see
    ``correction_weight`` of :func:`~napari_unet.core.training.finetune`)."""

    image: Any
    labels: Any
    mask: Any = None
    axes: str | None = None
    prediction: Any = None


@dataclass
class TrainingData:
    """What the training loop draws from: padded items, patch geometry, validation block, provenance."""

    items: list[Item]  # padded so that every annotated pixel can sit in a patch's output
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    train_pixels: list[np.ndarray]  # flat indices of annotated training pixels, per item
    item_probability: np.ndarray
    validation: Validation | None
    fingerprint: str
    annotated_pixels: int
    annotations: list[tuple[np.ndarray, np.ndarray, str]]  # per sample: labels, annotated area, axes
    inverted: bool = False  # the items' intensities were flipped: the tuned model must invert its input
    object_sizes: list[float | None] = field(default_factory=list)  # per sample: median object diameter (px)
    scales: list[float] = field(default_factory=list)  # per sample: the factor its Y and X train at
    corrected_pixels: int = 0  # annotated pixels the user changed from the predictions (before growing them)
    correction_pixels: list[np.ndarray] = field(default_factory=list)  # flat indices of weighted ones, per item
    correction_probability: np.ndarray | None = None  # None: no corrections to centre patches on


def prepare_data(model: Model, samples: Sequence[Sample], patch_shape: int | Sequence[int] | None,
                 validation_fraction: float, w0: float, sigma: float, polarity: bool = True,
                 correction_weight: float = 1.0, held_out: str = "annotations") -> TrainingData:
    """Check ``samples`` and turn them into what :func:`sample_batch` draws from (see the module's docstring).
    With ``polarity``, annotated objects darker than their background are flipped (:func:`match_polarity`).
    ``correction_weight`` multiplies the loss weight of corrected pixels of samples with a prediction; at 1
    the corrections are only counted (the data is exactly that of samples without a prediction).
    ``held_out="corrections"`` holds out, and scores, the user's corrections rather than all annotations where
    the labels are a corrected prediction (:func:`~napari_unet.core.holdout.hold_out_validation`)."""
    config = model.config
    if isinstance(samples, Sample) or not len(samples):
        raise InvalidInputError("give a list of one or more Sample(image, labels, mask=None, axes='YX')")
    digest = hashlib.sha256()
    items: list[Item] = []
    annotations: list[tuple[np.ndarray, np.ndarray, str]] = []
    scales: list[tuple[float | None, float]] = []  # per sample: (object diameter, training factor)
    for index, sample in enumerate(samples):
        if not isinstance(sample, Sample):
            raise InvalidInputError(f"sample {index} is a {type(sample).__name__}; wrap it as "
                                    "Sample(image, labels, mask=None, axes='YX')")
        try:
            items += _sample_items(sample, index, model, w0, sigma, digest, annotations, scales,
                                   weighted=correction_weight != 1)
        except InvalidInputError as exc:
            raise InvalidInputError(f"sample {index}: {exc}") from None
    inverted = polarity and match_polarity(items)
    input_shape, output_shape = _patch_geometry(config.network, [i.image.shape[1:] for i in items], patch_shape)
    validation = hold_out_validation(items, validation_fraction, config.network, config.task,
                                     corrections_only=held_out == "corrections", objects=config.object_filter)
    annotated_pixels = sum(int(item.targets.annotated.sum()) for item in items)
    if validation is not None:
        annotated_pixels += validation.annotated_pixels
    border = halo(config.network, input_shape[0]) if config.network.padding == "valid" else 0
    corrected_pixels = sum(int(i.targets.corrected.sum()) for i in items if i.targets.corrected is not None)
    items = [_pad(item, input_shape, border) for item in items]
    train_pixels = [_flat_indices(item.targets.annotated) for item in items]
    counts = np.array([len(p) for p in train_pixels], dtype=np.float64)
    data = TrainingData(items, input_shape, output_shape, train_pixels, counts / counts.sum(), validation,
                        "sha256:" + digest.hexdigest(), annotated_pixels, annotations, inverted,
                        [round(found, 1) if found else None for found, _ in scales], [f for _, f in scales])
    _weight_corrections(data, corrected_pixels, correction_weight)
    return data


def _weight_corrections(data: TrainingData, corrected_pixels: int, factor: float) -> None:
    """Weigh the corrected pixels of the training items (after the hold-out and the padding) and list them
    for the patches centred on corrections."""
    data.corrected_pixels = corrected_pixels
    if not corrected_pixels or factor == 1:
        return
    areas = [weight_corrections(item.targets, factor) for item in data.items]
    data.correction_pixels = [_flat_indices(area) for area in areas]
    counts = np.array([len(p) for p in data.correction_pixels], dtype=np.float64)
    if counts.sum():  # none left when every correction lies in the validation block
        data.correction_probability = counts / counts.sum()


def match_polarity(items: list[Item]) -> bool:
    """Flip the items' intensities (x -> 1 - x) if their annotated objects are darker than the annotated
    background (1-channel images only); True if they were flipped.

    The starting models learned bright objects on a dark background (fluorescence). Brightfield images and
    stained histology in grey show the opposite, and a few minutes of fine-tuning do not unlearn that (three
    histology images: AP@0.5 0.02 before, 0.18 after 250 steps without the flip). Flipped, such images look
    like what the model already knows, and it only has to adapt.
    """
    inside = outside = 0.0
    inside_n = outside_n = 0
    for item in items:
        if item.image.shape[0] != 1:
            return False
        objects = item.targets.annotated & (item.targets.classes > 0)
        background = item.targets.annotated & (item.targets.classes == 0)
        inside += float(item.image[0][objects].sum())
        outside += float(item.image[0][background].sum())
        inside_n, outside_n = inside_n + int(objects.sum()), outside_n + int(background.sum())
    if not inside_n or not outside_n or inside / inside_n >= outside / outside_n:
        return False
    for item in items:
        item.image = 1.0 - item.image
    return True


def _sample_items(sample: Sample, index: int, model: Model, w0: float, sigma: float, digest: Any,
                  annotations: list[tuple[np.ndarray, np.ndarray, str]],
                  scales: list[tuple[float | None, float]], weighted: bool = True) -> list[Item]:
    """Check one sample and cut it into training items: one per annotated plane (2D models) or stack.
    Feeds the data fingerprint and records the labels and annotated area for the model's snapshot, and the
    size of the annotated objects and the scale they train at (:mod:`~napari_unet.core.sizing`). With a prediction, each item's targets
    know the pixels the user changed from it; only ``weighted`` corrections change the data's fingerprint."""
    config = model.config
    dims = config.network.spatial_dims
    image, axes, _ = grey_for_model(sample.image, sample.axes, dims, config.in_channels, stacklevel=6)
    arrays = read_sample(image, sample.labels, sample.mask, axes, config.axes, config.in_channels,
                         sample.prediction)
    annotated = annotated_area(arrays.labels, arrays.mask, config.ignore_value, dims)
    if not annotated.any() or (arrays.mask is None and config.ignore_value is None and not arrays.labels.any()):
        raise InvalidInputError(
            "nothing is annotated: the labels are all background and no mask says where that background was "
            "checked. Paint some objects, or pass a mask of the reviewed region"
        )
    if config.task == "semantic":
        check_classes(arrays.labels, annotated, config.classes)
    annotations.append((arrays.labels, annotated, arrays.axes))
    found = sizing.annotated_diameter(arrays.labels, annotated) if config.task == "instance" else None
    factor = sizing.training_factor(arrays.labels, annotated, config) if found and dims == 2 else 1.0
    scales.append((found, factor))
    stats = config.normalization.statistics(arrays.image)
    digest.update(f"{index}:{arrays.axes}:{arrays.labels.shape}:{factor:.4f}".encode())
    items = []
    for plane in np.ndindex(arrays.labels.shape[: arrays.labels.ndim - dims]):
        plane_annotated = annotated[plane]
        if not plane_annotated.any():
            continue
        raw = np.asarray(arrays.image[(slice(None), *plane)])
        labels = arrays.labels[plane]
        for part in (raw, np.where(plane_annotated, labels, 0), plane_annotated):
            digest.update(np.ascontiguousarray(part).tobytes())
        predicted = None if arrays.prediction is None else arrays.prediction[plane]
        if factor != 1.0:  # large objects: at the scale segment shows them to the model (sizing.training_factor)
            raw, labels = sizing.resample_yx(raw.astype(np.float32), factor, 1), sizing.resample_yx(labels, factor, 0)
            plane_annotated = sizing.resample_yx(plane_annotated, factor, 0)
            predicted = None if predicted is None else sizing.resample_yx(predicted, factor, 0)
        image = config.normalization.apply(raw, stats)
        if config.task == "instance":
            targets = instance_targets(labels, plane_annotated, w0, sigma)
        else:
            targets = semantic_targets(labels, plane_annotated, len(config.classes))
        if predicted is not None:
            if weighted:
                digest.update(b"prediction" + np.where(plane_annotated, predicted, 0).tobytes())
            targets.corrected = changed_pixels(labels, predicted, plane_annotated, config.task)
            if arrays.mask is None:  # no reviewed area: only the corrections are known to be the user's
                targets.vouched = (vouched_pixels(np.where(plane_annotated, labels, 0), targets.corrected)
                                   if config.task == "instance" else targets.corrected.copy())
        items.append(Item(image, targets, index))
    return items


def _patch_geometry(network: Any, shapes: list[tuple[int, ...]], requested: int | Sequence[int] | None
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output patch shapes: valid sizes for the network, no larger than the items need."""
    dims = network.spatial_dims
    border = halo(network, min_input_size(network)) if network.padding == "valid" else 0
    if requested is None:
        default_output = (128, 128) if dims == 2 else (16, 64, 64)
        largest = [max(shape[axis] for shape in shapes) for axis in range(dims)]
        wanted = [min(d, n) + 2 * border for d, n in zip(default_output, largest)]
    else:
        wanted = [int(requested)] * dims if np.isscalar(requested) else [int(n) for n in requested]
        if len(wanted) != dims:
            raise InvalidInputError(f"patch_shape {requested!r} needs {dims} sizes for a {dims}D model")
    input_shape = tuple(nearest_valid_sizes(network, max(n, 1))[1] for n in wanted)
    return input_shape, tuple(output_size(network, n) for n in input_shape)


def _pad(item: Item, input_shape: tuple[int, ...], border: int) -> Item:
    """Mirror-pad the image (zero-pad the targets) so that any annotated pixel can be in a patch's output and
    every item is at least one patch large."""
    widths = []
    for size, patch in zip(item.targets.classes.shape, input_shape):
        extra = max(0, patch - (size + 2 * border))
        widths.append((border + extra // 2, border + extra - extra // 2))
    if not any(lo or hi for lo, hi in widths):
        return item
    t = item.targets
    t.classes, t.weights, t.annotated = (np.pad(a, widths) for a in (t.classes, t.weights, t.annotated))
    if t.instances is not None:
        t.instances = np.pad(t.instances, widths)
    if t.corrected is not None:
        t.corrected = np.pad(t.corrected, widths)
    if t.vouched is not None:
        t.vouched = np.pad(t.vouched, widths)
    item.image = np.pad(item.image, [(0, 0), *widths], mode="reflect")
    return item


def _flat_indices(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the True pixels, in 32 bits where they fit (half the memory for many images)."""
    indices = np.flatnonzero(mask)
    return indices.astype(np.int32) if mask.size < 2**31 else indices


def sample_batch(data: TrainingData, batch_size: int, rng: np.random.Generator, augmentation: Augmentation,
           device: torch.device) -> tuple[torch.Tensor, ...]:
    """A batch of patches, each placed so that a random annotated training pixel lies in its output; with
    corrections, :data:`CORRECTION_PATCH_FRACTION` of them (at random) centred near a corrected pixel."""
    patches = []
    for _ in range(batch_size):
        on_correction = data.correction_probability is not None and rng.random() < CORRECTION_PATCH_FRACTION
        origin, index = _correction_origin(data, rng) if on_correction else _annotated_origin(data, rng)
        item = data.items[index]
        t = item.targets
        patches.append(extract_patch(item.image, t.classes, t.weights, t.annotated, tuple(origin),
                                     data.input_shape, data.output_shape, rng, augmentation))
    stacked = (np.stack([getattr(p, name) for p in patches]) for name in ("image", "classes", "weights", "annotated"))
    return tuple(torch.from_numpy(a).to(device) for a in stacked)


def _annotated_origin(data: TrainingData, rng: np.random.Generator) -> tuple[tuple[int, ...], int]:
    """A patch origin (and its item) with a random annotated pixel anywhere in the patch's output; items are
    drawn in proportion to their annotated area."""
    index, centre, shape = _draw_pixel(data.item_probability, data.train_pixels, data, rng)
    origin = []
    for c, size, patch, out in zip(centre, shape, data.input_shape, data.output_shape):
        start = int(c) - (patch - out) // 2 - int(rng.integers(out))
        origin.append(min(max(start, 0), size - patch))
    return tuple(origin), index


def _correction_origin(data: TrainingData, rng: np.random.Generator) -> tuple[tuple[int, ...], int]:
    """A patch origin (and its item) with a random corrected pixel near the middle of the output (within a
    quarter of it), so that the correction is seen with its surroundings on every side."""
    index, centre, shape = _draw_pixel(data.correction_probability, data.correction_pixels, data, rng)
    origin = []
    for c, size, patch, out in zip(centre, shape, data.input_shape, data.output_shape):
        jitter = int(rng.integers(-(out // 4), out // 4 + 1))
        origin.append(min(max(int(c) - patch // 2 + jitter, 0), size - patch))
    return tuple(origin), index


def _draw_pixel(probability: Any, pixels: Any, data: TrainingData, rng: np.random.Generator
                ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """An item drawn with ``probability``, one of its ``pixels`` (flat indices) at random: (item, pixel, item
    shape). The draws are those the two origins made before, in the same order."""
    index = int(rng.choice(len(data.items), p=probability))
    shape = data.items[index].targets.classes.shape
    flat = pixels[index]
    return index, np.unravel_index(int(flat[rng.integers(len(flat))]), shape), shape
