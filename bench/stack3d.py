"""Z-stacks with the bundled 2D model: plane by plane against 3D objects from the three orthogonal passes.

Held-out generated stacks (``synthetic.generate_nuclei`` in 3D, seeds from 1000 on; the bundled model was trained
on 2D images only) of two styles, ``sparse`` (separate nuclei) and ``dense`` (crowded, touching), each at a Z
step of 1, 2 and 4 times the pixel size (``z_anisotropy``; every stack covers the same depth, so the coarser
steps have fewer planes; axial blur as the generator's default, three times the lateral blur). Each stack is
segmented three ways by ``napari_unet.segment``:

* ``planes``: ``stack="planes"``, each plane labelled on its own (the behaviour before 3D objects);
* ``3d, no scale``: the three passes with ``scale=None``, Z treated like X (what a user gets who omits the voxel
  size of an anisotropic stack);
* ``3d, scale``: the three passes with the stack's true voxel size, Z resampled to the pixel size first.

The measure is 3D object F1 at IoU 0.5 (``core.metrics.object_matching`` on the whole label volume: an object is
matched only if it is one object through the stack), the mean over the stacks of a setting, with the objects
found against the true count. Then the time of both routes on one 64 x 256 x 256 stack (isotropic, default
style) and the peak numpy memory of the 3D route on a smaller stack (``tracemalloc``), per voxel.

Run ``python bench/stack3d.py [--size 128] [--seeds 2] [--threads N] [--skip-timing]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import tracemalloc

import numpy as np

from napari_unet.core.inference import segment
from napari_unet.core.metrics import object_matching
from napari_unet.core.models import load_model
from napari_unet.synthetic import STYLES, NucleiStyle, generate_nuclei

TEST_SEED = 1000
DEPTH_PX = 32  # depth of every test stack, in lateral pixels
STYLES_3D: dict[str, NucleiStyle] = {
    "sparse": dataclasses.replace(STYLES["default"], density=0.1, clustering=0.1),
    "dense": STYLES["dense"],
}
ANISOTROPY = (1.0, 2.0, 4.0)
METHODS = {
    "planes": lambda a: {"stack": "planes"},
    "3d, no scale": lambda a: {"stack": "3d"},
    "3d, scale": lambda a: {"stack": "3d", "scale": (a, 1.0, 1.0)},
}


def quality(model, size: int, seeds: int) -> list[dict]:
    rows = []
    for name, base in STYLES_3D.items():
        for anisotropy in ANISOTROPY:
            style = dataclasses.replace(base, z_anisotropy=anisotropy)
            depth = int(round(DEPTH_PX / anisotropy))
            stacks = [generate_nuclei((depth, size, size), style, seed=TEST_SEED + i) for i in range(seeds)]
            for method, options in METHODS.items():
                f1, found, true, seconds = [], 0, 0, 0.0
                for image, truth in stacks:
                    t0 = time.perf_counter()
                    result = segment(image, model, probabilities=False, **options(anisotropy))
                    seconds += time.perf_counter() - t0
                    f1.append(object_matching(result.labels, truth, 0.5).f1)
                    found += result.objects
                    true += int(truth.max())
                rows.append({"style": name, "z step": anisotropy, "shape": (depth, size, size), "method": method,
                             "f1": float(np.mean(f1)), "found": found, "true": true, "seconds": seconds / seeds})
                print(f"{name:6} z step {anisotropy:g} {depth}x{size}x{size} {method:13} F1@0.5 {np.mean(f1):.3f} "
                      f"objects {found} / {true} true, {seconds / seeds:.1f} s per stack", flush=True)
    return rows


def timing(model) -> None:
    image, _ = generate_nuclei((64, 256, 256), dataclasses.replace(STYLES["default"], z_anisotropy=1.0),
                               seed=TEST_SEED)
    segment(image[:4, :64, :64], model, probabilities=False)  # warm-up
    for stack in ("planes", "3d"):
        t0 = time.perf_counter()
        result = segment(image, model, probabilities=False, stack=stack)
        print(f"64x256x256 {stack:6}: {time.perf_counter() - t0:.1f} s, {result.objects} objects "
              f"({', '.join(f'{k} {v:.1f}' for k, v in result.timings.items())})", flush=True)
    small, _ = generate_nuclei((16, 128, 128), STYLES["default"], seed=TEST_SEED)
    tracemalloc.start()
    segment(small, model, probabilities=False, stack="3d")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"3d route peak numpy memory on 16x128x128: {peak / 2**20:.1f} MiB, {peak / small.size:.0f} bytes per voxel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="bundled or library model name, or a model folder")
    parser.add_argument("--size", type=int, default=128, help="Y and X of the test stacks")
    parser.add_argument("--seeds", type=int, default=2, help="test stacks per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-timing", action="store_true", help="only the quality table")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    quality(model, args.size, args.seeds)
    if not args.skip_timing:
        timing(model)


if __name__ == "__main__":
    main()
