"""The Dask side of a batch run: the optional ``distributed`` import, a local cluster, and the client a run
uses (the caller's, or one started here and closed when the run ends).

``distributed`` is imported only when a run needs it: it is the optional extra ``napari-unet[batch]``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from napari_unet.core.errors import InvalidInputError

MISSING = ("batch segmentation runs on Dask distributed, which is not installed: "
           "pip install napari-unet[batch]")

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
