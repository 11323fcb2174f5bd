"""Tiled inference: napari-unet's segment() against MONAI's sliding_window_inference and the alternatives.

Run ``python bench/tiling_vs_monai.py`` (about 25 minutes on a quiet 2-core CPU; ``--quick`` takes a few) to
print a table: for each image, the wall-clock and CPU time, the deviation from one whole-image forward pass
(largest absolute difference of any class probability) and the peak memory of

* ``ours``: ``segment()`` with the default settings (a semantic head, so labels are a cheap argmax);
* ``ours+instances``: the same with an instance head (background/interior/boundary, rewired to follow the
  image so that there are objects to label), seeded watershed and global ids included, no probabilities kept;
* ``MONAI o=0.25/0.5 constant/gaussian``: ``sliding_window_inference`` on the same network object, with the
  same tile size and batch as ours;
* ``MONAI ... prepared net``: MONAI given our inference copy of the network (batch-norm folded, channels-last),
  to separate the tiling strategy from the network preparation;
* ``whole image``: one forward pass of the network over the whole image;
* ``tiles, no overlap``: the network alone on edge-to-edge tiles of the same size (the time floor; seams);

and a 20,000 x 20,000 uint16 zarr image segmented into a zarr array. Every configuration runs in its own
process, so its peak memory (``ru_maxrss``) is its own; "extra" is the peak above the process's memory after
imports and loading the image. The networks have random weights in eval mode: in 2D a U-Net of depth 3 with
16 base features (the bundled model has 24 and takes about 1.5 times as long on 2048 x 2048), a smaller one in
3D.

On a busy machine use ``--repeat 2`` (every method twice, in rounds, keeping the faster run) and compare CPU
times; ``--only 4096 20000`` reruns some images, ``--threads N`` sets torch's thread count.

Every method computes in float32 (``--precision float32``, the default here), so that the deviations measure
the tiling and nothing else. ``--precision auto`` times ``segment()`` as a user gets it, which is bfloat16
autocast on CPUs with native bfloat16 (AVX512-BF16, AMX); the other methods stay in float32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIG_2D = {"spatial_dims": 2, "padding": "same", "depth": 3, "base_features": 16, "norm": "batch",
             "upsampling": "bilinear", "out_channels": 3}  # the default model's architecture
CONFIG_3D = {**CONFIG_2D, "spatial_dims": 3, "base_features": 8}
MONAI = [(0.25, "constant"), (0.25, "gaussian"), (0.5, "constant"), (0.5, "gaussian")]


# --------------------------------------------------------------------------------------------------------------
# Worker: one configuration, in its own process
# --------------------------------------------------------------------------------------------------------------


def make_model(dims: int, task: str):
    import torch

    from napari_unet.core.models import Model, ModelConfig
    from napari_unet.core.unet import UNetConfig

    net = UNetConfig(**(CONFIG_2D if dims == 2 else CONFIG_3D))
    classes = ("background", "interior", "boundary") if task == "instance" else ("background", "a", "b")
    model = Model.from_config(ModelConfig(net, task=task, classes=classes, axes="YX" if dims == 2 else "ZYX"),
                              seed=0)
    with torch.no_grad():  # realistic batch-norm statistics, so that folding them is part of the measurement
        generator = torch.Generator().manual_seed(1)
        for module in model.network.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    model.network.eval()
    if task == "instance":
        _follow_the_image(model)
    return model


def _follow_the_image(model) -> None:
    """Rewire the random head so that its classes follow the image: dark background, bright interior, a
    boundary in between. A random network's outputs hardly vary, so its instance labels would be empty and the
    post-processing cost unmeasured; after this the labels are many small objects, a heavier than realistic
    load. The head becomes a linear read-out of the brightness the features predict (least squares on a sample
    image), thresholded like the nuclei model's classes."""
    import torch

    from napari_unet.synthetic import generate_nuclei

    dims = model.config.network.spatial_dims
    sample, _ = generate_nuclei((256, 256) if dims == 2 else (32, 96, 96), seed=5)
    x = torch.from_numpy(model.preprocess(sample))[None]
    head = model.network.head
    with torch.no_grad():
        logits = model.network(x)[0].reshape(3, -1).double().numpy()
        design = np.concatenate([logits.T, np.ones((logits.shape[1], 1))], axis=1)
        beta = np.linalg.lstsq(design, x.reshape(-1).double().numpy(), rcond=None)[0]
        brightness = design @ beta
        weight = head.weight.double().reshape(3, -1)
        w = torch.from_numpy(beta[:3]) @ weight / brightness.std()
        b = (float(torch.from_numpy(beta[:3]) @ head.bias.double()) + beta[3] - brightness.mean()) / brightness.std()
        # background 0, boundary 10 (u - 0.5), interior 20 (u - 0.75): interior above u = 1, boundary above 0.5
        for c, (slope, offset) in enumerate([(0.0, 0.0), (20.0, -15.0), (10.0, -5.0)]):
            head.weight[c] = (slope * w).reshape(head.weight[c].shape).float()
            head.bias[c] = float(slope * b + offset)


