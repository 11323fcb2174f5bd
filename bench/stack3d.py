"""Z-stacks: the bundled 2D model plane by plane and along three orthogonal planes, against the 3D model.

Held-out generated stacks (``synthetic.generate_nuclei`` in 3D, seeds from 1000 on; no model trained on them:
the bundled 2D model saw 2D images only, a 3D model of ``scripts/train_3d_model.py`` stacks in random styles of
seeds 50000 on) of
two styles, ``sparse`` (separate nuclei) and ``dense`` (crowded, touching), each at a Z step of 1, 2 and 4 times
the pixel size (``z_anisotropy``; every stack covers the same depth, so the coarser steps have fewer planes;
axial blur as the generator's default, three times the lateral blur). Each stack is segmented by
``napari_unet.segment``; a 2D model three ways:

* ``planes``: ``stack="planes"``, each plane labelled on its own (the behaviour before 3D objects);
* ``3d, no scale``: the three passes with ``scale=None``, Z treated like X (what a user gets who omits the voxel
  size of an anisotropic stack);
* ``3d, scale``: the three passes with the stack's true voxel size, Z resampled to the pixel size first;

and a 3D model two ways, ``3d, no scale`` and ``3d, scale`` (Z resampled to the model's own Z step).

The measure is 3D object F1 at IoU 0.5 (``core.metrics.object_matching`` on the whole label volume: an object is
matched only if it is one object through the stack), the mean over the stacks of a setting, with the objects
found against the true count. Then the time of each model on one 64 x 256 x 256 stack (isotropic, default
style) and, for the 2D model, the peak numpy memory of the 3D route on a smaller stack (``tracemalloc``).

Run ``python bench/stack3d.py [--models nuclei FOLDER_OF_A_3D_MODEL] [--size 96] [--seeds 2] [--threads N]
[--skip-timing]``.
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
MODEL_METHODS = {  # a 3D model takes the stack whole
    "3d, no scale": lambda a: {},
    "3d, scale": lambda a: {"scale": (a, 1.0, 1.0)},
}


def quality(model, size: int, seeds: int, methods: dict | None = None) -> list[dict]:
    """3D object F1@0.5 per style, Z step and method; the rows are also printed as they come."""
    if methods is None:
        methods = MODEL_METHODS if model.config.network.spatial_dims == 3 else METHODS
    rows = []
    for name, base in STYLES_3D.items():
        for anisotropy in ANISOTROPY:
            style = dataclasses.replace(base, z_anisotropy=anisotropy)
            depth = int(round(DEPTH_PX / anisotropy))
            stacks = [generate_nuclei((depth, size, size), style, seed=TEST_SEED + i) for i in range(seeds)]
            for method, options in methods.items():
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


def timing_stack() -> np.ndarray:
    """The stack every model is timed on: 64 x 256 x 256, isotropic, default style."""
    image, _ = generate_nuclei((64, 256, 256), dataclasses.replace(STYLES["default"], z_anisotropy=1.0),
                               seed=TEST_SEED)
    return image


def seconds_256(model, stack: str = "3d") -> float:
    """Seconds ``segment`` takes for the 64 x 256 x 256 timing stack (after a warm-up on a small crop)."""
    image = timing_stack()
    segment(image[:8, :64, :64], model, probabilities=False)  # warm-up
    t0 = time.perf_counter()
    result = segment(image, model, probabilities=False, stack=stack)
    seconds = time.perf_counter() - t0
    print(f"64x256x256 {model.config.name or 'model'} {stack:6}: {seconds:.1f} s, {result.objects} objects "
          f"({', '.join(f'{k} {v:.1f}' for k, v in result.timings.items())})", flush=True)
    return seconds


def memory(model) -> None:
    small, _ = generate_nuclei((16, 128, 128), STYLES["default"], seed=TEST_SEED)
    tracemalloc.start()
    segment(small, model, probabilities=False, stack="3d")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{model.config.name} 3d peak numpy memory on 16x128x128: {peak / 2**20:.1f} MiB, "
          f"{peak / small.size:.0f} bytes per voxel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nuclei"],
                        help="bundled or library model names, or model folders (a 3D model, e.g. one trained by "
                        "scripts/train_3d_model.py, is compared with the same stacks)")
    parser.add_argument("--size", type=int, default=96, help="Y and X of the test stacks")
    parser.add_argument("--seeds", type=int, default=2, help="test stacks per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-timing", action="store_true", help="only the quality table")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [load_model(name) for name in args.models]
    for model in models:
        print(f"--- {model.config.name}", flush=True)
        quality(model, args.size, args.seeds)
    if not args.skip_timing:
        for model in models:
            two_d = model.config.network.spatial_dims == 2
            for stack in ("planes", "3d") if two_d else ("3d",):
                seconds_256(model, stack)
            if two_d:
                memory(model)


if __name__ == "__main__":
    main()
