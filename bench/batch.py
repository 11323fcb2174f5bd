"""Batch segmentation on Dask: two workers against one in-process run, and one huge image across workers.

1. *Many files.* ``--images`` generated nuclei images (``synthetic.generate_nuclei``, default style, seeds 0..)
   of ``--size`` x ``--size`` pixels, written as TIFF, segmented with the bundled model twice: in this process
   one file after another (read, ``segment``, write; torch on ``--workers`` threads, the same cores), and by
   ``batch.segment_many`` on a ``LocalCluster`` of ``--workers`` single-threaded processes. Printed: files
   per second of each and their ratio, with the cluster's start-up time apart (it is paid once per session).
2. *One huge image.* A ``--big`` x ``--big`` generated image in a zarr array (chunks of 1024) segmented by
   ``batch.segment_large`` on the same cluster, and by ``segment`` in this process for the reference. Printed:
   both times, the peak resident memory of each worker process and of this process (psutil, sampled every
   0.1 s), and whether the labels are equal (same objects; ids too).

Run ``python bench/batch.py [--images 16] [--size 1024] [--big 4096] [--workers 2] [--tile 512]``; a quick
check of the script: ``--images 2 --size 128 --big 512 --tile 256``. Needs ``pip install napari-unet[batch,bench]``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakMemory:
    """Peak resident memory of some processes, sampled in a background thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        import psutil

        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            for name, process in self.processes.items():
                try:
                    self.peak[name] = max(self.peak[name], process.memory_info().rss)
                except Exception:  # a worker that went away
                    pass
            self.stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    import tifffile

    from napari_unet.synthetic import generate_nuclei

    paths = []
    for seed in range(count):
        image, _ = generate_nuclei((size, size), seed=seed)
        paths.append(folder / f"image{seed:03d}.tif")
        tifffile.imwrite(paths[-1], image)
    return paths


def in_process(paths: list[Path], model: object, out: Path, tile: int | None) -> float:
    """Seconds to read, segment and write every file in this process, one after another."""
    import tifffile

    from napari_unet.core.inference import segment

    out.mkdir()
    start = time.perf_counter()
    for path in paths:
        result = segment(tifffile.imread(path), model, axes="YX", tile_shape=tile, probabilities=False)
        tifffile.imwrite(out / path.name, result.labels, compression="zlib")
    return time.perf_counter() - start


def many_files(client: object, model: object, folder: Path, args: argparse.Namespace) -> None:
    from napari_unet import batch

    paths = write_images(folder, args.images, args.size)
    alone = in_process(paths, model, folder / "alone", args.tile)
    start = time.perf_counter()
    report = batch.segment_many(paths, model, folder / "cluster", client=client, tile_shape=args.tile)
    spread = time.perf_counter() - start
    assert not report.failed, report.table()
    print(f"many files: {args.images} images of {args.size} x {args.size}")
    print(f"  in-process ({args.workers} torch threads): {alone:.1f} s, {args.images / alone:.2f} files/s")
    print(f"  {args.workers} workers x 1 thread:        {spread:.1f} s, {args.images / spread:.2f} files/s")
    print(f"  throughput ratio (workers / in-process): {alone / spread:.2f}")


def huge_image(client: object, model: object, folder: Path, args: argparse.Namespace) -> None:
    import zarr

    from napari_unet import batch
    from napari_unet.core.inference import segment
    from napari_unet.synthetic import generate_nuclei

    image, _ = generate_nuclei((args.big, args.big), seed=7)
    chunk = min(1024, args.big)
    array = zarr.open_array(str(folder / "big.zarr"), mode="w", shape=image.shape, chunks=(chunk, chunk),
                            dtype=image.dtype)
    array[...] = image
    del image
    pids = client.run(os.getpid)
    with PeakMemory({**{f"worker {i}": pid for i, pid in enumerate(pids.values())}, "this process": os.getpid()}
                    ) as memory:
        start = time.perf_counter()
        result = batch.segment_large(array, model, folder / "labels.zarr", client=client, tile_shape=args.tile)
        spread = time.perf_counter() - start
    start = time.perf_counter()
    reference = segment(array, model, tile_shape=args.tile, probabilities=False)
    alone = time.perf_counter() - start
    labels = result.labels[...]
    same_ids = np.array_equal(labels, reference.labels)
    print(f"huge image: {args.big} x {args.big} (zarr chunks {chunk}), {result.tiles} tiles in {result.tasks} tasks")
    print(f"  segment_large, {args.workers} workers: {spread:.1f} s (network {result.timings['network']:.1f} s, "
          f"labels in this process {result.timings['labels']:.1f} s); in-process segment: {alone:.1f} s")
    for name, peak in memory.peak.items():
        print(f"  peak memory, {name}: {peak / 2**20:.0f} MiB")
    print(f"  objects {result.objects} (in-process {reference.objects}); labels equal: {same_ids}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="bundled or library model name, or a model folder")
    parser.add_argument("--images", type=int, default=16, help="images for the many-files run (0: skip it)")
    parser.add_argument("--size", type=int, default=1024, help="Y and X of those images")
    parser.add_argument("--big", type=int, default=4096, help="Y and X of the huge image (0: skip it)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (and in-process torch threads)")
    parser.add_argument("--tile", type=int, default=None, help="tile edge (default: chosen from memory)")
    args = parser.parse_args()

    import torch

    from napari_unet import batch
    from napari_unet.core.models import load_model

    torch.set_num_threads(args.workers)
    model = load_model(args.model)
    start = time.perf_counter()
    client = batch.local_cluster(args.workers, dashboard_address=None)
    print(f"LocalCluster of {args.workers} workers started in {time.perf_counter() - start:.1f} s")
    try:
        with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as tmp:
            client.run(lambda: __import__("torch") and None)  # start-up cost out of the timings
            if args.images:
                many_files(client, model, Path(tmp), args)
            if args.big:
                huge_image(client, model, Path(tmp), args)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
