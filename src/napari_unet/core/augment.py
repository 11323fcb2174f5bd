"""Training patches and their augmentation: flips, 90-degree rotations, elastic deformation, intensity jitter.

With a handful of annotated images, augmentation is what keeps the network from memorising them. The U-Net
paper singles out elastic deformation: a smooth random displacement field (random vectors on a coarse 3x3 grid,
10 px standard deviation, interpolated with cubic splines) teaches invariance to the shape changes tissue
actually shows.

Every geometric change is applied to the image, the class targets, the loss weights and the annotated area
together, by resampling all of them at the same coordinates: the image and weights with linear interpolation,
classes and the annotated area with nearest-neighbour (labels must never be blended). The elastic field is
applied while the patch is cut out of its item, so the patch sees real neighbouring pixels rather than a
mirrored edge. Intensity changes touch the image only.

Stacks (3D items) are flipped along every axis but rotated and deformed in the YX plane only, since their Z
sampling is usually coarser than X and Y.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations are drawn for each patch, and how strong they are."""

    flips: bool = True
    rotations: bool = True  # multiples of 90 degrees in the YX plane
    elastic_probability: float = 0.5
    elastic_grid: int = 3  # coarse grid points per axis (the paper's 3x3)
    elastic_sigma: float = 10.0  # px, standard deviation of the coarse displacements (the paper's 10 px)
    intensity_probability: float = 0.8
    scale: tuple[float, float] = (0.7, 1.4)  # multiplicative contrast change
    shift: float = 0.1  # additive offset, in units of the normalised intensity range
    gamma: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.05  # largest gaussian noise standard deviation, in normalised units


NO_AUGMENTATION = Augmentation(flips=False, rotations=False, elastic_probability=0.0, intensity_probability=0.0)


@dataclass
class Patch:
    """One training patch: the network input and, on the network's output grid, what the loss compares."""

    image: np.ndarray  # (C, *input_shape) float32
    classes: np.ndarray  # (*output_shape) uint8
    weights: np.ndarray  # (*output_shape) float32, 0 outside the annotated area
    annotated: np.ndarray  # (*output_shape) bool


# --------------------------------------------------------------------------------------------------------------
# Elastic deformation
# --------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _spline_matrix(length: int, grid: int) -> np.ndarray:
    """(length, grid) matrix that interpolates ``grid`` coarse values to ``length`` points with cubic splines.

    Spline interpolation is linear and separable, so a coarse field is interpolated axis by axis with these
    small matrices instead of evaluating a spline at every pixel.
    """
    positions = np.linspace(0.0, grid - 1.0, length)[np.newaxis]
    columns = [ndimage.map_coordinates(np.eye(grid)[k], positions, order=3, mode="nearest") for k in range(grid)]
    return np.stack(columns, axis=1)


