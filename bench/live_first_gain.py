"""From the first corrected object to a better prediction on screen: how long does Live mode take?

What a user does, played in a real viewer (run under a display or ``xvfb-run -a``): an image is segmented by
the Segment dock with the bundled ``nuclei`` model; the user corrects one object (the worst error on screen,
picked from the true labels: the largest object that merges two or more true nuclei, else the true nucleus
matched worst, else the largest object that matches no true nucleus, erased), adds the image and the Segment
labels as the Fine-tune dock's pair and switches *Live* on, then goes on correcting the next worst error every
``--pace`` seconds. The clock starts with the first correction. Live trains in its child, and each version that
does better on held-out corrections (or, for a round started with one correction, on the corrections made after it started) re-segments the view except
where the user edited (:mod:`napari_unet.widgets._live_training`). At each
re-segmentation the table gives object F1@0.5 against the true labels of the labels on screen and of
Segment's labels with the same corrections by hand and nothing else. "first gain" is the first
re-segmentation whose F1 on screen beats the corrections by hand: the model, not the strokes, made the view
better. A re-segmentation below it made the view worse.

Images: the generated ``large_blurry`` style (512 x 512, held-out seed) and real ones: the first images of
the DSB 2018 validation split's fluorescence images (``bench/dsb2018.py``; order of the split) on which
``nuclei`` merges nuclei, so that a correction has something to teach. Nothing here chooses anything; Live's
settings are chosen with ``--split train`` (the train split's images, and no generated one).

    xvfb-run -a python bench/live_first_gain.py [--data ../shared/data/dsb2018] [--real 2] [--split train]
                                                [--corrections 5] [--pace 10] [--timeout 120]

Target (issue: train while annotating): under 30 s from the first corrected object to a better prediction on
screen, on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dsb2018  # noqa: E402
from default_model import HELD_OUT, TEST_SEED  # noqa: E402
from ui_responsiveness import wait_until  # noqa: E402

from napari_unet.core.metrics import iou_pairs, object_f1  # noqa: E402

FALSE_POSITIVE = "false positive"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(dsb2018.DEFAULT_FOLDER), help="the DSB 2018 folder")
    parser.add_argument("--real", type=int, default=2, help="how many real images (0: generated only)")
    parser.add_argument("--split", choices=("validation", "train"), default="validation",
                        help="the DSB images: the validation split reports (with the generated image); the train "
                        "split is for choosing Live's settings (real images only)")
    parser.add_argument("--model", default="nuclei", help="the model Segment starts from (default nuclei)")
    parser.add_argument("--corrections", type=int, default=5, help="corrections made, one every --pace s")
    parser.add_argument("--pace", type=float, default=10.0, help="seconds between two corrections (default 10)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds of Live per image at most")
    return parser.parse_args()


def worst_error(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The pixels a user would repaint first, and what was wrong there: the largest predicted object that
    covers half or more of two or more true nuclei (a merge), else the true nucleus whose best IoU is lowest
    (below 0.5), else the largest predicted object that matches no true nucleus (a false positive, erased)."""
    truth_ids, pred_ids, iou = iou_pairs(pred, truth)
    areas_t = dict(zip(*np.unique(truth[truth > 0], return_counts=True)))
    merges = []
    for p in np.unique(pred[pred > 0]):
        inside = truth[pred == p]
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        covered = [t for t, c in zip(ids, counts) if c >= 0.5 * areas_t[t]]
        if len(covered) >= 2:
            merges.append((int((pred == p).sum()), int(p), covered))
    if merges:
        _, p, covered = max(merges)
        return (pred == p) | np.isin(truth, covered), f"merge of {len(covered)} nuclei"
    best = {t: 0.0 for t in areas_t}
    for t, value in zip(truth_ids, iou):
        best[t] = max(best[t], float(value))
    worst = min(best, key=best.get)
    if best[worst] >= 0.5:
        return false_positive(pred, truth_ids, pred_ids, iou)
    overlapping = np.unique(pred[truth == worst])
    region = (truth == worst) | np.isin(pred, overlapping[overlapping > 0])
    return region, f"nucleus matched at IoU {best[worst]:.2f}"


def false_positive(pred: np.ndarray, truth_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray
                   ) -> tuple[np.ndarray, str] | None:
    """The largest predicted object that no true nucleus matches at IoU 0.5 or more, if any."""
    matched = set(pred_ids[iou >= 0.5].tolist())
    ids, areas = np.unique(pred[pred > 0], return_counts=True)
    unmatched = [(int(area), int(p)) for p, area in zip(ids, areas) if int(p) not in matched]
    if not unmatched:
        return None
    return pred == max(unmatched)[1], FALSE_POSITIVE


def repainted(labels: np.ndarray, truth: np.ndarray, region: np.ndarray, what: str) -> np.ndarray | int:
    """What a user paints over ``region`` of ``labels``: the truth there (new ids, so no object of the labels
    grows), or nothing (a false positive, erased)."""
    return 0 if what == FALSE_POSITIVE else np.where(truth[region] > 0, truth[region] + int(labels.max()), 0)


def correct(layer: Any, truth: np.ndarray, region: np.ndarray, what: str) -> None:
    """Repaint ``region`` of the labels layer (:func:`repainted`) through napari's paint path (undo history,
    paint event)."""
    layer.data_setitem(np.nonzero(region), repainted(np.asarray(layer.data), truth, region, what))


