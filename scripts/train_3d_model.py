"""Train the bundled 3D model, ``nuclei-3d``, on generated z-stacks, and write its card.

Run from the repository root::

    python scripts/train_3d_model.py [--minutes N] [--steps N] [--stacks N] [--output FOLDER] [--init FOLDER]
    python scripts/train_3d_model.py --evaluate-only      # tune the object filter and evaluate a trained model

Training data. Stacks from :func:`napari_unet.synthetic.generate_nuclei` in 3D, each in its own style drawn by
:func:`napari_unet.synthetic.random_style` (the 2D model's domain randomisation: nucleus size, signal, noise,
blur, density, clustering, bit depth; and for stacks a Z step of 1-4 times the pixel size and a flatness of
0.5-1) with two knobs drawn here: the axial blur (2-4 times the lateral, physical units) and the signal lost with
depth (0-70 % from the first plane to the last). Every stack covers the same depth, so coarse Z steps give
few planes. Each stack is then resampled in Z to the lateral pixel size exactly as ``segment(..., scale=...)``
resamples a stack for this model (:func:`napari_unet.core.zsampling.to_model_grid`: linear interpolation of the
image, nearest plane for the labels), so the network learns the interpolated look of coarse stacks, and the
model records that it works on isotropic voxels (``z_step`` 1.0). A few stacks hold no nucleus (noise and
background only). The test styles of ``bench/stack3d.py`` are never trained on.

Training. ``napari_unet.finetune`` on a freshly initialised 3D U-Net of the same config dataclass as the 2D one:
instance targets (background / interior / boundary) with the U-Net paper's weight map, augmentation, AdamW with
warm-up and cosine decay. The run is planned in steps; ``--minutes`` caps a slow machine (the card says which
limit ended it). ``--init FOLDER`` continues from a model trained by this script (a second run over the same
stacks with a new warm-up and decay, at ``init_learning_rate``); the card records both runs.

Post-processing and evaluation (``--evaluate-only`` repeats them on a saved model): the object filter's seed
threshold and smallest object are chosen on fresh stacks of the training distribution (seeds ``tune_seed + i``),
by pooled 3D AP@0.5; then ``bench/stack3d.py``'s held-out test stacks score the model against the 2D model's
three orthogonal passes, and the time of a 64 x 256 x 256 stack is measured. Settings, seeds, metrics and package
versions go into the model's ``config.json``; the model is written to ``src/napari_unet/models/nuclei-3d``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's held-out test stacks and scoring, shared on purpose

import real_data
import stack3d
from train_default_model import planned_run

from napari_unet.synthetic import generate_nuclei, random_style

DEFAULTS: dict[str, Any] = {
    "stacks": 240,
    "lateral": 128,
    "depth_px": 48,  # depth of every training stack, in lateral pixels
    "data_seed": 50_000,  # far from the test seeds (1000...) and the 2D model's (20000...)
    "empty_stacks": 24,
    "empty_seed": 150_000,
    "axial_blur_range": [2.0, 4.0],
    "attenuation_range": [0.0, 0.7],
    "init_seed": 0,
    "train_seed": 0,
    "steps": 3000,
    "minutes": 60.0,
    "batch_size": 2,
    "patch": [32, 64, 64],
    "learning_rate": 3e-3,
    "init_learning_rate": 1e-3,  # when continuing from trained weights (--init)
    "validations": 12,
    "tune_stacks": 16,
    "tune_seed": 60_000,
}

FILTER_GRID = {"seed": [None, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9], "min_size": [8, 32, 64, 128]}

ARCHITECTURE: dict[str, Any] = {
    "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "depth": 3, "base_features": 16,
    "padding": "same", "norm": "batch", "upsampling": "bilinear",
}

DESCRIPTION = ("Nuclei in fluorescence z-stacks (DAPI, Hoechst and similar stains), in 3D: one label per nucleus "
               "through the stack, touching nuclei separated. A 3D U-Net trained on generated stacks.")

INTENDED = ("single-channel fluorescence z-stacks of stained nuclei (ZYX; TZYX stack by stack), widefield or "
            "confocal, nuclei about 7-45 px across; give the voxel size (segment(..., scale=(z, y, x)), the layer's "
            "scale in napari, or the file's metadata): the stack is resampled to isotropic voxels")

LIMITS = ("learned from generated stacks only: real debris, dividing cells and stains other than nuclear ones are "
          "outside its experience; single 2D images need the 2D model nuclei; a Z step much coarser than 4 times "
          "the pixel size leaves too little to go on. Fine-tune it on a few annotated planes of your own stacks for "
          "the best results")


def stack_style(rng: np.random.Generator) -> Any:
    """One training stack's style: the 2D model's random style, with an axial blur and a loss of signal with
    depth drawn from this script's ranges."""
    style = random_style(rng)
    blur = rng.uniform(*DEFAULTS["axial_blur_range"])
    attenuation = rng.uniform(*DEFAULTS["attenuation_range"])
    return dataclasses.replace(style, axial_blur=float(blur), depth_attenuation=float(attenuation))


