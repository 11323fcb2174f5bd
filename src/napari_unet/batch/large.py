"""One image larger than a machine can process quickly, spread over the Dask workers: :func:`segment_large`
gives the labels :func:`segment` would give (its docstring says how, and why that way)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.batch.cluster import ProgressCallback, _session, dashboard_link, require_distributed
from napari_unet.batch.outputs import ZARR_CHUNK, commit, partial_name, remove
from napari_unet.batch.tiles import _Job, _label, _run_tiles
from napari_unet.batch.worker_models import ModelRef, _model_ref
from napari_unet.core.errors import InvalidInputError


@dataclass
class LargeResult:
    """What :func:`segment_large` made: labels (the caller's array, a zarr array at ``out``, or numpy)."""

    labels: Any
    objects: int | None
    tiles: int
    tasks: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # "network" (on the workers, wall), "labels"
    messages: list[str] = field(default_factory=list)
    dashboard: str | None = None


def segment_large(image: Any, model: Any, out: Any = None, client: Any = None, *, workers: int | None = None,
                  axes: str | None = None, device: str = "auto", tile_shape: int | Sequence[int] | None = None,
                  overlap: int | None = None, batch_size: int | None = None, precision: str = "auto",
                  tta: bool = False, stack: str | None = None, probabilities: Any = None,
                  tiles_per_task: int | None = None, scratch: str | os.PathLike | None = None,
                  trust: bool = False, progress: ProgressCallback | None = None) -> LargeResult:
    """Segment one large image with the network on many workers; the labels equal :func:`segment`'s.

    At the image's own scale: :func:`segment` segments a 2D image that fits in memory a second time, resampled,
    when its objects come out over 1.5 times the model's size (:mod:`~napari_unet.core.sizing`); this function
    does not (an image worth many workers rarely fits in one), so for such objects resample the image first.

    image: a zarr array, a path that :mod:`~napari_unet.core.io` reads, or any array the workers can unpickle
        (a numpy array is sent once). Workers read only their tiles' pixels.
    out: a zarr (or numpy) integer array to fill, a path ending in ``.zarr`` (written under a temporary name,
        then renamed), or None for a numpy array.
    tile_shape, overlap, device, precision, tta, batch_size, stack: as for :func:`segment`; the same values on
        the same kind of device give the same labels (probabilities to the bit, so the same ids).
    probabilities: a zarr array (classes, *labels shape) to also receive the probabilities, or None.
    tiles_per_task: tiles in one task (default: about four tasks per worker); scratch: a folder every worker and
        this process see, for the probabilities in transit (default: beside ``out``, else a temporary folder).
    trust: let a bioimage.io package from another tool run its code, here and on every worker
        (``load_model(path, trust=True)``); only for packages you trust.

    Design, and why. Exactness asks that every output pixel come from the same network input as in
    :func:`segment`: the same normalisation statistics (computed once here, from a bounded sample, and sent
    with the tasks), and the same tiles, aligned to the network's pooling grid and read with its reach as
    context (:func:`~napari_unet.core.tiling.plan_tiles`). So this process plans the tiles exactly as
    :func:`segment` would and the workers run groups of those tiles, embarrassingly parallel, each writing
    the kept part of each tile's probabilities to its own file (atomically: a retried task rewrites it whole,
    and no two tasks ever write the same file, which concurrent writes into shared zarr chunks could not
    promise). Cutting the image into chunks that each read their own halo would also be exact, but tiles
    straddling chunk borders would be computed twice, and tiles of a different size round differently.
    Labels are then made in this process by the same block-wise :class:`InstanceLabeller` that
    :func:`segment` uses, reading the tiles in the same order: its union-find gives every object one id
    across tile borders and its watershed sees the neighbouring tiles' pixels, so objects crossing borders
    are whole and the result is the same to the pixel. That pass streams (about two rows of tiles in memory)
    and costs a small fraction of the network's time; distributing it would need a second, cross-chunk merge
    for no exactness gained.
    """
    started = time.perf_counter()
    distributed = require_distributed()
    source_axes, image = _open_image(image)
    from napari_unet.core.models import Model

    loaded = model if isinstance(model, Model) else _load_here(model, trust)
    setup = _prepare(image, loaded, axes or source_axes, device, tile_shape, overlap, precision, tta, stack)
    layout, plan, messages = setup["layout"], setup["plan"], setup["messages"]
    labels = _labels_output(out, layout)
    work = Path(scratch) if scratch is not None else None
    own_scratch = work is None
    if work is None:
        folder = Path(out).parent if isinstance(out, (str, os.PathLike)) else None
        work = Path(tempfile.mkdtemp(prefix=".napari-unet-tiles-", dir=folder))
    try:
        with _session(client, workers) as session:
            dashboard = dashboard_link(session)
            ref = _model_ref(loaded, trust)
            if not isinstance(ref, ModelRef):
                ref = session.scatter(ref, broadcast=True)
            data = session.scatter(setup["image"], broadcast=True) if isinstance(setup["image"], np.ndarray) \
                else setup["image"]
            job = _Job(layout, plan, setup["stats"], str(device), precision, tta, batch_size, str(work))
            t0 = time.perf_counter()
            extremes, tasks = _run_tiles(session, data, ref, job, tiles_per_task, progress, distributed)
            network_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        objects, notes = _label(job, labels.array, loaded.config, extremes, probabilities)
        labels.commit()
    except BaseException:
        labels.discard()
        raise
    finally:
        if own_scratch:
            shutil.rmtree(work, ignore_errors=True)
    return LargeResult(labels.result(), objects, len(plan) * layout.plane_count, tasks,
                       time.perf_counter() - started,
                       {"network": network_s, "labels": time.perf_counter() - t0}, messages + notes, dashboard)


def _open_image(image: Any) -> tuple[str | None, Any]:
    """``(axes from the file or None, array)``: a path is opened lazily with the one reader."""
    if isinstance(image, (str, os.PathLike)):
        from napari_unet.core.io import read_image

        source = read_image(image)
        return source.axes, source.data
    return None, image


def _load_here(model: Any, trust: bool) -> Any:
    from napari_unet.core.models import load_model

    return load_model(model, trust=trust)


def _prepare(image: Any, model: Any, axes: str | None, device: str, tile_shape: Any, overlap: int | None,
             precision: str, tta: bool, stack: str | None) -> dict[str, Any]:
    """Axes, normalisation statistics and the tile plan, decided as :func:`segment` decides them."""
    from napari_unet.core import inference, orthogonal
    from napari_unet.core.axes import Layout, resolve_axes
    from napari_unet.core.colour import grey_for_model
    from napari_unet.core.devices import resolve_device
    from napari_unet.core.runner import PRECISIONS, auto_tile_shape, autocast_dtype
    from napari_unet.core.tiling import boundary_margin, plan_tiles

    plan3d, note = orthogonal.choose(image, model, axes, stack, None)
    if plan3d is not None:
        raise InvalidInputError("segment_large runs 2D images, time-lapses and 3D models; a z-stack with a 2D "
                                "instance model is labelled in 3D by segment() only: pass stack='planes' to "
                                "label each plane on its own, or use segment()")
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    net = model.config.network
    image = inference._check_image(image)
    image, axes, grey = grey_for_model(image, axes, net.spatial_dims, net.in_channels, stacklevel=4)
    axes = resolve_axes(axes, image.shape, spatial_dims=net.spatial_dims, in_channels=net.in_channels)
    layout = Layout.create(axes, image.shape, model.config.axes)
    overlap = inference._check_count("overlap", overlap, 0)
    messages = [m for m in (note, grey) if m]
    if overlap is not None and net.padding == "valid":
        messages.append("overlap ignored: a valid-padding network needs none, its tiles are exact")
        overlap = None
    if overlap is None and tta and net.padding == "same":
        overlap = max(boundary_margin(net))
    tiles = inference._check_tile_shape(tile_shape, net.spatial_dims)
    if tiles is None:
        where = resolve_device(device)
        tiles = auto_tile_shape(net, layout.spatial_shape, where, autocast_dtype(where, precision) is not None,
                                overlap)
    stats = model.config.normalization.statistics(layout.channel_first(image))
    plan = plan_tiles(net, layout.spatial_shape, tiles, overlap)
    return {"image": image, "layout": layout, "plan": plan, "stats": stats, "messages": messages}


class _LabelsOutput:
    """The labels array of :func:`segment_large`, and for a path, its temporary name until it is complete."""

    def __init__(self, array: Any, target: Path | None = None, temporary: Path | None = None) -> None:
        self.array, self.target, self.temporary = array, target, temporary

    def commit(self) -> None:
        if self.target is not None:
            commit(self.temporary, self.target)
            import zarr

            self.array = zarr.open_array(str(self.target), mode="r+")

    def discard(self) -> None:
        if self.temporary is not None:
            remove(self.temporary)

    def result(self) -> Any:
        return self.array


def _labels_output(out: Any, layout: Any) -> _LabelsOutput:
    from napari_unet.core.run_outputs import labels_array

    if not isinstance(out, (str, os.PathLike)):
        return _LabelsOutput(labels_array(out, layout))
    target = Path(out)
    if target.suffix.lower() != ".zarr":
        raise InvalidInputError(f"{target}: segment_large writes zarr (its labels may not fit in memory); give a "
                                "path ending in .zarr, or a zarr array")
    if target.exists():
        raise InvalidInputError(f"{target} exists; remove it or choose another name")
    import zarr

    temporary = partial_name(target)
    shape = layout.output_shape
    chunks = tuple(min(n, ZARR_CHUNK) if i >= len(shape) - 2 else 1 for i, n in enumerate(shape))
    array = zarr.open_array(str(temporary), mode="w-", shape=shape, chunks=chunks, dtype="int32")
    return _LabelsOutput(array, target, temporary)
