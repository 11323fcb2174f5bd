"""Training with faults, pauses or warnings, in the Fine-tune dock's child process.

A spawned child imports its modules afresh, so a test cannot monkeypatch training there. It hands the child
one of these bodies instead (:func:`use`, or the ``body`` of a ``TrainingProcess``): each runs the real
``train_and_save`` with the training step wrapped by a function of this module. The child unpickles them by
name: pytest puts ``tests/`` on ``sys.path`` and a spawned child gets the parent's ``sys.path``.
"""
from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path

from napari_unet.core import training_process

REAL_BODY = training_process.train_and_save


def with_step(wrap, model_path, samples, cancel, options):
    """``train_and_save`` with ``training._train_step`` replaced by ``wrap(real step)``."""
    import napari_unet.core.training as training

    training._train_step = wrap(training._train_step)
    return (yield from REAL_BODY(model_path, samples, cancel, options))


def body(wrap, **params) -> partial:
    """A picklable body whose training step is ``wrap(real, **params)``."""
    return partial(with_step, partial(wrap, **params))


def use(monkeypatch, wrap, **params) -> None:
    """Make the Fine-tune dock's next runs train with ``wrap(real, **params)`` as their step."""
    monkeypatch.setattr(training_process, "train_and_save", body(wrap, **params))


# the wraps: each takes the real step and returns the one the child uses


def slow(real, seconds: float):
    def step(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)
    return step


def fail_at(real, k: int, error: BaseException):
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise error
        return real(*args, **kwargs)
    return step


def failing(real):
    def failing_step(*args, **kwargs):
        raise RuntimeError("something deep inside torch")
    return failing_step


def no_change(real):
    """Steps that change nothing: training never beats the start."""
    return lambda *args, **kwargs: 1.0


def warning(real):
    def step(*args, **kwargs):
        warnings.warn("the batch had odd values", UserWarning, stacklevel=1)  # at every step: shown once
        warnings.warn("a developer's deprecation", DeprecationWarning, stacklevel=1)  # never shown
        return real(*args, **kwargs)
    return step


def stalled_save(real, marker: str):
    """Train as usual, then stall the save once its files are written (``marker`` appears then)."""
    import napari_unet.core.models as models

    def stall(folder):
        Path(marker).write_text(str(folder))
        time.sleep(60)

    models._fsync_folder = stall
    return real


# live training: the body of the Live mode's child, recording what it trains on


def record_snapshots(folder: str, model_path, snapshots, cancel, options):
    """``live_rounds``, saving the labels of the first pair of each snapshot a round takes as
    ``folder/snapshot-N.npy`` (written under a temporary name, then renamed: a reader sees whole files)."""
    import os

    import numpy as np

    from napari_unet.core import live_training

    latest = snapshots.latest

    def recorded():
        number, samples = latest()
        path = Path(folder) / f"snapshot-{number}.npy"
        if not path.exists():
            np.save(path.with_suffix(".tmp.npy"), samples[0].labels)
            os.replace(path.with_suffix(".tmp.npy"), path)
        return number, samples

    snapshots.latest = recorded
    return (yield from live_training.live_rounds(model_path, snapshots, cancel, options))


def use_live(monkeypatch, folder) -> None:
    """Make Live mode's next runs record their snapshots in ``folder`` (see :func:`record_snapshots`)."""
    from napari_unet.core import live_training

    monkeypatch.setattr(live_training, "live_rounds", partial(record_snapshots, str(folder)))


def every_round_beats(model_path, snapshots, cancel, options):
    """``live_rounds`` in which every scored round beats the current model (a tiny model's rounds rarely do)."""
    from napari_unet.core import live_training

    live_training.beats = lambda before, after, improved: True
    return (yield from live_training.live_rounds(model_path, snapshots, cancel, options))


def use_live_versions(monkeypatch) -> None:
    """Make Live mode's next runs save a version from every scored round (see :func:`every_round_beats`)."""
    from napari_unet.core import live_training

    monkeypatch.setattr(live_training, "live_rounds", every_round_beats)
