"""Many images, or one huge one, on a Dask cluster (``dask.distributed``), with the results of :func:`segment`.

:func:`segment_many` runs one task per file: a worker reads the file, segments it with the model (loaded once
per worker process and kept while its files do not change), and writes the labels under a temporary name in
the output folder before renaming them into place, so an output that exists is complete. A rerun skips the
outputs that exist, which is how a crashed or interrupted run resumes. A file that fails is reported with its
error and the others go on; a worker that dies mid-file (out of memory, a node lost) has its file rerun on
another worker by Dask, and partial files it left are removed at the end.

:func:`segment_large` spreads one image larger than a machine can process quickly over the workers, with the
labels :func:`segment` would give (see its docstring for the design and why).

This module imports neither torch nor ``distributed`` at import time: the package root must stay light, and
``distributed`` is optional (``pip install napari-unet[batch]``).
"""
from __future__ import annotations

import functools
import glob
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import InvalidInputError

MISSING = ("batch segmentation runs on Dask distributed, which is not installed: "
           "pip install napari-unet[batch]")
PARTIAL = ".partial"  # suffix of outputs being written; never a finished file
SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
_INPUT_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".npy")
_ZARR_CHUNK = 1024

ProgressCallback = Callable[[int, int, str], Any]


class MissingDependencyError(InvalidInputError, ImportError):
    """An optional dependency is not installed; the message says which ``pip install`` brings it."""


def require_distributed() -> Any:
    """The ``distributed`` module, or a :class:`MissingDependencyError` saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError(MISSING) from None
    return distributed


# --------------------------------------------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------------------------------------------


def local_cluster(workers: int | None = None, dashboard_address: str | None = ":0") -> Any:
    """A client on a new ``LocalCluster`` of ``workers`` single-threaded worker processes (default: one per
    core). One thread per process because a U-Net forward pass already uses the core it runs on, and separate
    processes keep one file's memory and interpreter lock away from the others."""
    distributed = require_distributed()
    n = int(workers) if workers else (os.cpu_count() or 1)
    if n < 1:
        raise InvalidInputError(f"workers must be at least 1, not {workers!r}")
    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=dashboard_address)
    return distributed.Client(cluster)


@contextmanager
def _session(client: Any, workers: int | None) -> Iterator[Any]:
    """The caller's client as it is, or a local cluster started here and closed on the way out."""
    if client is not None:
        yield client
        return
    own = local_cluster(workers)
    try:
        yield own
    finally:
        cluster = own.cluster
        own.close()
        cluster.close()


def dashboard_link(client: Any) -> str | None:
    """The Dask dashboard address of ``client``, or None where the dashboard is off (bokeh not installed)."""
    try:
        return client.dashboard_link or None
    except Exception:  # no dashboard: distributed raises from the property
        return None


