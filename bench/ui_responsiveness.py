"""Does the viewer stay responsive while the Segment widget works? A heartbeat measures the event loop.

A 10 ms QTimer runs on napari's main thread while the Segment widget segments a 2048 x 2048 generated nuclei
image (the button is clicked, the run ends with its ``run_finished`` signal). Every gap between two heartbeats
beyond 10 ms is time the GUI could not react. The table gives the worst and the 99th-percentile gap, per torch
thread count (``NAPARI_UNET_THREADS``; "auto" is what the plugin does: all cores but one), for the whole run
and for its three phases: *start* (the click: output layer and napari's activity-panel bar are created, the
worker loads the model), *tiles* (from the first tile event to the last), *finish* (the final labels are
copied and redrawn). Target: worst gap under 50 ms on a 2-core CPU while the tiles run.

A second table does the same for the Fine-tune dock (``--finetune-seconds``, 0 to skip): a run on a 512 x 512
generated image and its exact labels, once with training in a thread of the viewer's process (how the dock
trained before) and once in the child process it trains in now (:mod:`napari_unet.core.training_process`).
Phases: *start* (the click to the first progress record: copying the pair, starting the child or the thread,
loading the model, preparing the data), *steps* (first to last record), *finish* (saving, the dock's update).

A third table (``--live-seconds``, 0 to skip) keeps the Fine-tune dock's *Live* mode on for that long on the same
pair while a brush stroke is painted every 200 ms (the pair's labels are given a kept prediction, as Segment's
output has, so that each better version re-segments the view): *start* is the first 5 s (the child starting
and the first tick), *live* the rest until Live is switched off, *finish* from then until the child has ended.

Three reference rows separate the plugin from its surroundings: the same heartbeat with no run (idle, and
with napari redrawing its canvas 10 times a second, which is what any visible change costs on this machine's
renderer), and a heartbeat in a plain Python thread beside ``segment()`` with no viewer at all (what the
worker's hold on the interpreter lock costs by itself).

Run under a display or a virtual one:

    xvfb-run -a python bench/ui_responsiveness.py [--size 2048] [--threads auto,1,2] [--model nuclei]
                                                  [--finetune-seconds 20] [--live-seconds 30] [--no-segment]

The model is the bundled ``nuclei`` model when it is installed, else a randomly initialised U-Net of the same
kind (the speed of a forward pass does not depend on the weights).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from typing import Any

PHASES = ("all", "start", "tiles", "finish")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="image edge in pixels (default 2048)")
    parser.add_argument("--threads", default="auto,1", help="comma-separated torch thread counts ('auto' = the "
                        "plugin's default)")
    parser.add_argument("--model", default=None, help="model name or folder (default: 'nuclei' if installed)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per thread count (and per fine-tuning mode)")
    parser.add_argument("--finetune-seconds", type=int, default=20, help="time budget of each fine-tuning run "
                        "(default 20; 0 skips the fine-tuning table)")
    parser.add_argument("--live-seconds", type=int, default=30, help="how long Live mode runs while strokes are "
                        "painted (default 30; 0 skips the live table)")
    parser.add_argument("--no-segment", action="store_true", help="measure fine-tuning only")
    return parser.parse_args()


def pick_model(requested: str | None) -> str:
    from napari_unet.core.library import list_models

    if requested:
        return requested
    if any(info.name == "nuclei" for info in list_models()):
        return "nuclei"
    os.environ.setdefault("NAPARI_UNET_HOME", tempfile.mkdtemp(prefix="napari-unet-bench-"))
    from napari_unet.core.models import Model, ModelConfig, save_model
    from napari_unet.core.unet import UNetConfig

    network = UNetConfig(out_channels=3, depth=3, base_features=16, padding="same", norm="batch")
    save_model(Model.from_config(ModelConfig(network, description="random weights, bench only"), seed=0),
               "bench-unet", overwrite=True)
    print("note: the bundled 'nuclei' model is not installed; using a random U-Net (depth 3, 16 features)")
    return "bench-unet"


def set_threads(threads: str) -> None:
    if threads == "auto":
        os.environ.pop("NAPARI_UNET_THREADS", None)
    else:
        os.environ["NAPARI_UNET_THREADS"] = threads


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(beats: list[float], windows: dict[str, tuple[float, float]], seconds: float) -> dict[str, float]:
    """Worst and 99th-percentile gap (ms) between heartbeats within each named time window."""
    result = {"seconds": seconds}
    for name in PHASES:
        low, high = windows.get(name, (0.0, -1.0))
        gaps = [(b - a) * 1000 for a, b in zip(beats, beats[1:]) if low <= b and a <= high]
        result[name] = max(gaps, default=0.0)
        result[f"{name} p99"] = percentile(gaps, 99) if gaps else 0.0
    return result


def cell(result: dict[str, float], phase: str) -> str:
    if not result[phase]:
        return "-"
    return f"{result[phase]:.0f} ({result[phase + ' p99']:.0f})"


def wait_until(condition: Any, timeout_s: float = 120.0) -> bool:
    """Run the event loop until ``condition()`` holds or ``timeout_s`` passed; whether it holds."""
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout_s
    while not condition() and time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    return bool(condition())


class Heartbeat:
    """A 10 ms QTimer on the main thread that records when it fires."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.beats: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.beats.append(time.perf_counter()))

    def start(self) -> float:
        self.beats.clear()
        now = time.perf_counter()
        self.beats.append(now)
        self.timer.start()
        return now

    def stop(self) -> float:
        now = time.perf_counter()
        self.beats.append(now)
        self.timer.stop()
        return now


