"""Instance-segmentation quality: one-to-one matching of objects by intersection over union.

Pixel accuracy says little about instance segmentation (merging two touching nuclei costs a handful of
pixels), so fine-tuning's validation, the tests and the benchmarks count *objects*: a predicted object and a
true one match when their IoU exceeds a threshold, each object matches at most once, and the object F1 is
``2 TP / (2 TP + FP + FN)``. Numpy only, so that it can run anywhere, torch or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import InvalidInputError

__all__ = ["Matching", "iou_pairs", "object_f1", "object_matching"]


@dataclass(frozen=True)
class Matching:
    """The outcome of matching predicted objects to true ones at one IoU threshold."""

    tp: int
    """Predicted objects matched to a true object."""
    fp: int
    """Predicted objects without a match (spurious, or a fragment of a split object)."""
    fn: int
    """True objects without a match (missed, or merged into a neighbour)."""
    mean_iou: float
    """Mean IoU of the matched pairs (0.0 when there are none): how well the found objects are outlined."""

    @property
    def precision(self) -> float:
        """Fraction of predicted objects that are right; 1.0 when nothing was predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """Fraction of true objects that were found; 1.0 when there is nothing to find."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        """Object F1; 1.0 when both images are empty, as they then agree perfectly."""
        errors = self.fp + self.fn
        return 2 * self.tp / (2 * self.tp + errors) if self.tp + errors else 1.0


def _check(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InvalidInputError(f"predicted labels {pred.shape} and true labels {truth.shape} must have the same "
                                f"shape; crop or resample one of them first")
    for name, labels in (("predicted", pred), ("true", truth)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise InvalidInputError(f"{name} labels must be an integer array of object ids, not {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise InvalidInputError(f"{name} labels contain negative values; use 0 for background and "
                                    f"positive ids for objects")
    return pred.ravel(), truth.ravel()


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object ids (background excluded) and each pixel's index into them, -1 for background.

    Ids may be any non-negative integers (gaps, huge values); compacting them keeps the contingency table
    small.
    """
    ids, index = np.unique(labels, return_inverse=True)
    if ids.size and ids[0] == 0:
        return ids[1:], index - 1
    return ids, index


def _overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Object counts and every overlapping pair with its IoU, from one pass over the pixels.

    The intersections are the counts of the distinct (true, predicted) pixel pairs, the areas are
    histograms, and IoU = intersection / (area_true + area_pred - intersection).
    """
    pred, truth = _check(pred, truth)
    pred_ids, pred_index = _compact(pred)
    truth_ids, truth_index = _compact(truth)
    both = (pred_index >= 0) & (truth_index >= 0)
    stride = max(pred_ids.size, 1)
    keys = truth_index[both].astype(np.int64) * stride + pred_index[both]
    pairs, intersection = np.unique(keys, return_counts=True)
    t, p = np.divmod(pairs, stride)
    truth_area = np.bincount(truth_index[truth_index >= 0], minlength=truth_ids.size)
    pred_area = np.bincount(pred_index[pred_index >= 0], minlength=pred_ids.size)
    iou = intersection / (truth_area[t] + pred_area[p] - intersection)
    return truth_ids.size, pred_ids.size, truth_ids[t], pred_ids[p], iou


def iou_pairs(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping (true id, predicted id) pair and its IoU, as three 1D arrays of equal length.

    Pairs that do not overlap have IoU 0 and are not listed.
    """
    return _overlaps(pred, truth)[2:]


def object_matching(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> Matching:
    """Match predicted to true objects one to one where IoU > ``iou``, and count the outcome.

    At thresholds of 0.5 and above the matching is unique (if disjoint A and B both had IoU > 0.5 with T,
    each would cover more than half of T), so it is simply every pair above the threshold. Below 0.5 an
    object can have several candidates, and pairs are taken greedily from the highest IoU down, each object
    at most once.
    """
    if not 0.0 <= iou < 1.0:
        raise InvalidInputError(f"the IoU threshold must lie in [0, 1), not {iou!r}")
    n_truth, n_pred, truth_ids, pred_ids, overlap = _overlaps(pred, truth)
    above = overlap > iou
    truth_ids, pred_ids, overlap = truth_ids[above], pred_ids[above], overlap[above]
    if iou < 0.5:
        keep = _greedy_one_to_one(truth_ids, pred_ids, overlap)
        overlap = overlap[keep]
    tp = int(overlap.size)
    return Matching(tp=tp, fp=n_pred - tp, fn=n_truth - tp, mean_iou=float(overlap.mean()) if tp else 0.0)


def _greedy_one_to_one(truth_ids: np.ndarray, pred_ids: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """Indices of the pairs kept when taking the best remaining pair first and using each object once."""
    used_truth: set[int] = set()
    used_pred: set[int] = set()
    keep = []
    for i in np.argsort(-overlap, kind="stable"):
        t, p = int(truth_ids[i]), int(pred_ids[i])
        if t not in used_truth and p not in used_pred:
            used_truth.add(t)
            used_pred.add(p)
            keep.append(i)
    return np.asarray(keep, dtype=np.intp)


def object_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """Object F1 at an IoU threshold: 1.0 is a perfect instance segmentation, 0.0 finds nothing right."""
    return object_matching(pred, truth, iou).f1