def softmax(logits):
    import torch

    return torch.softmax(logits.float(), dim=1)[0].numpy()


def run_method(spec: dict) -> dict:
    """Run one method on one image; returns time, memory and where the probabilities were saved."""
    import torch

    from napari_unet.core.devices import configure_cpu_threads

    if spec.get("threads"):
        os.environ["NAPARI_UNET_THREADS"] = str(spec["threads"])
    configure_cpu_threads(interactive=False)
    dims = 3 if spec["size"].count("x") == 2 else 2
    method = spec["method"]
    model = make_model(dims, "instance" if method in ("ours+instances", "ours 20k zarr") else "semantic")
    if method == "ours 20k zarr":
        import zarr

        image = zarr.open_array(spec["image"], mode="r")
        out = zarr.open_array(spec["out"], mode="w", shape=image.shape, chunks=image.chunks, dtype="int32")
    else:
        image = np.load(spec["image"])
    base = _peak_rss()
    info: dict = {}
    cpu = _cpu_seconds()
    start = time.perf_counter()
    probabilities = None
    if method.startswith("ours"):
        from napari_unet.core.inference import segment

        keep = method == "ours"
        result = segment(image, model, device="cpu", probabilities=keep, precision=spec["precision"],
                         out=out if method == "ours 20k zarr" else None)
        probabilities = result.probabilities
        info = {"tile": list(result.tile_shape), "batch": result.batch_size, "objects": result.objects,
                "timings": {k: round(v, 2) for k, v in result.timings.items()}}
    else:
        x = torch.from_numpy(model.preprocess(image))[None]
        net = model.network
        if method.endswith("prepared net"):
            from napari_unet.core.runner import Network

            prepared = Network(net, torch.device("cpu"))
            net = _ChannelsLast(prepared.net, prepared.memory_format)
        tile = tuple(spec.get("tile") or ())
        with torch.inference_mode():
            if method == "whole image":
                probabilities = softmax(net(x))
            elif method.startswith("MONAI"):
                from monai.inferers import sliding_window_inference

                overlap, mode = spec["overlap"], spec["mode"]
                logits = sliding_window_inference(x, roi_size=tile, sw_batch_size=spec.get("batch", 1),
                                                  predictor=net, overlap=overlap, mode=mode)
                probabilities = softmax(logits)
            elif method == "tiles, no overlap":
                probabilities = softmax(_edge_to_edge(net, x, tile))
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    peak = _peak_rss()
    if probabilities is not None and spec.get("save"):
        np.save(spec["save"], np.asarray(probabilities, dtype=np.float32))
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak / 2**20, "extra_mib": (peak - base) / 2**20,
            **info}


class _ChannelsLast:
    """Feeds a prepared network channels-last input, as our engine does."""

    def __init__(self, net, memory_format) -> None:
        self.net, self.memory_format = net, memory_format

    def __call__(self, x):
        return self.net(x.contiguous(memory_format=self.memory_format))


