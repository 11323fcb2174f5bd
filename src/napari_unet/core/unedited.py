"""Putting a newer model's objects in place of an older one's, around what the user edited, without fragments.

Live mode re-segments the view with each better version and writes the new objects only where the labels are
still the older model's output. Written pixel by pixel, that leaves pieces: a new object a little larger than
the one the user painted leaves a thin rim around the user's object, and an object cut by the edge of the
region in view keeps its old part outside and gets a new one inside. Each piece is an object that matches
nothing. :func:`unedited_objects` decides object by object instead: a new object is written whole (less what
it grazes of the user's objects) or not at all, and an old object is replaced whole or kept whole. Given the
kinds of change the user made (:mod:`napari_unet.core.change_kinds`), only changes of those kinds are written.
"""
from __future__ import annotations

import numpy as np

from napari_unet.core.change_kinds import object_changes
from napari_unet.core.targets import objects_touching

MAX_COVERED = 0.25  # a new object with more of its area on pixels that stay is not written


def region_edges(index: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A mask over the region ``index`` of an array of ``shape``: its faces that lie inside the array (where
    objects may go on beyond the region). Axes the region is one plane thick along are not edges: a plane is
    segmented on its own."""
    region = tuple(len(range(*piece.indices(n))) for piece, n in zip(index, shape))
    edges = np.zeros(region, dtype=bool)
    for axis, (piece, n, length) in enumerate(zip(index, shape, region)):
        if length <= 1:
            continue
        start, stop, _ = piece.indices(n)
        face = [slice(None)] * len(region)
        if start > 0:
            face[axis] = slice(0, 1)
            edges[tuple(face)] = True
        if stop < n:
            face[axis] = slice(length - 1, length)
            edges[tuple(face)] = True
    return edges


def unedited_objects(current: np.ndarray, new: np.ndarray, unedited: np.ndarray, edges: np.ndarray,
                     allowed: set[str] | None = None) -> np.ndarray:
    """Where ``new`` instance labels may be written over ``current`` (same shape): a mask.

    Kept as they are: every pixel the user edited (not ``unedited``) and every old object that reaches an
    ``edge`` of the region (it may go on beyond it). Not written: a new object that reaches an edge (it may be
    cut), or that lies on kept pixels for more than :data:`MAX_COVERED` of its area (it is, or contains, an
    object the user drew: written, it would leave a rim or a copy); a new object that only grazes kept pixels
    is written without them. The old objects under a new object that is not written are kept in its place, so
    that nothing disappears without its replacement; that is repeated until nothing changes (it spreads only
    through overlapping objects, a few rounds). ``allowed``: the kinds of change that may be written (None: all);
    a new object whose change is of another kind is not written, and an old object whose removal is not allowed
    is kept. A new outline of the same object (IoU > 0.5) counts as ``reshaped``: on small objects it decides
    whether they still match, and where the user reshaped nothing it is unverified.
    """
    sizes = np.bincount(new.ravel())
    refused = np.unique(new[edges])  # new objects not written, whatever lies under them
    kept = ~unedited | objects_touching(current, edges)
    if allowed is not None:
        changes = object_changes(current, new)
        outlines = {"same"} if "reshaped" in allowed else set()  # a new outline of an object is a reshaping too
        unwanted = ~np.isin(changes.after_kinds, sorted(allowed | outlines | {""}))
        refused = np.union1d(refused, np.flatnonzero(unwanted))
        if "removed" not in allowed:
            kept |= changes.removed[current]
    while True:
        covered = np.bincount(new[kept].ravel(), minlength=sizes.size)
        skipped = np.union1d(refused, np.flatnonzero(covered > MAX_COVERED * sizes))
        skipped_pixels = np.isin(new, skipped[skipped > 0])
        grown = kept | objects_touching(current, skipped_pixels)
        if np.array_equal(grown, kept):
            return ~kept & ~skipped_pixels
        kept = grown
