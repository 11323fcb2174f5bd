"""Cases 1 and 2 in fine-tuning: a fault at step k or a cancel never touches the model it started from, its
files, or the user's labels, and never leaves a half-saved version in the library."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import napari_unet.core.training as training
from conftest import array_hash, folder_bytes, leftovers
from napari_unet.core.cancel import CancelToken
from napari_unet.core.errors import Cancelled, InvalidInputError
from napari_unet.core.training import Sample, finetune
from napari_unet.synthetic import generate_nuclei
from napari_unet.core.training_process import train_and_save as _finetune_steps


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    return generate_nuclei((64, 64), seed=2)


def _fail_at(monkeypatch, k: int, error: BaseException) -> dict[str, int]:
    calls = {"n": 0}
    real = training._train_step

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", step)
    return calls


def _run_worker_body(steps):
    """Drive a worker generator to its end as napari would; returns its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB"),
                                   RuntimeError("expected scalar type Float but found Half"),
                                   ValueError("bad target")], ids=["cuda-oom", "runtime", "value"])
def test_fault_at_step_k_changes_nothing(error, pair, tiny, library, monkeypatch):
    image, labels = pair
    weights = {name: tensor.clone() for name, tensor in tiny.network.state_dict().items()}
    files, labels_hash = folder_bytes(library), array_hash(labels)
    calls = _fail_at(monkeypatch, 3, error)
    body = _finetune_steps(library / "tiny", [Sample(image, labels)], CancelToken(),
                           {"steps": 6, "time_budget_s": None, "batch_size": 2, "seed": 0})
    with pytest.raises(type(error)):
        _run_worker_body(body)
    assert calls["n"] == 3
    assert folder_bytes(library) == files, "no new version, the base model's files unchanged"
    assert leftovers(library) == []
    assert all(torch.equal(weights[n], t) for n, t in tiny.network.state_dict().items())
    assert array_hash(labels) == labels_hash


def test_cancel_mid_training_with_on_cancel_none_raises_and_changes_nothing(pair, tiny, library):
    image, labels = pair
    files = folder_bytes(library)
    token = CancelToken()

    def progress(done, total, message):
        if done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        finetune(tiny, [Sample(image, labels)], time_budget_s=None, steps=50, progress=progress, cancel=token,
                 batch_size=2, on_cancel="none")
    assert folder_bytes(library) == files


def test_stop_mid_training_saves_the_best_so_far_as_a_new_version_only(pair, tiny, library):
    image, labels = pair
    files = folder_bytes(library)
    token = CancelToken()
    body = _finetune_steps(library / "tiny", [Sample(image, labels)], token,
                           {"steps": 50, "time_budget_s": None, "batch_size": 2, "seed": 0})
    next(body)
    next(body)
    token.cancel()
    path = _run_worker_body(body).path
    assert path.name == "tiny-v2"
    after = folder_bytes(library)
    assert {k: v for k, v in after.items() if k.startswith("tiny/")} == files, "the base model is untouched"
    assert leftovers(library) == []


def test_stop_before_the_first_step_saves_nothing(pair, tiny, library):
    image, labels = pair
    files = folder_bytes(library)
    token = CancelToken()
    token.cancel()
    body = _finetune_steps(library / "tiny", [Sample(image, labels)], token,
                           {"steps": 50, "time_budget_s": None, "batch_size": 2, "seed": 0, "validation_fraction": 0})
    assert _run_worker_body(body) is None
    assert folder_bytes(library) == files


def test_diverging_training_is_a_value_error_that_says_what_to_do(pair, tiny, library, monkeypatch):
    image, labels = pair
    monkeypatch.setattr(training, "_train_step", lambda *args, **kwargs: float("nan"))
    with pytest.raises(InvalidInputError, match="lower the learning rate"):
        finetune(tiny, [Sample(image, labels)], time_budget_s=None, steps=3, batch_size=2)


def test_a_warning_inside_training_does_not_stop_it(pair, tiny, monkeypatch):
    image, labels = pair
    real = training._train_step

    def noisy(*args, **kwargs):
        warnings.warn("a warning from deep inside torch", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned = finetune(tiny, [Sample(image, labels)], time_budget_s=None, steps=3, batch_size=2)
    assert any("deep inside torch" in str(w.message) for w in caught)
    assert sum(record.get("loss") is not None for record in tuned.history) == 3