# --------------------------------------------------------------------------------------------------------------
# The model on the workers
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A saved model by path: what a task carries instead of the weights."""

    path: str


_MODELS: dict[tuple[Any, ...], Any] = {}  # per worker process: the model last loaded and its key
_NETWORKS: dict[tuple[Any, ...], Any] = {}  # per worker process: its inference-ready copy
_LOADS = [0]  # how often this process loaded a model (tests check that it is once)


def _model_ref(model: Any) -> Any:
    """A :class:`ModelRef` for a model that lives in a folder or package, else the model object itself.

    A name or path is resolved here, in the caller's process, so a typo fails at once and not on every worker.
    A ``Model`` counts by its folder (``model.path``): save a model changed in memory before running a batch,
    or pass one without a path, which is then sent to every worker as it is.
    """
    if hasattr(model, "network") and hasattr(model, "config"):
        if getattr(model, "path", None) is None:
            return model
        return ModelRef(str(Path(model.path).resolve()))
    from napari_unet.bioimageio import is_package
    from napari_unet.core.library import resolve_model_folder

    if is_package(model):
        return ModelRef(str(Path(model).resolve()))
    return ModelRef(str(resolve_model_folder(model).resolve()))


def _model_key(ref: ModelRef) -> tuple[Any, ...]:
    """Path plus the modification times of its files: a model saved again under the same name is reloaded."""
    path = Path(ref.path)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return (ref.path, tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()))


def worker_model(ref: Any) -> Any:
    """The model for ``ref`` in this process, loaded once and kept while its files are unchanged."""
    if not isinstance(ref, ModelRef):
        return ref
    key = _model_key(ref)
    model = _MODELS.get(key)
    if model is None:
        from napari_unet.core.models import load_model

        _MODELS.clear()  # one model per worker: a batch uses one, and weights take memory
        _NETWORKS.clear()
        model = load_model(ref.path)
        _MODELS[key] = model
        _LOADS[0] += 1
    return model


def _worker_network(ref: Any, model: Any, device: str, precision: str, tta: bool) -> Any:
    """The inference-ready copy of the model's network (batch-norm folded, on the device), made once per
    process and setting: copying and folding for every group of tiles would cost more than small groups."""
    from napari_unet.core.devices import resolve_device
    from napari_unet.core.runner import Network

    key = (_model_key(ref) if isinstance(ref, ModelRef) else id(model), device, precision, tta)
    network = _NETWORKS.get(key)
    if network is None:
        network = Network(model.network, resolve_device(device), precision, tta)
        _NETWORKS[key] = network
    return network


# --------------------------------------------------------------------------------------------------------------
# Writing outputs
# --------------------------------------------------------------------------------------------------------------


def _partial_name(target: Path) -> Path:
    """A fresh temporary name beside ``target``: hidden, unique per writer, and recognisable as unfinished."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}")