def cases(args: argparse.Namespace, model: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, true labels) of every image measured."""
    from napari_unet import segment
    from napari_unet.synthetic import generate_nuclei

    found = []
    if args.split == "validation":  # the held-out style is a test set too: never used to choose anything
        image, truth = generate_nuclei((512, 512), HELD_OUT["large_blurry"], seed=TEST_SEED)
        found.append(("generated large_blurry 512x512", image, truth))
    if not args.real:
        return found
    entries = [e for e in dsb2018.split(dsb2018.read_index(args.data))[args.split] if e.modality == "fluo"]
    for entry in entries:
        image, truth = dsb2018.load(args.data, entry)
        if truth.max() < 10:
            continue
        error = worst_error(segment(image, model).labels, truth)
        if error is not None and error[1].startswith("merge"):
            found.append((f"DSB fluo {entry.id[:8]} {image.shape[0]}x{image.shape[1]}", image, truth))
        if len(found) >= args.real + (args.split == "validation"):
            break
    return found


def measure(name: str, image: np.ndarray, truth: np.ndarray, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Segment; correct the worst error and switch Live on; correct the next worst error every ``args.pace``
    seconds (up to ``args.corrections``); F1 on screen at each re-segmentation, until the first gain or
    ``args.timeout`` seconds."""
    import napari

    viewer = napari.Viewer(show=True)
    try:
        return _measure(viewer, name, image, truth, model, args.corrections, args.pace, args.timeout)
    finally:
        viewer.close()


def _measure(viewer: Any, name: str, image: np.ndarray, truth: np.ndarray, model: Path, corrections: int,
             pace_s: float, timeout_s: float) -> dict[str, Any]:
    viewer.add_image(image, name="image")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment.select_model(model)
    finished: list[str] = []
    segment.run_finished.connect(finished.append)
    segment.run_button.click()
    if not wait_until(lambda: finished, 300) or finished[0] != "done":
        raise SystemExit(f"Segment did not finish: {segment.status.text()}")
    labels = viewer.layers["image labels"]
    shown = lambda: np.asarray(labels.data)  # noqa: E731
    by_hand = shown().copy()  # Segment's labels with the same corrections and no re-segmentation
    f1_segment = object_f1(by_hand, truth)
    _, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    finetune.select_model(model)
    viewer.layers.selection.active = labels
    finetune.add_button.click()
    redrawn: list[tuple[float, float, float]] = []  # (s since the first correction, F1 on screen, F1 by hand)
    made: list[str] = []
    started = time.perf_counter()
    finetune.live.resegmented.connect(lambda version: redrawn.append(
        (time.perf_counter() - started, object_f1(shown(), truth), object_f1(by_hand, truth))))

    def correct_next() -> bool:
        error = worst_error(shown(), truth)
        if error is None:
            return False
        correct(labels, truth, *error)
        by_hand[error[0]] = np.asarray(labels.data)[error[0]]
        made.append(error[1])
        return True

    more = correct_next()
    finetune.live_button.setChecked(True)
    gained = lambda: any(screen > hand for _, screen, hand in redrawn)  # noqa: E731
    while more and len(made) < corrections and not gained() and time.perf_counter() - started < timeout_s:
        due = started + len(made) * pace_s
        wait_until(lambda: time.perf_counter() >= due or gained(), timeout_s)
        if time.perf_counter() >= due:
            more = correct_next()
    wait_until(gained, timeout_s - (time.perf_counter() - started))
    stopped: list[str] = []
    finetune.live.stopped.connect(stopped.append)
    finetune.live_button.setChecked(False)
    wait_until(lambda: stopped, 60)
    gain = next(((s, screen) for s, screen, hand in redrawn if screen > hand), None)
    return {"name": name, "made": made, "segment": f1_segment, "by_hand": object_f1(by_hand, truth),
            "redrawn": redrawn, "gain": gain, "live": finetune.live_line.text()}


def main() -> int:
    args = parse_args()
    from napari_unet.core.library import resolve_model_folder
    from napari_unet.core.models import load_model

    model_path = resolve_model_folder(args.model)
    found = cases(args, load_model(model_path))
    os.environ["NAPARI_UNET_HOME"] = tempfile.mkdtemp(prefix="napari-unet-bench-")  # Live's versions go there
    results = [measure(name, image, truth, model_path, args) for name, image, truth in found]
    print(f"\nLive mode: the worst error corrected every {args.pace:.0f} s (at most {args.corrections}) from the "
          f"first, on {os.cpu_count()} CPU cores, starting from {model_path.name}; object F1@0.5 against the true "
          "labels: as Segment left them, with the corrections alone, and on screen after Live re-segmented it\n")
    print(f"{'image':<34}{'Segment':>8}{'first gain (s, F1)':>22}  re-segmentations (s: F1 on screen / by hand)")
    for r in results:
        gain = f"{r['gain'][0]:.0f} s, {r['gain'][1]:.3f}" if r["gain"] else "none"
        redraws = ", ".join(f"{s:.0f}: {screen:.3f}/{hand:.3f}" for s, screen, hand in r["redrawn"]) or "none"
        print(f"{r['name']:<34}{r['segment']:>8.3f}{gain:>22}  {redraws}")
        print(f"{'':<34}corrected: {'; '.join(r['made'])}; by hand {r['by_hand']:.3f}")
        print(f"{'':<34}{r['live']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
