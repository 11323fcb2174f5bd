"""``napari-unet segment`` on a Dask cluster: many files (a glob and ``--out DIR``), or one huge image.

    napari-unet segment 'plates/*.tif' --out labels/ [--workers N | --scheduler tcp://host:8786] [--suffix .tif]
    napari-unet segment big.zarr -o labels.zarr --workers N       # one image, its tiles spread over the workers

:mod:`napari_unet.cli.segment` owns the command; it calls :func:`add_arguments` for the options below and hands
the run to :func:`run` when :func:`requested` says the command line asks for a cluster. Nothing heavy is
imported before a run, so ``napari-unet --help`` stays instant.
"""
from __future__ import annotations

import argparse
import glob
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

_NOT_IN_BATCH = ("scale", "probabilities")  # per-file settings that a batch of different files cannot share


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch options of ``napari-unet segment``; ``-o`` becomes optional (``--out`` replaces it)."""
    for action in parser._actions:
        if action.dest == "output":
            action.required = False
    group = parser.add_argument_group(
        "many images or a cluster (Dask distributed: pip install napari-unet[batch])",
        "Give INPUT as a quoted glob ('plates/*.tif') or a file and --out DIR: one task per file, labels written "
        "as DIR/<name><suffix>, outputs that exist are skipped (a rerun resumes), a failing file is reported and "
        "the others go on. With -o OUTPUT.zarr and --workers or --scheduler, one large image is spread over the "
        "workers tile by tile, with the labels of a single run.")
    group.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder for many files")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="start a local Dask cluster of N single-threaded worker processes (default: one per core)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="use a running Dask scheduler instead, e.g. tcp://host:8786 (a SLURM cluster started "
                       "with dask-jobqueue; every worker must see the files at the same paths)")
    group.add_argument("--suffix", default=".tif", choices=(".tif", ".tiff", ".npy", ".zarr"),
                       help="output format for --out (default: .tif)")


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for the batch route; a single-file command without ``-o`` is refused."""
    from napari_unet.core.errors import InvalidInputError

    text = str(args.input)
    if args.out is not None or glob.has_magic(text) or args.workers is not None or args.scheduler is not None:
        return True
    if args.output is None:
        raise InvalidInputError("give -o OUTPUT for one image, or --out DIR for many (a quoted glob such as "
                                "'plates/*.tif')")
    return False


def run(args: argparse.Namespace) -> int:
    """Segment on a Dask cluster; prints the dashboard link, a progress bar and the summary table."""
    from napari_unet.core.errors import InvalidInputError

    if args.workers is not None and args.scheduler is not None:
        raise InvalidInputError("give --workers (a local cluster) or --scheduler (a running one), not both")
    given = [f"--{name}" for name in _NOT_IN_BATCH if getattr(args, name, None) is not None]
    if given:
        raise InvalidInputError(f"{', '.join(given)} apply to one image; on a cluster each file's metadata gives "
                                "its pixel size, and only labels are written")
    if args.out is None:
        return _run_large(args)
    if args.output is not None:
        raise InvalidInputError("give --out DIR (many files) or -o OUTPUT (one file), not both")
    return _run_many(args)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    tile = None if args.tile is None else (args.tile[0] if len(args.tile) == 1 else tuple(args.tile))
    return {"axes": args.axes, "device": args.device, "tile_shape": tile, "overlap": args.overlap,
            "batch_size": args.batch, "precision": args.precision, "tta": args.tta, "stack": args.stack}


def _client(args: argparse.Namespace) -> Any:
    """A client on ``--scheduler``, or on a new local cluster of ``--workers`` processes."""
    from napari_unet import batch

    distributed = batch.require_distributed()
    if args.scheduler is not None:
        return distributed.Client(args.scheduler)
    return batch.local_cluster(args.workers)


def _close(client: Any, args: argparse.Namespace) -> None:
    cluster = client.cluster if args.scheduler is None else None
    client.close()
    if cluster is not None:
        cluster.close()


def _run_many(args: argparse.Namespace) -> int:
    from napari_unet import batch

    files = batch.expand_inputs(str(args.input))
    client = _client(args)
    try:
        _say_dashboard(client, args.quiet)
        bar = None if args.quiet else ProgressBar("files")
        report = batch.segment_many(files, args.model, args.out, client=client, suffix=args.suffix,
                                    overwrite=args.overwrite, diameter=args.diameter, trust=args.trust,
                                    progress=bar, **_options(args))
    finally:
        _close(client, args)
    if not args.quiet:
        print(file=sys.stderr)
    print(report.table())
    return 1 if report.failed else 0


def _run_large(args: argparse.Namespace) -> int:
    from napari_unet import batch
    from napari_unet.core.errors import InvalidInputError

    if args.output is None or Path(args.output).suffix.lower() != ".zarr":
        raise InvalidInputError("one image on a cluster writes its labels tile by tile: give -o OUTPUT.zarr (or "
                                "--out DIR for many files)")
    if args.diameter is not None:
        raise InvalidInputError("--diameter resamples the whole image in memory; on a cluster segment at the "
                                "image's own scale, or resample the image first")
    from napari_unet.batch.outputs import set_aside

    client = _client(args)
    try:  # an old output (--overwrite) is set aside while the new one is made, and comes back if that fails
        _say_dashboard(client, args.quiet)
        with set_aside(Path(args.output)) if args.overwrite else nullcontext():
            result = batch.segment_large(str(args.input), args.model, args.output, client=client,
                                         trust=args.trust, progress=None if args.quiet else ProgressBar("tile groups"),
                                         **_options(args))
    finally:
        _close(client, args)
    if not args.quiet:
        print(f"\n{args.output}: {result.objects} objects; {result.tiles} tiles in {result.tasks} tasks, "
              f"{result.seconds:.1f} s", file=sys.stderr)
        for message in result.messages:
            print(f"note: {message}", file=sys.stderr)
    return 0


def _say_dashboard(client: Any, quiet: bool) -> None:
    from napari_unet import batch

    link = batch.dashboard_link(client)
    if not quiet:
        print(f"Dask dashboard: {link}" if link else "Dask dashboard: off (pip install bokeh to see it)",
              file=sys.stderr)


class ProgressBar:
    """``[#####.....] 5/10 files, 12 s: name`` on one line of stderr, redrawn as tasks complete."""

    def __init__(self, what: str, width: int = 30) -> None:
        self.what, self.width, self.start = what, width, time.monotonic()

    def __call__(self, done: int, total: int, message: str) -> None:
        filled = self.width * done // max(total, 1)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {self.what}, "
                f"{time.monotonic() - self.start:.0f} s: {message}")
        print(f"\r{line[:100].ljust(100)}", end="", file=sys.stderr, flush=True)
