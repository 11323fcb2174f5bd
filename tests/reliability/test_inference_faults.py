"""Cases 1, 2 and 5 in the inference engine: faults at tile k, cancel mid-run, and the out-of-memory ladder.

A failed or cancelled run leaves the caller's output array as it was (all zeros), the model's weights and
files untouched, and raises either a ValueError subclass, the fault itself or Cancelled: never a hang, never a
half-written result. Out of memory makes the run retry with a smaller batch, smaller tiles, then the CPU,
and the result equals an unconstrained run.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import napari_unet.core.inference as inference
from conftest import array_hash, folder_bytes, leftovers
from napari_unet.core.cancel import CancelToken
from napari_unet.core.errors import Cancelled, InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.runner import Network
from napari_unet.synthetic import generate_nuclei

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"


@pytest.fixture
def image() -> np.ndarray:
    return generate_nuclei((96, 96), seed=3)[0]


def _fail_at(monkeypatch, k: int, error: BaseException) -> dict[str, int]:
    """Make the k-th forward pass (1-based) raise ``error``; returns the call counter."""
    calls = {"n": 0}
    real = Network.__call__

    def call(self, batch):
        calls["n"] += 1
        if calls["n"] == k:
            raise error
        return real(self, batch)

    monkeypatch.setattr(Network, "__call__", call)
    return calls


@pytest.mark.parametrize("error", [RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
                                   ValueError("a bad value deep inside"), KeyError("weight")],
                         ids=["runtime", "value", "key"])
@pytest.mark.parametrize("k", [1, 3])
def test_fault_at_tile_k_leaves_outputs_and_model_untouched(error, k, image, tiny, library, monkeypatch):
    weights = {name: tensor.clone() for name, tensor in tiny.network.state_dict().items()}
    files = folder_bytes(library)
    out = np.zeros(image.shape, np.int32)
    probabilities = np.zeros((3, *image.shape), np.float32)
    calls = _fail_at(monkeypatch, k, error)
    with pytest.raises(type(error)):
        segment(image, tiny, tile_shape=64, batch_size=1, out=out, probabilities=probabilities)
    assert calls["n"] == k, "the run stops at the failing tile"
    assert not out.any() and not probabilities.any(), "no half-written result is left in the caller's arrays"
    assert all(torch.equal(weights[n], t) for n, t in tiny.network.state_dict().items())
    assert folder_bytes(library) == files and leftovers(library) == []


def test_cancel_mid_run_raises_cancelled_and_clears_the_output(image, tiny):
    token = CancelToken()
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done == 3:
            token.cancel()

    out = np.zeros(image.shape, np.int32)
    with pytest.raises(Cancelled):
        segment(image, tiny, tile_shape=64, batch_size=1, progress=progress, cancel=token, out=out)
    assert max(seen) == 3, "the run stops before the next batch"
    assert not out.any()


def test_a_warning_inside_the_run_does_not_stop_it(image, tiny):
    spoiled = image.astype(np.float32)
    spoiled[10:20, 10:20] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment(spoiled, tiny, tile_shape=64, batch_size=1)
    assert any("NaN" in str(w.message) for w in caught)
    assert result.labels.shape == image.shape and (result.labels[10:20, 10:20] == 0).all()
    assert any("NaN" in note for note in result.messages)


# --------------------------------------------------------------------------------------------------------------
# Case 5: out of memory
# --------------------------------------------------------------------------------------------------------------


class _PretendGPU(Network):
    """A network that claims to be on a CUDA device (but computes on the CPU) with little memory: any batch
    of more than ``max_pixels`` input pixels raises the out-of-memory error PyTorch raises on CUDA."""

    max_pixels = 0  # nothing fits on the "GPU"
    attempts: list[tuple[str, tuple[int, ...]]] = []

    def __init__(self, network, device, precision="auto", tta=False):
        super().__init__(network, torch.device("cpu"), precision, tta)
        self.device = device

    def __call__(self, batch):
        type(self).attempts.append((self.device.type, batch.shape))
        if self.device.type == "cuda" and batch[:, 0].size > self.max_pixels:
            raise torch.OutOfMemoryError(CUDA_OOM)
        claimed, self.device = self.device, torch.device("cpu")
        try:
            return super().__call__(batch)
        finally:
            self.device = claimed


@pytest.fixture
def pretend_gpu(monkeypatch):
    _PretendGPU.attempts = []
    monkeypatch.setattr(inference, "Network", _PretendGPU)
    monkeypatch.setattr(inference, "resolve_device", lambda device: torch.device(device))
    return _PretendGPU


@pytest.mark.parametrize("max_pixels, last_device", [(2 * 64 * 64, "cuda"), (48 * 64, "cuda"), (0, "cpu")],
                         ids=["smaller-batch", "smaller-tiles", "cpu"])
def test_out_of_memory_ladder_gives_the_unconstrained_result(max_pixels, last_device, image, tiny, pretend_gpu,
                                                             monkeypatch):
    expected = segment(image, tiny, device="cpu", tile_shape=64, batch_size=4)
    pretend_gpu.max_pixels = max_pixels
    pretend_gpu.attempts = []
    result = segment(image, tiny, device="cuda", tile_shape=64, batch_size=4)
    assert pretend_gpu.attempts[-1][0] == last_device
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)
    assert any("out of memory" in note for note in result.messages), "the user is told why it was slower"
    assert result.device == last_device


def test_when_nothing_fits_the_error_is_clean_and_nothing_is_written(image, tiny, monkeypatch):
    def always_oom(self, batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes")

    monkeypatch.setattr(Network, "__call__", always_oom)
    out = np.zeros(image.shape, np.int32)
    with pytest.raises(MemoryError, match="not enough memory to segment") as error:
        segment(image, tiny, tile_shape=64, batch_size=2, out=out)
    assert "close other programs or use a smaller model" in str(error.value)
    assert not out.any()


@pytest.mark.parametrize("option", [{"tile_shape": 0}, {"batch_size": -1}, {"precision": "float8"},
                                    {"axes": "ZZ"}])
def test_bad_options_raise_value_errors_before_any_work(option, image, tiny, monkeypatch):
    calls = _fail_at(monkeypatch, 10**9, RuntimeError("never"))
    with pytest.raises(ValueError):
        segment(image, tiny, **option)
    assert calls["n"] == 0
    assert array_hash(image) == array_hash(generate_nuclei((96, 96), seed=3)[0]), "the image is never changed"


def test_invalid_input_error_is_a_value_error():
    assert issubclass(InvalidInputError, ValueError)
