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

``--ceiling`` asks where a 2D model's 3D objects go wrong, on the isotropic stacks (Z step 1, so the route's
probabilities lie on the stack's own voxels): the route's F1; the F1 its watershed would reach with one seed
per true nucleus (the voxels at least half as deep in it as its deepest, as the route's cores are taken), over
the route's own foreground (its objects). Where the second is much the higher, the seeds are what fails, not
the extent of the objects or the watershed between them.

Run ``python bench/stack3d.py [--models nuclei FOLDER_OF_A_3D_MODEL] [--size 96] [--seeds 2] [--threads N]
[--skip-timing] [--ceiling]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import tracemalloc

import numpy as np
from scipy import ndimage

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


def true_seeds(truth: np.ndarray) -> np.ndarray:
    """One seed per true nucleus: its voxels at least half as far from its edge as its deepest voxel."""
    seeds = np.zeros_like(truth)
    for label, box in enumerate(ndimage.find_objects(truth), 1):
        if box is None:
            continue
        inside = truth[box] == label
        depth = ndimage.distance_transform_edt(inside)
        seeds[box][inside & (depth >= depth.max() / 2)] = label
    return seeds


def ceiling(model, size: int, seeds: int) -> None:
    """The route's 3D F1 and its F1 with true seeds, on isotropic stacks (see the module docstring)."""
    from skimage.segmentation import watershed

    for name, base in STYLES_3D.items():
        style = dataclasses.replace(base, z_anisotropy=1.0)
        route, seeded = [], []
        for i in range(seeds):
            image, truth = generate_nuclei((DEPTH_PX, size, size), style, seed=TEST_SEED + i)
            result = segment(image, model, stack="3d", probabilities=True)
            probabilities = np.asarray(result.probabilities, np.float32)
            cores = true_seeds(truth)
            grown = watershed(1.0 - probabilities[1], cores, mask=(result.labels > 0) | (cores > 0), connectivity=1)
            route.append(object_matching(result.labels, truth, 0.5).f1)
            seeded.append(object_matching(grown, truth, 0.5).f1)
        print(f"{name:6} z step 1: 3D F1@0.5 {np.mean(route):.3f}, with one true seed per nucleus "
              f"{np.mean(seeded):.3f}", flush=True)


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
    parser.add_argument("--ceiling", action="store_true",
                        help="only where a 2D model's 3D objects go wrong (see the module docstring)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [load_model(name) for name in args.models]
    if args.ceiling:
        for model in models:
            print(f"--- {model.config.name}", flush=True)
            if model.config.network.spatial_dims == 2:
                ceiling(model, args.size, args.seeds)
            else:
                print("a 3D model has no planes to read apart: --ceiling is for 2D models", flush=True)
        return
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
