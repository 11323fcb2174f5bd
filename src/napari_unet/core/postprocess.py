"""Class probabilities to labels, block by block, with object ids that are unique over the whole image.

Semantic models give each pixel its most probable class. Instance models predict background / interior /
boundary, as for touching nuclei: objects are the connected interiors (the seeds), grown over the boundary
pixels by a seeded watershed.

Inference streams a large image through in tiles, so labelling cannot see the whole image at once. Two things
keep objects whole where they cross a tile border:

* *Seeds are global.* The interior of each block is labelled on arrival with fresh ids, and a union-find joins
  ids that touch across a face shared with an earlier block. Its result is exactly the connected components of
  the whole image's interior mask, however the image was cut.
* *Growth sees past the block.* A block is grown once the blocks around it have arrived, on the block plus a
  halo of :data:`HALO` pixels, with the neighbours' seeds in the halo competing for the boundary pixels. A
  boundary pixel near a block edge therefore goes to the object it would join in a whole-image watershed
  (whenever that object's seed lies within the halo, which for boundary bands a few pixels wide it does).

Provisional ids are written as blocks finish (a preview that grows with the tiles); :meth:`finish` then maps
every id to its object's final id, numbered 1..N, in one pass over the output, dropping the objects that
:class:`ObjectFilter` finds too small to be real (it learns their sizes block by block, so that too works on
images of any size). Memory holds only the blocks
still needed as someone's halo: about two rows of tiles, never the image.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_unet.core.axes import Layout
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.tiling import TilePlan

HALO = 16
"""Pixels around a block that its watershed sees. Boundary bands are a few pixels wide; 16 is ample."""

Region = tuple[Any, ...]


@dataclass(frozen=True)
class ObjectFilter:
    """What becomes an object in an instance model's probabilities: which pixels, and which objects to keep.

    *Pixels.* By default a pixel is foreground where background is not its most probable class, and a seed
    (an object's interior) where interior is. A model trained with class-balanced weights (the rare boundary
    class weighs up to ten times more) overstates the boundary and interior probabilities of its faint
    surroundings, so its objects swell into the background around them. ``foreground`` (a pixel is foreground
    where P(background) < foreground) and ``seed`` (interior where P(interior) > seed, within the foreground)
    correct this; None keeps the most probable class. The bundled model's values are chosen on its training
    images (``scripts/train_default_model.py``).

    *Objects* with fewer than ``min_size`` pixels (voxels in 3D), or less than ``min_fraction`` of the median
    object's size in the image, are dropped. A network trained on noisy images fires on the odd bright speck,
    and a boundary band that does not quite close leaves slivers of interior; both become tiny objects that an
    annotator has to erase one by one. The relative bound adapts to the magnification (tiny nuclei in a
    low-magnification image are all kept), the absolute one catches specks in images with few objects.
    ``ObjectFilter(0, 0)`` keeps everything.
    """

    min_size: int = 8
    min_fraction: float = 0.2
    foreground: float | None = None
    seed: float | None = None

    def __post_init__(self) -> None:
        if self.min_size < 0 or not 0 <= self.min_fraction < 1:
            raise ValueError(f"object filter needs min_size >= 0 and 0 <= min_fraction < 1, not {self}")
        for name in ("foreground", "seed"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"the {name} threshold is a probability between 0 and 1 (or None), not {value!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None}  # older versions read what they know

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectFilter:
        return cls(**{k: data[k] for k in ("min_size", "min_fraction", "foreground", "seed") if k in data})

    def keep(self, sizes: np.ndarray) -> np.ndarray:
        """Which of the objects with these pixel counts stay."""
        if not len(sizes):
            return np.ones(0, dtype=bool)
        return sizes >= max(self.min_size, self.min_fraction * float(np.median(sizes)))

    def foreground_mask(self, probabilities: np.ndarray) -> np.ndarray:
        """Pixels that belong to some object, from (3, ...) background/interior/boundary probabilities."""
        background, inside, boundary = probabilities
        if self.foreground is None:
            return (inside > background) | (boundary > background)  # not background, as np.argmax decides
        return background < self.foreground

    def seed_mask(self, probabilities: np.ndarray, foreground: np.ndarray) -> np.ndarray:
        """Interior pixels (the watershed's seeds) within ``foreground``."""
        background, inside, boundary = probabilities
        if self.seed is None:
            return foreground & (inside > background) & (inside >= boundary)  # interior as np.argmax decides
        return foreground & (inside > self.seed)

    def classes(self, probabilities: np.ndarray) -> np.ndarray:
        """uint8 classes: 0 background, 1 interior (seeds), 2 the rest of the foreground."""
        foreground = self.foreground_mask(probabilities)
        classes = foreground.astype(np.uint8) * 2
        classes[self.seed_mask(probabilities, foreground)] = 1
        return classes


def class_labels(probabilities: np.ndarray) -> np.ndarray:
    """Class ids (0 = background) from (K, ...) probabilities; one class means foreground above 0.5."""
    if probabilities.shape[0] == 1:
        return (probabilities[0] > 0.5).astype(np.int32)
    return np.argmax(probabilities, axis=0).astype(np.int32)


def instance_labels(probabilities: np.ndarray, objects: ObjectFilter = ObjectFilter()) -> np.ndarray:
    """Instance labels of a whole (3, ...) background/interior/boundary probability map, ids 1..N.

    The reference the block-wise labelling reproduces; fine for images that fit in memory.
    """
    from skimage.segmentation import watershed

    classes = objects.classes(probabilities)
    seeds, _ = ndimage.label(classes == 1)
    grown = watershed(_elevation(probabilities), seeds, mask=classes > 0, connectivity=1)
    sizes = np.bincount(grown.ravel())
    final = np.zeros(len(sizes), dtype=np.int32)
    keep = np.flatnonzero(objects.keep(sizes[1:])) + 1
    final[keep] = np.arange(1, len(keep) + 1)
    return final[grown]


def check_ids_fit(largest: int, dtype: Any, what: str = "objects") -> None:
    """Refuse labels whose ids up to ``largest`` a ``dtype`` array cannot hold (they would wrap around)."""
    if largest > np.iinfo(np.dtype(dtype)).max:
        raise InvalidInputError(f"{largest} {what} do not fit the labels dtype {dtype}; use int32")


def renumbered(labels: np.ndarray) -> np.ndarray:
    """Labels numbered again 1..N (0 stays background), for the objects left after labels were resampled: an
    object smaller than a pixel or a Z step of the grid they come back to may lie between its samples."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(labels.dtype if labels.dtype.kind in "iu" else np.int32)
    return inverse if ids.size and ids[0] == 0 else inverse + 1


def _elevation(probabilities: np.ndarray) -> np.ndarray:
    """Watershed landscape: low inside objects (high interior probability)."""
    return (1.0 - probabilities[1]).astype(np.float32)


class SemanticLabeller:
    """Writes the most probable class of each kept tile region straight into the labels."""

    def __init__(self, labels: Any, layout: Layout) -> None:
        self.labels = labels
        self.layout = layout
        self.plane: dict[str, int] = {}

    def start_plane(self, plane: dict[str, int], plan: TilePlan) -> None:
        self.plane = plane

    def add_tile(self, index: Sequence[int], probabilities: np.ndarray, place: Sequence[slice]) -> list[Region]:
        return [self.layout.write(self.labels, self.plane, place, class_labels(probabilities))]

    def end_plane(self, constant: bool) -> list[Region]:
        if not constant:
            return []
        return [clear(self.labels, self.layout, self.plane)]

    def reset_plane(self) -> None:
        """Nothing to undo: a restarted plane overwrites every pixel it wrote."""

    def finish(self) -> Iterator[Region]:
        return iter(())

    @property
    def objects(self) -> int | None:
        return None


class InstanceLabeller:
    """Seeded-watershed instance labels, block by block, with a union-find that keeps objects whole."""

    def __init__(self, labels: Any, layout: Layout, object_filter: ObjectFilter = ObjectFilter(),
                 halo: int = HALO) -> None:
        self.labels = labels
        self.layout = layout
        self.object_filter = object_filter
        self.halo = halo
        self.parent = np.zeros(1, dtype=np.int64)  # union-find over provisional ids; 0 is background
        self.pixels = np.zeros(1, dtype=np.int64)  # pixels written with each provisional id
        self.size = 1  # next free provisional id
        self.dead: list[tuple[int, int]] = []  # id ranges of planes that were discarded or constant
        self.count: int | None = None

    # -- union-find ------------------------------------------------------------------------------------------
    def _new_ids(self, n: int) -> int:
        first = self.size
        if first + n >= 2**31:
            raise OverflowError("more than 2**31 provisional objects; segment the image in parts")
        check_ids_fit(first + n - 1, self.labels.dtype,  # they are written into the labels array
                      "ids used on the way (objects are counted tile by tile before they are joined)")
        if first + n > len(self.parent):
            grown = np.arange(max(2 * len(self.parent), first + n), dtype=np.int64)
            grown[: self.size] = self.parent[: self.size]
            self.parent = grown
            pixels = np.zeros(len(grown), dtype=np.int64)
            pixels[: self.size] = self.pixels[: self.size]
            self.pixels = pixels
        self.parent[first:first + n] = np.arange(first, first + n)
        self.size += n
        return first

    def _find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:  # the smaller id stays the root, so final ids follow the order objects were met
            self.parent[max(ra, rb)] = min(ra, rb)

    # -- per plane -------------------------------------------------------------------------------------------
    def start_plane(self, plane: dict[str, int], plan: TilePlan) -> None:
        self.plane = plane
        self.plan = plan
        self.first_id = self.size
        self.blocks: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.grown: set[tuple[int, ...]] = set()
        # per axis: the blocks each block's halo overlaps, and the blocks whose halo overlaps it
        self.needs = [_halo_ranges(a.cores, self.halo, a.length) for a in plan.axes]
        self.needed_by = [[[j for j, (lo, hi) in enumerate(r) if lo <= k < hi] for k in range(len(r))]
                          for r in self.needs]

    def add_tile(self, index: Sequence[int], probabilities: np.ndarray, place: Sequence[slice]) -> list[Region]:
        """Take the kept probabilities of one tile; return the label regions written (blocks now complete)."""
        index = tuple(index)
        classes = self.object_filter.classes(probabilities)
        seeds, n = ndimage.label(classes == 1)
        seeds = seeds.astype(np.int32)
        if n:
            first = self._new_ids(n)
            seeds[seeds > 0] += first - 1
        self._join_faces(index, seeds)
        self.blocks[index] = (classes, _elevation(probabilities), seeds)
        written = []
        candidates = itertools.product(*[self.needed_by[a][k] for a, k in enumerate(index)])
        for block in sorted(candidates):
            if block not in self.grown and self._ready(block):
                written.append(self._grow(block))
        return written

    def _join_faces(self, index: tuple[int, ...], seeds: np.ndarray) -> None:
        """Union seed ids that touch across a face shared with a block that arrived earlier."""
        for axis in range(seeds.ndim):
            for step in (-1, 1):
                other = index[:axis] + (index[axis] + step,) + index[axis + 1:]
                if other not in self.blocks:
                    continue
                theirs = self.blocks[other][2]
                mine_face = np.take(seeds, 0 if step < 0 else -1, axis=axis)
                their_face = np.take(theirs, -1 if step < 0 else 0, axis=axis)
                both = (mine_face > 0) & (their_face > 0)
                if both.any():
                    for a, b in np.unique(np.stack([mine_face[both], their_face[both]], 1), axis=0):
                        self._union(int(a), int(b))

    def _ready(self, block: tuple[int, ...]) -> bool:
        ranges = [range(*self.needs[a][k]) for a, k in enumerate(block)]
        return all(b in self.blocks for b in itertools.product(*ranges))

    def _grow(self, block: tuple[int, ...]) -> Region:
        """Watershed one block with its halo and write its provisional labels."""
        from skimage.segmentation import watershed

        cores = [a.cores[k] for a, k in zip(self.plan.axes, block)]
        lo = [max(c0 - self.halo, 0) for c0, _ in cores]
        hi = [min(c1 + self.halo, a.length) for (_, c1), a in zip(cores, self.plan.axes)]
        shape = tuple(b - a for a, b in zip(lo, hi))
        classes = np.zeros(shape, np.uint8)
        elevation = np.zeros(shape, np.float32)
        seeds = np.zeros(shape, np.int32)
        for other in itertools.product(*[range(*self.needs[a][k]) for a, k in enumerate(block)]):
            ocores = [a.cores[k] for a, k in zip(self.plan.axes, other)]
            src = tuple(slice(max(a, l) - a, min(b, h) - a) for (a, b), l, h in zip(ocores, lo, hi))
            dst = tuple(slice(max(a, l) - l, min(b, h) - l) for (a, b), l, h in zip(ocores, lo, hi))
            for target, source in zip((classes, elevation, seeds), self.blocks[other]):
                target[dst] = source[src]
        grown = watershed(elevation, seeds, mask=classes > 0, connectivity=1)
        core = tuple(slice(c0 - a, c1 - a) for (c0, c1), a in zip(cores, lo))
        place = tuple(slice(c0, c1) for c0, c1 in cores)
        core_ids = grown[core].astype(np.int32)
        region = self.layout.write(self.labels, self.plane, place, core_ids)
        ids, counts = np.unique(core_ids, return_counts=True)
        self.pixels[ids] += counts
        self.grown.add(block)
        self._release(block)
        return region

    def _release(self, block: tuple[int, ...]) -> None:
        """Forget blocks that every block needing them as halo has now used."""
        for other in itertools.product(*[range(*self.needs[a][k]) for a, k in enumerate(block)]):
            users = itertools.product(*[self.needed_by[a][k] for a, k in enumerate(other)])
            if other in self.blocks and all(u in self.grown for u in users):
                del self.blocks[other]

    def end_plane(self, constant: bool) -> list[Region]:
        if not constant:
            return []
        self.dead.append((self.first_id, self.size))
        return [clear(self.labels, self.layout, self.plane)]

    def reset_plane(self) -> None:
        """Discard the current plane's state (it will be computed again, e.g. with smaller tiles)."""
        self.dead.append((self.first_id, self.size))
        self.blocks.clear()
        self.grown.clear()

    # -- the end ---------------------------------------------------------------------------------------------
    def finish(self) -> Iterator[Region]:
        """Replace provisional ids by final ids 1..N, block by block; yields each region rewritten."""
        parent = self.parent[: self.size].copy()
        while True:  # pointer jumping: every id points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        alive = np.ones(self.size, dtype=bool)
        alive[0] = False
        for a, b in self.dead:
            alive[a:b] = False
        sizes = np.bincount(parent[alive], weights=self.pixels[: self.size][alive], minlength=self.size)
        roots = np.unique(parent[alive])
        roots = roots[self.object_filter.keep(sizes[roots])]
        final = np.zeros(self.size, dtype=np.int64)
        final[roots] = np.arange(1, len(roots) + 1)
        lut = np.where(alive, final[parent], 0)
        self.count = len(roots)
        check_ids_fit(self.count, self.labels.dtype)
        lut = lut.astype(self.labels.dtype)
        for index in _chunks(self.labels):
            block = np.asarray(self.labels[index])
            if block.any():
                self.labels[index] = lut[block]
                yield index

    @property
    def objects(self) -> int | None:
        return self.count


def _halo_ranges(cores: Sequence[tuple[int, int]], halo: int, length: int) -> list[tuple[int, int]]:
    """For each block along an axis, the range of blocks that its core plus halo overlaps."""
    ranges = []
    for c0, c1 in cores:
        lo, hi = max(c0 - halo, 0), min(c1 + halo, length)
        members = [j for j, (a, b) in enumerate(cores) if a < hi and b > lo]
        ranges.append((members[0], members[-1] + 1))
    return ranges


def fill(array: Any, index: tuple[Any, ...], value: float) -> None:
    """Set ``array[index]`` to ``value`` a block at a time (a zarr array is never materialised whole)."""
    for block in _chunks(array, index):
        array[block] = value


def clear(array: Any, layout: Layout, plane: dict[str, int], leading: int = 0) -> Region:
    """Zero one plane of an output array (``leading`` axes such as classes come first); return its index."""
    index = layout.output_index(plane, [slice(None)] * len(layout.spatial))
    fill(array, (slice(None),) * leading + index, 0)
    return index


def _chunks(array: Any, region: tuple[Any, ...] | None = None, target: int = 2**22) -> Iterator[tuple[Any, ...]]:
    """Indices of blocks of about ``target`` elements covering ``array[region]``, aligned to zarr chunks.

    ``region`` holds integers and slices (with unit step); integers stay integers in every block.
    """
    shape = array.shape
    region = tuple(region or ()) + (slice(None),) * (len(shape) - len(region or ()))
    chunks = getattr(array, "chunks", None)
    if chunks and all(isinstance(c, (int, np.integer)) for c in chunks):
        step = [int(c) for c in chunks]
        for i in reversed(range(len(step))):  # grow zarr chunks into blocks of about ``target``
            while math.prod(step) * 2 <= target and step[i] < shape[i]:
                step[i] *= 2
    else:
        step = [1] * max(len(shape) - 2, 0) + list(shape[-2:])
        while math.prod(step) > target and max(step) > 1:
            i = int(np.argmax(step))
            step[i] = -(-step[i] // 2)
    ranges = []
    for n, s, r in zip(shape, step, region):
        if isinstance(r, (int, np.integer)):
            ranges.append([int(r)])
        else:
            lo, hi, _ = r.indices(n)
            first = lo // s * s
            ranges.append([slice(max(a, lo), min(a + s, hi)) for a in range(first, hi, s)])
    yield from itertools.product(*ranges)
