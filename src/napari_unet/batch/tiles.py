"""The tile tasks of :func:`~napari_unet.batch.large.segment_large`: groups of the tiles :func:`segment` would
run, computed on the workers with each tile's kept probabilities saved to its own file, then labelled in the
calling process in :func:`segment`'s tile order."""
from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.batch.cluster import ProgressCallback
from napari_unet.batch.outputs import _save_tile
from napari_unet.batch.worker_models import _worker_network, worker_model


@dataclass(frozen=True)
class _Job:
    """What every tile task of one run shares besides the image and the model: how to read and normalise the
    image, and the tile plan. The image and the model are the tasks' own arguments, not fields here: Dask
    replaces a future (a scattered array or model) by its data only where it is an argument of the task or
    sits in a list, tuple or dict there, never inside another object, which would reach the worker as the
    future itself."""

    layout: Any
    plan: Any
    stats: Any
    device: str
    precision: str
    tta: bool
    batch_size: int | None
    scratch: str


def _tile_groups(plan: Any, per_task: int) -> list[list[tuple[int, ...]]]:
    """The tile grid cut into blocks of about ``per_task`` tiles (neighbours together: they share chunks)."""
    grid = plan.grid
    side = max(1, round(per_task ** (1 / len(grid))))
    steps = [min(side, n) for n in grid]
    groups = []
    for corner in np.ndindex(*[math.ceil(n / s) for n, s in zip(grid, steps)]):
        ranges = [range(c * s, min((c + 1) * s, n)) for c, s, n in zip(corner, steps, grid)]
        groups.append([tuple(int(r[i]) for r, i in zip(ranges, t)) for t in np.ndindex(*map(len, ranges))])
    return groups


def _run_tiles(client: Any, image: Any, model: Any, job: _Job, per_task: int | None,
               progress: ProgressCallback | None, distributed: Any
               ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray, bool]], int]:
    """Submit the tile tasks of every plane; returns per plane the pixel range seen (for constant planes) and
    whether any pixel was NaN or infinite, and the number of tasks.

    image: an array the workers read (a zarr array opens its store there) or a future of a scattered one;
    model: a :class:`ModelRef` or a future of a scattered ``Model``."""
    planes = list(job.layout.planes())
    if per_task is None:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        per_task = max(1, math.ceil(len(job.plan) * len(planes) / (4 * workers)))
    groups = _tile_groups(job.plan, per_task)
    run = uuid.uuid4().hex[:8]
    futures = [client.submit(tile_task, image, model, job, p, group, key=f"segment-tiles-{run}-{p}-{g}", pure=False)
               for p in range(len(planes)) for g, group in enumerate(groups)]
    extremes: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}
    for done, future in enumerate(distributed.as_completed(futures), 1):
        p, low, high, bad = future.result()
        if p in extremes:
            old = extremes[p]
            low, high, bad = np.minimum(old[0], low), np.maximum(old[1], high), old[2] or bad
        extremes[p] = (low, high, bad)
        if progress is not None:
            progress(done, len(futures), "tiles")
    return extremes, len(futures)


def _tile_path(scratch: str, p: int, t: Sequence[int]) -> Path:
    return Path(scratch) / f"p{p}-t{'-'.join(str(i) for i in t)}.npy"


def tile_task(image: Any, model: Any, job: _Job, p: int, tiles: list[tuple[int, ...]]
              ) -> tuple[int, np.ndarray, np.ndarray, bool]:
    """On a worker: the kept probabilities of some tiles of plane ``p`` of ``image``, each saved to its own
    file; ``model`` is a :class:`ModelRef` or the ``Model`` itself.

    Exactly :func:`segment`'s per-tile work (read with its context, normalise with the image's statistics,
    the network, NaN pixels to background). Returns the plane, the per-channel range of the pixels read and
    whether any was NaN or infinite.
    """
    from napari_unet.core.runner import auto_batch_size
    from napari_unet.core.tiling import read_tile

    model = worker_model(model)
    network = _worker_network(model, job.device, job.precision, job.tta)
    plane = list(job.layout.planes())[p]
    view = job.layout.plane_view(image, plane)
    normalize = functools.partial(model.config.normalization.apply, stats=job.stats)
    batch = job.batch_size or auto_batch_size(model.config.network, job.plan.tile_shape, network.device,
                                              network.half)
    low = np.full(job.layout.channels, np.inf)
    high = np.full(job.layout.channels, -np.inf)
    saw_bad = False
    for first in range(0, len(tiles), batch):
        chunk = tiles[first:first + batch]
        inputs = [read_tile(view, job.plan.tile(t)[0], job.plan.tile_shape, job.plan.mode, normalize) for t in chunk]
        outputs = network(np.stack([tile.data for tile in inputs]))
        for t, tile, output in zip(chunk, inputs, outputs):
            low, high = np.minimum(low, tile.low), np.maximum(high, tile.high)
            kept = job.plan.tile(t)[1]
            probs = np.ascontiguousarray(output[(slice(None),) + kept])
            if tile.bad is not None and tile.bad[kept].any():
                saw_bad = True
                probs[:, tile.bad[kept]] = 0.0
                probs[0, tile.bad[kept]] = 1.0
            _save_tile(_tile_path(job.scratch, p, t), probs)
    return p, low, high, saw_bad


def _label(job: _Job, labels: Any, config: Any, extremes: dict[int, Any], probabilities: Any
           ) -> tuple[int | None, list[str]]:
    """Labels from the saved tiles, plane by plane in :func:`segment`'s tile order, in this process."""
    from napari_unet.core.postprocess import InstanceLabeller, SemanticLabeller, clear, fill

    layout, plan = job.layout, job.plan
    if probabilities is not None:
        from napari_unet.core.run_outputs import probabilities_array

        probabilities_array(probabilities, layout, config.network.out_channels)  # checks shape and dtype
    if config.task == "instance":
        labeller = InstanceLabeller(labels, layout, config.object_filter)
    else:
        labeller = SemanticLabeller(labels, layout)
    constant_planes, saw_bad = 0, False
    for p, plane in enumerate(layout.planes()):
        labeller.start_plane(plane, plan)
        for t in plan.indices():
            path = _tile_path(job.scratch, p, t)
            probs = np.load(path)
            place = plan.tile(t)[2]
            if probabilities is not None:
                layout.write(probabilities, plane, place, probs, leading=1)
            labeller.add_tile(t, probs, place)
            path.unlink()
        low, high, bad = extremes[p]
        saw_bad = saw_bad or bad
        constant = bool(np.all(high <= low))
        labeller.end_plane(constant)
        if constant:
            constant_planes += 1
            if probabilities is not None:
                fill(probabilities, (0,) + clear(probabilities, layout, plane, leading=1), 1.0)
    for _ in labeller.finish():
        pass
    notes = []
    if saw_bad:
        notes.append("the image has NaN or infinite pixels; they were treated as background")
    if constant_planes:
        notes.append(f"{constant_planes} of {layout.plane_count} planes are constant (one value throughout): no "
                     "objects there")
    return labeller.objects, notes