def generated_stacks(count: int, settings: dict[str, Any], seed: int, empty: bool = False
                     ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, Any]]]:
    """``count`` generated stacks on the model's (isotropic) grid, and a summary of each one's style."""
    from napari_unet.core.zsampling import labels_to_model_grid, to_model_grid

    rng = np.random.default_rng(seed)
    pairs, styles = [], []
    for i in range(count):
        style = stack_style(rng)
        if empty:
            style = dataclasses.replace(style, density=0.0)
        depth = max(2, int(round(settings["depth_px"] / style.z_anisotropy)))
        image, labels = generate_nuclei((depth, settings["lateral"], settings["lateral"]), style, seed=seed + i)
        pairs.append((to_model_grid(image, style.z_anisotropy, 1.0, axis=0),
                      labels_to_model_grid(labels, style.z_anisotropy, 1.0, axis=0)))
        styles.append({"radius": round(style.radius, 2), "z_step": round(style.z_anisotropy, 2),
                       "objects": int(labels.max())})
    return pairs, styles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=DEFAULTS["minutes"], help="time cap of the training")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps")
    parser.add_argument("--stacks", type=int, default=DEFAULTS["stacks"], help="generated training stacks")
    parser.add_argument("--eval-size", type=int, default=96, help="Y and X of bench/stack3d.py's test stacks")
    parser.add_argument("--eval-seeds", type=int, default=2, help="test stacks per setting")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from this model folder (trained by this script) instead of random weights")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="tune the object filter and evaluate the model in --output without training")
    parser.add_argument("--output", type=Path, default=ROOT / "src" / "napari_unet" / "models" / "nuclei-3d",
                        help="where the model is written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from napari_unet.core.devices import configure_cpu_threads

    threads = configure_cpu_threads(interactive=False)
    if not args.evaluate_only:
        train(args, threads)
    finish(args, threads)
    return 0


def train(args: argparse.Namespace, threads: int) -> None:
    """Make the training stacks, train a fresh 3D U-Net, save it to ``args.output``."""
    from napari_unet.core.models import Model, ModelConfig, load_model, save_model
    from napari_unet.core.training import Sample
    from napari_unet.core.unet import UNetConfig

    settings = {**DEFAULTS, "stacks": args.stacks, "steps": args.steps, "minutes": args.minutes}
    if args.init is not None:
        settings["learning_rate"] = settings["init_learning_rate"]
    print(f"generating {settings['stacks']} + {settings['empty_stacks']} training stacks ...", flush=True)
    start = time.perf_counter()
    pairs, styles = generated_stacks(settings["stacks"], settings, settings["data_seed"])
    pairs += generated_stacks(settings["empty_stacks"], settings, settings["empty_seed"], empty=True)[0]
    generation_s = time.perf_counter() - start
    print(f"  {generation_s:.0f} s, {sum(s['objects'] for s in styles)} nuclei", flush=True)
    samples = [Sample(image, labels, mask=np.ones(labels.shape, bool), axes="ZYX") for image, labels in pairs]
    if args.init is None:
        config = ModelConfig(UNetConfig(**ARCHITECTURE), task="instance", axes="ZYX", description=DESCRIPTION,
                             z_step=1.0)
        model = Model.from_config(config, seed=settings["init_seed"])
        initial: Any = f"random, torch seed init_seed={settings['init_seed']}"
    else:
        model = load_model(args.init)
        model.config.name = ""  # the next run of the bundled model, not a user's version of it
        earlier = model.config.provenance
        initial = {"folder": str(args.init), "runs": earlier.get("runs", []) + [
            {key: earlier.get(key) for key in ("steps", "time_s", "stopped", "script_settings")}]}
    trained = planned_run(model, samples, settings, threads)
    trained.config.provenance = {
        **trained.config.provenance, "script_settings": settings, "architecture": ARCHITECTURE,
        "initial_weights": initial,
        "generator": {
            "function": "napari_unet.synthetic.generate_nuclei",
            "style": "scripts/train_3d_model.stack_style(numpy.random.default_rng(data_seed)), one draw per stack",
            "stack_seeds": f"data_seed + i for i in range({settings['stacks']}); empty stacks empty_seed + i",
            "grid": "resampled in Z to the lateral pixel size (napari_unet.core.zsampling.to_model_grid)",
            "generation_s": round(generation_s, 1),
            "objects": sum(s["objects"] for s in styles),
            "z_steps": [min(s["z_step"] for s in styles), max(s["z_step"] for s in styles)],
        }}
    save_model(trained, args.output, overwrite=True)


def tune_object_filter(model: Any, settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The object filter with the best pooled 3D AP@0.5 on fresh stacks of the training distribution."""
    from napari_unet.core.inference import segment
    from napari_unet.core.postprocess import ObjectFilter, instance_labels

    pairs, _ = generated_stacks(settings["tune_stacks"], settings, settings["tune_seed"])
    maps = [(segment(image, model, device="cpu").probabilities, truth) for image, truth in pairs]
    results = {(seed, size): real_data.ap_f1(real_data.counts(
        (instance_labels(p, ObjectFilter(size, 0.2, None, seed)), t) for p, t in maps))[0]
        for seed in FILTER_GRID["seed"] for size in FILTER_GRID["min_size"]}
    top = max(results.values())
    seed, size = min((k for k, v in results.items() if v >= top - 0.002),
                     key=lambda k: (k[0] is not None, k[0] or 0, k[1]))
    chosen = ObjectFilter(size, 0.2, None, seed)
    return chosen, {"stacks": len(pairs), "grid": FILTER_GRID, "chosen": chosen.to_dict(),
                    "ap@0.5 (seed/min_size)": {f"{k[0]}/{k[1]}": round(v, 4) for k, v in results.items()}}


def finish(args: argparse.Namespace, threads: int) -> None:
    """Choose the object filter, evaluate on bench/stack3d.py's held-out stacks, write the card, save again."""
    from napari_unet.core.models import load_model, save_model

    model = load_model(args.output)
    settings = model.config.provenance["script_settings"]
    print("choosing the object filter ...", flush=True)
    model.config.object_filter, tuning = tune_object_filter(model, settings)
    print(f"  {tuning['chosen']}: {tuning['ap@0.5 (seed/min_size)']}", flush=True)
    print("evaluating on bench/stack3d.py's held-out stacks ...", flush=True)
    rows = stack3d.quality(model, args.eval_size, args.eval_seeds, methods=stack3d.MODEL_METHODS)
    seconds = stack3d.seconds_256(model)
    print(f"64x256x256: {seconds:.1f} s", flush=True)
    scores = {f"{r['style']} z step {r['z step']:g}": round(r["f1"], 3) for r in rows if r["method"] == "3d, scale"}
    model.config.card = {
        "intended images": INTENDED,
        "training data": (f"{settings['stacks']} generated stacks ({settings['lateral']}x{settings['lateral']} px, "
                          f"{settings['depth_px']} px deep; napari_unet.synthetic.generate_nuclei, each in its own "
                          "random style with Z steps of 1-4 px, axial blur 2-4x the lateral, up to 70 % of the signal "
                          f"lost with depth), resampled to isotropic voxels, and {settings['empty_stacks']} stacks "
                          "without nuclei; no third-party images"),
        "voxels": ("isotropic (z_step 1.0): segment resamples a stack's Z to its pixel size when the voxel size is "
                   "given"),
        "metrics": ("3D object F1@0.5 on bench/stack3d.py's held-out generated stacks "
                    f"({args.eval_size}x{args.eval_size} px, {args.eval_seeds} per setting), with the voxel size: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())),
        "speed": f"{seconds:.1f} s for a 64x256x256 stack on {threads} CPU thread(s), post-processing included",
        "training": training_line(model.config.provenance, threads),
        "limits": LIMITS,
    }
    model.config.provenance = {**model.config.provenance, "script": "scripts/train_3d_model.py",
                               "object_filter_tuning": tuning,
                               "evaluation": {"rows": rows, "stack_s_64x256x256": round(seconds, 2),
                                              "threads": threads}}
    folder = save_model(model, args.output, overwrite=True)
    size_mb = (folder / "weights.safetensors").stat().st_size / 2**20
    print(f"saved {folder} ({size_mb:.2f} MB of weights)")


def training_line(provenance: dict[str, Any], threads: int) -> str:
    """The card's account of the training: each run's steps, minutes and what stopped it, and how to rerun."""
    initial = provenance.get("initial_weights")
    runs = (initial.get("runs", []) if isinstance(initial, dict) else []) + [
        {key: provenance.get(key) for key in ("steps", "time_s", "stopped")}]
    parts = [f"{r['steps']} steps in {r['time_s'] / 60:.1f} min (stopped by {r['stopped']})" for r in runs]
    settings = provenance.get("script_settings", {})
    first = f"python scripts/train_3d_model.py --steps {settings.get('steps')} --minutes {settings.get('minutes'):g}"
    rerun = first + "".join(f"; python scripts/train_3d_model.py --init FOLDER --steps {r['steps']}" for r in runs[1:])
    stopped = (" A run stopped by time ends after as many steps as the machine made in it, so a rerun elsewhere "
               "trains for a different number of steps." if any(r["stopped"] == "time" for r in runs) else "")
    return (f"{' then '.join(parts)} on {threads} CPU thread(s), from a random initialisation; rerun with "
            f"{rerun}.{stopped}")


if __name__ == "__main__":
    sys.exit(main())
