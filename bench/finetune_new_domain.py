"""Fine-tuning on a kind of image the model was not made for: AP@0.5 against seconds of training, 3 images.

The user's situation: a model meets a new kind of image (histology, brightfield, whole cells), the user
annotates three images fully and presses Fine-tune. Each kind has three training images (drawn per seed) and
its own held-out images, scored with ``napari_unet.segment`` as the user sees it:
AP@0.5 = TP / (TP + FP + FN), objects matched one to one at IoU 0.5, pooled over the held-out images.

Kinds:

* ``histology``: the colour histology of the 2018 Data Science Bowl (``bench/dsb2018.py``), given to the
  1-channel model as colour, which ``segment`` and ``finetune`` turn into its optical density (stained
  nuclei bright). Training images from the train split,
  scores on the whole validation split of that modality.
* ``brightfield``: the DSB's grey brightfield images, likewise (its validation split holds two images).
* ``cells``: generated whole cells, far from every training style: about 60 px across, irregular and
  elongated, crowded, textured, dark on a bright background. Training seeds 500+, test seeds 1000+.

Every budget is its own run of ``finetune`` with its defaults, as the Fine-tune button runs it (the schedule
spans the budget), against the same network from random weights (``from_scratch=True``). ``--step-seconds S``
turns a budget B into B / S steps with no time limit, S being one step's time on an idle machine, so that a
busy machine measures what an idle one gives in B seconds. ``--model`` picks the starting model (default: the
bundled ``nuclei``; the DSB kinds are new only to a model that was not trained on them, such as one trained on
generated images alone).

    python bench/finetune_new_domain.py [--data ../shared/data/dsb2018] [--model nuclei]
        [--kinds histology cells] [--budgets 0 10 30 60 120 300] [--seeds 3] [--step-seconds S]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dsb2018  # noqa: E402 - the benchmarks' shared loader and split

from napari_unet.core.devices import configure_cpu_threads  # noqa: E402
from napari_unet.core.inference import segment  # noqa: E402
from napari_unet.core.metrics import object_matching  # noqa: E402
from napari_unet.core.models import Model, load_model  # noqa: E402
from napari_unet.core.training import Sample, finetune  # noqa: E402
from napari_unet.synthetic import NucleiStyle, generate_nuclei  # noqa: E402

SHOTS = 3
SHOT_SEED, TEST_SEED = 500, 1000
CELLS = NucleiStyle(radius=30.0, radius_cv=0.25, elongation=(1.2, 2.5), irregularity=0.2, density=0.45,
                    clustering=0.8, signal=0.3, dome=0.6, texture=0.5, texture_scale=4.0, nucleoli=0.0,
                    blur=1.5, illumination=0.3, background=0.1)
DSB_KINDS = {"histology": "color", "brightfield": "bright_gray"}

Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class Kind:
    name: str
    train_pool: list[Callable[[], Pair]]  # loaders: images are read only when drawn
    test: list[Pair]
    note: str


def generated_cells(count: int, first_seed: int, size: int = 384) -> list[Pair]:
    """Whole cells, dark on a bright background: the generator's image turned upside down."""
    pairs = []
    for seed in range(first_seed, first_seed + count):
        image, labels = generate_nuclei((size, size), CELLS, seed=seed)
        pairs.append(((int(np.iinfo(image.dtype).max) - image).astype(image.dtype), labels))
    return pairs


def load_kind(name: str, folder: Path) -> Kind:
    if name == "cells":
        pool = [lambda seed=seed: generated_cells(1, seed)[0] for seed in range(SHOT_SEED, SHOT_SEED + 30)]
        return Kind(name, pool, generated_cells(4, TEST_SEED), "generated whole cells, 4 test images of 384 px")
    modality = DSB_KINDS[name]
    parts = dsb2018.split(dsb2018.read_index(folder))
    train = [e for e in parts["train"] if e.modality == modality]
    test = [dsb2018.load(folder, e) for e in parts["validation"] if e.modality == modality]
    pool = [lambda entry=entry: dsb2018.load(folder, entry) for entry in train]
    return Kind(name, pool, test, f"DSB 2018 '{modality}', {len(train)} train-split images to draw from, "
                f"{len(test)} validation-split images scored")


