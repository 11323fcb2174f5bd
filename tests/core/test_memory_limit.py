"""The in-memory limit of segment()'s outputs can be set with NAPARI_UNET_IN_MEMORY_LIMIT, read at each call."""
from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.memory import LIMIT_ENV, in_memory_limit, total_memory
from napari_unet.core.models import Model, ModelConfig
from napari_unet.core.unet import UNetConfig


def _model() -> Model:
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    return Model.from_config(ModelConfig(network, axes="YX"), seed=0)


@pytest.mark.parametrize(("value", "expected"), [("65536", 65536), ("64K", 65536), ("2MiB", 2 * 2**20),
                                                 ("1g", 2**30), ("nonsense", None), ("", None)])
def test_the_limit_is_a_quarter_of_memory_unless_set(monkeypatch, value, expected):
    monkeypatch.setenv(LIMIT_ENV, value)
    assert in_memory_limit() == (expected if expected is not None else total_memory() // 4)


def test_segment_refuses_in_memory_outputs_over_the_limit_read_at_call_time(monkeypatch):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    model = _model()
    monkeypatch.setenv(LIMIT_ENV, str(64 * 64 * 4 - 1))  # one byte short of the int32 labels
    with pytest.raises(InvalidInputError, match="out="):
        segment(image, model, device="cpu", probabilities=False)
    out = np.zeros((64, 64), np.int32)
    segment(image, model, device="cpu", probabilities=False, out=out)  # given arrays are not limited
    monkeypatch.setenv(LIMIT_ENV, str(64 * 64 * 4))
    assert segment(image, model, device="cpu", probabilities=False).labels.shape == (64, 64)
