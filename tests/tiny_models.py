"""Tiny models for tests that must notice lost weights: batch-norm statistics far from their defaults.

Importable from every test folder: pytest puts ``tests/`` on ``sys.path`` for its ``conftest.py``.
"""
from __future__ import annotations

import torch

from napari_unet.core.models import Model, ModelConfig
from napari_unet.core.unet import UNetConfig


def tiny_unet(**changes) -> Model:
    """A tiny 2D instance U-Net; ``network={...}`` changes its architecture, other keywords its config. Its
    batch-norm running statistics are random and far from (0, 1), so eval mode and saved weights matter."""
    network = UNetConfig(**{"depth": 2, "base_features": 4, "padding": "same", "upsampling": "bilinear",
                            "norm": "batch", "out_channels": 3, **changes.pop("network", {})})
    config = ModelConfig(network, name="tiny", description="A tiny U-Net for tests.", **changes)
    model = Model.from_config(config, seed=0)
    generator = torch.Generator().manual_seed(1)
    for module in model.network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model