def average_precision(model: Model, pairs: list[Pair]) -> float:
    """AP@0.5 pooled over ``pairs`` with what ``segment`` gives (colour images converted as for a user)."""
    tp = fp = fn = 0
    for image, truth in pairs:
        labels = segment(image, model, device="cpu").labels
        match = object_matching(labels, truth, 0.5)
        tp, fp, fn = tp + match.tp, fp + match.fp, fn + match.fn
    return tp / max(1, tp + fp + fn)


def run(kind: Kind, start: Model, budgets: list[float], seeds: int, step_seconds: float | None,
        scratch: bool) -> dict[str, dict[float, list[tuple[float, int]]]]:
    """{method: {budget: [(AP, steps) per seed]}}."""
    methods = {"fine-tuned": False} | ({"from scratch": True} if scratch else {})
    table: dict[str, dict[float, list[tuple[float, int]]]] = {m: {b: [] for b in budgets} for m in methods}
    for seed in range(seeds):
        chosen = np.random.default_rng(seed).choice(len(kind.train_pool), SHOTS, replace=False)
        samples = [Sample(*kind.train_pool[int(i)]()) for i in chosen]
        for method, from_scratch in methods.items():
            for budget in budgets:
                if budget == 0:
                    ap = 0.0 if from_scratch else average_precision(start, kind.test)
                    table[method][budget].append((ap, 0))
                    continue
                limits = ({"time_budget_s": None, "steps": max(1, round(budget / step_seconds))} if step_seconds
                          else {"time_budget_s": budget, "steps": None})
                tuned = finetune(start, samples, device="cpu", seed=seed, from_scratch=from_scratch, **limits)
                steps = tuned.config.history[-1]["steps"]
                ap = average_precision(tuned, kind.test)
                table[method][budget].append((ap, steps))
                print(f"  {kind.name} seed {seed} {method} {budget:g} s: AP@0.5 {ap:.3f} ({steps} steps, "
                      f"lr {tuned.config.provenance['settings']['learning_rate']:g})", flush=True)
    return table


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def format_table(name: str, table: dict[str, dict[float, list[tuple[float, int]]]]) -> str:
    methods = list(table)
    head = "| seconds | " + " | ".join(f"{m} AP@0.5 | steps" for m in methods) + " |"
    lines = [f"{name}:", head, "|---:|" + "---|---:|" * len(methods)]
    for budget in next(iter(table.values())):
        cells = []
        for method in methods:
            runs = table[method][budget]
            cells += [mean_sd([ap for ap, _ in runs]), f"{statistics.mean(s for _, s in runs):.0f}"]
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=dsb2018.DEFAULT_FOLDER, help="the DSB 2018 folder")
    parser.add_argument("--model", default="nuclei", help="starting model: a name or a folder (default nuclei)")
    parser.add_argument("--kinds", nargs="+", default=["histology", "brightfield", "cells"],
                        choices=["histology", "brightfield", "cells"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0, 10, 30, 60, 120, 300])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="run each budget as budget / S steps (S: one step on an idle machine)")
    parser.add_argument("--no-scratch", action="store_true", help="skip training from random weights")
    args = parser.parse_args(argv)
    threads = configure_cpu_threads(interactive=False)
    start = load_model(args.model)
    print(f"starting model {start.name!r} ({args.model}); {threads} CPU thread(s); "
          + (f"{args.step_seconds:g} s per step" if args.step_seconds else "wall-clock budgets"), flush=True)
    tables = []
    for name in args.kinds:
        kind = load_kind(name, args.data)
        print(f"{name}: {kind.note}", flush=True)
        started = time.perf_counter()
        table = run(kind, start, args.budgets, args.seeds, args.step_seconds, not args.no_scratch)
        tables.append(format_table(f"{name} ({kind.note}; {args.seeds} seed(s), "
                                   f"{time.perf_counter() - started:.0f} s)", table))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
