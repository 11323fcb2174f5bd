"""Many files on a Dask cluster: :func:`segment_many` runs one task per file (:func:`segment_file`), skips
outputs that exist so that a rerun resumes, and returns a :class:`BatchReport` with each file's objects, time
or error."""
from __future__ import annotations

import glob
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_unet.batch.cluster import ProgressCallback, _session, dashboard_link, require_distributed
from napari_unet.batch.outputs import SUFFIXES, sweep_partials, write_labels
from napari_unet.batch.worker_models import ModelRef, _model_ref, worker_model
from napari_unet.core.errors import InvalidInputError

_INPUT_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".npy")


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
                 stack: str | None = None, diameter: float | None = None, trust: bool = False,
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
    trust: let a bioimage.io package from another tool run its code (its architecture file or TorchScript
        program) on every worker, as ``load_model(path, trust=True)`` does; only for packages you trust.
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
        ref = _model_ref(model, trust)
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
