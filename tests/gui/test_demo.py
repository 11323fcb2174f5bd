"""``napari-unet demo``: which model it shows, and ``--screenshot`` end to end under the virtual display."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import napari_unet.core.library as library
from napari_unet.cli.demo import DEFAULT_MODEL, choose_model


def test_demo_prefers_the_bundled_model_and_says_which_it_uses(tiny_model, tmp_path, monkeypatch):
    if any(info.name == DEFAULT_MODEL for info in library.list_models()):
        path, note = choose_model(None)
        assert path.endswith(DEFAULT_MODEL) and f"'{DEFAULT_MODEL}'" in note
    monkeypatch.setattr(library, "bundled_dir", lambda: tmp_path / "no-bundled-models")
    path, note = choose_model(None)
    assert path.endswith("tiny") and "not installed" in note and "'tiny'" in note
    path, note = choose_model("tiny")
    assert path.endswith("tiny") and note.startswith("using the model 'tiny'")


def test_demo_without_a_display_says_how_to_get_one(tiny_model):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "demo", "--model", "tiny"],
                            capture_output=True, text=True, timeout=120, env=env)
    if not sys.platform.startswith("linux"):
        pytest.skip("the check is for Linux, where Qt aborts without a display")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "xvfb-run -a napari-unet demo" in result.stderr


def test_demo_without_any_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(library, "bundled_dir", lambda: tmp_path / "no-bundled-models")
    with pytest.raises(ValueError, match="--model"):
        choose_model(None)


def test_demo_screenshot(tmp_path, tiny_model, isolated_home):
    from skimage.io import imread

    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    path = tmp_path / "demo.png"
    library_before = sorted(p.relative_to(isolated_home) for p in isolated_home.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "demo", "--screenshot", str(path), "--model", "tiny",
         "--finetune", "5", "--size", "1000x700", "--timeout", "240"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NAPARI_UNET_HOME": str(isolated_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the model 'tiny'" in result.stderr, "the demo says which model it uses"
    # the version the demo fine-tuned lived in a throwaway folder: the user's library is as it was
    assert sorted(p.relative_to(isolated_home) for p in isolated_home.rglob("*")) == library_before
    picture = imread(path)
    assert picture.shape[0] >= 600 and picture.shape[1] >= 900
    assert len(np.unique(picture.reshape(-1, picture.shape[-1]), axis=0)) > 50


def test_demo_without_napari_says_how_to_install_it(tiny_model, monkeypatch, capsys):
    from napari_unet.cli import main

    monkeypatch.setitem(sys.modules, "napari", None)  # what a missing package looks like to import
    assert main(["demo", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "napari is not installed" in err and "pip install" in err, err


def test_demo_refuses_a_screenshot_into_a_missing_folder_before_opening_anything(tiny_model, tmp_path, capsys):
    from napari_unet.cli import main

    assert main(["demo", "--model", "tiny", "--screenshot", str(tmp_path / "missing" / "demo.png")]) == 2
    assert "missing" in (err := capsys.readouterr().err) and "folder" in err, err


def test_the_demo_picture_shows_the_status_as_laid_out(isolated_home, tmp_path, monkeypatch):
    """The picture is taken once the window has laid out the run's last status (taken in the slot that set it,
    the status line still had the height of the one before, and its three lines were cut)."""
    import napari

    from napari_unet.cli import main
    from napari_unet.widgets._registry import segment_widget_for

    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    seen = []

    def screenshot(viewer, path, **kwargs):
        status = segment_widget_for(viewer).status
        seen.append((status.text(), status.height(), status.heightForWidth(status.width())))

    monkeypatch.setattr(napari.Viewer, "screenshot", screenshot)
    if not any(info.name == DEFAULT_MODEL for info in library.list_models()):
        pytest.skip("the bundled model's run ends with a status of several lines")
    assert main(["demo", "--screenshot", str(tmp_path / "demo.png"), "--model", DEFAULT_MODEL]) == 0
    ((text, height, needed),) = seen
    assert text.startswith("Segmented") and height >= needed, (text, height, needed)
