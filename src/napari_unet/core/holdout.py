"""The validation split of fine-tuning: a block of the annotated area held out of training, and its scores.

A user's annotations are few, so the split takes only what it needs: when there are enough annotated pixels,
a compact block in a corner of the annotated area of up to eight items (about ``fraction`` of their
annotation, at most a few patches' worth) is taken out of the training loss. A spatial block rather than
scattered pixels, because neighbouring pixels are nearly copies of each other: scattered hold-out pixels would
measure memorisation, not generalisation. For the same reason, where a 2D model trains on a stack plane by plane,
its other planes (or frames) do not train where one of them is held out: neighbouring planes are near copies.

Each block is evaluated as inference sees an image: the network reads the block with context around it (the
halo of a valid-padding network, or a margin for same padding) and the output is cropped to the block.

Labels that are a model's own output with a few corrections (Live mode, before the user has reviewed much)
cannot judge a model: the model that made them agrees with them by construction, and a version that
differs from it looks worse there whether it is or not. With ``corrections_only`` such items hold out the
corner of their annotated area that splits the corrections most evenly between held out and trained on, and
the scores (object F1, Dice) count only what the user vouched for
(:func:`~napari_unet.core.targets.vouched_pixels`): the objects they changed. Blocks without any give no
score, so that nothing is judged on the model's word alone. ``val_net`` then counts the
corrected objects a network gets right less the untouched objects it does not repeat: a change there is
unverified, and from a few corrections it is more often for the worse (``bench/live_first_gain.py``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from napari_unet.core.losses import foreground_dice, segmentation_loss
from napari_unet.core.metrics import object_matching
from napari_unet.core.postprocess import ObjectFilter, instance_labels
from napari_unet.core.targets import Item, objects_touching
from napari_unet.core.unet import UNetConfig, halo, min_input_size, nearest_valid_sizes, output_size

MIN_PIXELS = {2: 1024, 3: 8192}  # fewer held-out pixels than this make a noisy, misleading score
MAX_PIXELS = {2: 65536, 3: 2**19}  # bounds the time one validation takes
MAX_ITEMS = 8
SAME_PADDING_CONTEXT = 16  # px of context around a block for same-padding networks


@dataclass
class Block:
    """One held-out block: the network input with context, and the targets of the block itself."""

    input: np.ndarray  # (C, *input) float32
    crop: tuple[slice, ...]  # the block within the network's output
    classes: np.ndarray
    weights: np.ndarray
    annotated: np.ndarray
    instances: np.ndarray | None
    vouched: np.ndarray | None = None  # scores count only these pixels' objects; None: all annotated ones


@dataclass
class Validation:
    blocks: list[Block]
    task: str
    annotated_pixels: int
    objects: ObjectFilter = ObjectFilter()  # the model's thresholds: objects are scored as segment makes them


def hold_out_validation(items: list[Item], fraction: float, network: UNetConfig, task: str,
                        corrections_only: bool = False, objects: ObjectFilter = ObjectFilter()) -> Validation | None:
    """Take validation blocks out of ``items`` (their training weights become 0 there); None when the
    annotated area is too small to spare ``fraction`` of it. ``corrections_only``: see the module docstring.
    ``objects``: the model's object filter, with which the blocks' objects are made."""
    if fraction <= 0:
        return None
    dims = network.spatial_dims
    counts = np.array([int(item.targets.annotated.sum()) for item in items], dtype=np.float64)
    chosen = np.unique(np.linspace(0, len(items) - 1, num=min(len(items), MAX_ITEMS)).round().astype(int))
    budget = min(fraction * counts[chosen].sum(), MAX_PIXELS[dims])
    boxes = {}
    for index in chosen:
        vouched = items[index].targets.vouched if corrections_only else None
        box = _corner_block(items[index].targets.annotated, budget * counts[index] / counts[chosen].sum(), vouched)
        held = int(items[index].targets.annotated[box].sum())
        if 0 < held < counts[index]:
            boxes[int(index)] = (box, held)
    total = sum(held for _, held in boxes.values())
    if total < MIN_PIXELS[dims]:
        return None
    blocks = []
    for index, (box, _) in boxes.items():
        blocks.append(held_out_block(items[index], box, network, corrections_only))
        # the other planes (or frames) of the same sample are near copies there: they do not train there either
        for item in items:
            if item is items[index] or (item.sample_index == items[index].sample_index
                                        and item.targets.annotated.shape == items[index].targets.annotated.shape):
                item.targets.annotated[box] = False
                item.targets.weights[box] = 0.0
    return Validation(blocks, task, total, objects)


def _corner_block(annotated: np.ndarray, target: float, prefer: np.ndarray | None = None) -> tuple[slice, ...]:
    """The smallest square (in YX, all of any leading axis) at a corner of the annotated area's bounding box
    that holds at least ``target`` annotated pixels: the lower-left corner, or with ``prefer`` the corner whose
    square splits those pixels most evenly between held out and left to train on (the lower-left one when none
    does better: with all of them in one corner, holding them all out would leave nothing to learn from)."""
    plane = annotated.reshape(-1, *annotated.shape[-2:]).sum(axis=0)
    rows, cols = np.nonzero(plane)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    table = _summed_area(plane)

    def square(side: int, low: bool, first: bool) -> tuple[int, int, int, int]:
        ys = (max(top, bottom - side), bottom) if low else (top, min(bottom, top + side))
        return (*ys, left, min(right, left + side)) if first else (*ys, max(left, right - side), right)

    def count(summed: np.ndarray, box: tuple[int, int, int, int]) -> int:
        y0, y1, x0, x1 = box
        return int(summed[y1, x1] - summed[y0, x1] - summed[y1, x0] + summed[y0, x0])

    squares = []
    for corner in ((True, True), (True, False), (False, True), (False, False)):  # lower-left first
        lo, hi = 1, max(bottom - top, right - left)
        while lo < hi:  # smallest side whose square holds the target
            mid = (lo + hi) // 2
            if count(table, square(mid, *corner)) >= target:
                hi = mid
            else:
                lo = mid + 1
        squares.append(square(lo, *corner))
        if prefer is None:
            break
    if prefer is not None:  # hold out as many as are left to train on, at best half
        preferred = _summed_area(prefer.reshape(-1, *prefer.shape[-2:]).sum(axis=0))
        total = int(preferred[-1, -1])
        squares.sort(key=lambda box: -min(count(preferred, box), total - count(preferred, box)))  # ties: lower-left
    y0, y1, x0, x1 = squares[0]
    return (*(slice(None),) * (annotated.ndim - 2), slice(y0, y1), slice(x0, x1))


def _summed_area(plane: np.ndarray) -> np.ndarray:
    table = np.zeros((plane.shape[0] + 1, plane.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = plane.cumsum(0).cumsum(1)
    return table


def held_out_block(item: Item, box: tuple[slice, ...], network: UNetConfig, corrections_only: bool = False) -> Block:
    """The network input for ``box`` with context (mirrored beyond the item) and the block's targets; with
    ``corrections_only``, what the user vouched for in the block (when that is not all of it)."""
    shape = item.targets.classes.shape
    margin = 0 if network.padding == "valid" else SAME_PADDING_CONTEXT
    border = halo(network, min_input_size(network)) if network.padding == "valid" else 0
    starts, sizes, crop = [], [], []
    for axis, piece in enumerate(box):
        first, stop, _ = piece.indices(shape[axis])
        length = stop - first
        size = nearest_valid_sizes(network, length + 2 * (margin + border))[1]
        out = output_size(network, size)
        offset = (out - length) // 2
        starts.append(first - (size - out) // 2 - offset)
        sizes.append(size)
        crop.append(slice(offset, offset + length))
    t = item.targets
    annotated = t.annotated[box].copy()
    vouched = t.vouched[box] & annotated if corrections_only and t.vouched is not None else None
    return Block(
        input=_take_mirrored(item.image, starts, sizes),
        crop=tuple(crop),
        classes=t.classes[box].copy(),
        weights=t.weights[box].copy(),
        annotated=annotated,
        instances=np.where(annotated, t.instances[box], 0) if t.instances is not None else None,
        vouched=vouched,
    )


def _take_mirrored(image: np.ndarray, starts: list[int], sizes: list[int]) -> np.ndarray:
    """``image[:, start:start+size, ...]`` with indices outside the image mirrored back into it."""
    indices = []
    for start, size, n in zip(starts, sizes, image.shape[1:]):
        index = np.arange(start, start + size)
        if n == 1:
            index = np.zeros_like(index)
        else:
            period = 2 * (n - 1)
            index = np.mod(index, period)
            index = np.where(index >= n, period - index, index)
        indices.append(index)
    return np.ascontiguousarray(image[np.ix_(np.arange(image.shape[0]), *indices)])


@torch.no_grad()
def validate(network: torch.nn.Module, validation: Validation, device: torch.device) -> dict[str, float]:
    """Validation loss over all blocks; foreground Dice and (instance models) object F1 at IoU 0.5 over what
    the blocks score (all annotated pixels, or only the vouched ones: the module docstring), when anything."""
    network.eval()
    loss_total, predicted, truth = 0.0, [], []
    tp = fp = fn = 0
    changed = None  # with vouched blocks: the untouched objects (the earlier model's) the network does not repeat
    for block, logits in _forward(network, validation.blocks, device):
        tensors = [torch.from_numpy(a[np.newaxis]).to(device) for a in (block.classes, block.weights,
                                                                        block.annotated)]
        loss = segmentation_loss(logits[np.newaxis], *tensors)
        loss_total += float(loss) * int(block.annotated.sum())
        scored = block.annotated if block.vouched is None else block.vouched
        classes = logits.argmax(0).cpu().numpy().astype(np.uint8)
        predicted.append(classes[scored])
        truth.append(block.classes[scored])
        if block.instances is None:
            continue
        probabilities = torch.softmax(logits.float(), dim=0).cpu().numpy()
        objects = np.where(block.annotated, instance_labels(probabilities, validation.objects), 0)  # as segment does
        if block.vouched is None:
            matching = object_matching(objects, block.instances)
        else:
            pair = (objects, block.instances)
            inside = [np.where(objects_touching(o, scored), o, 0) for o in pair]
            matching = object_matching(*inside)
            changed = (changed or 0) + object_matching(*(np.where(i > 0, 0, o) for i, o in zip(inside, pair))).fn
        tp, fp, fn = tp + matching.tp, fp + matching.fp, fn + matching.fn
    metrics = {"val_loss": loss_total / validation.annotated_pixels}
    pred, true = np.concatenate(predicted), np.concatenate(truth)
    if not pred.size:
        return metrics  # nothing the user vouched for was held out: no score
    if validation.task == "instance":
        pred, true = (pred > 0).astype(np.uint8), (true > 0).astype(np.uint8)
    metrics["val_dice"] = foreground_dice(pred, true, np.ones(pred.shape, dtype=bool))
    if validation.task == "instance":
        metrics["val_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        if changed is not None:
            metrics["val_net"] = float(tp - changed)
    return metrics


def _forward(network: torch.nn.Module, blocks: list[Block], device: torch.device,
             batch: int = 8) -> Iterator[tuple[Block, torch.Tensor]]:
    """Each block with its cropped logits; blocks of one input shape share forward passes (usually all)."""
    by_shape: dict[tuple[int, ...], list[Block]] = {}
    for block in blocks:
        by_shape.setdefault(block.input.shape, []).append(block)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            chunk = group[start:start + batch]
            logits = network(torch.from_numpy(np.stack([b.input for b in chunk])).to(device))
            for block, out in zip(chunk, logits):
                yield block, out[(slice(None), *block.crop)]
