"""segment(): a U-Net over any image, tile by tile, exact, in bounded memory, on the best device available.

The steps: check the image and its axes (:mod:`~napari_unet.core.axes`); compute the normalisation statistics
once for the whole image; plan tiles (:mod:`~napari_unet.core.tiling`); stream batches of tiles through an
inference-ready copy of the network (:mod:`~napari_unet.core.runner`); write the kept part of every tile into
preallocated outputs (numpy, or the caller's zarr arrays); turn probabilities into labels block by block
(:mod:`~napari_unet.core.postprocess`).

:func:`segment_steps` is that loop as a generator: it yields a :class:`SegmentProgress` after every batch, which
is what a napari worker needs to report progress, show labels growing and stop on request, and it *returns*
the :class:`SegmentResult`. :func:`segment` runs it to the end.

When memory runs out the loop halves the batch, then the tiles, then moves from the GPU to the CPU, and says so
in its progress messages: the result is the same, only slower.
"""
from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_unet.core import sizing, zsampling
from napari_unet.core.axes import Layout, resolve_axes
from napari_unet.core.cancel import CancelLike, is_cancelled, raise_if_cancelled
from napari_unet.core.colour import grey_for_model
from napari_unet.core.devices import resolve_device
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.models import Model
from napari_unet.core.postprocess import InstanceLabeller, Region, SemanticLabeller, clear, fill
from napari_unet.core.run_outputs import labels_array, probabilities_array
from napari_unet.core.runner import (
    PRECISIONS,
    Network,
    auto_batch_size,
    auto_tile_shape,
    is_out_of_memory,
    smaller_tile_shape,
)
from napari_unet.core.tiling import TilePlan, boundary_margin, plan_tiles, read_tile

ProgressCallback = Callable[[int, int, str], Any]


@dataclass
class SegmentProgress:
    """What a running segmentation reports after each batch of tiles.

    ``preview`` is the labels array being filled (for instance models it holds provisional ids; the final ids
    arrive with the result) and ``regions`` index the parts of it written since the previous event.
    """

    done: int
    total: int
    message: str
    preview: Any = None
    regions: list[Region] = field(default_factory=list)


@dataclass
class SegmentResult:
    """Labels (integer, the image's shape without C) and, if asked for, probabilities (float32, classes first)."""

    labels: Any
    probabilities: Any | None
    axes: str  # the image's axes
    labels_axes: str  # the axes of ``labels``: the image's without C
    classes: tuple[str, ...]
    objects: int | None  # number of objects found (instance models)
    device: str
    precision: str
    tile_shape: tuple[int, ...]
    batch_size: int
    margin: tuple[int, int]  # outputs dropped at inner tile edges
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    messages: list[str] = field(default_factory=list)  # what a user should know (fallbacks, bad pixels)


