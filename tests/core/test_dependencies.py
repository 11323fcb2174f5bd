"""pyproject.toml declares what the package imports: no dependency that nothing uses."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"scikit-image": "skimage", "dask[array]": "dask"}
NOT_IMPORTED = {"npe2": "napari reads the plugin's napari.yaml manifest with it"}


def declared() -> list[str]:
    return [re.split(r"[<>=!~ ;]", spec, maxsplit=1)[0] for spec in _specs()]


def test_every_declared_dependency_is_imported():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "napari_unet").rglob("*.py"))
    unused = []
    for name in declared():
        module = IMPORT_NAMES.get(name, name).replace("-", "_")
        if name not in NOT_IMPORTED and not re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE):
            unused.append(name)
    assert unused == [], f"declared in pyproject.toml but never imported: {unused}"


TORCH_APIS = {  # APIs the package calls, with the torch release that introduced them
    r"torch\.amp\.GradScaler\(": (2, 3),
}


def test_the_torch_floor_admits_no_release_without_the_apis_the_code_calls():
    spec = next(s for s in _specs() if s.startswith("torch"))
    floor = tuple(int(n) for n in re.search(r">=\s*(\d+)\.(\d+)", spec).groups())
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "napari_unet").rglob("*.py"))
    needed = max((version for pattern, version in TORCH_APIS.items() if re.search(pattern, sources)), default=(0, 0))
    assert floor >= needed, f"pyproject.toml lets pip install torch {floor}, but the code calls APIs of {needed}"


def _specs() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
