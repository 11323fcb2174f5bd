"""Training in a process that shows a napari viewer: with PyTorch's default Linux wheels (which bring Triton)
and Mesa's OpenGL, the first optimizer used to load Triton's LLVM beside Mesa's and kill the process."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np
    import napari
    import napari_unet as nu
    from napari_unet.core.models import Model, ModelConfig
    from napari_unet.core.unet import UNetConfig
    from napari_unet.synthetic import generate_nuclei

    viewer = napari.Viewer(show=False)
    image, labels = generate_nuclei((64, 64), seed=1)
    viewer.add_image(image)
    assert viewer.screenshot(canvas_only=True).size  # the OpenGL driver is loaded and has drawn
    net = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    model = Model.from_config(ModelConfig(net, axes="YX"), seed=0)
    tuned = nu.finetune(model, [nu.Sample(image, labels)], time_budget_s=None, steps=2, device="cpu")
    print("steps", tuned.config.history[-1]["steps"])
    viewer.close()
""")


def test_fine_tuning_beside_an_opengl_viewer_does_not_crash():
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stderr[-3000:]}"
    assert "steps 2" in result.stdout