def segment(image: Any, model: Model, axes: str | None = None, device: str | torch.device = "auto",
            tile_shape: int | Sequence[int] | None = None, overlap: int | None = None,
            batch_size: int | None = None, progress: ProgressCallback | None = None, cancel: CancelLike = None, *,
            out: Any = None, tta: bool = False, precision: str = "auto", probabilities: bool | Any = True,
            keep_partial: bool = False, scale: Sequence[float] | None = None,
            stack: str | None = None, diameter: float | None = None) -> SegmentResult:
    """Segment ``image`` with ``model`` and return labels and probabilities; arguments as :func:`segment_steps`."""
    steps = segment_steps(image, model, axes, device, tile_shape, overlap, batch_size, progress, cancel, out=out,
                          tta=tta, precision=precision, probabilities=probabilities, keep_partial=keep_partial,
                          scale=scale, stack=stack, diameter=diameter)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def segment_steps(image: Any, model: Model, axes: str | None = None, device: str | torch.device = "auto",
                  tile_shape: int | Sequence[int] | None = None, overlap: int | None = None,
                  batch_size: int | None = None, progress: ProgressCallback | None = None, cancel: CancelLike = None, *,
                  out: Any = None, tta: bool = False, precision: str = "auto", probabilities: bool | Any = True,
                  keep_partial: bool = False, scale: Sequence[float] | None = None,
                  stack: str | None = None, diameter: float | None = None
                  ) -> Generator[SegmentProgress, None, SegmentResult]:
    """Segment ``image`` with ``model``, yielding a :class:`SegmentProgress` per batch; returns the result.

    image: numpy, dask or zarr array (or array-like) of any numeric or bool dtype; lazy arrays are read one
        tile at a time and never whole.
    axes: napari letters (T, Z, C, Y, X), one per dimension; inferred when None. T is iterated (frame by
        frame), and Z for a 2D model with ``stack="planes"``.
    device: "auto" (CUDA, then Apple MPS, then CPU), "cuda", "cuda:1", "mps" or "cpu".
    tile_shape: the largest input tile, one int for all spatial axes or one per axis (network order, e.g. ZYX);
        chosen from the memory available when None. Tiles shrink to the smallest size that needs no more tiles.
    overlap: outputs discarded at inner tile edges; None uses the network's measured reach, which makes the
        result equal a whole-image pass. Valid-padding networks need and take none.
    batch_size: tiles per forward pass; chosen from the memory available when None.
    progress: called as ``progress(done, total, message)`` after every batch, in the calling thread.
    cancel: a :class:`CancelToken` (or threading.Event, or a callable); once set, the run raises
        :class:`Cancelled` before its next batch.
    out: a preallocated integer labels array (numpy or zarr) of the image's shape without C.
    tta: average predictions over every flip of each tile (4 in 2D, 8 in 3D; that many times the work).
    precision: "auto" (bfloat16 autocast on CPUs with native bfloat16, bfloat16/float16 on CUDA, float32
        otherwise), "float32", "bfloat16" or "float16".
    probabilities: True to return float32 probabilities, False for none (saves memory on large images), or an
        array (e.g. zarr) of shape (classes, *labels shape) to write them into.
    keep_partial: on cancel or error keep what was written into the caller's ``out`` and ``probabilities``
        arrays; by default every plane written to is set back to zero.
    scale: pixel size per spatial axis of the image (Z, Y, X in the image's order), e.g. (2.0, 0.5, 0.5); None
        means isotropic. The 3D route resamples Z to the lateral pixel size (:mod:`~napari_unet.core.orthogonal`);
        a 3D model that records the Z step it was trained at gets Z resampled to it
        (:mod:`~napari_unet.core.zsampling`).
    stack: how a 2D instance model treats a z-stack: "3d" (the default where Z has several planes) runs it on
        the YX, ZX and ZY planes and labels the averaged map in 3D, so each object has one id through the
        stack; "planes" labels each plane on its own. Semantic 2D models go plane by plane; 3D models ignore it.
    diameter: the typical object diameter in pixels. For a model that records the object size it was trained
        at, the image's Y and X are resampled to that size and the result brought back
        (:mod:`~napari_unet.core.sizing`). None measures the objects of a first pass and, for a 2D image whose
        objects are more than 1.5 times the model's size, segments again at that size; the result's messages
        say what was found.
    """
    if progress is not None and not callable(progress):
        raise InvalidInputError(f"progress must be a function called as progress(done, total, message), not "
                                f"{progress!r}")
    is_cancelled(cancel)  # a cancel of the wrong kind is refused now, not at the first tile
    options = {"device": device, "tile_shape": tile_shape, "overlap": overlap, "batch_size": batch_size,
               "progress": progress, "cancel": cancel, "out": out, "tta": tta, "precision": precision,
               "probabilities": probabilities, "keep_partial": keep_partial, "scale": scale, "stack": stack}
    at_own_size = functools.partial(zsampling.segment_on_model_grid, _steps_at_own_size)
    return (yield from sizing.segment_at_size(at_own_size, image, model, axes, diameter, options))


def _steps_at_own_size(image: Any, model: Any, axes: str | None, *, device: str | torch.device,
                       tile_shape: int | Sequence[int] | None, overlap: int | None, batch_size: int | None,
                       progress: ProgressCallback | None, cancel: Any, out: Any, tta: bool, precision: str,
                       probabilities: bool | Any, keep_partial: bool, scale: Sequence[float] | None,
                       stack: str | None) -> Generator[SegmentProgress, None, SegmentResult]:
    """:func:`segment_steps` at the image's own scale."""
    from napari_unet.core import orthogonal  # imports this module, so not at its top

    plan, note = orthogonal.choose(image, model, axes, stack, scale)
    if plan is not None:
        return (yield from orthogonal.segment_stack_steps(
            plan, model, device=device, tile_shape=tile_shape, overlap=overlap, batch_size=batch_size,
            progress=progress, cancel=cancel, out=out, tta=tta, precision=precision, probabilities=probabilities,
            keep_partial=keep_partial))
    run = _Run(image, model, axes, device, tile_shape, overlap, batch_size, progress, cancel, out, tta, precision,
               probabilities, keep_partial)
    if note:
        run.messages.append(note)
    return (yield from run.steps())


