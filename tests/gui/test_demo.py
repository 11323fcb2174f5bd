"""``napari-unet demo --screenshot`` opens napari, segments the sample and saves the window, under Xvfb too."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest


def test_demo_screenshot(tmp_path, tiny_model, isolated_home):
    from skimage.io import imread

    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    path = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "demo", "--screenshot", str(path), "--size", "1000x700",
         "--timeout", "240"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NAPARI_UNET_HOME": str(isolated_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the library model 'tiny'" in result.stderr, "the demo says which model it uses"
    picture = imread(path)
    assert picture.shape[0] >= 600 and picture.shape[1] >= 900
    assert len(np.unique(picture.reshape(-1, picture.shape[-1]), axis=0)) > 50
