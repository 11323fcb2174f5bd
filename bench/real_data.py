"""Quality on real images: AP@0.5 and F1@0.5 per modality on the validation split of the 2018 Data Science Bowl.

For each modality (fluorescence, colour histology, grey brightfield) of the validation split of
``bench/dsb2018.py``, every image is segmented and its objects are matched one to one with the true nuclei at
IoU > 0.5 (``napari_unet.core.metrics.object_matching``); the counts are pooled over the images, and

    AP@0.5 = TP / (TP + FP + FN)        F1@0.5 = 2 TP / (2 TP + FP + FN)

(AP as in the Data Science Bowl and the StarDist paper, at one threshold). Segmenters: the bundled ``nuclei``
model (or ``--model``), a previous model (``--previous FOLDER``, e.g. the weights of an earlier commit
written out with ``git show``), and the classical baseline of ``bench/baseline.py`` (Otsu + watershed with
fixed parameters; it is given the luminance, inverted for the modalities with dark nuclei on a bright
background, as a user of such a pipeline would). Colour images reach the models as they are: ``segment``
converts them to one channel for a 1-channel model (optical density for these stained sections).

Run ``python bench/real_data.py [DATA_FOLDER] [--previous FOLDER] [--threads N]``; DATA_FOLDER defaults to
``../shared/data/dsb2018`` from the repository root.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from baseline import classical_segmentation
from dsb2018 import DEFAULT_FOLDER, MODALITIES, Entry, load, read_index, split

from napari_unet.core.colour import LUMINANCE_ONLY, to_grey
from napari_unet.core.metrics import object_matching

Segmenter = Callable[[np.ndarray], np.ndarray]
DARK_NUCLEI = ("color", "bright_gray")  # nuclei darker than the background
STARDIST_AP = 0.864  # StarDist's published AP@0.5 on its own DSB 2018 test split (Schmidt et al. 2018, fig. 4)


def model_segmenter(model: object, device: str = "cpu", diameter: float | None = None) -> Segmenter:
    """Instance labels from ``napari_unet.segment`` with its defaults (axes inferred, colour to grey)."""
    from napari_unet.core.inference import segment

    def run(image: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the colour-to-grey notice, once per image
            return segment(image, model, device=device, probabilities=False, diameter=diameter).labels

    return run


def baseline_segmenter(modality: str) -> Segmenter:
    """The classical baseline on the grey image, inverted where nuclei are darker than the background."""
    def run(image: np.ndarray) -> np.ndarray:
        grey = to_grey(image, LUMINANCE_ONLY) if image.ndim == 3 else image.astype(np.float32)
        if modality in DARK_NUCLEI:
            grey = grey.max() - grey
        return classical_segmentation(grey)

    return run


def counts(pairs: Iterable[tuple[np.ndarray, np.ndarray]], iou: float = 0.5) -> dict[str, int]:
    """Pooled TP, FP, FN of (predicted, true) label pairs."""
    tp = fp = fn = 0
    for pred, truth in pairs:
        m = object_matching(pred, truth, iou)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    return {"tp": tp, "fp": fp, "fn": fn}


def ap_f1(c: dict[str, int]) -> tuple[float, float]:
    """AP@t = TP / (TP + FP + FN) and F1@t = 2 TP / (2 TP + FP + FN) from pooled counts."""
    errors = c["fp"] + c["fn"]
    ap = c["tp"] / (c["tp"] + errors) if c["tp"] + errors else 1.0
    f1 = 2 * c["tp"] / (2 * c["tp"] + errors) if c["tp"] + errors else 1.0
    return ap, f1


def evaluate(segmenters: dict[str, Segmenter | Callable[[str], Segmenter]], folder: Path | str,
             entries: list[Entry], per_modality: set[str] = frozenset({"baseline"})) -> dict[str, dict]:
    """``{modality: {name: {"tp", "fp", "fn", "ap@0.5", "f1@0.5", "seconds"}, "images", "objects"}}``.

    Segmenters named in ``per_modality`` are factories taking the modality (the baseline's inversion).
    """
    table: dict[str, dict] = {}
    for modality in MODALITIES:
        chosen = [e for e in entries if e.modality == modality]
        if not chosen:
            continue
        data = [load(folder, e) for e in chosen]
        row: dict = {"images": len(chosen), "objects": int(sum((np.unique(truth) > 0).sum() for _, truth in data))}
        for name, make in segmenters.items():
            segment = make(modality) if name in per_modality else make
            start = time.perf_counter()
            predictions = [segment(image) for image, _ in data]
            seconds = time.perf_counter() - start
            c = counts(zip(predictions, (truth for _, truth in data)))
            ap, f1 = ap_f1(c)
            row[name] = {**c, "ap@0.5": round(ap, 4), "f1@0.5": round(f1, 4), "seconds": round(seconds, 1)}
        table[modality] = row
    return table


def format_table(table: dict[str, dict], names: list[str]) -> str:
    """One row per modality: images, objects, then AP@0.5 and F1@0.5 of each segmenter."""
    header = f"{'modality':<12}{'images':>7}{'objects':>8}" + "".join(f"{n + ' AP@0.5':>22}{'F1@0.5':>8}"
                                                                     for n in names)
    lines = [header, "-" * len(header)]
    for modality, row in table.items():
        cells = "".join(f"{row[n]['ap@0.5']:>22.3f}{row[n]['f1@0.5']:>8.3f}" for n in names)
        lines.append(f"{modality:<12}{row['images']:>7}{row['objects']:>8}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_FOLDER, help="the DSB 2018 folder")
    parser.add_argument("--model", default="nuclei", help="bundled or library model name, or a model folder")
    parser.add_argument("--previous", type=Path, default=None, help="a model folder to compare with")
    parser.add_argument("--split", default="validation", choices=("validation", "train"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_unet.core.models import load_model

    entries = split(read_index(args.data))[args.split]
    segmenters: dict = {"model": model_segmenter(load_model(args.model))}
    if args.previous is not None:
        segmenters["previous"] = model_segmenter(load_model(args.previous))
    segmenters["baseline"] = baseline_segmenter
    table = evaluate(segmenters, args.data, entries)
    print(f"{args.split} split of {args.data} (bench/dsb2018.py), objects matched at IoU > 0.5, pooled per modality")
    print(format_table(table, list(segmenters)))
    print(f"\nreference, not comparable split: StarDist AP@0.5 {STARDIST_AP} on its own DSB 2018 fluorescence test set")


if __name__ == "__main__":
    main()
