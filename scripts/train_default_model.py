"""Train the bundled default model ``nuclei`` from generated images alone, and write its model card.

Run from the repository root::

    python scripts/train_default_model.py [--minutes N] [--steps N] [--images N] [--base-features N]
                                          [--output FOLDER]

Training data. Every image comes from :func:`napari_unet.synthetic.generate_nuclei` with its own style drawn
by :func:`napari_unet.synthetic.random_style` (domain randomisation: nucleus radius 3.5-22 px, signal over a
factor of fifteen, 8/12/16 bit, blur, noise, background, illumination, density and clustering all drawn
widely). A model that has seen one look learns that look; one that has seen hundreds has to learn what a
nucleus is. No third-party image or data set enters the training data, so the weights' provenance is clean.
The named styles of ``synthetic.STYLES`` and the benchmark's harder variants are never used for training:
they are the held-out test set.

Training. ``napari_unet.finetune`` on a freshly initialised network (training from scratch is fine-tuning a
random model): instance targets (background / interior / boundary) with the U-Net paper's weight map,
augmentation, AdamW with warm-up and cosine decay, the best validated state kept. The run is planned in
steps, so on a given machine a rerun repeats the shipped model; ``--minutes`` only caps a slow machine (the
card says which limit ended the run).

Evaluation. The finished model and the classical baseline are scored on the held-out styles with the same
code as ``bench/default_model.py``, and the speed on a 512x512 image is measured; settings, data seeds,
training time, metrics and package versions go into the model's ``config.json`` (``card`` for people,
``provenance`` for tools). The model is written with ``save_model(..., overwrite=True)`` to
``src/napari_unet/models/nuclei`` unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's held-out test sets and scoring, shared on purpose

from baseline import classical_segmentation
from default_model import HELD_OUT, TEST_SEED, evaluate, format_table, model_segmenter, segment_seconds

from napari_unet.synthetic import NucleiStyle, generate_nuclei, random_style

DEFAULTS: dict[str, Any] = {
    "images": 800,
    "image_size": 256,
    "data_seed": 20_000,  # images use seeds data_seed + i, far from the test seeds (1000...)
    "init_seed": 0,
    "train_seed": 0,
    "steps": 12_000,
    "minutes": 120.0,
    "batch_size": 4,
    "patch": 128,
    "learning_rate": 3e-3,
    "validations": 24,
    "eval_size": 512,
    "eval_seeds": 3,
}

ARCHITECTURE: dict[str, Any] = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "depth": 3, "base_features": 24,
    "padding": "same", "norm": "batch", "upsampling": "bilinear",
}

DESCRIPTION = ("Nuclei in 2D fluorescence images (DAPI, Hoechst and similar stains): one label per nucleus, "
               "touching nuclei separated. Trained on generated images only.")

INTENDED = ("single-channel 2D fluorescence images of stained nuclei (Z stacks and time-lapses slice by slice), "
            "8, 12 or 16 bit, widefield or confocal, nuclei about 7-45 px across")

LIMITS = ("learned from generated images only: debris, dead or fragmented cells, saturated artefacts, "
          "cytoplasmic or membrane stains, brightfield or phase contrast and multi-channel images are outside "
          "its experience; weakest on crowded, very noisy images (touching nuclei merged or missed) and on large, "
          "blurred touching nuclei (merged), see the metrics; rescale images whose nuclei "
          "are much smaller than 7 px or larger than 45 px across; a 2D model, so stacks are segmented plane by "
          "plane. Fine-tune it on a few corrected images of your own for the best results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                        help="wall-time cap of the training loop (default %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                        help="optimisation steps; the run is planned in steps (default %(default)s)")
    parser.add_argument("--images", type=int, default=DEFAULTS["images"],
                        help="generated training images (default %(default)s)")
    parser.add_argument("--base-features", type=int, default=ARCHITECTURE["base_features"],
                        help="features of the first U-Net level, doubled at each level (default %(default)s)")
    parser.add_argument("--eval-seeds", type=int, default=DEFAULTS["eval_seeds"],
                        help="held-out test images per style (default %(default)s)")
    parser.add_argument("--output", type=Path, default=ROOT / "src" / "napari_unet" / "models" / "nuclei",
                        help="model folder to write, replaced if it exists (default: the bundled 'nuclei')")
    return parser.parse_args(argv)


def training_samples(count: int, size: int, data_seed: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """``count`` generated images, each in its own random style, as fully annotated training samples.

    Every sample carries an all-true mask: every pixel of a generated image is known, so an image that
    happens to hold no nucleus is a valid lesson in background rather than "nothing annotated".
    Returns the samples and a short summary of each image's style for the provenance.
    """
    from napari_unet.core.training import Sample

    rng = np.random.default_rng(data_seed)
    samples, styles = [], []
    for i in range(count):
        style = random_style(rng)
        image, labels = generate_nuclei((size, size), style, seed=data_seed + i)
        samples.append(Sample(image, labels, mask=np.ones(labels.shape, bool), axes="YX"))
        styles.append({"radius": round(style.radius, 2), "signal": round(style.signal, 4),
                       "bit_depth": style.bit_depth, "objects": int(labels.max())})
    return samples, styles


def print_progress(every_s: float = 60.0):
    """A progress callback that prints validations and, between them, a line every ``every_s`` seconds."""
    last = [-every_s]

    def report(done: int, total: int, message: str) -> None:
        now = time.perf_counter()
        if "val" in message or now - last[0] >= every_s:
            last[0] = now
            print(f"  {message}", flush=True)

    return report


def style_changes(style: NucleiStyle) -> dict[str, Any]:
    """The knobs of ``style`` that differ from ``NucleiStyle()``: a test style in a few readable numbers."""
    default = NucleiStyle()
    return {f.name: getattr(style, f.name) for f in fields(style)
            if getattr(style, f.name) != getattr(default, f.name)}


def metrics_line(table: dict[str, dict[str, dict]]) -> str:
    """The card's one-line summary of the evaluation: model F1 per style, means, and the baseline's means."""
    def mean(who: str, key: str) -> float:
        return float(np.mean([row[who][key] for row in table.values()]))

    styles = ", ".join(f"{name} {row['model']['f1@0.5']:.2f}/{row['model']['f1@0.75']:.2f}"
                       for name, row in table.items())
    return (f"object F1 at IoU 0.5/0.75 on held-out generated styles: {styles}; mean "
            f"{mean('model', 'f1@0.5'):.2f}/{mean('model', 'f1@0.75'):.2f} (classical Otsu + watershed "
            f"baseline: {mean('baseline', 'f1@0.5'):.2f}/{mean('baseline', 'f1@0.75'):.2f})")


def make_readable(folder: Path) -> None:
    """Let every user read the model: it ships in the package, which a system-wide install shares, while
    save_model's private temporary folder leaves it readable by its owner only."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.models import Model, ModelConfig, load_model, save_model
    from napari_unet.core.runner import cpu_has_native_bfloat16
    from napari_unet.core.training import finetune
    from napari_unet.core.unet import UNetConfig

    settings = {**DEFAULTS, "images": args.images, "steps": args.steps, "minutes": args.minutes,
                "eval_seeds": args.eval_seeds}
    threads = configure_cpu_threads(interactive=False)
    print(f"generating {settings['images']} training images of {settings['image_size']} px ...", flush=True)
    start = time.perf_counter()
    samples, styles = training_samples(settings["images"], settings["image_size"], settings["data_seed"])
    generation_s = time.perf_counter() - start
    print(f"  {generation_s:.0f} s, {sum(s['objects'] for s in styles)} nuclei", flush=True)

    # no name: a model trained from scratch has no parent (save_model names it after its folder)
    architecture = {**ARCHITECTURE, "base_features": args.base_features}
    config = ModelConfig(UNetConfig(**architecture), task="instance", description=DESCRIPTION)
    start_model = Model.from_config(config, seed=settings["init_seed"])
    # channels-last convolutions train about a fifth faster on CPUs; saving stores the usual layout
    start_model.network.to(memory_format=torch.channels_last)
    print(f"training {settings['steps']} steps (cap {settings['minutes']:g} min) on {threads} CPU thread(s) ...",
          flush=True)
    trained = finetune(
        start_model, samples, time_budget_s=settings["minutes"] * 60, steps=settings["steps"], device="cpu",
        progress=print_progress(), seed=settings["train_seed"], learning_rate=settings["learning_rate"],
        batch_size=settings["batch_size"], patch_shape=settings["patch"], validations=settings["validations"],
        patience=settings["validations"] + 1,  # the schedule is planned for the whole run: never stop early
    )
    trained.attachments.clear()  # the training labels are regenerated from the seeds; they need not ship
    run = trained.config.history[-1]
    print(f"  stopped by {run['stopped']} after {run['steps']} steps, {run['time_s'] / 60:.1f} min", flush=True)
    folder = save_model(trained, args.output, overwrite=True)

    model = load_model(folder)  # evaluate exactly what ships
    print(f"evaluating on {len(HELD_OUT)} held-out styles ...", flush=True)
    segmenters = {"model": model_segmenter(model), "baseline": classical_segmentation}
    table = evaluate(segmenters, settings["eval_size"], settings["eval_seeds"])
    seconds = segment_seconds(model, settings["eval_size"])
    print(format_table(table, ["model", "baseline"]))
    print(f"segment() on one {settings['eval_size']} px image: {seconds:.3f} s", flush=True)

    arithmetic = "bfloat16 (a CPU with native bfloat16)" if cpu_has_native_bfloat16() else "float32"
    model.config.card = {
        "intended images": INTENDED,
        "training data": (f"{settings['images']} generated {settings['image_size']}x{settings['image_size']} "
                          "images (napari_unet.synthetic.generate_nuclei), each in its own random style "
                          "(synthetic.random_style: nucleus radius 3.5-22 px, 8/12/16 bit, wide ranges of signal, "
                          "blur, noise, background, illumination and density); no third-party images"),
        "metrics": metrics_line(table),
        "speed": f"{seconds:.2f} s for a {settings['eval_size']}x{settings['eval_size']} image on {threads} CPU "
                 f"thread(s) in {arithmetic}, post-processing included",
        "training": (f"{run['steps']} steps in {run['time_s'] / 60:.1f} min on {threads} CPU thread(s) "
                     f"(stopped by {run['stopped']}); rerun with python scripts/train_default_model.py"),
        "limits": LIMITS,
    }
    model.config.provenance = {
        **model.config.provenance,
        "script": "scripts/train_default_model.py",
        "script_settings": settings,
        "architecture": architecture,
        "generator": {
            "function": "napari_unet.synthetic.generate_nuclei",
            "style": "napari_unet.synthetic.random_style(numpy.random.default_rng(data_seed)), one draw per image",
            "image_seeds": f"data_seed + i for i in range({settings['images']})",
            "generation_s": round(generation_s, 1),
            "objects": sum(s["objects"] for s in styles),
            "radius_range": [min(s["radius"] for s in styles), max(s["radius"] for s in styles)],
            "bit_depths": sorted({s["bit_depth"] for s in styles}),
        },
        "evaluation": {
            "styles": {name: style_changes(style) for name, style in HELD_OUT.items()},
            "image_size": settings["eval_size"],
            "images_per_style": settings["eval_seeds"],
            "first_seed": TEST_SEED,
            "scores": table,
            "segment_s_512": round(seconds, 4),
            "threads": threads,
        },
    }
    folder = save_model(model, args.output, overwrite=True)
    make_readable(folder)
    size_mb = (folder / "weights.safetensors").stat().st_size / 2**20
    print(f"saved {folder} ({size_mb:.2f} MB of weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
