"""Quality and speed of the bundled default model, against the classical baseline, on held-out styles.

The model is trained on randomised styles only (``synthetic.random_style``), so every named style below is a
look it never saw as such: the presets of ``synthetic.STYLES`` and two harder variants that change density,
noise and blur together. For each style the table gives the mean object F1 at IoU 0.5 and 0.75 of the model
(``napari_unet.segment``) and of ``baseline.classical_segmentation`` (Otsu + distance-transform watershed,
fixed parameters) on the same generated images, and the time to segment one 512x512 image on the CPU
(median of several runs after a warm-up, model loaded, post-processing included).

The training script records the model's own row of this table in the model's config with the same
functions, so the shipped card and this benchmark measure the same thing.

Run ``python bench/default_model.py [--model nuclei] [--size 512] [--seeds 3] [--threads N]`` to print the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from baseline import classical_segmentation

from napari_unet.core.metrics import object_f1
from napari_unet.synthetic import STYLES, NucleiStyle, generate_nuclei

HELD_OUT: dict[str, NucleiStyle] = {
    **{name: STYLES[name] for name in ("default", "dense", "sparse_dim", "large_blurry", "small_bright")},
    # A crowded culture imaged badly: touching nuclei, a weak 12-bit signal, strong blur and vignetting.
    "crowded_noisy": NucleiStyle(radius=7.0, density=0.45, clustering=0.8, irregularity=0.1, signal=0.08,
                                 background=0.05, photon_scale=250.0, read_noise=0.012, blur=1.8,
                                 illumination=0.45, bit_depth=12),
    # Large, irregular, strongly textured nuclei with many nucleoli on a bright 16-bit background.
    "textured_large": NucleiStyle(radius=15.0, radius_cv=0.3, elongation=(1.2, 1.9), irregularity=0.12,
                                  density=0.3, clustering=0.5, signal=0.2, brightness_cv=0.45, texture=0.4,
                                  texture_scale=2.5, nucleoli=3.0, nucleolus_depth=0.5, blur=1.5,
                                  background=0.12, photon_scale=3000.0, bit_depth=16),
}
"""The test styles, by name. None of them is used to train the model."""

TEST_SEED = 1000
"""First seed of the test images; the training script draws its images from seeds far from these."""

THRESHOLDS = (0.5, 0.75)

Segmenter = Callable[[np.ndarray], np.ndarray]


def test_images(style: NucleiStyle, size: int, seeds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The held-out (image, labels) pairs of one style: ``seeds`` square images of side ``size``."""
    return [generate_nuclei((size, size), style, seed=TEST_SEED + i) for i in range(seeds)]


def scores(segmenter: Segmenter, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean object F1 of a segmenter over image/label pairs, at every threshold of :data:`THRESHOLDS`."""
    per_image = [[object_f1(segmenter(image), truth, iou) for iou in THRESHOLDS] for image, truth in pairs]
    means = np.mean(per_image, axis=0)
    return {f"f1@{iou}": round(float(m), 4) for iou, m in zip(THRESHOLDS, means)}


def model_segmenter(model: object, device: str = "cpu") -> Segmenter:
    """The instance labels ``napari_unet.segment`` gives for a 2D image."""
    from napari_unet.core.inference import segment

    return lambda image: segment(image, model, axes="YX", device=device, probabilities=False).labels


def evaluate(segmenters: dict[str, Segmenter], size: int = 512, seeds: int = 3) -> dict[str, dict[str, dict]]:
    """``{style: {segmenter name: {"f1@0.5": ..., "f1@0.75": ...}, "objects": mean count}}`` over HELD_OUT."""
    table: dict[str, dict[str, dict]] = {}
    for name, style in HELD_OUT.items():
        pairs = test_images(style, size, seeds)
        row: dict = {key: scores(segment, pairs) for key, segment in segmenters.items()}
        row["objects"] = round(float(np.mean([truth.max() for _, truth in pairs])), 1)
        table[name] = row
    return table


def segment_seconds(model: object, size: int = 512, repeats: int = 7, device: str = "cpu") -> float:
    """Median wall time of ``segment`` on one ``size`` x ``size`` image, after one warm-up run."""
    from napari_unet.core.inference import segment

    image, _ = generate_nuclei((size, size), "default", seed=TEST_SEED)
    segment(image, model, axes="YX", device=device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segment(image, model, axes="YX", device=device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_table(table: dict[str, dict[str, dict]], names: list[str]) -> str:
    """A text table with one row per style and F1@0.5 / F1@0.75 columns per segmenter."""
    header = f"{'style':<16}{'objects':>8}" + "".join(f"{n + ' F1@0.5':>20}{'F1@0.75':>9}" for n in names)
    lines = [header, "-" * len(header)]
    for style, row in table.items():
        cells = "".join(f"{row[n]['f1@0.5']:>20.3f}{row[n]['f1@0.75']:>9.3f}" for n in names)
        lines.append(f"{style:<16}{row['objects']:>8.0f}{cells}")
    means = "".join(f"{np.mean([r[n]['f1@0.5'] for r in table.values()]):>20.3f}"
                    f"{np.mean([r[n]['f1@0.75'] for r in table.values()]):>9.3f}" for n in names)
    lines += ["-" * len(header), f"{'mean':<16}{'':>8}{means}"]
    return "\n".join(lines)


def main() -> None:
    """Print the quality table of the model and the baseline, then the model's speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="bundled or library model name, or a model folder")
    parser.add_argument("--size", type=int, default=512, help="side of the square test images")
    parser.add_argument("--seeds", type=int, default=3, help="test images per style")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs for the speed figure")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is faster on a machine busy with "
                             "other torch processes, where more threads than free cores wait on each other")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_unet.core.models import load_model

    model = load_model(args.model)
    table = evaluate({"model": model_segmenter(model), "baseline": classical_segmentation}, args.size, args.seeds)
    print(f"object F1 on held-out styles, {args.seeds} image(s) of {args.size}x{args.size} per style")
    print(format_table(table, ["model", "baseline"]))
    seconds = segment_seconds(model, args.size, args.repeats)
    print(f"\nsegment() on one {args.size}x{args.size} image: {seconds:.3f} s (median of {args.repeats}, "
          f"CPU, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
