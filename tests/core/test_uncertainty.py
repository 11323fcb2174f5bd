"""Where to look next: entropy per pixel, and objects ranked by how unsure the model was of them."""
import numpy as np
import pytest

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.uncertainty import entropy_map, object_doubts, within


def test_entropy_is_zero_where_certain_and_one_where_every_class_is_equally_likely():
    p = np.zeros((3, 2, 2), np.float32)
    p[0, 0, 0] = 1.0  # certain background
    p[:, 0, 1] = 1 / 3  # no idea
    p[1, 1, :] = 0.5  # torn between interior and boundary
    p[2, 1, :] = 0.5
    entropy = entropy_map(p)
    assert entropy[0, 0] == pytest.approx(0.0, abs=1e-5)
    assert entropy[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert entropy[1, 0] == pytest.approx(np.log(2) / np.log(3), abs=1e-5)
    with pytest.raises(InvalidInputError, match="two or more classes"):
        entropy_map(np.ones((1, 4, 4)))


def test_the_object_with_an_uncertain_border_comes_first_and_the_view_filters():
    labels = np.zeros((40, 40), np.int32)
    labels[5:12, 5:12] = 1
    labels[25:32, 25:32] = 2
    labels[5:12, 25:32] = 3
    entropy = np.zeros(labels.shape, np.float32)
    entropy[23:34, 23:34] = 0.8  # the model hesitated around object 2 (its border and ring)
    entropy[5:12, 25:32] = 0.3  # and a little over object 3
    doubts = object_doubts(labels, entropy)
    assert [d.label for d in doubts] == [2, 3, 1]
    assert doubts[0].score == pytest.approx(0.8) and doubts[2].score == 0.0
    assert doubts[0].centre == pytest.approx((28.0, 28.0))
    assert doubts[0].extent == ((25, 32), (25, 32))
    assert [d.label for d in within(doubts, {0: (0, 20)})] == [3, 1]
    assert [d.label for d in within(doubts, {0: (11, 11), 1: (30, 40)})] == [3], "the plane shown and the view"
    assert object_doubts(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.float32)) == []


def test_stacks_give_3d_centres():
    labels = np.zeros((6, 10, 10), np.int32)
    labels[2:4, 3:5, 3:5] = 7
    (doubt,) = object_doubts(labels, np.full(labels.shape, 0.5, np.float32))
    assert doubt.label == 7 and doubt.centre == pytest.approx((2.5, 3.5, 3.5)) and doubt.score == 0.5
    assert within([doubt], {0: (3, 3)}) == [doubt] and within([doubt], {0: (4, 4)}) == []
