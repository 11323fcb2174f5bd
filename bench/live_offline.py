"""Live's first version, played without a viewer: does the view it writes beat the user's corrections alone?

The same user as ``bench/live_first_gain.py`` (the worst error on screen corrected from the true labels, one
every ``--pace`` seconds), but Live's child body (:func:`napari_unet.core.live_training.live_rounds`) runs in this
process, fed the corrected labels as snapshots at the times the user made them, on the threads the child would
use. At the first round that is judged (on held-out corrections or on the corrections made after it started),
the labels on screen are written as Live writes them (:func:`napari_unet.widgets._predictions.plan_unedited`:
only unedited objects, only the kinds of change the user made) with that round's model, whether or not the judge
put it to use; the table shows both. So it measures the judge and the writing rule apart, on many images, in a
fraction of the viewer bench's time.

Images: the fluorescence images of this project's DSB 2018 split (``--split``, train by default: what Live's
settings are chosen on) on which the bundled ``nuclei`` model merges nuclei (``bench/dsb2018.py``).

    python bench/live_offline.py [--split train] [--count 40] [--corrections 3] [--pace 10] [--timeout 40]
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
from live_first_gain import repainted, worst_error  # noqa: E402

from napari_unet.core.metrics import object_f1  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(dsb2018.DEFAULT_FOLDER), help="the DSB 2018 folder")
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    parser.add_argument("--count", type=int, default=40, help="images measured (default 40)")
    parser.add_argument("--corrections", type=int, default=3, help="corrections made, one every --pace s")
    parser.add_argument("--pace", type=float, default=10.0, help="seconds between two corrections (default 10)")
    parser.add_argument("--timeout", type=float, default=40.0, help="seconds to wait for a judged round")
    return parser.parse_args()


class TimedSnapshots:
    """Live's snapshots as the user makes them: ``samples[k]`` from ``k * pace`` seconds after the start."""

    def __init__(self, samples: list[list], pace_s: float) -> None:
        self.samples, self.pace_s, self.started = samples, pace_s, time.perf_counter()

    def _due(self) -> int:
        return min(int((time.perf_counter() - self.started) // self.pace_s), len(self.samples) - 1)

    def latest(self) -> tuple[int, list]:
        index = self._due()
        return index + 1, self.samples[index]

    def wait_newer(self, number: int, cancel: Any) -> None:
        while self._due() + 1 == number and not cancel():
            time.sleep(0.05)

    def at(self, seconds: float) -> list:
        return self.samples[min(int(seconds // self.pace_s), len(self.samples) - 1)]


def corrections(prediction: np.ndarray, truth: np.ndarray, count: int) -> list[np.ndarray]:
    """The labels after each of ``count`` corrections of the worst error (fewer when none is left)."""
    made, labels = [], prediction
    while len(made) < count:
        error = worst_error(labels, truth)
        if error is None:
            break
        labels = labels.copy()
        labels[error[0]] = repainted(labels, truth, *error)
        made.append(labels)
    return made


def first_judged(model_path: Path, snapshots: TimedSnapshots, timeout_s: float) -> tuple[Any, float, Path | None]:
    """Live's child body on the snapshots until its first scored round: (the round, seconds since the first
    correction, the folder of that round's model, saved whether or not it was put to use)."""
    import napari_unet.core.live_training as live_training
    from napari_unet.core.versions import save_version
    from napari_unet.widgets._live_training import ROUND_S

    tuned_models: list = []
    real_round = live_training._run_round

    def remembering_round(*args, **kwargs):  # keep each round's model, to write its view even if refused
        tuned, last = yield from real_round(*args, **kwargs)
        tuned_models.append(tuned)
        return tuned, last

    timed_out = lambda: time.perf_counter() - snapshots.started > timeout_s  # noqa: E731
    live_training._run_round = remembering_round
    try:
        for event in live_training.live_rounds(model_path, snapshots, timed_out, {"time_budget_s": ROUND_S, "seed": 0}):
            if isinstance(event, live_training.LiveRound) and event.score_name is not None:
                model = next((m for m in reversed(tuned_models) if m is not None), None)
                folder = event.version or (save_version(model) if model is not None else None)
                return event, time.perf_counter() - snapshots.started, folder
    finally:
        live_training._run_round = real_round
    return None, timeout_s, None


def measure(image: np.ndarray, truth: np.ndarray, model_path: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    from napari_unet import segment
    from napari_unet.core.models import load_model
    from napari_unet.core.training_data import Sample
    from napari_unet.widgets._predictions import plan_unedited

    prediction = segment(image, load_model(model_path)).labels
    made = corrections(prediction, truth, args.corrections)
    if not made:
        return None
    snapshots = TimedSnapshots([[Sample(image, labels, prediction=prediction)] for labels in made], args.pace)
    event, seconds, folder = first_judged(model_path, snapshots, args.timeout)
    by_hand = np.asarray(snapshots.at(seconds)[0].labels)
    result = {"made": len(made), "segment": object_f1(prediction, truth), "by_hand": object_f1(by_hand, truth),
              "round": event, "seconds": seconds, "view": None}
    if folder is not None:
        new = segment(image, load_model(folder)).labels
        written = plan_unedited(by_hand, prediction, new, True, None, (slice(None),) * 2, by_hand.shape)
        view = by_hand.copy()
        view[written] = np.where(new[written] > 0, new[written] + int(by_hand.max()), 0)
        result["view"] = object_f1(view, truth)
    return result


def main() -> int:
    args = parse_args()
    from napari_unet import segment
    from napari_unet.core.library import resolve_model_folder
    from napari_unet.core.models import load_model

    model_path = resolve_model_folder("nuclei")
    model = load_model(model_path)
    os.environ["NAPARI_UNET_HOME"] = tempfile.mkdtemp(prefix="napari-unet-bench-")  # the rounds' models go there
    entries = [e for e in dsb2018.split(dsb2018.read_index(args.data))[args.split] if e.modality == "fluo"]
    print(f"Live's first judged round, {args.split} split, a correction every {args.pace:.0f} s (at most "
          f"{args.corrections}), on {os.cpu_count()} CPU cores; object F1@0.5 against the true labels\n")
    print(f"{'image':<10}{'fixes':>6}{'Segment':>8}{'by hand':>8}{'round at':>9}  {'judge (before -> after)':<30}"
          f"{'view':>7}  outcome")
    tally: dict[str, list[int]] = {"put to use": [0, 0, 0], "refused": [0, 0, 0]}
    measured = 0
    for entry in entries:
        if measured >= args.count:
            break
        image, truth = dsb2018.load(args.data, entry)
        if truth.max() < 10:
            continue
        error = worst_error(segment(image, model).labels, truth)
        if error is None or not error[1].startswith("merge"):
            continue
        result = measure(image, truth, model_path, args)
        if result is None:
            continue
        measured += 1
        event, view, hand = result["round"], result["view"], result["by_hand"]
        judge = "no judged round" if event is None else (
            f"{'used' if event.version else 'refused'} {event.before:.2f} -> {event.after:.2f}")
        outcome = "" if view is None else "better" if view > hand else "worse" if view < hand else "same"
        if view is not None:
            counts = tally["put to use" if event.version else "refused"]
            counts[("better", "same", "worse").index(outcome)] += 1
        view_text = "" if view is None else f"{view:.3f}"
        print(f"{entry.id[:8]:<10}{result['made']:>6}{result['segment']:>8.3f}{hand:>8.3f}"
              f"{result['seconds']:>8.0f}s  {judge:<30}{view_text:>7}  {outcome}", flush=True)
    for name, (better, same, worse) in tally.items():
        print(f"\nviews of rounds {name}: better than by hand on {better}, the same on {same}, worse on {worse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
