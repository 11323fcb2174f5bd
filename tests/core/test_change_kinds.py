"""Object-by-object kinds of change between two labellings: what Live mode compares a user's corrections and a
new version's changes by."""
from __future__ import annotations

import numpy as np

from napari_unet.core.change_kinds import corrected_kinds, object_changes, writable_kinds


def test_each_kind_of_change_is_told_apart():
    before = np.zeros((20, 40), np.int32)
    after = np.zeros_like(before)
    before[2:8, 2:14] = 1
    after[2:8, 2:8], after[2:8, 8:14] = 1, 2  # one object cut in two halves
    before[10:15, 2:7], after[10:15, 2:7] = 2, 3  # the same object under another id
    before[10:15, 10:15] = 3  # erased
    after[10:15, 20:25] = 4  # drawn on background
    before[2:8, 20:25], before[2:8, 26:31], after[2:8, 20:31] = 4, 5, 5  # two joined
    before[14:16, 16:18], after[12:18, 15:19] = 6, 6  # grown six-fold
    changes = object_changes(before, after)
    assert list(changes.after_kinds) == ["", "split", "split", "same", "added", "merged", "reshaped"]
    assert np.flatnonzero(changes.removed).tolist() == [3]
    assert corrected_kinds(before, after) == {"split", "added", "merged", "removed", "reshaped"}


def test_only_the_objects_the_user_changed_count_as_corrections():
    prediction = np.zeros((30, 30), np.int32)
    prediction[2:8, 2:14] = 1  # a merged pair, which the user splits
    prediction[15:20, 15:20] = 2  # left alone
    labels = prediction.copy()
    labels[2:8, 8:14] = 9
    assert corrected_kinds(prediction, labels) == {"split"}
    assert corrected_kinds(prediction, prediction) == set()


def test_what_is_left_of_an_object_mostly_erased_is_a_new_outline_not_a_removal():
    prediction = np.zeros((30, 30), np.int32)
    prediction[2:12, 2:22] = 1
    labels = prediction.copy()
    labels[2:12, 2:17] = 0  # three quarters erased: the user trimmed a swollen object
    assert corrected_kinds(prediction, labels) == {"reshaped"}
    labels[labels == 1] = 0
    assert corrected_kinds(prediction, labels) == {"removed"}


def test_new_outlines_may_be_written_where_the_user_drew_an_object():
    assert writable_kinds({"split"}) == {"split", "reshaped"}, "a split pair's outlines show where outlines lie"
    assert writable_kinds({"added", "removed"}) == {"added", "removed", "reshaped"}
    assert writable_kinds({"removed"}) == {"removed"}, "an erased object draws no outline"
    assert writable_kinds(set()) is None, "no correction: nothing to go by"
