"""The npe2 manifest is valid and every command it names can be imported."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_unet" / "napari.yaml"


def test_npe2_validate_accepts_the_manifest():
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", "--imports", str(MANIFEST)])
    assert result.exit_code == 0, result.output
    assert "valid!" in result.output


def test_every_python_name_imports():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    commands = manifest.contributions.commands or []
    assert {c.python_name for c in commands} >= {
        "napari_unet.widgets.segment_widget:SegmentWidget",
        "napari_unet.widgets.finetune_widget:FinetuneWidget",
        "napari_unet.widgets.export_widget:ExportWidget",
        "napari_unet._reader:get_reader",
        "napari_unet._sample_data:nuclei_2d",
        "napari_unet._sample_data:nuclei_3d",
    }
    for command in commands:
        module_name, _, attribute = command.python_name.partition(":")
        assert module_name != "napari_unet", "python_names point at leaf modules, never the package root"
        target = getattr(importlib.import_module(module_name), attribute)
        assert callable(target), command.python_name


def test_widgets_and_samples_reference_known_commands():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    ids = {c.id for c in manifest.contributions.commands}
    referenced = [w.command for w in manifest.contributions.widgets]
    referenced += [r.command for r in manifest.contributions.readers]
    referenced += [s.command for s in manifest.contributions.sample_data]
    assert set(referenced) <= ids
