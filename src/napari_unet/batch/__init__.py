"""Many images, or one huge one, on a Dask cluster (``dask.distributed``), with the results of :func:`segment`.

:func:`segment_many` runs one task per file: a worker reads the file, segments it with the model (loaded once
per worker process and kept while its files do not change), and writes the labels under a temporary name in
the output folder before renaming them into place, so an output that exists is complete. A rerun skips the
outputs that exist, which is how a crashed or interrupted run resumes. A file that fails is reported with its
error and the others go on; a worker that dies mid-file (out of memory, a node lost) has its file rerun on
another worker by Dask, and partial files it left are removed at the end.

:func:`segment_large` spreads one image larger than a machine can process quickly over the workers, with the
labels :func:`segment` would give (see its docstring for the design and why).

The modules: ``cluster`` (clients, the optional ``distributed`` import), ``worker_models`` (the model loaded
once per worker), ``outputs`` (atomic writing, sweeping partial files), ``files`` (:func:`segment_many` and its
report), ``large`` (:func:`segment_large`) and ``tiles`` (its tasks on the workers, and the labelling after).

This package imports neither torch nor ``distributed`` at import time: the package root must stay light, and
``distributed`` is optional (``pip install napari-unet[batch]``).
"""
from napari_unet.batch.cluster import (MISSING, MissingDependencyError, ProgressCallback, dashboard_link,
                                       local_cluster, require_distributed)
from napari_unet.batch.files import BatchReport, FileReport, expand_inputs, output_path, segment_file, segment_many
from napari_unet.batch.large import LargeResult, segment_large
from napari_unet.batch.outputs import PARTIAL, SUFFIXES, sweep_partials, write_labels
from napari_unet.batch.tiles import tile_task
from napari_unet.batch.worker_models import ModelRef, worker_model

__all__ = [
    "MISSING", "MissingDependencyError", "ProgressCallback", "dashboard_link", "local_cluster", "require_distributed",
    "BatchReport", "FileReport", "expand_inputs", "output_path", "segment_file", "segment_many",
    "LargeResult", "segment_large",
    "PARTIAL", "SUFFIXES", "sweep_partials", "write_labels",
    "tile_task",
    "ModelRef", "worker_model",
]