def _edge_to_edge(net, x, tile):
    import torch

    spatial = x.shape[2:]
    out = None
    for origin in np.ndindex(*[-(-n // t) for n, t in zip(spatial, tile)]):
        index = tuple(slice(o * t, min((o + 1) * t, n)) for o, t, n in zip(origin, tile, spatial))
        y = net(x[(slice(None), slice(None)) + index])
        if out is None:
            out = torch.zeros((1, y.shape[1], *spatial))
        out[(slice(None), slice(None)) + index] = y
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# --------------------------------------------------------------------------------------------------------------
# Parent: images, one process per configuration, the table
# --------------------------------------------------------------------------------------------------------------


def make_images(work: Path, quick: bool, only: list[str]) -> list[tuple[str, Path]]:
    """The benchmark images (those whose size starts with one of ``only``, if given), saved under ``work``."""
    from napari_unet.synthetic import generate_nuclei

    def wanted(size: str) -> bool:
        return not only or any(size.startswith(prefix) for prefix in only)

    tile, _ = generate_nuclei((2048, 2048) if not quick else (1024, 1024), seed=0)
    images = []
    for n in [1024] if quick else [1024, 4096]:
        if wanted(f"{n}x{n}"):
            path = work / f"image_{n}.npy"
            np.save(path, _mosaic(tile, (n, n)))
            images.append((f"{n}x{n}", path))
    shape = (32, 128, 128) if quick else (64, 256, 256)
    if wanted("x".join(map(str, shape))):
        volume, _ = generate_nuclei(shape, seed=1)
        np.save(work / "volume.npy", volume)
        images.append(("x".join(map(str, shape)), work / "volume.npy"))
    n = 4096 if quick else 20000
    if wanted(f"{n}x{n} zarr"):
        path = work / f"image_{n}.zarr"
        _write_zarr_mosaic(tile, n, path)
        images.append((f"{n}x{n} zarr", path))
    return images


def _mosaic(tile: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A larger image from mirrored copies of ``tile`` (mirroring keeps nuclei whole at the joins)."""
    reps = [-(-n // t) for n, t in zip(shape, tile.shape)]
    flipped = np.concatenate([tile, tile[::-1]], axis=0)
    flipped = np.concatenate([flipped, flipped[:, ::-1]], axis=1)
    big = np.tile(flipped, [-(-r // 2) for r in reps])
    return np.ascontiguousarray(big[: shape[0], : shape[1]])


def _write_zarr_mosaic(tile: np.ndarray, n: int, path: Path) -> None:
    import zarr

    chunk = 1024
    array = zarr.open_array(str(path), mode="w", shape=(n, n), chunks=(chunk, chunk), dtype="uint16")
    band = 4 * chunk
    row = _mosaic(tile, (band, n)).astype(np.uint16) * 257
    for y in range(0, n, band):
        rows = min(band, n - y)
        array[y:y + rows] = row[:rows] if (y // band) % 2 == 0 else row[::-1][:rows]


def run_worker(spec: dict) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['method']} on {spec['size']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def deviation(path: Path, reference: Path) -> float:
    a = np.load(path, mmap_mode="r")
    b = np.load(reference, mmap_mode="r")
    worst = 0.0
    for c in range(a.shape[0]):
        worst = max(worst, float(np.abs(np.asarray(a[c]) - np.asarray(b[c])).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a few minutes)")
    parser.add_argument("--only", nargs="+", default=[], metavar="SIZE",
                        help="only the images whose size starts with one of these (e.g. 4096 64x 20000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every method this many times, in rounds, and keep the fastest (steadier on a "
                        "busy machine)")
    parser.add_argument("--precision", choices=("float32", "auto"), default="float32",
                        help="segment()'s precision (default float32, as the other methods)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_method(json.loads(args.worker))))
        return

    import torch

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {args.threads or os.cpu_count()}, segment() precision {args.precision}, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="napari-unet-bench-"))
    rows = []
    try:
        for size, image in make_images(work, args.quick, args.only):
            rows += bench_image(size, image, work, args.threads, max(args.repeat, 1), args.precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# load average at end {os.getloadavg()[0]:.2f}")
    print_table(rows)


def bench_image(size: str, image: Path, work: Path, threads: int | None, repeat: int,
                precision: str) -> list[dict]:
    """Every method on one image, each in its own process; rows for the table."""
    common = {"size": size, "image": str(image), "threads": threads, "precision": precision}
    if size.endswith("zarr"):
        result = run_worker({**common, "method": "ours 20k zarr", "out": str(work / "labels.zarr")})
        megapixels = np.prod([int(n) for n in size.split()[0].split("x")]) / 1e6
        row = {"size": size, "method": "ours+instances, zarr in and out", **result,
               "mpx_per_s": megapixels / result["seconds"]}
        print(_row_text(row), flush=True)
        return [row]
    reference, saved = work / "whole.npy", work / "probabilities.npy"
    methods = [("whole image", {}), ("ours", {}), ("ours+instances", {})]
    methods += [(f"MONAI o={overlap} {mode}", {"overlap": overlap, "mode": mode}) for overlap, mode in MONAI]
    methods += [("MONAI o=0.25 constant, prepared net", {"overlap": 0.25, "mode": "constant"}),
                ("tiles, no overlap", {})]
    best: dict[str, dict] = {}
    for round_ in range(repeat):
        for method, extra in methods:
            spec = {**common, "method": method, **extra}
            if method not in ("whole image", "ours", "ours+instances"):
                spec.update(tile=best["ours"]["tile"], batch=best["ours"]["batch"])
            compare = round_ == 0 and method != "ours+instances"
            if compare:
                spec["save"] = str(reference if method == "whole image" else saved)
            row = {"size": size, "method": method, **run_worker(spec)}
            if compare:
                row["deviation"] = 0.0 if method == "whole image" else deviation(saved, reference)
            if method not in best or row["seconds"] < best[method]["seconds"]:
                row.setdefault("deviation", best.get(method, {}).get("deviation"))
                best[method] = row
    rows = [best[method] for method, _ in methods[1:]] + [best["whole image"]]
    for row in rows:
        row["vs_ours"] = row["seconds"] / best["ours"]["seconds"]
        print(_row_text(row), flush=True)
    return rows


def _row_text(row: dict) -> str:
    parts = [f"{row['size']:<16}", f"{row['method']:<36}", f"{row['seconds']:8.1f} s", f"cpu {row['cpu_seconds']:7.1f} s"]
    parts.append(f"{row['vs_ours']:5.2f}x" if "vs_ours" in row else " " * 6)
    parts.append(f"{row['deviation']:9.1e}" if row.get("deviation") is not None else " " * 9)
    parts.append(f"{row['peak_mib']:7.0f} MiB (+{row['extra_mib']:.0f})")
    if "tile" in row:
        parts.append(f"tile {tuple(row['tile'])} x{row['batch']}")
    if "timings" in row:
        parts.append(" ".join(f"{k} {v:.1f}" for k, v in row["timings"].items() if k != "total"))
    if row.get("objects") is not None and "mpx_per_s" not in row:
        parts.append(f"{row['objects']} objects")
    if "mpx_per_s" in row:
        parts.append(f"{row['mpx_per_s']:.2f} Mpx/s, {row['objects']} objects")
    return "  ".join(parts)


def print_table(rows: list[dict]) -> None:
    print("\n| image | method | time (s) | CPU time (s) | time / ours | max abs deviation from whole image | "
          "peak RSS MiB (above baseline) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        vs = f"{row['vs_ours']:.2f}" if "vs_ours" in row else ""
        dev = f"{row['deviation']:.1e}" if row.get("deviation") is not None else ""
        print(f"| {row['size']} | {row['method']} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {vs} | {dev} | "
              f"{row['peak_mib']:.0f} (+{row['extra_mib']:.0f}) |")


if __name__ == "__main__":
    main()
