"""Case 4: closing napari mid-run, in a subprocess under the same virtual display, with a timeout.

The process must exit cleanly without Qt's "QThread: Destroyed while thread is still running" or "wrapped
C/C++ object ... has been deleted", and the model library must hold only complete models: the base model
byte-identical, and a new version complete or absent, never partial.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import folder_bytes, leftovers, save_tiny

SCRIPT = textwrap.dedent("""
    import multiprocessing, sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QTimer
    from napari_unet.synthetic import generate_nuclei
    import napari_unet.core.inference as inference, napari_unet.core.training_process as training_process

    which = sys.argv[1]
    sys.path.insert(0, sys.argv[2])
    import child_training  # fine-tuning runs in a child process: slow its steps there
    training_process.train_and_save = child_training.body(child_training.slow, seconds=0.2)
    real_segment = inference.segment_steps
    progress = {"n": 0}
    def slow_segment(*args, **kwargs):
        run = real_segment(*args, **kwargs)
        try:
            while True:
                yield next(run)
                progress["n"] += 1
                time.sleep(0.2)
        except StopIteration as stop:
            return stop.value
    inference.segment_steps = slow_segment

    viewer = napari.Viewer(show=True)
    image, labels = generate_nuclei((96, 96), seed=1)
    viewer.add_image(np.tile(image, (2, 2)), name="cells")
    user = viewer.add_labels(np.tile(labels, (2, 2)).astype(np.int32), name="corrections")
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    segment.select_model("tiny")
    segment.tile_spin.setValue(128)
    segment.batch_spin.setValue(1)
    if which == "segment":
        widget = segment
        segment.segment()
    else:
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
        widget.add_pair(viewer.layers["cells"], user)
        widget.model_picker.select("tiny")
        widget.steps_spin.setValue(400)
        widget.batch_spin.setValue(2)
        widget.start()
    def close():
        if (progress["n"] if which == "segment" else len(widget.plot.series["loss"])) < 2:
            QTimer.singleShot(100, close)
            return
        print("closing mid-run" if widget.running else "the run ended first", flush=True)
        print("children", *[child.pid for child in multiprocessing.active_children()], flush=True)
        viewer.close()
    QTimer.singleShot(100, close)
    napari.run()
    print("exited", flush=True)
""")


@pytest.mark.parametrize("which", ["segment", "finetune"])
def test_closing_the_viewer_mid_run_exits_cleanly(which, isolated_home, library):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    save_tiny("tiny")
    before = folder_bytes(library / "tiny")
    tests = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-c", SCRIPT, which, tests], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NAPARI_UNET_HOME": str(isolated_home)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "closing mid-run" in output and "exited" in output
    children = [int(pid) for pid in output.split("children")[1].splitlines()[0].split()]
    assert len(children) == (which == "finetune"), "fine-tuning runs in a child process"
    if Path("/proc/self/stat").exists():
        assert not any(_running(pid) for pid in children), "no orphan training process"
    assert "QThread: Destroyed" not in output and "has been deleted" not in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert folder_bytes(library / "tiny") == before
    assert leftovers(library) == []
    from napari_unet.core.models import load_model

    for folder in library.iterdir():  # a new version, if any, is complete
        load_model(folder)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_closing_the_viewer_while_the_widgets_warm_up_exits_cleanly():
    """The Segment dock imports torch in the background as it opens; quitting before that ends is clean."""
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    script = textwrap.dedent("""
        import napari
        viewer = napari.Viewer(show=False)
        viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        viewer.close()
        print("closed", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "closed" in output, output[-3000:]
    assert "has been deleted" not in output and "Traceback" not in output, output[-3000:]