def random_displacement(
    shape: tuple[int, ...], rng: np.random.Generator, grid: int = 3, sigma: float = 10.0,
    axes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A smooth random displacement field of shape (ndim, *shape), in pixels.

    Each component along ``axes`` (default: all) is a coarse ``grid``^ndim field of normal(0, sigma) vectors
    interpolated to ``shape`` with cubic splines; the other components are zero.
    """
    ndim = len(shape)
    field = np.zeros((ndim, *shape), dtype=np.float32)
    matrices = [_spline_matrix(n, grid) for n in shape]
    for axis in range(ndim) if axes is None else axes:
        coarse = rng.normal(0.0, sigma, size=(grid,) * ndim)
        for matrix in matrices:  # each contraction consumes the first axis and appends the fine one
            coarse = np.tensordot(coarse, matrix, axes=([0], [1]))
        field[axis] = coarse
    return field


def warp(array: np.ndarray, coordinates: np.ndarray, order: int) -> np.ndarray:
    """Resample ``array`` (spatial, or channels first) at ``coordinates`` (ndim, *out), mirroring at edges."""
    spatial = coordinates.shape[0]
    if array.ndim == spatial:
        source = array.view(np.uint8) if array.dtype == bool else array
        out = ndimage.map_coordinates(source, coordinates, order=order, mode="mirror", prefilter=False)
        return out.astype(bool) if array.dtype == bool else out
    return np.stack([warp(channel, coordinates, order) for channel in array])


# --------------------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------------------


def extract_patch(
    image: np.ndarray, classes: np.ndarray, weights: np.ndarray, annotated: np.ndarray,
    origin: tuple[int, ...], input_shape: tuple[int, ...], output_shape: tuple[int, ...],
    rng: np.random.Generator, augmentation: Augmentation = NO_AUGMENTATION,
) -> Patch:
    """Cut a patch whose input starts at ``origin``; targets cover the centred output region.

    The output region is smaller than the input for valid-padding networks (by the network's halo on each
    side) and equal to it for same padding. Augmentations are drawn from ``rng`` in a fixed order, so a seed
    gives the same patch.
    """
    ndim = len(input_shape)
    inner = tuple(slice((p - o) // 2, (p - o) // 2 + o) for p, o in zip(input_shape, output_shape))
    if augmentation.elastic_probability > 0 and rng.random() < augmentation.elastic_probability:
        coordinates = np.indices(input_shape, dtype=np.float32)
        coordinates += np.asarray(origin, dtype=np.float32).reshape((ndim,) + (1,) * ndim)
        sigma = min(augmentation.elastic_sigma, 0.08 * min(input_shape[-2:]))
        coordinates += random_displacement(input_shape, rng, augmentation.elastic_grid, sigma,
                                           axes=tuple(range(ndim - 2, ndim)))
        target_coordinates = coordinates[(slice(None), *inner)]
        patch = Patch(
            image=warp(image, coordinates, order=1),
            classes=warp(classes, target_coordinates, order=0),
            weights=warp(weights, target_coordinates, order=1),
            annotated=warp(annotated, target_coordinates, order=0),
        )
        patch.weights *= patch.annotated
    else:
        box = tuple(slice(o, o + p) for o, p in zip(origin, input_shape))
        target_box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
        patch = Patch(image[(slice(None), *box)].copy(), classes[target_box].copy(), weights[target_box].copy(),
                      annotated[target_box].copy())
    _flip_rotate(patch, rng, augmentation)
    if augmentation.intensity_probability > 0 and rng.random() < augmentation.intensity_probability:
        patch.image = jitter_intensity(patch.image, rng, augmentation)
    return patch


def _flip_rotate(patch: Patch, rng: np.random.Generator, augmentation: Augmentation) -> None:
    """The same flips and YX rotation for every array of the patch (in place)."""
    ndim = patch.classes.ndim
    flips = [axis for axis in range(ndim) if augmentation.flips and rng.random() < 0.5]
    square = patch.classes.shape[-1] == patch.classes.shape[-2] and patch.image.shape[-1] == patch.image.shape[-2]
    turns = int(rng.integers(4)) if augmentation.rotations else 0
    if not square:
        turns = 2 * (turns % 2)  # a half turn keeps a non-square patch's shape
    for name in ("image", "classes", "weights", "annotated"):
        array = getattr(patch, name)
        offset = array.ndim - ndim  # the image has a channel axis in front
        if flips:
            array = np.flip(array, axis=[offset + axis for axis in flips])
        if turns:
            array = np.rot90(array, k=turns, axes=(array.ndim - 2, array.ndim - 1))
        setattr(patch, name, np.ascontiguousarray(array))


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, augmentation: Augmentation) -> np.ndarray:
    """Random gamma, contrast, offset and gaussian noise per channel of a normalised image."""
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        gamma = math.exp(rng.uniform(math.log(augmentation.gamma[0]), math.log(augmentation.gamma[1])))
        scale = math.exp(rng.uniform(math.log(augmentation.scale[0]), math.log(augmentation.scale[1])))
        shift = rng.uniform(-augmentation.shift, augmentation.shift)
        noise = rng.uniform(0.0, augmentation.noise)
        values = np.sign(channel) * np.abs(channel) ** gamma
        values = values * scale + shift
        if noise > 0:
            values = values + rng.normal(0.0, noise, size=channel.shape)
        out[c] = values
    return out
