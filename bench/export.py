"""Exporting a freshly fine-tuned model from the Export dock: seconds from pressing Export to the dock's result,
without and with the bioimageio.core check, and the stages they go to.

The situation: a user fine-tunes the bundled ``nuclei`` model, saves the version in the library and exports it
for Fiji or QuPath. The script fine-tunes ``nuclei`` for ``--seconds`` (default 30) on a generated 256 x 256
image with :func:`napari_unet.finetune`, saves it as a library version (in a temporary library:
``NAPARI_UNET_HOME`` is set to a temporary folder), opens napari without showing it, docks **Export model**
and presses Export three times: the first export of the session (bioimage.io libraries not yet imported),
a second one, and one with *Check with bioimageio.core* (``--check-first``: the first export is the one with
the check, then one without and one with). Each time is from the press to the dock's
``run_finished``; the stages are the worker's own progress steps (loading, writing, checking), timed as the
worker yields them. The package's size is printed beside the weights'.

Run ``xvfb-run -a python bench/export.py`` (about a minute and a half on a 2-core CPU). Torch runs on one
thread for the fine-tuning, and the dock sets its own threads (all cores but one) as it does for a user.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="fine-tuning time budget (default 30)")
    parser.add_argument("--check-first", action="store_true",
                        help="check the first export of the session with bioimageio.core")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-export-") as tmp:
        os.environ["NAPARI_UNET_HOME"] = str(Path(tmp) / "home")
        name = fine_tuned_version(args.seconds)
        export_from_the_dock(name, Path(tmp), args.check_first)


def fine_tuned_version(seconds: float) -> str:
    """Fine-tune the bundled model on one generated image and save it in the library; returns its name."""
    import torch

    from napari_unet import Sample, finetune, load_model, save_model
    from napari_unet.synthetic import generate_nuclei

    torch.set_num_threads(1)
    image, labels = generate_nuclei((256, 256), seed=7)
    start = time.perf_counter()
    tuned = finetune(load_model("nuclei"), [Sample(image, labels, axes="YX")], time_budget_s=seconds,
                     device="cpu", seed=0)
    folder = save_model(tuned, "nuclei-tuned")
    print(f"fine-tuned nuclei for {time.perf_counter() - start:.1f} s ({len(tuned.history)} steps); saved as "
          f"{folder.name}")
    return folder.name


def export_from_the_dock(name: str, folder: Path, check_first: bool) -> None:
    """Press Export in the dock three times and print the seconds and stages of each."""
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_unet.core.library import WEIGHTS_FILE, library_dir
    from napari_unet.widgets import export_widget as dock_module

    stages: list[tuple[float, str]] = []
    original = dock_module.export_in_worker

    def timed_worker(*args, **kwargs):  # the dock's worker, its progress steps timed as it yields them
        run = original(*args, **kwargs)
        try:
            while True:
                step = next(run)
                stages.append((time.perf_counter(), step.message))
                yield step
        except StopIteration as stop:
            return stop.value

    dock_module.export_in_worker = timed_worker
    viewer = napari.Viewer(show=False)
    try:
        _, dock = viewer.window.add_plugin_dock_widget("napari-unet", "Export model")
        if not dock.select_model(name):
            raise SystemExit(f"the dock does not list {name}")
        weights = (library_dir() / name / WEIGHTS_FILE).stat().st_size
        runs = ((("first export, with the check", True), ("second export", False), ("third, with the check", True))
                if check_first else
                (("first export", False), ("second export", False), ("third, with the check", True)))
        for number, (run, check) in enumerate(runs):
            target = folder / f"{name}-{number}.zip"  # a new file: an existing one would ask to be replaced
            dock.path_edit.setText(str(target))
            dock.check_box.setChecked(check)
            outcome: list[str] = []
            loop = QEventLoop()
            dock.run_finished.connect(lambda status: (outcome.append(status), loop.quit()))
            stages.clear()
            start = time.perf_counter()
            dock.export()
            QTimer.singleShot(600_000, loop.quit)
            loop.exec()
            seconds = time.perf_counter() - start
            dock.run_finished.disconnect()
            if outcome != ["done"]:
                raise SystemExit(f"{run}: the dock reported {outcome or 'nothing'}: {dock.status.text()}")
            print(f"{run}: {seconds:.1f} s from the press to the result ({_stage_text(start, stages)}); "
                  f"{target.stat().st_size / 2**20:.1f} MB for {weights / 2**20:.1f} MB of weights")
    finally:
        dock_module.export_in_worker = original
        viewer.close()


def _stage_text(start: float, stages: list[tuple[float, str]]) -> str:
    """'loading the model 0.3 s, writing the package 4.1 s, ...': each stage from its step to the next."""
    times = [t for t, _ in stages]
    texts = []
    for (t, message), end in zip(stages, times[1:]):
        texts.append(f"{message.rstrip('.')} {end - t:.1f} s")
    return f"start {times[0] - start:.1f} s, " + ", ".join(texts) if times else "no stages"


if __name__ == "__main__":
    main()
