"""What part of an image a Segment run covers: the whole image or stack, the current slice or time point, or the
view.

Pure functions of shapes and positions (no Qt, no napari), so the rules are easy to test: a "current slice"
run fixes the axes the model does not see (Z and T for a 2D model, T for a 3D one) at the viewer's position,
and a "region in view" run also crops Y and X to what the canvas shows. The result says which part of the
image to read and where the labels go in the full-size output layer.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCOPES = ("whole", "slice", "view")
SCOPE_TITLES = {"whole": "Whole stack", "slice": "Current slice / time point", "view": "Region in view"}
MIN_VIEW_SIZE = 64  # a region in view is widened to at least this many pixels (the network needs context)


@dataclass(frozen=True)
class Scope:
    """The part of an image one run segments."""

    image_index: tuple[slice | int, ...]  # indexes the image (all its axes, channels included)
    axes: str  # axes of ``image[image_index]``
    output_index: tuple[slice, ...]  # where its labels go in the output (the image's axes without C)
    fixed: tuple[bool, ...]  # per output axis: held at one index (not an axis of this run's labels)
    description: str

    @property
    def is_whole(self) -> bool:
        return self.description == "whole image"

    def to_output(self, region: Sequence[slice | int]) -> tuple[slice, ...]:
        """Map a region of this run's labels (its own axes, channels excluded; an int picks one plane) to the
        full output layer."""
        parts = iter(region)
        mapped = []
        for index, fixed in zip(self.output_index, self.fixed):
            if fixed:
                mapped.append(index)
                continue
            part = next(parts)
            if isinstance(part, (int, np.integer)):
                start, stop = int(part), int(part) + 1
            else:
                start, stop, _ = part.indices(index.stop - index.start)
            mapped.append(slice(index.start + start, index.start + stop))
        return tuple(mapped)


def scope_titles(axes: str, model_dims: int = 2) -> dict[str, str]:
    """The scopes' titles for an image with ``axes``: "Whole image" for a single plane, "Whole stack"
    otherwise, and the current "slice", "time point" or both, as the axes the model iterates over say."""
    iterated = [a for a in "ZT" if a in axes and (a == "T" or model_dims == 2)]
    slice_title = {("Z",): "Current slice", ("T",): "Current time point"}.get(tuple(iterated), SCOPE_TITLES["slice"])
    whole = "Whole stack" if any(a in axes for a in "TZ") else "Whole image"
    return {"whole": whole, "slice": slice_title, "view": SCOPE_TITLES["view"]}


def plan_scope(shape: Sequence[int], axes: str, scope: str, position: Sequence[float] | None = None,
               model_dims: int = 2, view: dict[str, tuple[float, float]] | None = None) -> Scope:
    """Plan a run over ``shape`` (axes ``axes``) for ``scope`` ("whole", "slice" or "view").

    ``position`` is the viewer's position in the image's data coordinates (one value per axis; the channel
    axis's value is ignored); ``view`` maps "Y" and "X" to the visible (low, high) data coordinates.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    fix = set()
    if scope in ("slice", "view") and position is not None:
        fix = {"T", "Z"} if model_dims == 2 else {"T"}
    image_index: list[slice | int] = []
    output_index: list[slice] = []
    fixed: list[bool] = []
    kept_axes = ""
    notes = []
    for axis, (letter, size) in enumerate(zip(axes, shape)):
        if letter in fix:
            i = int(min(max(round(position[axis]), 0), size - 1))
            image_index.append(i)
            output_index.append(slice(i, i + 1))
            fixed.append(True)
            notes.append(f"{letter.lower()}={i}")
            continue
        kept_axes += letter
        if letter in ("Y", "X") and scope == "view" and view and letter in view:
            low, high = _widen(*view[letter], size)
            image_index.append(slice(low, high))
            output_index.append(slice(low, high))
            fixed.append(False)
            notes.append(f"{letter.lower()} {low}-{high}")
            continue
        image_index.append(slice(None))
        if letter != "C":
            output_index.append(slice(0, size))
            fixed.append(False)
    description = "whole image" if not notes else ", ".join(notes)
    return Scope(tuple(image_index), kept_axes, tuple(output_index), tuple(fixed), description)


def _widen(low: float, high: float, size: int) -> tuple[int, int]:
    """Integer bounds of [low, high) inside [0, size), widened to at least MIN_VIEW_SIZE pixels."""
    start, stop = max(0, int(low)), min(size, int(high) + 1)
    if stop - start < MIN_VIEW_SIZE:
        middle = (start + stop) // 2 if stop > start else min(max(int(low), 0), size)
        start = max(0, min(middle - MIN_VIEW_SIZE // 2, size - MIN_VIEW_SIZE))
        stop = min(size, start + MIN_VIEW_SIZE)
    return start, stop