class _Run:
    """The state of one segmentation: outputs, plan, device, and where the loop stands."""

    def __init__(self, image: Any, model: Any, axes: str | None, device: str | torch.device,
                 tile_shape: int | Sequence[int] | None, overlap: int | None, batch_size: int | None,
                 progress: ProgressCallback | None, cancel: Any, out: Any, tta: bool, precision: str,
                 probabilities: bool | Any, keep_partial: bool) -> None:
        self.started = time.perf_counter()
        self.image = _check_image(image)
        if not hasattr(model, "network") or not hasattr(model, "config"):
            raise InvalidInputError("model must be a napari_unet Model; load one with napari_unet.load_model(name)")
        self.model = model
        self.config = model.config
        self.net_config = self.config.network
        self.image, axes, grey_note = grey_for_model(self.image, axes, self.net_config.spatial_dims,
                                                     self.net_config.in_channels, stacklevel=7)
        self.axes = resolve_axes(axes, self.image.shape, spatial_dims=self.net_config.spatial_dims,
                                 in_channels=self.net_config.in_channels)
        self.image_axes = self.axes + "C" if grey_note else self.axes  # what the caller's image has
        self.layout = Layout.create(self.axes, self.image.shape, self.config.axes)
        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision, self.tta = precision, bool(tta)
        self.tiles_given = _check_tile_shape(tile_shape, self.net_config.spatial_dims)
        self.batch_given = _check_count("batch_size", batch_size, 1)
        overlap = _check_count("overlap", overlap, 0)
        self.messages: list[str] = [grey_note] if grey_note else []
        if overlap is not None and self.net_config.padding == "valid":
            self.messages.append("overlap ignored: a valid-padding network needs none, its tiles are exact")
            overlap = None
        if overlap is None and self.tta and self.net_config.padding == "same":
            overlap = max(boundary_margin(self.net_config))  # a flipped tile swaps its two margins
        self.overlap = overlap
        self.labels = labels_array(out, self.layout)
        self.probs = probabilities_array(probabilities, self.layout, self.net_config.out_channels)
        self.caller_arrays = [a for a, given in ((self.labels, out is not None),
                                                 (self.probs, probabilities is not True and probabilities is not False))
                              if given and a is not None]
        self.progress, self.cancel, self.keep_partial = progress, cancel, keep_partial
        self.timings = {"statistics": 0.0, "setup": 0.0, "read": 0.0, "network": 0.0, "labels": 0.0}

        t0 = time.perf_counter()
        stats = self.config.normalization.statistics(self.layout.channel_first(self.image))
        self.normalize = functools.partial(self.config.normalization.apply, stats=stats)
        self.timings["statistics"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.network = Network(model.network, resolve_device(device), precision, self.tta)
        self.tiles = self.tiles_given or self._auto_tiles()
        self.batch = self.batch_given or auto_batch_size(self.net_config, self.tiles, self.network.device,
                                                         self.network.half)
        self.plan: TilePlan = plan_tiles(self.net_config, self.layout.spatial_shape, self.tiles, self.overlap)
        self.timings["setup"] = time.perf_counter() - t0  # network copy, receptive field (once per architecture)
        if self.config.task == "instance":
            self.labeller = InstanceLabeller(self.labels, self.layout, self.config.object_filter)
        else:
            self.labeller = SemanticLabeller(self.labels, self.layout)
        self.planes = list(self.layout.planes())
        self.touched: list[dict[str, int]] = []
        self.current = -1  # plane being labelled
        self.done = 0  # tiles finished
        self.total = len(self.planes) * len(self.plan)
        self.constant_planes = 0
        self.saw_bad = False

    # -- the loop --------------------------------------------------------------------------------------------
    def steps(self) -> Generator[SegmentProgress, None, SegmentResult]:
        try:
            start = 0
            while start < len(self.planes):
                try:
                    start = yield from self._predict(start)
                except _Replan as replan:
                    start = replan.plane
            yield from self._finish()
        except BaseException:
            if not self.keep_partial:
                for array in self.caller_arrays:
                    for plane in self.touched:
                        clear(array, self.layout, plane, leading=array.ndim - len(self.layout.output_axes))
            raise
        return self._result()

    def _predict(self, start: int) -> Generator[SegmentProgress, None, int]:
        """Run every tile of planes ``start``...; returns the number of planes (all done)."""
        jobs = [(p, t) for p in range(start, len(self.planes)) for t in self.plan.indices()]
        self.total = self.done + len(jobs)
        position = 0
        while position < len(jobs):
            raise_if_cancelled(self.cancel)
            chunk = jobs[position:position + self.batch]
            t0 = time.perf_counter()
            inputs = [read_tile(self.layout.plane_view(self.image, self.planes[p]), self.plan.tile(t)[0],
                                self.plan.tile_shape, self.plan.mode, self.normalize) for p, t in chunk]
            self.timings["read"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            failure = None
            try:
                outputs = self.network(np.stack([tile.data for tile in inputs]))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failure = str(exc)  # the exception (and the tensors its traceback holds) goes out of scope here
            if failure is not None:
                del inputs
                note, replan = self._fall_back(failure, len(chunk))
                self.messages.append(note)
                yield self._event(note, [])
                if replan:
                    self._restart(chunk[0][0])
                continue
            self.timings["network"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            regions: list[Region] = []
            for (p, t), tile, output in zip(chunk, inputs, outputs):
                if p != self.current:
                    regions += self._end_plane()
                    self._start_plane(p)
                regions += self._add_tile(t, tile, output)
            self.timings["labels"] += time.perf_counter() - t0
            position += len(chunk)
            yield self._event(self._describe(chunk[-1][0]), regions)
        regions = self._end_plane()
        if regions:
            yield self._event("constant plane: no objects", regions)
        return len(self.planes)

    @property
    def _background(self) -> float:
        """The first channel's value for a background pixel: P(background) = 1, except for a model with one
        output, whose only channel is P(foreground)."""
        return 0.0 if self.net_config.out_channels == 1 else 1.0

    def _start_plane(self, p: int) -> None:
        self.current, self.plane_done = p, 0
        self.low = np.full(self.layout.channels, np.inf)
        self.high = np.full(self.layout.channels, -np.inf)
        self.labeller.start_plane(self.planes[p], self.plan)
        self.touched.append(self.planes[p])

    def _add_tile(self, t: tuple[int, ...], tile: Any, output: np.ndarray) -> list[Region]:
        self.low, self.high = np.minimum(self.low, tile.low), np.maximum(self.high, tile.high)
        _, kept, place = self.plan.tile(t)
        probs = output[(slice(None),) + kept]
        if tile.bad is not None and tile.bad[kept].any():
            self.saw_bad = True
            probs = probs.copy()
            probs[:, tile.bad[kept]] = 0.0
            probs[0, tile.bad[kept]] = self._background
        plane = self.planes[self.current]
        if self.probs is not None:
            self.layout.write(self.probs, plane, place, probs, leading=1)
        self.done += 1
        self.plane_done += 1
        return self.labeller.add_tile(t, probs, place)

    def _end_plane(self) -> list[Region]:
        if self.current < 0:
            return []
        constant = bool(np.all(self.high <= self.low))  # every channel one value (or no finite value at all)
        regions = self.labeller.end_plane(constant)
        if constant:
            self.constant_planes += 1
            if self.probs is not None:
                index = clear(self.probs, self.layout, self.planes[self.current], leading=1)
                if self._background:
                    fill(self.probs, (0,) + index, self._background)
        self.current = -1
        return regions

    def _restart(self, p: int) -> None:
        """Compute plane ``p`` again from its first tile, with the new tile size or device."""
        if self.current == p:
            self.labeller.reset_plane()
            self.done -= self.plane_done
            self.current = -1
        self.plan = plan_tiles(self.net_config, self.layout.spatial_shape, self.tiles, self.overlap)
        raise _Replan(p)

    def _fall_back(self, failure: str, attempted: int) -> tuple[str, bool]:
        """Make the next attempt use less memory; return what was done and whether tiles must be replanned."""
        self.network.free()
        where = str(self.network.device)
        if attempted > 1:
            self.batch = max(1, attempted // 2)
            return f"out of memory on {where} with {attempted} tiles per batch; retrying with {self.batch} tiles per batch", False
        smaller = smaller_tile_shape(self.net_config, self.layout.spatial_shape, self.plan.tile_shape, self.overlap)
        if smaller is not None:
            self.tiles = smaller
            return f"out of memory on {where} with one tile per batch; retrying with tiles of {smaller}", True
        if self.network.device.type != "cpu":
            self.network = Network(self.model.network, torch.device("cpu"), self.precision, self.tta)
            self.tiles = self.tiles_given or self._auto_tiles()
            self.batch = self.batch_given or auto_batch_size(self.net_config, self.tiles, self.network.device,
                                                             self.network.half)
            return f"out of memory on {where} even with small tiles; continuing on the CPU", True
        raise MemoryError(f"not enough memory to segment even with one tile of {self.plan.tile_shape} per batch; "
                          f"close other programs or use a smaller model ({failure})")

    def _auto_tiles(self) -> tuple[int, ...]:
        return auto_tile_shape(self.net_config, self.layout.spatial_shape, self.network.device, self.network.half,
                               self.overlap)

    def _finish(self) -> Generator[SegmentProgress, None, None]:
        t0 = time.perf_counter()
        yield self._event("numbering objects" if self.config.task == "instance" else "done", [])
        for _ in self.labeller.finish():
            raise_if_cancelled(self.cancel)
        self.timings["labels"] += time.perf_counter() - t0
        if self.saw_bad:
            note = "the image has NaN or infinite pixels; they were treated as background"
            warnings.warn(note, RuntimeWarning, stacklevel=7)
            self.messages.append(note)
        if self.constant_planes:
            what = "the image is" if self.constant_planes == len(self.planes) else \
                f"{self.constant_planes} of {len(self.planes)} planes are"
            self.messages.append(f"{what} constant (one value throughout): no objects there")

    # -- reporting -------------------------------------------------------------------------------------------
    def _event(self, message: str, regions: list[Region]) -> SegmentProgress:
        if self.progress is not None:
            self.progress(self.done, self.total, message)
        return SegmentProgress(self.done, self.total, message, self.labels, regions)

    def _describe(self, p: int) -> str:
        where = ""
        if len(self.planes) > 1:
            where = " ".join(f"{a}={i}" for a, i in self.planes[p].items()) + ": "
        return f"{where}tile {self.done} of {self.total} on {self.network.device}"

    def _result(self) -> SegmentResult:
        self.timings["total"] = time.perf_counter() - self.started
        return SegmentResult(
            labels=self.labels, probabilities=self.probs, axes=self.image_axes, labels_axes=self.layout.output_axes,
            classes=tuple(self.config.classes), objects=self.labeller.objects, device=str(self.network.device),
            precision=self.network.precision_name, tile_shape=self.plan.tile_shape, batch_size=self.batch,
            margin=self.plan.margin, timings=self.timings, messages=self.messages)


class _Replan(Exception):
    """Planes from ``plane`` on must be computed again (smaller tiles, or another device)."""

    def __init__(self, plane: int) -> None:
        super().__init__(plane)
        self.plane = plane


# --------------------------------------------------------------------------------------------------------------
# Checking arguments
# --------------------------------------------------------------------------------------------------------------


def _check_image(image: Any) -> Any:
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        raise InvalidInputError(f"segment() takes an image array, not the file name {image!r}: read the file first "
                                "with tifffile.imread(path), or zarr.open(path) for a zarr folder (read lazily)")
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        image = np.asarray(image)
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "biuf":
        raise InvalidInputError(f"images of dtype {dtype} cannot be segmented; convert to a number type first, "
                                "e.g. image.astype('float32')")
    if any(int(n) == 0 for n in image.shape):
        raise InvalidInputError(f"the image is empty (shape {tuple(image.shape)}); nothing to segment")
    return image


def _check_count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be a whole number >= {minimum} (or None for automatic), not {value!r}")
    return int(value)


def _check_tile_shape(tile_shape: int | Sequence[int] | None, dims: int) -> tuple[int, ...] | None:
    if tile_shape is None:
        return None
    try:
        sizes = (tile_shape,) * dims if isinstance(tile_shape, (int, np.integer, float, np.floating)) \
            else tuple(tile_shape)
    except TypeError:
        sizes = ()
    if len(sizes) != dims or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                     for s in sizes):
        raise InvalidInputError(f"tile_shape must be a positive int or {dims} of them (one per spatial axis of the "
                                f"network), not {tile_shape!r}")
    return tuple(int(s) for s in sizes)
