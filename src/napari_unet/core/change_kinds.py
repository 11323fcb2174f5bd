"""What kind of change turns one instance labelling into another, object by object.

Live mode re-segments the unedited part of the view with each better version. A version trained for twenty
seconds on a few corrections changes many objects the user never looked at, and many of those changes are
for the worse: measured, re-segmentations that wrote every change scored below the user's corrections alone.
The user's strokes say what was wrong with the model's output (nuclei merged, debris taken for nuclei, nuclei
missed), and a new version has learned *that*; its other changes are drift. So a new version's change to an
unedited object is written only if the user made a change of the same kind (:func:`writable_kinds`).

Outlines are the exception: every object a user paints (a split, an added or a reshaped one) shows where its
outline lies, and a version trained on it draws outlines like it, where the model drew them wider (nuclei
swollen into a faint background) or narrower. So where the user drew an object, new outlines of the others
(``same`` and ``reshaped``) are written too. Measured on this project's DSB 2018 train split (fluorescence
images on which the bundled model merges nuclei; a version trained 15 s on the first of two corrections,
written where the view is unedited): with new outlines, the view beat the two corrections alone on 4 of 8
images (+0.006 to +0.032 object F1) and lost on none; with only the user's kinds, on 1 (+0.004). On more images
the rule alone does not keep the view from getting worse: of 40 train images (``bench/live_offline.py``, the
first judged round after three corrections), the views of the rounds Live's judge refused were worse than the
corrections alone on 8 and better on 3; those of the 4 it put to use, better on 3 and worse on none. The
judge (:func:`napari_unet.core.live_training.beats`) is what keeps a worse view off the screen.

Kinds, for an object of ``after`` (or, for ``removed``, of ``before``), from their overlaps:

* ``same``: it matches an object of ``before`` at IoU > 0.5 (a new outline of the same object);
* ``added``: less than half of it lies on objects of ``before``, and it covers no object of ``before`` mostly;
* ``merged``: it covers half or more of each of two or more objects of ``before``;
* ``split``: it lies mostly (half or more) inside one object of ``before`` that two or more objects of
  ``after`` lie mostly inside;
* ``reshaped``: anything else (an outline grown or shrunk past IoU 0.5, a boundary moved between neighbours);
* ``removed``: an object of ``before`` of which less than half lies on objects of ``after``, none of them mostly
  inside it (a piece left of it is a reshaped object).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.5
MOSTLY = 0.5


@dataclass(frozen=True)
class Changes:
    """Per object id: ``after_kinds[a]`` the kind of object ``a`` of ``after`` ("" for id 0 and absent ids),
    ``removed[b]`` whether object ``b`` of ``before`` was removed."""

    after_kinds: np.ndarray
    removed: np.ndarray

    def kinds(self, after_ids: np.ndarray, before_ids: np.ndarray) -> set[str]:
        """The kinds of change of the given objects of ``after`` and ``before``, ``same`` left out."""
        found = {str(k) for k in np.unique(self.after_kinds[after_ids])} - {"", "same"}
        return found | ({"removed"} if self.removed[before_ids].any() else set())


def object_changes(before: np.ndarray, after: np.ndarray) -> Changes:
    """The kind of change of every object between two instance labellings of the same pixels (module docstring)."""
    before = np.asarray(before).ravel().astype(np.int64, copy=False)
    after = np.asarray(after).ravel().astype(np.int64, copy=False)
    nb, na = int(before.max(initial=0)) + 1, int(after.max(initial=0)) + 1
    area_b = np.bincount(before, minlength=nb)
    area_a = np.bincount(after, minlength=na)
    both = (before > 0) & (after > 0)
    pairs, overlap = np.unique(after[both] * nb + before[both], return_counts=True)
    a_of, b_of = pairs // nb, pairs % nb
    iou = overlap / (area_a[a_of] + area_b[b_of] - overlap)
    on_before = np.bincount(a_of, weights=overlap, minlength=na)
    on_after = np.bincount(b_of, weights=overlap, minlength=nb)

    matched = np.zeros(na, bool)
    matched[a_of[iou > MATCH_IOU]] = True
    parents = np.bincount(a_of[overlap >= MOSTLY * area_b[b_of]], minlength=na)  # objects of before it covers
    inside = overlap >= MOSTLY * area_a[a_of]  # the pair's object of after lies mostly in its object of before
    children = np.bincount(b_of[inside], minlength=nb)
    split = np.zeros(na, bool)
    split[a_of[inside & (children[b_of] >= 2)]] = True

    kinds = np.full(na, "reshaped", dtype=object)
    kinds[split] = "split"
    kinds[parents >= 2] = "merged"
    kinds[(on_before < MOSTLY * area_a) & (parents == 0)] = "added"
    kinds[matched] = "same"
    kinds[area_a == 0] = ""
    kinds[0] = ""
    removed = (on_after < MOSTLY * area_b) & (children == 0) & (area_b > 0)
    removed[0] = False
    return Changes(kinds, removed)


def corrected_kinds(prediction: np.ndarray, labels: np.ndarray) -> set[str]:
    """The kinds of change the user made to the model's ``prediction`` to get ``labels``: those of the objects of
    the prediction that lie on a pixel they changed, and of the objects of ``labels`` that lie on those or on a
    changed pixel (what is left of an object partly erased is a reshaped object)."""
    prediction, labels = np.asarray(prediction), np.asarray(labels)
    changed = prediction != labels
    if not changed.any():
        return set()
    changes = object_changes(prediction, labels)
    before_ids = np.unique(prediction[changed])
    before_ids = before_ids[before_ids > 0]
    after_ids = np.unique(labels[changed | np.isin(prediction, before_ids)])
    return changes.kinds(after_ids[after_ids > 0], before_ids)


DRAWN = frozenset({"split", "added", "merged", "reshaped"})  # corrections in which the user drew an outline


def writable_kinds(corrected: set[str] | frozenset[str]) -> set[str] | None:
    """The kinds of change a new version may make to unedited objects, given the kinds the user made
    (``corrected``): those, and new outlines where the user drew any; None (any kind) where the user changed
    nothing: there is nothing to go by."""
    if not corrected:
        return None
    return set(corrected) | ({"reshaped"} if corrected & DRAWN else set())
