"""Augmentation: every geometric change hits image, targets, weights and mask alike."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_unet.core.augment import (
    NO_AUGMENTATION,
    Augmentation,
    extract_patch,
    jitter_intensity,
    random_displacement,
    warp,
)
from napari_unet.synthetic import generate_nuclei


def _mostly_equal(image: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of pixels where a warped image that started equal to its labels still equals them."""
    return float(np.mean(np.abs(image - labels) < 1e-4))


def _agree_away_from_edges(image: np.ndarray, labels: np.ndarray, coordinates: np.ndarray,
                           source: np.ndarray) -> float:
    """Where a pixel's source point lies in a region of constant label (3x3 around its nearest pixel),
    linear interpolation of an image equal to the labels gives exactly the label: the fraction that agree."""
    flat = ndimage.maximum_filter(source, 3) == ndimage.minimum_filter(source, 3)
    inside = warp(flat, coordinates, order=0)
    return float(np.mean(np.abs(image[inside] - labels[inside]) < 1e-4))


def test_elastic_deformation_keeps_image_and_labels_aligned():
    _, labels = generate_nuclei((64, 64), "dense", seed=1)
    image = labels.astype(np.float32)  # an image that equals its label map
    rng = np.random.default_rng(0)
    coordinates = np.indices(labels.shape, dtype=np.float32)
    coordinates += random_displacement(labels.shape, rng, grid=3, sigma=5.0)
    warped_image = warp(image, coordinates, order=1)
    warped_labels = warp(labels, coordinates, order=0)
    assert not np.array_equal(warped_labels, labels)  # it did deform
    assert _agree_away_from_edges(warped_image, warped_labels, coordinates, labels) == 1.0
    assert _mostly_equal(warped_image, warped_labels) > 0.8  # the rest differ only along object edges
    other_coordinates = np.indices(labels.shape, dtype=np.float32)
    other_coordinates += random_displacement(labels.shape, rng, grid=3, sigma=5.0)
    other = warp(labels, other_coordinates, order=0)
    assert _agree_away_from_edges(warped_image, other, coordinates, labels) < 0.95  # another field misaligns


def test_displacement_is_smooth_has_the_requested_size_and_leaves_other_axes_alone():
    rng = np.random.default_rng(1)
    field = random_displacement((6, 96, 96), rng, grid=3, sigma=10.0, axes=(1, 2))
    assert field.shape == (3, 6, 96, 96)
    assert not field[0].any()
    assert 3 < field[1:].std() < 30
    assert np.abs(np.diff(field[1:], axis=-1)).max() < 2.5  # smooth: neighbours move together


def test_patches_keep_image_targets_weights_and_mask_aligned_under_every_augmentation():
    _, labels = generate_nuclei((80, 80), "dense", seed=2)
    classes = (labels % 3).astype(np.uint8)
    image = classes[np.newaxis].astype(np.float32)
    weights = classes.astype(np.float32) + 1
    annotated = np.ones(labels.shape, bool)
    annotated[:, :10] = False
    geometric = Augmentation(elastic_probability=1.0, intensity_probability=0.0)
    rng = np.random.default_rng(3)
    for _ in range(8):
        patch = extract_patch(image, classes, weights * annotated, annotated, (8, 8), (48, 48), (40, 40), rng,
                              geometric)
        assert patch.image.shape == (1, 48, 48) and patch.classes.shape == (40, 40)
        inner = patch.image[0, 4:44, 4:44]
        assert _mostly_equal(inner, patch.classes) > 0.85
        inside = patch.annotated
        assert _mostly_equal(patch.weights[inside] - 1, patch.classes[inside]) > 0.85
        assert (patch.weights[~inside] == 0).all()


def test_a_seed_gives_the_same_patch_and_no_augmentation_is_a_plain_crop():
    rng_image = np.random.default_rng(4).random((1, 40, 40)).astype(np.float32)
    classes = np.zeros((40, 40), np.uint8)
    weights = np.ones((40, 40), np.float32)
    annotated = np.ones((40, 40), bool)
    first = extract_patch(rng_image, classes, weights, annotated, (3, 5), (32, 32), (32, 32),
                          np.random.default_rng(9), Augmentation())
    second = extract_patch(rng_image, classes, weights, annotated, (3, 5), (32, 32), (32, 32),
                           np.random.default_rng(9), Augmentation())
    assert np.array_equal(first.image, second.image)
    plain = extract_patch(rng_image, classes, weights, annotated, (3, 5), (32, 32), (32, 32),
                          np.random.default_rng(9), NO_AUGMENTATION)
    assert np.array_equal(plain.image, rng_image[:, 3:35, 5:37])


def test_intensity_jitter_changes_the_image_only_within_sensible_bounds():
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    out = jitter_intensity(image, np.random.default_rng(5), Augmentation())
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.allclose(out, image)
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.9  # still the same picture
