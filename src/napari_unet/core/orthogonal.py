"""3D objects from a 2D model: a z-stack segmented along its three orthogonal planes (the Cellpose approach).

A 2D model applied plane by plane labels every plane on its own, so one nucleus becomes a pile of unrelated 2D
objects. Here the 2D network runs three times over each volume: on its YX planes, on its ZX planes and on its
ZY planes (a transposed view of the volume, segmented plane by plane by the ordinary tiled engine of
:mod:`~napari_unet.core.inference`, probabilities kept). The three background / interior / boundary maps are
brought back to ZYX and averaged, and a 3D seeded watershed labels the result (:func:`label_volume`): one id per
object through the whole stack. A TZYX time-lapse gives 3D objects per time point, with ids unique over the
whole image.

Seeds and extent are taken by consensus: a voxel seeds an object only where all three passes call it interior,
and belongs to an object only where all three call it foreground; the averaged map shapes the watershed between
them. Seeds from the averaged map alone join touching nuclei through any voxel where one pass misses the
boundary (in 3D, one gap in a boundary surface is enough): on held-out generated stacks of the bundled model
(``bench/stack3d.py``, isotropic, one stack each) consensus raised 3D object F1@0.5 from 0.52 to 0.94 on
separate nuclei and from 0.10 to 0.56 on crowded ones. Only the deep core of each interior piece seeds
(:func:`seed_cores`), which keeps thin bridges between crowded interiors from joining them.

The network was trained on planes with square pixels. A ZX plane of a stack whose Z step is coarser than its
pixels shows every nucleus squashed by that ratio, so with ``scale=(z, y, x)`` the *image* is resampled in Z to
the lateral pixel size first (linear interpolation along Z, ``scipy.ndimage.zoom`` with order 1) and the labels
are brought back to the stack's own planes afterwards (nearest plane). Resampling the probability maps instead
would not help: the network would already have looked at squashed nuclei. The ZX and ZY passes see the resampled
stack slightly blurred along Y and X (:func:`lateral_blur`), so that its interpolated planes do not show streaks,
and normalised with that volume's own percentiles. The returned probabilities are taken at the same nearest
planes as the labels, so that the two agree voxel by voxel.

Memory: the route holds each volume's image (resampled: twice, plain and blurred), two float32 probability maps
(the running sum and the current pass), the two consensus masks, a scratch label volume and the watershed's
working arrays, about 60 bytes per (resampled) voxel. A stack whose volume needs more than a quarter of the
machine's memory is segmented plane by plane instead, with a note in the result's messages (``stack="3d"``
refuses it, suggesting ``stack="planes"``, a crop, or a 3D model such as the bundled ``nuclei-3d``, which
reads and labels a stack tile by tile); there is no out-of-core version of this route yet.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_unet.core import inference
from napari_unet.core.axes import Layout, check_axes, infer_axes, resolve_axes
from napari_unet.core.cancel import raise_if_cancelled
from napari_unet.core.colour import grey_for_model, is_colour
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.postprocess import ObjectFilter, check_ids_fit, clear, renumbered
from napari_unet.core.run_outputs import labels_array, probabilities_array
from napari_unet.core.runner import physical_memory
from napari_unet.core.zsampling import (check_scale, lateral_size, nearest_planes, resample_planes,
                                        resampled_depth)

STACKS = ("3d", "planes")
"""How a 2D model treats a z-stack: ``"3d"`` 3D objects (three orthogonal passes), ``"planes"`` plane by plane."""

PASSES = (("YX", (0, 1, 2)), ("ZX", (1, 0, 2)), ("ZY", (2, 0, 1)))
"""Each pass: the planes the network sees, and the order of the volume's (Z, Y, X) axes handed to the engine,
whose first axis it iterates and whose last two form the planes."""

#: bytes per voxel of the 3D watershed's working arrays (seeds, elevation, result, queue; measured: the route
#: peaks at 63 bytes per voxel of a uint8 stack, bench/stack3d.py)
WATERSHED_BYTES = 32


@dataclasses.dataclass(frozen=True)
class StackPlan:
    """A checked request for 3D objects from a 2D instance model."""

    image: Any  # the image the network reads (grey where a colour image meets a 1-channel model)
    axes: str  # the axes of ``image``
    image_axes: str  # the axes of the caller's image
    notes: tuple[str, ...]  # what the caller should know (colour converted, Z resampled)
    factor: float  # Z step divided by the lateral pixel size (1.0: isotropic)


LARGE_STACKS = ("for 3D objects in a stack of any size use a 3D model (for nuclei the bundled 'nuclei-3d'), which "
                "reads and labels it tile by tile")


def choose(image: Any, model: Any, axes: str | None, stack: str | None,
           scale: Sequence[float] | None) -> tuple[StackPlan | None, str | None]:
    """Decide how ``segment`` treats ``image``: a :class:`StackPlan` for the 3D route, or None and a note (or
    None) for the ordinary plane-by-plane (or 3D model) engine.

    ``stack=None`` takes the 3D route for a 2D instance model on an image whose Z axis has more than one plane.
    """
    if stack is not None and stack not in STACKS:
        raise InvalidInputError(f"stack must be '3d' (3D objects through the z-stack) or 'planes' (each plane on "
                                f"its own), not {stack!r}")
    if not hasattr(model, "network") or not hasattr(model, "config"):
        return None, None  # the engine refuses it with its own message
    config = model.config
    dims, channels = config.network.spatial_dims, config.network.in_channels
    checked = inference._check_image(image)
    shape = tuple(int(n) for n in checked.shape)
    letters = check_axes(axes, len(shape)) if axes is not None else infer_axes(shape, spatial_dims=dims,
                                                                               in_channels=channels)
    if is_colour(letters, shape, channels):
        letters, shape = letters[:-1], shape[:-1]  # what grey_for_model makes of it, without converting yet
    sizes = check_scale(scale, letters)
    has_depth = "Z" in letters and shape[letters.index("Z")] > 1
    if dims == 3:
        note = None
        if "Z" in sizes and not math.isclose(sizes["Z"], lateral_size(sizes), rel_tol=0.01):
            note = (f"the voxel size {tuple(sizes.values())} was not used: this 3D model records no Z step of its "
                    "own (z_step), so it takes the voxels as they are; give it stacks sampled like the ones it was "
                    "trained on")
        return None, note
    if stack == "planes" or (stack is None and (config.task != "instance" or not has_depth)):
        return None, None
    if config.task != "instance":
        raise InvalidInputError("stack='3d' builds 3D objects for instance models; this model labels classes, "
                                "which its planes already give: pass stack='planes'")
    if "Z" not in letters:
        raise InvalidInputError(f"stack='3d' needs a z-stack, but the image axes are {letters!r}; pass axes with a "
                                "Z (e.g. 'ZYX'), or leave stack at its default")
    if not has_depth:
        return None, None  # a single plane: its YX pass is the whole story
    factor = sizes["Z"] / lateral_size(sizes) if sizes else 1.0
    colour = len(letters) < len(checked.shape)
    problem = _too_large(letters, shape, factor, 4 if colour else np.dtype(checked.dtype).itemsize,
                         config.network.out_channels)
    if problem and stack == "3d":
        raise InvalidInputError(f"{problem}; pass stack='planes' to segment it plane by plane (2D objects, one set "
                                f"per plane), crop the stack, or {LARGE_STACKS}")
    if problem:
        return None, f"{problem}, so it was segmented plane by plane (2D objects); crop it, or {LARGE_STACKS}"
    grey, grey_axes, grey_note = grey_for_model(checked, axes, dims, channels, stacklevel=7)
    letters = resolve_axes(grey_axes, grey.shape, spatial_dims=dims, in_channels=channels)
    notes = [grey_note] if grey_note else []
    if sizes and not math.isclose(sizes["Y"], sizes["X"], rel_tol=0.01):
        notes.append(f"the pixels are not square (Y {sizes['Y']:g}, X {sizes['X']:g}): Z was resampled to their "
                     f"geometric mean, {lateral_size(sizes):.3g}, and the model saw the planes as they are")
    image_axes = letters + "C" if grey_note else letters
    return StackPlan(grey, letters, image_axes, tuple(notes), factor), None


def _too_large(letters: str, shape: Sequence[int], factor: float, itemsize: int, classes: int) -> str | None:
    """Why one volume of this image does not fit the 3D route's memory budget (a quarter of the machine's), or
    None where it does."""
    size = dict(zip(letters, shape))
    depth, plane = size["Z"], size["Y"] * size["X"]
    resampled = resampled_depth(depth, factor)
    need = memory_needed(depth * plane, resampled * plane, size.get("C", 1), itemsize, classes)
    available = physical_memory()
    if need <= available // 4:
        return None
    return (f"3D objects from a 2D model hold each volume in memory: about {need / 2**30:.1f} GiB for "
            f"{resampled} x {size['Y']} x {size['X']} voxels, more than a quarter of this machine's "
            f"{available / 2**30:.0f} GiB")


def lateral_blur(step: float) -> float:
    """Gaussian sigma (pixels) along Y and X that the ZX and ZY passes of a stack upsampled ``step`` times in Z see.

    Linear interpolation makes the noise of the new planes smooth over ``step`` pixels along Z, but it stays
    rough along X (and Y): the ZX planes show vertical streaks that the 2D model takes for texture or nuclei. A
    blur whose variance is that of a box of ``step`` pixels, less one pixel's, makes the noise alike in both
    directions. The blurred volume is normalised with its own percentiles: the blur draws them together, and
    with the stack's percentiles the passes saw dim nuclei (separate nuclei at a Z step of 4 pixels, two
    generated stacks: 3D object F1@0.5 0.50 / 0.53 with the stack's, 0.81 / 0.85 with its own; 0.30 without
    the blur).
    """
    return math.sqrt(max(step * step - 1.0, 0.0) / 12.0)


def memory_needed(voxels: int, resampled_voxels: int, channels: int, itemsize: int, classes: int) -> int:
    """Bytes one volume of the 3D route holds at its peak (see the module's docstring)."""
    image = voxels * channels * itemsize + (2 * resampled_voxels * channels * 4 if resampled_voxels != voxels else 0)
    return image + resampled_voxels * (2 * classes * 4 + 2 + 4 + WATERSHED_BYTES)


def segment_stack_steps(plan: StackPlan, model: Any, *, device: Any, tile_shape: Any, overlap: int | None,
                        batch_size: int | None, progress: Any, cancel: Any, out: Any, tta: bool, precision: str,
                        probabilities: bool | Any,
                        keep_partial: bool) -> Generator[inference.SegmentProgress, None, inference.SegmentResult]:
    """Run the 3D route; arguments as :func:`napari_unet.core.inference.segment_steps`."""
    run = _StackRun(plan, model, device=device, tile_shape=tile_shape, overlap=overlap, batch_size=batch_size,
                    progress=progress, cancel=cancel, out=out, tta=tta, precision=precision,
                    probabilities=probabilities, keep_partial=keep_partial)
    return (yield from run.steps())


def agree(probabilities: np.ndarray, interior: np.ndarray, foreground: np.ndarray,
          objects: ObjectFilter = ObjectFilter()) -> None:
    """Keep in ``interior`` and ``foreground`` only the voxels one pass's (3, ...) probabilities give that class,
    as ``objects`` decides classes in 2D (by default those of ``np.argmax``, without its int64 array)."""
    mask = objects.foreground_mask(probabilities)
    interior &= objects.seed_mask(probabilities, mask)
    foreground &= mask


def seed_cores(interior: np.ndarray) -> np.ndarray:
    """The deep part of each connected piece of ``interior``: its voxels at least half as far from the piece's
    edge as its deepest voxel (chessboard distance).

    Crowded nuclei touch over whole faces, and in 3D a boundary surface needs only one gap, in all three passes
    at once, for two interiors to join: a bridge that is thin next to the nuclei it joins. The cores leave the
    bridge out, so each nucleus seeds its own object; the watershed then shares the bridge between them. A lone
    nucleus keeps one core (its deepest voxel always qualifies). Chosen on generated stacks other than those of
    ``bench/stack3d.py``: 3D F1@0.5 of crowded stacks rose from 0.29-0.45 to 0.54-0.60, of sparse ones from
    0.84-0.86 to 0.89-0.93; the Euclidean distance did as well at ten times the cost."""
    if interior.all():  # no edge anywhere, so no distance to one (scipy gives -1): the volume is one core
        return interior.copy()
    depth = ndimage.distance_transform_cdt(interior, metric="chessboard")
    pieces, count = ndimage.label(interior)
    deepest = np.zeros(count + 1, dtype=depth.dtype)
    np.maximum.at(deepest, pieces.ravel(), depth.ravel())
    return interior & (2 * depth >= deepest[pieces])


def label_volume(probabilities: np.ndarray, interior: np.ndarray, foreground: np.ndarray,
                 objects: ObjectFilter = ObjectFilter()) -> np.ndarray:
    """Instance labels 1..N: the :func:`seed_cores` of ``interior`` grown over ``foreground`` by a watershed
    on the averaged interior probability (face connectivity), then filtered by size as plane-by-plane labels are."""
    from skimage.segmentation import watershed

    seeds, _ = ndimage.label(seed_cores(interior))
    grown = watershed(1.0 - probabilities[1], seeds, mask=foreground, connectivity=1)
    del seeds
    sizes = np.bincount(grown.ravel())
    final = np.zeros(len(sizes), dtype=np.int32)
    keep = np.flatnonzero(objects.keep(sizes[1:])) + 1
    final[keep] = np.arange(1, len(keep) + 1)
    return final[grown]


@dataclasses.dataclass(frozen=True)
class _KnownStatistics:
    """A model's normalisation with statistics already computed: every pass and every time point is normalised
    with the numbers of the whole image, as the plane-by-plane route does."""

    normalization: Any
    stats: np.ndarray

    def statistics(self, image: Any) -> np.ndarray:
        return self.stats

    def apply(self, x: np.ndarray, stats: np.ndarray) -> np.ndarray:
        return self.normalization.apply(x, stats)


@dataclasses.dataclass
class _PassModel:
    """What one pass hands the engine: the network, with a config that only keeps probabilities (no 2D labels)."""

    network: Any
    config: Any


class _StackRun:
    """The state of one 3D-route segmentation: outputs, the passes of the volume in hand, progress."""

    def __init__(self, plan: StackPlan, model: Any, *, device: Any, tile_shape: Any, overlap: int | None,
                 batch_size: int | None, progress: Any, cancel: Any, out: Any, tta: bool, precision: str,
                 probabilities: bool | Any, keep_partial: bool) -> None:
        self.started = time.perf_counter()
        self.plan, self.model = plan, model
        self.layout = Layout.create(plan.axes, plan.image.shape, "ZYX")  # iterates T only
        self.depth = self.layout.size("Z")
        self.resampled = resampled_depth(self.depth, plan.factor)
        self.classes = model.config.network.out_channels
        self.labels = labels_array(out, self.layout)
        self.probs = probabilities_array(probabilities, self.layout, self.classes)
        self.caller_arrays = [a for a, given in ((self.labels, out is not None),
                                                 (self.probs, probabilities is not True and probabilities is not False))
                              if given and a is not None]
        self.options = dict(device=device, tile_shape=tile_shape, overlap=overlap, batch_size=batch_size, tta=tta,
                            precision=precision)
        self.progress, self.cancel, self.keep_partial = progress, cancel, keep_partial
        self.timings = {"statistics": 0.0, "setup": 0.0, "read": 0.0, "network": 0.0, "labels": 0.0}
        self.messages = list(plan.notes)
        if self.resampled != self.depth:
            self.messages.append(f"Z resampled from {self.depth} to {self.resampled} planes (Z step "
                                 f"{plan.factor:.3g} times the pixel size) for the three passes; labels are on the "
                                 "stack's own planes")
        t0 = time.perf_counter()
        stats = model.config.normalization.statistics(self.layout.channel_first(plan.image))
        self.timings["statistics"] = time.perf_counter() - t0
        config = dataclasses.replace(model.config, task="semantic",
                                     normalization=_KnownStatistics(model.config.normalization, stats))
        self.pass_model = _PassModel(model.network, config)
        self.volumes = list(self.layout.planes())  # one per time point (a single {} without T)
        self.touched: list[dict[str, int]] = []
        self.done = 0
        self.total = 0  # known once the first volume's passes are planned
        self.count = 0
        self.last: Any = None  # the engine run of the latest pass (device, tiles, batch for the result)

    # -- the loop --------------------------------------------------------------------------------------------
    def steps(self) -> Generator[inference.SegmentProgress, None, inference.SegmentResult]:
        try:
            for index, where in enumerate(self.volumes):
                yield from self._volume(index, where)
        except BaseException:
            if not self.keep_partial:
                for array in self.caller_arrays:
                    for where in self.touched:
                        clear(array, self.layout, where, leading=array.ndim - len(self.layout.output_axes))
            raise
        return self._result()

    def _volume(self, index: int, where: dict[str, int]) -> Generator[inference.SegmentProgress, None, None]:
        raise_if_cancelled(self.cancel)
        t0 = time.perf_counter()
        volume = np.asarray(self.layout.plane_view(self.plan.image, where)[:])  # (C, Z, Y, X)
        across, across_model = volume, self.pass_model  # what the ZX and ZY passes see, and how it is normalised
        if self.resampled != self.depth:
            volume = resample_planes(volume, self.resampled, axis=1)
            across = volume
            step = (self.resampled - 1) / max(self.depth - 1, 1)
            if step > 1:  # blurred, and normalised with its own percentiles, which the blur drew together
                across = ndimage.gaussian_filter(volume, (0, 0, *(lateral_blur(step),) * 2))
                normalization = self.model.config.normalization
                across_model = _PassModel(self.model.network, dataclasses.replace(
                    self.pass_model.config, normalization=_KnownStatistics(normalization,
                                                                           normalization.statistics(across))))
        self.timings["read"] += time.perf_counter() - t0
        shape = volume.shape[1:]
        summed = np.zeros((self.classes, *shape), np.float32)
        current = np.empty_like(summed)
        interior = np.ones(shape, bool)  # interior in every pass so far
        foreground = np.ones(shape, bool)  # foreground in every pass so far
        scratch = np.zeros(shape, np.int32)  # the engine's per-plane class ids, not used
        runs = []
        for k, (_, order) in enumerate(PASSES):
            channel_order = (0,) + tuple(1 + a for a in order)
            target = summed if k == 0 else current
            runs.append(inference._Run(
                (volume if k == 0 else across).transpose(channel_order),
                self.pass_model if k == 0 else across_model, "CZYX", progress=None, cancel=self.cancel,
                out=scratch.transpose(order), probabilities=target.transpose(channel_order), keep_partial=True,
                **self.options))
        if self.options["batch_size"] is None:  # thin ZX and ZY planes: batch them up to one YX batch's pixels
            pixels = math.prod(runs[0].plan.tile_shape) * runs[0].batch
            for run in runs[1:]:
                run.batch = max(run.batch, min(16, pixels // math.prod(run.plan.tile_shape)))
        if index == 0:
            self.total = sum(run.total for run in runs) * len(self.volumes)
        per_volume = sum(run.total for run in runs)
        for k, run in enumerate(runs):
            self.last = run
            yield from self._pass(runs, k, index, per_volume)
            for key in ("setup", "read", "network"):
                self.timings[key] += run.timings[key]
            self.messages += [m for m in run.messages if m not in self.messages and (k == 0 or "constant" not in m)]
            agree(summed if k == 0 else current, interior, foreground, self.model.config.object_filter)
            if k:
                summed += current
        raise_if_cancelled(self.cancel)
        t0 = time.perf_counter()
        summed *= np.float32(1 / len(PASSES))
        del current, scratch, runs
        labels = label_volume(summed, interior, foreground, self.model.config.object_filter)
        del interior, foreground
        planes = nearest_planes(self.depth, self.resampled)
        if self.resampled != self.depth:
            labels = renumbered(labels[planes]).astype(np.int32, copy=False)
        objects = int(labels.max(initial=0))
        check_ids_fit(self.count + objects, self.labels.dtype)
        labels[labels > 0] += self.count
        self.count += objects
        everything = [slice(None)] * 3
        self.touched.append(where)
        region = self.layout.write(self.labels, where, everything, labels.astype(self.labels.dtype, copy=False))
        if self.probs is not None:
            self.layout.write(self.probs, where, everything, summed[:, planes] if self.resampled != self.depth
                              else summed, leading=1)
        self.timings["labels"] += time.perf_counter() - t0
        yield self._event(f"{self._where(where)}{objects} objects in 3D", [region])

    def _pass(self, runs: list[Any], k: int, index: int,
              per_volume: int) -> Generator[inference.SegmentProgress, None, None]:
        """Run pass ``k`` of the engine, reporting its tiles as part of the whole run."""
        run, name = runs[k], PASSES[k][0]
        before = self.done
        where = self._where(self.volumes[index])
        steps = run.steps()
        try:
            while True:
                try:
                    event = next(steps)
                except StopIteration:
                    break
                self.done = before + event.done
                later = sum(r.total for r in runs[k + 1:]) + (len(self.volumes) - index - 1) * per_volume
                self.total = self.done + (event.total - event.done) + later  # grows if a pass replans smaller
                if "memory" in event.message:
                    message = f"{where}{name} planes: {event.message}"
                else:
                    message = (f"{where}{name} planes (pass {k + 1} of {len(PASSES)}): tile {self.done} of "
                               f"{self.total} on {run.network.device}")
                yield self._event(message, [])
        finally:
            steps.close()

    def _where(self, where: dict[str, int]) -> str:
        return "".join(f"{a}={i}: " for a, i in where.items()) if len(self.volumes) > 1 else ""

    # -- reporting -------------------------------------------------------------------------------------------
    def _event(self, message: str, regions: list[Any]) -> inference.SegmentProgress:
        if self.progress is not None:
            self.progress(self.done, self.total, message)
        return inference.SegmentProgress(self.done, self.total, message, self.labels, regions)

    def _result(self) -> inference.SegmentResult:
        self.timings["total"] = time.perf_counter() - self.started
        last = self.last
        return inference.SegmentResult(
            labels=self.labels, probabilities=self.probs, axes=self.plan.image_axes,
            labels_axes=self.layout.output_axes, classes=tuple(self.model.config.classes), objects=self.count,
            device=str(last.network.device), precision=last.network.precision_name,
            tile_shape=last.plan.tile_shape, batch_size=last.batch, margin=last.plan.margin, timings=self.timings,
            messages=self.messages)
