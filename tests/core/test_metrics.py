"""Object matching and F1: the numbers fine-tuning's validation and the benchmarks report."""

import numpy as np
import pytest

from napari_unet.core.metrics import iou_pairs, object_f1, object_matching
from napari_unet.synthetic import generate_nuclei


def _squares(ids: list[int], size: int = 8, gap: int = 4) -> np.ndarray:
    """A row of ``size``-pixel squares with the given ids, separated by background."""
    labels = np.zeros((size + 2 * gap, len(ids) * (size + gap) + gap), np.int32)
    for k, index in enumerate(ids):
        start = gap + k * (size + gap)
        labels[gap:gap + size, start:start + size] = index
    return labels


def test_perfect_match_gives_one_whatever_the_ids() -> None:
    truth = _squares([1, 2, 3, 4])
    relabelled = _squares([40, 7, 1_000_000_000, 2])
    result = object_matching(relabelled, truth)
    assert (result.tp, result.fp, result.fn) == (4, 0, 0)
    assert result.mean_iou == 1.0
    assert object_f1(relabelled, truth) == 1.0


def test_missing_object_lowers_recall_exactly() -> None:
    truth = _squares([1, 2, 3, 4])
    pred = truth.copy()
    pred[pred == 3] = 0
    result = object_matching(pred, truth)
    assert (result.tp, result.fp, result.fn) == (3, 0, 1)
    assert result.precision == 1.0
    assert result.recall == 0.75
    assert result.f1 == pytest.approx(6 / 7)


def test_split_object_matches_only_below_its_iou() -> None:
    truth = _squares([1])
    pred = truth.copy()
    rows = np.flatnonzero(truth.any(axis=1))
    pred[rows[6:]] *= 2  # 48 of 64 pixels stay in object 1 (IoU 0.75), 16 form object 2
    assert object_matching(pred, truth, iou=0.5) == object_matching(pred, truth, iou=0.7)
    loose = object_matching(pred, truth, iou=0.7)
    assert (loose.tp, loose.fp, loose.fn) == (1, 1, 0)
    assert loose.mean_iou == 0.75
    strict = object_matching(pred, truth, iou=0.75)  # the match must exceed the threshold
    assert (strict.tp, strict.fp, strict.fn) == (0, 2, 1)
    assert strict.f1 == 0.0


def test_merged_objects_count_once_and_low_thresholds_stay_one_to_one() -> None:
    truth = np.zeros((10, 20), np.int32)
    truth[2:8, 2:10] = 1
    truth[2:8, 10:18] = 2
    merged = (truth > 0).astype(np.int32)
    # each true half has IoU 0.5 with the merged object: no match at 0.5, one (not two) at 0.3
    assert object_matching(merged, truth, iou=0.5).tp == 0
    low = object_matching(merged, truth, iou=0.3)
    assert (low.tp, low.fp, low.fn) == (1, 0, 1)


def test_empty_images() -> None:
    empty = np.zeros((16, 16), np.int32)
    assert object_f1(empty, empty) == 1.0
    one = empty.copy()
    one[4:8, 4:8] = 1
    assert object_f1(empty, one) == 0.0
    assert object_f1(one, empty) == 0.0
    assert object_matching(empty, one).recall == 0.0


def test_iou_pairs_agree_with_a_direct_computation_in_3d() -> None:
    _, truth = generate_nuclei((8, 48, 48), seed=1)
    pred = np.roll(truth, 2, axis=2)
    truth_ids, pred_ids, iou = iou_pairs(pred, truth)
    assert truth_ids.size > truth.max() // 2
    for t, p, value in zip(truth_ids, pred_ids, iou):
        a, b = truth == t, pred == p
        assert value == pytest.approx((a & b).sum() / (a | b).sum())
    assert object_matching(pred, truth, 0.5).tp == int((iou > 0.5).sum())


@pytest.mark.parametrize(("pred", "truth", "message"), [
    (np.zeros((4, 4), int), np.zeros((4, 5), int), "same shape"),
    (np.zeros((4, 4), float), np.zeros((4, 4), int), "integer"),
    (-np.ones((4, 4), int), np.zeros((4, 4), int), "negative"),
])
def test_bad_inputs_raise_value_error(pred: np.ndarray, truth: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        object_matching(pred, truth)
    with pytest.raises(ValueError, match="threshold"):
        object_matching(truth, truth, iou=1.0)
