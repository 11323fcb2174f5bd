"""Few-shot fine-tuning on the CPU: quality on held-out images against seconds of training.

The situation the plugin is built for: a model meets a look of nuclei it handles badly, the user corrects a
couple of images and presses Fine-tune. The starting model is the bundled ``nuclei`` model if the package has
one (``--model`` names another), or else the default architecture pretrained here for ``--pretrain-steps``
steps on the generator's ``default`` style. It is fine-tuned on ``--shots`` fully annotated images of another
style (``--style``, default ``large_blurry``: nuclei twice as large, out of focus, strong vignetting - the
bundled model's weakest named style) with time budgets of 10 to 90 s, and each result is scored on
``--test-images`` held-out images of that style with ``napari_unet.segment`` (what the user sees): object F1
at IoU 0.5 and foreground Dice. The same budgets from a randomly initialised network (training from scratch)
show what the pretrained start is worth. Every budget is a separate run (the learning-rate schedule spans
the budget, as it does for a user), repeated for ``--seeds`` seeds; the table gives mean and standard
deviation, and the steps each run managed (the budget is wall-clock time, so a busy machine gets fewer).

On a shared machine wall-clock budgets measure the neighbours as much as the training. ``--step-seconds S``
turns each budget B into a run of B / S steps instead (no time limit), S being the time of one step of
``finetune`` on the idle machine: the learning-rate schedule, the steps and the results are then what an idle
machine gives in B seconds, whatever the load while the benchmark runs. ``--no-scratch`` skips the
from-scratch runs.

The run also times one float32 training step of the starting model's architecture (batch 4 and 8 of 128x128
patches).

Run ``python bench/finetune.py`` (about 25 minutes on an idle 2-core CPU; ``--budgets 10 60 --seeds 1`` for a
quick look).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from napari_unet.core.devices import configure_cpu_threads
from napari_unet.core.errors import ModelFileError
from napari_unet.core.inference import segment
from napari_unet.core.losses import foreground_dice
from napari_unet.core.metrics import object_f1
from napari_unet.core.models import Model, ModelConfig, load_model
from napari_unet.core.training import Sample, finetune
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei

DEFAULT_ARCHITECTURE = UNetConfig(padding="same", depth=3, base_features=16, norm="batch", upsampling="bilinear",
                                  out_channels=3)
SHOT_SEED, TEST_SEED, PRETRAIN_SEED = 500, 1000, 20_000  # disjoint seed ranges for the three image sets


def images(style: str, count: int, size: int, first_seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_nuclei((size, size), style, seed=first_seed + i) for i in range(count)]


def score(model: Model, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Mean object F1 (IoU 0.5) and foreground Dice of ``napari_unet.segment`` with ``model``."""
    f1s, dices = [], []
    for image, truth in pairs:
        labels = segment(image, model, axes="YX", device="cpu", probabilities=False).labels
        f1s.append(object_f1(labels, truth))
        everything = np.ones(truth.shape, dtype=bool)
        dices.append(foreground_dice((labels > 0).astype(np.uint8), (truth > 0).astype(np.uint8), everything))
    return float(np.mean(f1s)), float(np.mean(dices))


def starting_model(name: str | None, pretrain_steps: int, size: int) -> tuple[Model, str]:
    """The model to fine-tune and a line that says where it came from."""
    try:
        model = load_model(name or "nuclei")
        return model, f"{model.name} (loaded from {model.path})"
    except ModelFileError:
        if name:
            raise
    samples = [Sample(image, labels) for image, labels in images("default", 8, size, PRETRAIN_SEED)]
    config = ModelConfig(DEFAULT_ARCHITECTURE, name="pretrained-default-style")
    model = finetune(Model.from_config(config, seed=0), samples, time_budget_s=None, steps=pretrain_steps,
                     device="cpu", batch_size=8, learning_rate=2e-3)
    return model, (f"default architecture pretrained here for {pretrain_steps} steps "
                   f"({model.config.provenance['time_s']:.0f} s) on 8 images of the 'default' style")


