"""Shared test set-up: every test gets its own empty model library, so no test touches a user's models."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Point NAPARI_UNET_HOME at a fresh folder for each test."""
    home = tmp_path_factory.mktemp("napari-unet-home")
    monkeypatch.setenv("NAPARI_UNET_HOME", str(home))
    return home
