"""pyproject.toml declares what the package imports: no dependency that nothing uses."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"scikit-image": "skimage", "dask[array]": "dask"}
NOT_IMPORTED = {"npe2": "napari reads the plugin's napari.yaml manifest with it"}


def declared() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [re.split(r"[<>=!~ ;]", spec, maxsplit=1)[0] for spec in project["dependencies"]]


def test_every_declared_dependency_is_imported():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "napari_unet").rglob("*.py"))
    unused = []
    for name in declared():
        module = IMPORT_NAMES.get(name, name).replace("-", "_")
        if name not in NOT_IMPORTED and not re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE):
            unused.append(name)
    assert unused == [], f"declared in pyproject.toml but never imported: {unused}"
