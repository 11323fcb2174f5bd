"""Training data for fine-tuning: annotated samples -> padded training items -> batches of patches.

:func:`prepare_data` checks every :class:`Sample`, cuts it into items (one per annotated plane for a 2D model,
one per stack for a 3D one) with normalised images and targets (:mod:`napari_unet.core.targets`), holds a
validation block out of the annotated area, chooses the patch geometry and pads every item so that any
annotated pixel can lie in a patch's output. It also fingerprints the data and keeps the labels for the
model's annotation snapshot. :func:`sample_batch` then draws patches around random annotated pixels, each item
weighted by its annotated area, and augments them (:mod:`napari_unet.core.augment`).
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
    check_classes,
    instance_targets,
    read_sample,
    semantic_targets,
)
from napari_unet.core.unet import halo, min_input_size, nearest_valid_sizes, output_size


@dataclass
class Sample:
    """One annotated image. ``labels`` has the image's shape without its channel axis; 0 is background (or
    class 0), positive values are object ids (instance models) or class ids (semantic models). Only pixels
    inside ``mask`` (if given) and not equal to the model's ignore value carry loss. ``axes=None`` (the
    default) infers the axes exactly as :func:`~napari_unet.core.inference.segment` does: a colour image is
    ``YXC``, and a 1-channel model trains on its grey (:mod:`~napari_unet.core.colour`)."""

    image: Any
    labels: Any
    mask: Any = None
    axes: str | None = None


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


def prepare_data(model: Model, samples: Sequence[Sample], patch_shape: int | Sequence[int] | None,
                 validation_fraction: float, w0: float, sigma: float, polarity: bool = True) -> TrainingData:
    """Check ``samples`` and turn them into what :func:`sample_batch` draws from (see the module's docstring).
    With ``polarity``, annotated objects darker than their background are flipped (:func:`match_polarity`)."""
    config = model.config
    if isinstance(samples, Sample) or not len(samples):
        raise InvalidInputError("give a list of one or more Sample(image, labels, mask=None, axes='YX')")
    digest = hashlib.sha256()
    items: list[Item] = []
    annotations: list[tuple[np.ndarray, np.ndarray, str]] = []
    sizes: list[float | None] = []
    for index, sample in enumerate(samples):
        if not isinstance(sample, Sample):
            raise InvalidInputError(f"sample {index} is a {type(sample).__name__}; wrap it as "
                                    "Sample(image, labels, mask=None, axes='YX')")
        try:
            items += _sample_items(sample, index, model, w0, sigma, digest, annotations, sizes)
        except InvalidInputError as exc:
            raise InvalidInputError(f"sample {index}: {exc}") from None
    inverted = polarity and match_polarity(items)
    input_shape, output_shape = _patch_geometry(config.network, [i.image.shape[1:] for i in items], patch_shape)
    validation = hold_out_validation(items, validation_fraction, config.network, config.task)
    annotated_pixels = sum(int(item.targets.annotated.sum()) for item in items)
    if validation is not None:
        annotated_pixels += validation.annotated_pixels
    border = halo(config.network, input_shape[0]) if config.network.padding == "valid" else 0
    items = [_pad(item, input_shape, border) for item in items]
    train_pixels = [_flat_indices(item.targets.annotated) for item in items]
    counts = np.array([len(p) for p in train_pixels], dtype=np.float64)
    return TrainingData(items, input_shape, output_shape, train_pixels, counts / counts.sum(), validation,
                 "sha256:" + digest.hexdigest(), annotated_pixels, annotations, inverted, sizes)


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
                  annotations: list[tuple[np.ndarray, np.ndarray, str]], sizes: list[float | None]
                  ) -> list[Item]:
    """Check one sample and cut it into training items: one per annotated plane (2D models) or stack.
    Feeds the data fingerprint and records the labels and annotated area for the model's snapshot, and the
    size of the annotated objects (:mod:`~napari_unet.core.sizing`)."""
    config = model.config
    dims = config.network.spatial_dims
    image, axes, _ = grey_for_model(sample.image, sample.axes, dims, config.in_channels, stacklevel=6)
    arrays = read_sample(image, sample.labels, sample.mask, axes, config.axes, config.in_channels)
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
    sizes.append(round(found, 1) if found else None)
    stats = config.normalization.statistics(arrays.image)
    digest.update(f"{index}:{arrays.axes}:{arrays.labels.shape}".encode())
    items = []
    for plane in np.ndindex(arrays.labels.shape[: arrays.labels.ndim - dims]):
        plane_annotated = annotated[plane]
        if not plane_annotated.any():
            continue
        raw = np.asarray(arrays.image[(slice(None), *plane)])
        labels = arrays.labels[plane]
        for part in (raw, np.where(plane_annotated, labels, 0), plane_annotated):
            digest.update(np.ascontiguousarray(part).tobytes())
        image = config.normalization.apply(raw, stats)
        if config.task == "instance":
            targets = instance_targets(labels, plane_annotated, w0, sigma)
        else:
            targets = semantic_targets(labels, plane_annotated, len(config.classes))
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
    item.image = np.pad(item.image, [(0, 0), *widths], mode="reflect")
    return item


def _flat_indices(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the True pixels, in 32 bits where they fit (half the memory for many images)."""
    indices = np.flatnonzero(mask)
    return indices.astype(np.int32) if mask.size < 2**31 else indices


def sample_batch(data: TrainingData, batch_size: int, rng: np.random.Generator, augmentation: Augmentation,
           device: torch.device) -> tuple[torch.Tensor, ...]:
    """A batch of patches, each placed so that a random annotated training pixel lies in its output."""
    patches = []
    for _ in range(batch_size):
        index = int(rng.choice(len(data.items), p=data.item_probability))
        item = data.items[index]
        pixels = data.train_pixels[index]
        centre = np.unravel_index(int(pixels[rng.integers(len(pixels))]), item.targets.classes.shape)
        origin = []
        for c, size, patch, out in zip(centre, item.targets.classes.shape, data.input_shape, data.output_shape):
            start = int(c) - (patch - out) // 2 - int(rng.integers(out))
            origin.append(min(max(start, 0), size - patch))
        t = item.targets
        patches.append(extract_patch(item.image, t.classes, t.weights, t.annotated, tuple(origin),
                                     data.input_shape, data.output_shape, rng, augmentation))
    stacked = (np.stack([getattr(p, name) for p in patches]) for name in ("image", "classes", "weights", "annotated"))
    return tuple(torch.from_numpy(a).to(device) for a in stacked)
