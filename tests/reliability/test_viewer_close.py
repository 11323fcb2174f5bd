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

import pytest

from conftest import folder_bytes, leftovers, save_tiny

SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QTimer
    from napari_unet.synthetic import generate_nuclei
    import napari_unet.core.inference as inference, napari_unet.core.training as training

    which = sys.argv[1]
    real_segment, real_step = inference.segment_steps, training._train_step
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
    def slow_step(*args, **kwargs):
        progress["n"] += 1
        time.sleep(0.2)
        return real_step(*args, **kwargs)
    inference.segment_steps, training._train_step = slow_segment, slow_step

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
        if progress["n"] < 2:
            QTimer.singleShot(100, close)
            return
        print("closing mid-run" if widget.running else "the run ended first", flush=True)
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
    result = subprocess.run([sys.executable, "-c", SCRIPT, which], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NAPARI_UNET_HOME": str(isolated_home)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "closing mid-run" in output and "exited" in output
    assert "QThread: Destroyed" not in output and "has been deleted" not in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert folder_bytes(library / "tiny") == before
    assert leftovers(library) == []
    from napari_unet.core.models import load_model

    for folder in library.iterdir():  # a new version, if any, is complete
        load_model(folder)


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
