"""Importing the plugin (what napari does at start-up) loads neither torch nor any GUI toolkit.

Each check runs in a fresh interpreter, since this test process has long imported everything.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"{statement}\n"
        "import sys\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return output.split()


@pytest.mark.parametrize("statement", [
    "import napari_unet",
    "import napari_unet._reader",
    "import napari_unet._sample_data",
    "import napari_unet.core.io",
])
def test_import_is_light(statement):
    assert _loaded_after(statement) == []


def test_reader_finds_files_without_heavy_imports(tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(b"II*\x00")
    assert _loaded_after(f"from napari_unet._reader import get_reader; assert get_reader({str(path)!r})") == []


def test_reading_an_image_file_is_torch_free(tmp_path):
    import numpy as np
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint8), imagej=True, metadata={"spacing": 2.0, "axes": "ZYX"})
    statement = f"from napari_unet.core.io import read_image; assert read_image({str(path)!r}).axes == 'ZYX'"
    assert _loaded_after(statement) == []


def test_opening_the_widgets_module_does_not_import_torch():
    statement = "import napari_unet.widgets.segment_widget, napari_unet.widgets.finetune_widget"
    assert "torch" not in _loaded_after(statement), "torch is imported in the background once a widget opens"


def test_every_public_name_resolves_and_is_typed():
    import ast
    import inspect

    import napari_unet

    for name in napari_unet.__all__:
        assert getattr(napari_unet, name) is not None, name
    typed = {alias.asname or alias.name for node in ast.walk(ast.parse(inspect.getsource(napari_unet)))
             if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("napari_unet.")
             for alias in node.names}
    assert set(napari_unet.__all__) - {"__version__"} == typed, "the TYPE_CHECKING imports list the public names"
