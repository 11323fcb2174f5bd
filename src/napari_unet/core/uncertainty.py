"""Where to look next: how unsure the model is, per pixel and per object, from its class probabilities.

A user correcting a segmentation has little time; the objects the model was least sure of are the ones most
likely to be wrong (merged, split, swollen into the background), so they are the ones to check first. The
measure is the entropy of the class probabilities (background / interior / boundary for instance models),
divided by its largest possible value, so 0 is a certain pixel and 1 a pixel where every class is equally
likely. It costs nothing beyond the probabilities the network already gives (test-time augmentation makes
them smoother, not different in kind). An object's doubt is the mean over its pixels and a ring of
:data:`RING` pixels around it: where the model hesitates on an object's border decides its shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_unet.core.errors import InvalidInputError

RING = 2  # pixels around an object that count towards its doubt: its border is where errors show


@dataclass(frozen=True)
class Doubt:
    """One object and how unsure the model was of it (0 certain .. 1 every class equally likely)."""

    label: int
    score: float
    centre: tuple[float, ...]  # centre of mass, in the labels' pixel coordinates
    extent: tuple[tuple[int, int], ...]  # (first, last + 1) pixel per axis: its bounding box


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy (0..1, float32) of class probabilities given classes first, (classes, *spatial)."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim < 2 or p.shape[0] < 2:
        raise InvalidInputError(f"probabilities must have two or more classes first, (classes, ...), not shape "
                                f"{p.shape}")
    entropy = np.zeros(p.shape[1:], np.float32)
    for channel in p:
        positive = np.clip(channel, 1e-7, 1.0)
        entropy -= channel * np.log(positive)
    entropy /= math.log(p.shape[0])
    return np.clip(entropy, 0.0, 1.0)


def object_doubts(labels: np.ndarray, entropy: np.ndarray) -> list[Doubt]:
    """Every object of ``labels`` with its doubt (mean entropy over it and its ring), least certain first."""
    labels = np.asarray(labels)
    if labels.shape != entropy.shape:
        raise InvalidInputError(f"labels {labels.shape} and entropy {entropy.shape} must have the same shape")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not ids.size:
        return []
    grown = ndimage.grey_dilation(labels, size=(2 * RING + 1,) * labels.ndim)
    region = np.where(labels > 0, labels, grown)  # each object and the background ring around it
    scores = ndimage.mean(entropy, region, ids)
    centres = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids)
    boxes = ndimage.find_objects(labels)
    doubts = [Doubt(int(i), float(s), tuple(float(c) for c in centre),
                    tuple((b.start, b.stop) for b in boxes[int(i) - 1]))
              for i, s, centre in zip(ids, np.atleast_1d(scores), centres)]
    return sorted(doubts, key=lambda d: (-d.score, d.label))


def within(doubts: list[Doubt], bounds: dict[int, tuple[float, float]]) -> list[Doubt]:
    """The doubts of objects that reach into ``bounds`` ({axis: (low, high)} in pixel coordinates, high
    included): in view on screen, or crossing the plane shown (low == high)."""
    return [d for d in doubts
            if all(d.extent[axis][0] <= high and low < d.extent[axis][1] for axis, (low, high) in bounds.items())]