def step_time(architecture: UNetConfig, batch: int, patch: int, repeats: int = 5) -> float:
    """Seconds per optimisation step (forward, loss, backward, AdamW) of a network of ``architecture``."""
    from napari_unet.core.losses import segmentation_loss

    network = Model.from_config(ModelConfig(architecture), seed=0).network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, patch, patch)
    classes = torch.randint(0, 3, (batch, patch, patch))
    weights, annotated = torch.ones(batch, patch, patch), torch.ones(batch, patch, patch, dtype=torch.bool)
    times = []
    for _ in range(repeats + 2):  # the first steps set up oneDNN kernels
        start = time.perf_counter()
        loss = segmentation_loss(network(x), classes, weights, annotated)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="starting model (default: bundled 'nuclei', else pretrain)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps when there is no model")
    parser.add_argument("--style", default="large_blurry", help="the generator style to fine-tune on")
    parser.add_argument("--shots", type=int, default=2, help="annotated training images")
    parser.add_argument("--size", type=int, default=256, help="side of the training and test images")
    parser.add_argument("--test-images", type=int, default=4)
    parser.add_argument("--budgets", type=float, nargs="+", default=[10, 20, 40, 60, 90])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="seconds per step on the idle machine: run budget/step-seconds steps, not wall time")
    parser.add_argument("--no-scratch", action="store_true", help="skip training from scratch")
    args = parser.parse_args()

    threads = configure_cpu_threads(interactive=False)
    os.environ.setdefault("NAPARI_UNET_HOME", tempfile.mkdtemp(prefix="napari-unet-bench-"))
    print(f"CPU threads: {threads}; load average at start: {os.getloadavg()[0]:.2f}")
    model, origin = starting_model(args.model, args.pretrain_steps, args.size)
    print(f"starting model: {origin}")
    architecture = model.config.network
    for batch in (4, 8):
        print(f"its architecture ({architecture.base_features} base features), one float32 training step, "
              f"batch {batch} x 128x128: {step_time(architecture, batch, 128):.3f} s")
    shots = [Sample(image, labels) for image, labels in images(args.style, args.shots, args.size, SHOT_SEED)]
    tests = images(args.style, args.test_images, args.size, TEST_SEED)
    print(f"fine-tuning on {args.shots} image(s) of style {args.style!r} ({args.size}x{args.size}), scored on "
          f"{args.test_images} held-out image(s); {args.seeds} seed(s) per budget\n")

    starts = {"fine-tuned": lambda seed: model,
              "from scratch": lambda seed: Model.from_config(ModelConfig(model.config.network), seed=seed)}
    if args.no_scratch:
        del starts["from scratch"]
    results: dict[str, dict[float, list[tuple[float, float, int]]]] = {}
    for label, start in starts.items():
        results[label] = {0.0: [(*score(start(seed), tests), 0) for seed in range(args.seeds)]}
        for budget in args.budgets:
            runs = []
            for seed in range(args.seeds):
                limit = ({"time_budget_s": budget} if args.step_seconds is None else
                         {"time_budget_s": None, "steps": max(1, round(budget / args.step_seconds))})
                tuned = finetune(start(seed), shots, device="cpu", seed=seed, **limit)
                runs.append((*score(tuned, tests), tuned.config.provenance["steps"]))
            results[label][budget] = runs
            f1s = [r[0] for r in runs]
            print(f"  {label:>12} {budget:5.0f} s: F1 {mean_sd(f1s)}  ({', '.join(str(r[2]) for r in runs)} steps)",
                  flush=True)

    clock = "seconds" if args.step_seconds is None else f"seconds (idle, {args.step_seconds} s/step)"
    print(f"\n| {clock} | " + " | ".join(f"{label} F1 | {label} Dice | steps" for label in starts) + " |")
    print("|---:|" + "---|---|---:|" * len(starts))
    for budget in [0.0, *args.budgets]:
        cells = []
        for label in starts:
            runs = results[label][budget]
            cells += [mean_sd([r[0] for r in runs]), mean_sd([r[1] for r in runs]),
                      f"{np.mean([r[2] for r in runs]):.0f}"]
        print(f"| {budget:.0f} | " + " | ".join(cells) + " |")
    tuned_f1 = {b: np.mean([r[0] for r in runs]) for b, runs in results["fine-tuned"].items()}
    plateau = max(tuned_f1.values())
    reached = next((b for b in sorted(tuned_f1) if tuned_f1[b] >= 0.95 * plateau), None)
    print(f"\nfine-tuned plateau (best mean F1 over the budgets): {plateau:.3f}; 95 % of it reached at "
          f"{reached:.0f} s (target: 60 s); load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