def _commit(temporary: Path, target: Path) -> None:
    """Rename a finished temporary output into place (one atomic step on a POSIX file system)."""
    os.replace(temporary, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_partials(targets: Sequence[Path]) -> int:
    """Remove temporary outputs left beside ``targets`` by writers that died; returns how many were removed.

    Only call it while no task of the run is writing: a live writer's temporary file looks the same.
    """
    removed = 0
    for target in targets:
        for leftover in glob.glob(glob.escape(str(target.with_name(f".{target.name}."))) + "*" + PARTIAL):
            _remove(Path(leftover))
            removed += 1
    return removed


def write_labels(target: Path, labels: Any, axes: str, overwrite: bool = False) -> None:
    """Write ``labels`` to ``target`` (.tif, .tiff, .npy or .zarr) under a temporary name, then rename it."""
    temporary = _partial_name(target)
    try:
        _write_file(temporary, target.suffix.lower(), np.asarray(labels), axes)
        if overwrite and target.is_dir():
            _remove(target)  # os.replace cannot put a folder over a non-empty one
        _commit(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def _write_file(path: Path, kind: str, labels: np.ndarray, axes: str) -> None:
    """Write and flush ``labels`` in the format of the suffix ``kind`` (``path`` itself ends in .partial)."""
    if kind == ".zarr":
        import zarr

        chunks = tuple(min(n, _ZARR_CHUNK) if i >= labels.ndim - 2 else 1 for i, n in enumerate(labels.shape))
        array = zarr.open_array(str(path), mode="w-", shape=labels.shape, chunks=chunks, dtype=labels.dtype)
        array[...] = labels
        return
    with open(path, "wb") as handle:
        if kind == ".npy":
            np.save(handle, labels)
        else:
            import tifffile

            tifffile.imwrite(handle, labels, bigtiff=labels.nbytes > 2**31, compression="zlib",
                             photometric="minisblack", metadata={"axes": axes})
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------------------------
# Many files
# --------------------------------------------------------------------------------------------------------------


@dataclass
class FileReport:
    """One input of a batch: where its labels went, the objects found, the seconds taken, or its error."""

    file: str
    output: str
    objects: int | None = None
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False  # the output existed already (a resumed run)
    messages: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "failed" if self.error else "skipped" if self.skipped else "done"


@dataclass
class BatchReport:
    """What :func:`segment_many` did, one row per input in the order given; ``str()`` is a table."""

    files: list[FileReport]
    seconds: float
    dashboard: str | None = None

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.error]

    def table(self) -> str:
        """A plain-text summary table: file, status, objects, seconds, error."""
        rows = [("file", "status", "objects", "seconds", "error")]
        for f in self.files:
            objects = "" if f.objects is None else str(f.objects)
            seconds = "" if f.skipped else f"{f.seconds:.1f}"
            rows.append((Path(f.file).name, f.status, objects, seconds, f.error or ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else "")
                 for r in rows]
        counts = {s: sum(f.status == s for f in self.files) for s in ("done", "skipped", "failed")}
        lines.append(f"{counts['done']} done, {counts['skipped']} skipped (already there), {counts['failed']} "
                     f"failed in {self.seconds:.1f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Input files from a glob pattern (``"plates/*.tif"``), a path, or a list of either, sorted per pattern."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files: list[Path] = []
    for item in items:
        text = os.fspath(item)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        files += [Path(m) for m in matches]
    if not files:
        raise InvalidInputError(f"no input files match {inputs!r}")
    return files


def output_path(source: Path, out_dir: Path, suffix: str) -> Path:
    """``out_dir/<name without its image suffix><suffix>``: ``a.ome.tif`` gives ``a.tif``."""
    name = source.name
    for known in _INPUT_SUFFIXES:
        if name.lower().endswith(known):
            name = name[: -len(known)]
            break
    return out_dir / f"{name}{suffix}"


def _plan_outputs(files: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    if suffix.lower() not in SUFFIXES:
        raise InvalidInputError(f"the output suffix must be one of {SUFFIXES}, not {suffix!r}")
    targets = [output_path(f, out_dir, suffix) for f in files]
    seen: dict[Path, Path] = {}
    for source, target in zip(files, targets):
        if target in seen:
            raise InvalidInputError(f"{seen[target]} and {source} would both write {target}; rename one or run "
                                    "them into different output folders")
        seen[target] = source
    return targets


def segment_file(source: str, target: str, model: Any, options: dict[str, Any]) -> FileReport:
    """The task of one file, run on a worker: read, segment, write; an error becomes the report's ``error``
    so that one bad file never stops the batch (Dask would otherwise cancel nothing, but the caller would have
    to tell errors from results)."""
    start = time.perf_counter()
    report = FileReport(source, target)
    try:
        from napari_unet.core.inference import segment
        from napari_unet.core.io import read_image

        loaded = worker_model(model)
        image = read_image(source)
        axes = options.get("axes") or image.axes
        scale = image.voxel_size(axes) if axes else None
        settings = {k: v for k, v in options.items() if k not in ("axes", "overwrite")}
        result = segment(image.data, loaded, axes=axes, scale=scale, probabilities=False, **settings)
        write_labels(Path(target), result.labels, result.labels_axes, options.get("overwrite", False))
        report.objects, report.messages = result.objects, list(result.messages)
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    report.seconds = time.perf_counter() - start
    return report


def segment_many(inputs: str | os.PathLike | Sequence[str | os.PathLike], model: Any,
                 out_dir: str | os.PathLike, client: Any = None, *, workers: int | None = None,
                 suffix: str = ".tif", overwrite: bool = False, axes: str | None = None,
                 device: str = "auto", tile_shape: int | Sequence[int] | None = None, overlap: int | None = None,
                 batch_size: int | None = None, precision: str = "auto", tta: bool = False,
                 stack: str | None = None, diameter: float | None = None,
                 progress: ProgressCallback | None = None) -> BatchReport:
    """Segment every input file on a Dask cluster, one task per file; labels go to ``out_dir/<name><suffix>``.

    inputs: a glob pattern (``"plates/*.tif"``), a path, or a list of them; any file :mod:`~napari_unet.core.io`
        reads (TIFF, zarr, .npy).
    model: a name, a path, or a ``Model`` (taken from its folder when it has one, else sent to the workers).
    client: a ``distributed.Client`` (a cluster the caller runs, e.g. ``Client("tcp://host:8786")`` or one of
        dask-jobqueue); None starts a ``LocalCluster`` of ``workers`` single-threaded processes for this call.
    suffix: ".tif", ".tiff", ".npy" or ".zarr". Existing outputs are skipped (a rerun resumes) unless
        ``overwrite``. Every worker must see the inputs and ``out_dir`` at the same paths (a shared file system).
    The remaining options are :func:`~napari_unet.core.inference.segment`'s, the same for every file.
    progress: ``progress(done, total, file name)`` in the calling thread as files finish.

    Returns a :class:`BatchReport` (``print(report)`` shows the table); failed files are in ``report.failed``.
    """
    started = time.perf_counter()
    files = expand_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = _plan_outputs(files, out, suffix)
    reports = [FileReport(str(f), str(t)) for f, t in zip(files, targets)]
    todo = [i for i, t in enumerate(targets) if overwrite or not t.exists()]
    for i in set(range(len(files))) - set(todo):
        reports[i].skipped = True
    options = {"axes": axes, "device": device, "tile_shape": tile_shape, "overlap": overlap,
               "batch_size": batch_size, "precision": precision, "tta": tta, "stack": stack, "diameter": diameter,
               "overwrite": overwrite}
    dashboard = None
    if todo:
        require_distributed()
        ref = _model_ref(model)
        sweep_partials(targets)  # leftovers of a run that crashed
        with _session(client, workers) as session:
            dashboard = dashboard_link(session)
            _run_files(session, files, targets, todo, ref, options, reports, progress)
        sweep_partials(targets)  # what workers that died mid-write left
    return BatchReport(reports, time.perf_counter() - started, dashboard)


def _run_files(client: Any, files: list[Path], targets: list[Path], todo: list[int], ref: Any,
               options: dict[str, Any], reports: list[FileReport], progress: ProgressCallback | None) -> None:
    """Submit one task per file and fill ``reports`` as they complete (in any order)."""
    from distributed import as_completed

    if not isinstance(ref, ModelRef):
        ref = client.scatter(ref, broadcast=True)
    run = uuid.uuid4().hex[:8]
    futures = {client.submit(segment_file, str(files[i]), str(targets[i]), ref, options,
                             key=f"segment-file-{run}-{i}", pure=False): i for i in todo}
    for done, future in enumerate(as_completed(futures), 1):
        i = futures[future]
        try:
            reports[i] = future.result()
        except Exception as exc:  # the task never returned: its workers kept dying (KilledWorker), or a cancel
            reports[i].error = f"{type(exc).__name__}: {exc}"
        if progress is not None:
            progress(done, len(todo), files[i].name)


# --------------------------------------------------------------------------------------------------------------
# One huge image
# --------------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Job:
    """What every tile task of one run shares: the image, how to read and normalise it, and the tile plan."""

    image: Any
    layout: Any
    plan: Any
    stats: Any
    model: Any  # a ModelRef or a (scattered) Model
    device: str
    precision: str
    tta: bool
    batch_size: int | None
    scratch: str


def segment_large(image: Any, model: Any, out: Any = None, client: Any = None, *, workers: int | None = None,
                  axes: str | None = None, device: str = "auto", tile_shape: int | Sequence[int] | None = None,
                  overlap: int | None = None, batch_size: int | None = None, precision: str = "auto",
                  tta: bool = False, stack: str | None = None, probabilities: Any = None,
                  tiles_per_task: int | None = None, scratch: str | os.PathLike | None = None,
                  progress: ProgressCallback | None = None) -> LargeResult:
    """Segment one large image with the network on many workers; the labels equal :func:`segment`'s.

    image: a zarr array, a path that :mod:`~napari_unet.core.io` reads, or any array the workers can unpickle
        (a numpy array is sent once). Workers read only their tiles' pixels.
    out: a zarr (or numpy) integer array to fill, a path ending in ``.zarr`` (written under a temporary name,
        then renamed), or None for a numpy array.
    tile_shape, overlap, device, precision, tta, batch_size, stack: as for :func:`segment`; the same values on
        the same kind of device give the same labels (probabilities to the bit, so the same ids).
    probabilities: a zarr array (classes, *labels shape) to also receive the probabilities, or None.
    tiles_per_task: tiles in one task (default: about four tasks per worker); scratch: a folder every worker and
        this process see, for the probabilities in transit (default: beside ``out``, else a temporary folder).

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

    loaded = model if isinstance(model, Model) else _load_here(model)
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
            ref = _model_ref(loaded)
            if not isinstance(ref, ModelRef):
                ref = session.scatter(ref, broadcast=True)
            data = session.scatter(setup["image"], broadcast=True) if isinstance(setup["image"], np.ndarray) \
                else setup["image"]
            job = _Job(data, layout, plan, setup["stats"], ref, str(device), precision, tta, batch_size, str(work))
            t0 = time.perf_counter()
            extremes, tasks = _run_tiles(session, job, tiles_per_task, progress, distributed)
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


def _load_here(model: Any) -> Any:
    from napari_unet.core.models import load_model

    return load_model(model)


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


def _run_tiles(client: Any, job: _Job, per_task: int | None, progress: ProgressCallback | None,
               distributed: Any) -> tuple[dict[int, tuple[np.ndarray, np.ndarray, bool]], int]:
    """Submit the tile tasks of every plane; returns per plane the pixel range seen (for constant planes) and
    whether any pixel was NaN or infinite, and the number of tasks."""
    planes = list(job.layout.planes())
    if per_task is None:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        per_task = max(1, math.ceil(len(job.plan) * len(planes) / (4 * workers)))
    groups = _tile_groups(job.plan, per_task)
    run = uuid.uuid4().hex[:8]
    futures = [client.submit(tile_task, job, p, group, key=f"segment-tiles-{run}-{p}-{g}", pure=False)
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


def tile_task(job: _Job, p: int, tiles: list[tuple[int, ...]]) -> tuple[int, np.ndarray, np.ndarray, bool]:
    """On a worker: the kept probabilities of some tiles of plane ``p``, each saved to its own file.

    Exactly :func:`segment`'s per-tile work (read with its context, normalise with the image's statistics,
    the network, NaN pixels to background). Returns the plane, the per-channel range of the pixels read and
    whether any was NaN or infinite.
    """
    from napari_unet.core.runner import auto_batch_size
    from napari_unet.core.tiling import read_tile

    model = worker_model(job.model)
    network = _worker_network(job.model, model, job.device, job.precision, job.tta)
    plane = list(job.layout.planes())[p]
    view = job.layout.plane_view(job.image, plane)
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


def _save_tile(target: Path, probs: np.ndarray) -> None:
    temporary = _partial_name(target)
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, probs)
        _commit(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def _label(job: _Job, labels: Any, config: Any, extremes: dict[int, Any], probabilities: Any
           ) -> tuple[int | None, list[str]]:
    """Labels from the saved tiles, plane by plane in :func:`segment`'s tile order, in this process."""
    from napari_unet.core.postprocess import InstanceLabeller, SemanticLabeller, clear, fill

    layout, plan = job.layout, job.plan
    if probabilities is not None:
        from napari_unet.core.inference import _probabilities_array

        _probabilities_array(probabilities, layout, config.network.out_channels)  # checks shape and dtype
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


class _LabelsOutput:
    """The labels array of :func:`segment_large`, and for a path, its temporary name until it is complete."""

    def __init__(self, array: Any, target: Path | None = None, temporary: Path | None = None) -> None:
        self.array, self.target, self.temporary = array, target, temporary

    def commit(self) -> None:
        if self.target is not None:
            _commit(self.temporary, self.target)
            import zarr

            self.array = zarr.open_array(str(self.target), mode="r+")

    def discard(self) -> None:
        if self.temporary is not None:
            _remove(self.temporary)

    def result(self) -> Any:
        return self.array


def _labels_output(out: Any, layout: Any) -> _LabelsOutput:
    from napari_unet.core.inference import _labels_array

    if not isinstance(out, (str, os.PathLike)):
        return _LabelsOutput(_labels_array(out, layout))
    target = Path(out)
    if target.suffix.lower() != ".zarr":
        raise InvalidInputError(f"{target}: segment_large writes zarr (its labels may not fit in memory); give a "
                                "path ending in .zarr, or a zarr array")
    if target.exists():
        raise InvalidInputError(f"{target} exists; remove it or choose another name")
    import zarr

    temporary = _partial_name(target)
    shape = layout.output_shape
    chunks = tuple(min(n, _ZARR_CHUNK) if i >= len(shape) - 2 else 1 for i, n in enumerate(shape))
    array = zarr.open_array(str(temporary), mode="w-", shape=shape, chunks=chunks, dtype="int32")
    return _LabelsOutput(array, target, temporary)
