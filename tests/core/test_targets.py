"""Training targets: annotated area, three-class targets, the U-Net weight map, and refusals of bad samples."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.targets import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    annotated_area,
    check_classes,
    instance_classes,
    instance_targets,
    read_sample,
    semantic_targets,
    separation_weights,
)


def _touching_pair_and_loner() -> np.ndarray:
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[10:20, 5:15] = 1
    labels[10:20, 15:25] = 2  # touches object 1 along column 15
    labels[10:20, 40:50] = 3  # alone
    return labels


def test_touching_objects_are_split_by_boundary_pixels():
    labels = _touching_pair_and_loner()
    classes = instance_classes(labels, np.ones(labels.shape, bool))
    assert (classes[12:18, 14:16] == BOUNDARY).all()  # both sides of the contact line
    assert classes[15, 10] == INTERIOR and classes[15, 45] == INTERIOR
    assert classes[0, 0] == BACKGROUND and classes[15, 30] == BACKGROUND
    assert classes[10, 45] == BOUNDARY  # the loner's outline
    _, count = ndimage.label(classes == INTERIOR)
    assert count == 3  # the interiors of the touching pair are separate components


def test_an_object_cut_by_the_mask_keeps_its_interior_at_the_mask_edge():
    labels = np.zeros((30, 30), np.int32)
    labels[5:25, 5:25] = 1
    annotated = np.zeros(labels.shape, bool)
    annotated[:, :15] = True
    classes = instance_classes(labels, annotated)
    assert (classes[8:22, 14] == INTERIOR).all()  # the mask edge is not an object edge
    assert (classes[5, 5:15] == BOUNDARY).all()
    assert (classes[:, 15:] == BACKGROUND).all()


def test_weight_map_is_largest_between_touching_objects():
    labels = _touching_pair_and_loner()
    targets = instance_targets(labels, np.ones(labels.shape, bool))
    contact = targets.weights[12:18, 14:16].min()
    loner_edge = targets.weights[12:18, 39].max()  # background just left of the lone object
    far = targets.weights[35, 30]
    assert contact > 5 * loner_edge
    assert contact > 5 * far
    assert targets.weights[15, 10] < contact  # interiors get class balance only


def test_separation_term_matches_a_brute_force_two_nearest_objects_computation():
    rng = np.random.default_rng(3)
    labels = np.zeros((48, 48), np.int32)
    for index in range(1, 8):
        y, x = rng.integers(4, 44, size=2)
        labels[max(y - 3, 0):y + 3, max(x - 3, 0):x + 3] = index
    distances = np.stack([ndimage.distance_transform_edt(labels != i) for i in np.unique(labels) if i])
    distances.sort(axis=0)
    expected = 10 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * 5.0**2))
    term = separation_weights(labels, w0=10, sigma=5.0)
    assert np.allclose(term, expected, atol=10 * np.exp(-8) + 1e-5)


def test_labels_outside_the_annotated_area_change_nothing():
    labels = _touching_pair_and_loner()
    annotated = np.zeros(labels.shape, bool)
    annotated[:, :20] = True
    other = labels.copy()
    other[:, 20:] = 7 - other[:, 20:]  # rewrite everything outside the annotated area
    a, b = instance_targets(labels, annotated), instance_targets(other, annotated)
    for name in ("classes", "weights", "instances"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.weights[~annotated] == 0).all() and (a.weights[annotated] > 0).all()


def test_class_balance_gives_rare_classes_more_weight_and_semantic_targets_keep_class_ids():
    labels = np.zeros((20, 20), np.int64)
    labels[:2] = 2
    labels[5:15, 5:15] = 1
    targets = semantic_targets(labels, np.ones(labels.shape, bool), 3)
    assert np.array_equal(targets.classes, labels)
    assert targets.weights[0, 0] > targets.weights[10, 10] > targets.weights[18, 18]


def test_stack_without_mask_is_annotated_only_on_labelled_slices_and_ignore_value_is_unannotated():
    labels = np.zeros((5, 8, 8), np.int32)
    labels[2, 3:5, 3:5] = 1
    labels[2, 0, :] = 255
    annotated = annotated_area(labels, None, 255, spatial_dims=2)
    assert annotated[2].sum() == 64 - 8 and not annotated[[0, 1, 3, 4]].any()
    mask = np.zeros((5, 8, 8), bool)
    mask[4] = True
    assert np.array_equal(annotated_area(labels, mask, None, 2), mask)


def test_negative_labels_are_refused_unless_they_are_the_ignore_value():
    labels = np.zeros((8, 8), np.int32)
    labels[0, 0] = -1
    with pytest.raises(InvalidInputError, match="negative"):
        annotated_area(labels, None, None, 2)
    assert not annotated_area(labels, None, -1, 2)[0, 0]


def test_semantic_labels_beyond_the_models_classes_are_refused():
    labels = np.full((4, 4), 3)
    with pytest.raises(InvalidInputError, match="class id 3.*3 classes"):
        check_classes(labels, np.ones((4, 4), bool), ("background", "a", "b"))


@pytest.mark.parametrize(
    "axes, shape, expected",
    [("YX", (6, 7), (1, 6, 7)), ("YXC", (6, 7, 2), (2, 6, 7)), ("CYX", (2, 6, 7), (2, 6, 7)),
     ("ZYX", (3, 6, 7), (1, 3, 6, 7)), ("ZCYX", (3, 2, 6, 7), (2, 3, 6, 7))],
)
def test_samples_are_read_channel_first_with_other_axes_before_the_spatial_ones(axes, shape, expected):
    channels = expected[0]
    image = np.arange(np.prod(shape)).reshape(shape)
    labels = np.zeros([n for a, n in zip(axes, shape) if a != "C"], np.int32)
    arrays = read_sample(image, labels, None, axes, "YX", channels)
    assert arrays.image.shape == expected and arrays.labels.shape == expected[1:]
    if axes == "YXC":
        assert np.array_equal(arrays.image[1], image[..., 1])
    labels[0, 0] = 5
    assert arrays.labels.flat[0] == 0  # a copy: later painting does not reach the training data


def test_bad_samples_are_refused_with_a_helpful_message():
    image = np.zeros((16, 16), np.uint8)
    with pytest.raises(InvalidInputError, match="labels have shape"):
        read_sample(image, np.zeros((16, 15), np.int32), None, "YX", "YX", 1)
    with pytest.raises(InvalidInputError, match="integers"):
        read_sample(image, np.zeros((16, 16), np.float32), None, "YX", "YX", 1)
    with pytest.raises(InvalidInputError, match="takes 2 input channel.*has 3"):
        read_sample(np.zeros((16, 16, 3)), np.zeros((16, 16), np.int32), None, "YXC", "YX", 2)
    with pytest.raises(InvalidInputError, match="mask has shape"):
        read_sample(image, np.zeros((16, 16), np.int32), np.ones((8, 8), bool), "YX", "YX", 1)
    with pytest.raises(InvalidInputError, match="axes"):
        read_sample(image, np.zeros((16, 16), np.int32), None, "ZYX", "YX", 1)
    with pytest.raises(InvalidInputError, match="needs a Z axis"):
        read_sample(image, np.zeros((16, 16), np.int32), None, "YX", "ZYX", 1)