def measure_run(widget: Any, heartbeat: Heartbeat, threads: str) -> dict[str, float]:
    """Click Segment and wait for ``run_finished``; gaps per phase of the run."""
    from qtpy.QtCore import QEventLoop

    set_threads(threads)
    done: list[str] = []
    events: list[float] = []  # arrival times of the worker's events on the main thread
    loop = QEventLoop()
    widget.run_finished.connect(done.append)
    widget.run_finished.connect(loop.quit)
    original = widget._on_event

    def timed(run: object, event: object) -> None:
        events.append(time.perf_counter())
        original(run, event)

    widget._on_event = timed
    started = heartbeat.start()
    widget.run_button.click()
    loop.exec()
    ended = heartbeat.stop()
    widget.run_finished.disconnect()
    del widget._on_event
    if done[0] != "done":
        raise SystemExit(f"the run ended with {done[0]}: {widget.status.text()}")
    windows = {"all": (started, ended), "start": (started, events[0]), "tiles": (events[0], events[-1]),
               "finish": (events[-1], ended)}
    return summary(heartbeat.beats, windows, ended - started)


def finetune_dock(viewer: Any, model: str) -> Any:
    """The Fine-tune dock with the 512 x 512 pair, its model chosen; new versions go to a scratch library."""
    from napari_unet.core.library import resolve_model_folder
    from napari_unet.synthetic import generate_nuclei

    model_path = resolve_model_folder(model)  # before the library moves to a scratch folder
    os.environ["NAPARI_UNET_HOME"] = tempfile.mkdtemp(prefix="napari-unet-bench-")  # new versions go there
    if "finetune pair" not in viewer.layers:
        image, labels = generate_nuclei((512, 512), seed=3)
        viewer.add_image(image, name="finetune pair")
        viewer.add_labels(labels, name="finetune labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    if not widget.rows:
        widget.add_pair(viewer.layers["finetune pair"], viewer.layers["finetune labels"])
    widget.model_picker.select(model_path)
    return widget


def measure_finetune(viewer: Any, heartbeat: Heartbeat, model: str, seconds: int,
                     in_process: bool) -> dict[str, float]:
    """Click Fine-tune on a 512 x 512 pair; training in the viewer's process (a thread) or in a child."""
    from napari_unet.core.training_process import train_and_save
    from napari_unet.widgets import finetune_widget as module

    widget = finetune_dock(viewer, model)
    widget.budget_spin.setValue(seconds)
    relay = module.finetune_in_child
    if in_process:  # what the dock did before: train_and_save in the worker thread itself
        module.finetune_in_child = train_and_save
    try:
        return measure_run(widget, heartbeat, "auto")
    finally:
        module.finetune_in_child = relay


def measure_live(viewer: Any, heartbeat: Heartbeat, model: str, seconds: int,
                 live: bool = True) -> tuple[dict[str, float], str]:
    """Live mode on the 512 x 512 pair for ``seconds`` while a stroke is painted every 200 ms (without ``live``:
    the strokes alone, the reference); the gaps and what live training did (rounds, versions,
    re-segmentations of the view)."""
    import numpy as np
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_unet.widgets._live_training import TICK_MS
    from napari_unet.widgets._predictions import keep_prediction

    widget = finetune_dock(viewer, model)
    labels = viewer.layers["finetune labels"]
    keep_prediction(labels)  # as Segment's output has one: better versions re-segment the view
    rng = np.random.default_rng(0)
    stroke = QTimer()
    stroke.setInterval(200)
    stroke.timeout.connect(lambda: labels.paint(tuple(rng.integers(0, 512, 2)), int(rng.integers(1, 500))))
    redrawn: list[str] = []
    widget.live.resegmented.connect(redrawn.append)
    loop = QEventLoop()
    QTimer.singleShot(seconds * 1000, loop.quit)
    started = heartbeat.start()
    widget.live_button.setChecked(live)
    stroke.start()
    loop.exec()
    stroke.stop()
    if not live:
        ended = heartbeat.stop()
        return summary(heartbeat.beats, {"all": (started, ended)}, ended - started), ""
    run = widget.live._run
    rounds, versions = (run.rounds, len(run.versions)) if run is not None else (0, 0)
    stopping = time.perf_counter()
    widget.live.stopped.connect(loop.quit)
    widget.live_button.setChecked(False)
    loop.exec()
    ended = heartbeat.stop()
    windows = {"all": (started, ended), "start": (started, started + TICK_MS / 1000),
               "tiles": (started + TICK_MS / 1000, stopping), "finish": (stopping, ended)}
    return (summary(heartbeat.beats, windows, ended - started),
            f"{rounds} rounds, {versions} versions, {len(redrawn)} re-segmentations of the view")


def measure_viewer_alone(viewer: Any, heartbeat: Heartbeat, redraw: bool, seconds: float = 3.0) -> dict[str, float]:
    """The heartbeat with no run: idle, or with the canvas redrawn 10 times a second."""
    from qtpy.QtCore import QEventLoop, QTimer

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    nudge = QTimer()
    nudge.setInterval(100)
    steps = [1.001, 1 / 1.001]  # zoom in and out by a hair: a full redraw, the view stays put
    nudge.timeout.connect(lambda: (setattr(camera, "zoom", camera.zoom * steps[0]), steps.reverse()))
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    started = heartbeat.start()
    if redraw:
        nudge.start()
    loop.exec()
    nudge.stop()
    ended = heartbeat.stop()
    return summary(heartbeat.beats, {"all": (started, ended)}, ended - started)


def measure_worker_alone(image: Any, model_name: str, threads: str) -> dict[str, float]:
    """A 10 ms sleep loop on this thread while segment() runs in another: the interpreter lock's share."""
    from napari_unet.core.models import load_model
    from napari_unet.widgets._workers import segment_in_worker

    set_threads(threads)
    model_path = load_model(model_name).path

    def run() -> None:
        for _ in segment_in_worker(image, model_path, None, {"axes": "YX", "probabilities": False}):
            pass

    worker = threading.Thread(target=run)
    beats = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        time.sleep(0.01)
        beats.append(time.perf_counter())
    return summary(beats, {"all": (beats[0], beats[-1])}, beats[-1] - beats[0])


def main() -> int:
    args = parse_args()
    model = pick_model(args.model)
    load = os.getloadavg()[0]  # other processes competing for the cores make every gap longer

    import napari

    from napari_unet.synthetic import generate_nuclei

    image, _ = generate_nuclei((args.size, args.size), seed=0)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")  # as the Plugins menu does
    widget.select_model(model)
    wait_until(lambda: widget.device_picker.ready)  # the background warm-up (torch import) is not measured
    heartbeat = Heartbeat()
    auto = max(1, (os.cpu_count() or 1) - 1)

    rows = [("no run, idle", measure_viewer_alone(viewer, heartbeat, redraw=False)),
            ("no run, 10 redraws/s", measure_viewer_alone(viewer, heartbeat, redraw=True))]
    if not args.no_segment:
        # the first run loads the model and lets torch allocate, as a user's first run would
        rows.append((f"first run: auto ({auto})", measure_run(widget, heartbeat, "auto")))
        for threads in (t.strip() for t in args.threads.split(",")):
            for _ in range(args.repeats):
                rows.append((f"auto ({auto})" if threads == "auto" else threads,
                             measure_run(widget, heartbeat, threads)))
    tuning = []
    for _ in range(args.repeats if args.finetune_seconds else 0):
        for label, in_process in (("in the viewer's process", True), ("in a child process", False)):
            tuning.append((label, measure_finetune(viewer, heartbeat, model, args.finetune_seconds, in_process)))
    live = None
    if args.live_seconds:
        live = (measure_live(viewer, heartbeat, model, 10, live=False),
                measure_live(viewer, heartbeat, model, args.live_seconds))
    viewer.close()
    if not args.no_segment:
        rows.append((f"no viewer: worker ({auto})", measure_worker_alone(image, model, "auto")))

    print(f"\nUI responsiveness: Segment widget on a {args.size} x {args.size} image, model {model!r}, "
          f"{os.cpu_count()} CPU cores, 10 ms heartbeat, load average before the runs {load:.1f}")
    print("gaps between heartbeats in ms: worst (99th percentile)")
    print(f"{'torch threads':<26}{'run s':>7}{'whole run':>16}{'start':>16}{'tiles':>16}{'finish':>16}")
    for label, r in rows:
        cells = "".join(f"{cell(r, phase):>16}" for phase in PHASES)
        print(f"{label:<26}{r['seconds']:>7.1f}{cells}")
    if tuning:
        print(f"\nFine-tune dock: {args.finetune_seconds} s budget on a 512 x 512 image, model {model!r}, torch "
              f"threads auto ({auto}); gaps in ms: worst (99th percentile)")
        print(f"{'training runs':<26}{'run s':>7}{'whole run':>16}{'start':>16}{'steps':>16}{'finish':>16}")
        for label, r in tuning:
            cells = "".join(f"{cell(r, phase):>16}" for phase in PHASES)
            print(f"{label:<26}{r['seconds']:>7.1f}{cells}")
    if live:
        (strokes, _), (r, done) = live
        print(f"\nFine-tune dock, Live for {args.live_seconds} s on a 512 x 512 image with a stroke every 200 ms, model "
              f"{model!r}: {done}; gaps in ms: worst (99th percentile)")
        print(f"{'':<26}{'run s':>7}{'whole run':>16}{'start':>16}{'live':>16}{'finish':>16}")
        for label, row in (("strokes only, no training", strokes), ("live training", r)):
            cells = "".join(f"{cell(row, phase):>16}" for phase in PHASES)
            print(f"{label:<26}{row['seconds']:>7.1f}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
