"""Live training: fine-tuning that goes on in rounds while the user paints, in the training child process.

The Fine-tune dock's *Live* mode starts one child (:class:`~napari_unet.core.training_process.TrainingProcess`
with ``feed=True``) that runs :func:`live_rounds`. A round is a short :func:`~napari_unet.core.training.
finetune_steps` run from the current model on the newest snapshot of the user's annotations. Its first
validation scores the current model on the round's held-out block (:mod:`napari_unet.core.holdout`), so that
"before" and "after" are measured on the same pixels. A round *beats* the current model when training lowered
the held-out loss and the held-out score (object F1@0.5, or foreground Dice for semantic models) rose above the
current model's (:func:`beats`: stricter than the rule by which the dock selects a version the user asked
for). Such a round is saved as the next version (atomically, :func:`~napari_unet.core.versions.save_version`)
and the next round starts from it; any other round is dropped and the next one starts again from the current
model.

Where the labels are Segment's output with the user's strokes (and no reviewed-regions layer), the held-out
block is where the strokes are, and only the objects the user changed are scored (``held_out="corrections"``,
:mod:`napari_unet.core.holdout`): the rest is the current model's own output, which would approve any copy of
it and reject any change. Until a corrected object can be held out, a round has no score and makes no version:
it stops at its first validation, and the child waits for newer strokes.

A round that starts with one correction, so that nothing can be held out, trains on all of it instead, for its
whole time budget; the strokes the user made meanwhile (or, if none, the next ones: it waits for them) are held
out of it by construction, and it is judged on the objects they changed, beside the model in use
(:mod:`napari_unet.core.newer_strokes`). So the first version can come a round after the first correction,
rather than a round after the second. The round is not cut short when the second correction arrives: on this
project's DSB 2018 train split (40 fluorescence images on which the bundled model merges nuclei, the child's one
thread), the views written by a model trained on the first correction, judged or not, were worse than the
corrections alone on 14 images and better on 9 after 10 s of training, worse on 10 and better on 9 after 20 s;
the judge put 5 of the 10-s models to use (2 views better, 2 worse). With the whole round and every correction
made meanwhile as its judge (``bench/live_offline.py``), it put 4 to use: 3 views better, 1 the same, none worse.
Without a correction at all a round still stops at its first validation: there is nothing to learn.

Rounds run back to back while they can help: after :data:`ROUNDS_WITHOUT_GAIN` rounds on the same snapshot
without a new version, after a round that could not be scored (too few annotations to hold a block out), and
after a round whose annotations training refused (labels erased, say), the child waits for a newer snapshot
instead of spending the cores on more of the same. Every round is reported to the parent as a
:class:`LiveRound`, and its steps as they run (for the dock's loss plot). Cancelling ends the round in
progress without saving it; versions saved stay.
"""
from __future__ import annotations

import queue
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.cancel import CancelLike

if TYPE_CHECKING:
    from napari_unet.core.training import TrainProgress

ROUNDS_WITHOUT_GAIN = 3  # rounds on one snapshot without a new version, before waiting for new strokes


@dataclass(frozen=True)
class LiveRound:
    """One finished round, as the child reports it."""

    number: int  # rounds done so far, this one included
    snapshot: int  # the snapshot it trained on (1: the annotations at the start)
    score_name: str | None = None  # "val_f1" or "val_dice"; None when the round could not be scored
    before: float | None = None  # the current model's held-out score, on this round's held-out block
    after: float | None = None  # the round's kept weights' score on the same block
    version: Path | None = None  # the version saved: the round beat the current model
    on_corrections: bool = False  # scored on held-out corrections only (labels that are Segment's output)
    error: str = ""  # why training refused this snapshot (a message for the user)
    waiting: bool = False  # the next round waits for a newer snapshot
    guessing: bool = False  # trained on all of one correction: the user's next strokes will judge it
    on_newer: bool = False  # scored on the strokes made after it started (newer_strokes)


def live_rounds(model_path: Path, snapshots: Any, cancel: Callable[[], bool], options: dict[str, Any],
                ) -> Generator[LiveRound | TrainProgress, None, None]:
    """The live child's body: train round after round on the newest of ``snapshots`` (a
    :class:`~napari_unet.core.training_process.Snapshots`), yielding a :class:`LiveRound` per round, until
    ``cancel()``. ``options`` are :func:`~napari_unet.core.training.finetune_steps`'s, for one round; the seed
    moves on by one per round, so that rounds on the same snapshot draw different patches.

    Each round's steps are yielded too, as :class:`~napari_unet.core.training.TrainProgress` numbered on from
    the rounds before (the dock draws one loss curve for the whole live session)."""
    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.errors import Cancelled, InvalidInputError
    from napari_unet.core.models import load_model
    from napari_unet.core.versions import save_version

    configure_cpu_threads(interactive=True)  # all cores but one: the viewer keeps one to stay responsive
    options = {"held_out": "corrections", **options}  # Segment's labels are the model's word, but for the strokes
    seed = options.pop("seed", 0)
    current = load_model(model_path)
    rounds = without_gain = trained_on = steps_before = 0
    guess: _Guess | None = None  # a round that newer strokes will judge
    while not cancel():
        number, samples = snapshots.latest()
        if number != trained_on:
            without_gain, trained_on = 0, number
        if guess is not None and guess.snapshot != number:  # the newer strokes judge the round trained before them
            report, beats = _judge_on_newer(current, guess, samples, number)
            version = save_version(guess.model) if beats else None
            current = guess.model if beats else current
            guess = None
            yield replace(report, version=version)
        try:
            tuned, steps_before = yield from _run_round(current, samples, cancel, seed + rounds, options,
                                                        steps_before)
            if tuned is None and _corrected(samples):  # one correction: train on it, newer strokes judge it
                tuned, steps_before = yield from _run_round(current, samples, cancel, seed + rounds, options,
                                                            steps_before, scored=False)
                guess = None if cancel() else _Guess(tuned, number, samples, rounds + 1)
        except Cancelled:
            return
        except InvalidInputError as exc:
            rounds += 1
            yield LiveRound(rounds, number, error=str(exc), waiting=True)
            snapshots.wait_newer(number, cancel)
            continue
        if cancel():
            return
        rounds += 1
        if guess is not None or tuned is None:  # nothing to score it on yet
            if snapshots.latest()[0] == number:
                yield LiveRound(rounds, number, waiting=True, guessing=guess is not None)
                snapshots.wait_newer(number, cancel)
            continue
        report, beats = _judge(tuned, rounds, number)
        version = None
        if beats:
            version = save_version(tuned)
            current, without_gain = tuned, 0  # save_version named it: the next round's version follows it
        else:
            without_gain += 1
        waiting = report.score_name is None or without_gain >= ROUNDS_WITHOUT_GAIN
        yield replace(report, version=version, waiting=waiting)
        if waiting:
            snapshots.wait_newer(number, cancel)


@dataclass(frozen=True)
class _Guess:
    """A round trained on all of a snapshot with one correction, to be judged by the strokes that follow it."""

    model: Any
    snapshot: int  # the snapshot it trained on
    samples: list
    number: int  # the round's number


def _corrected(samples: list) -> bool:
    """Whether any sample's labels differ from the prediction they were corrected from."""
    return any(sample.prediction is not None and not np.array_equal(np.asarray(sample.labels),
                                                                    np.asarray(sample.prediction))
               for sample in samples)


def _run_round(model: Any, samples: list, cancel: Callable[[], bool], seed: int, options: dict[str, Any],
               steps_before: int, scored: bool = True) -> Generator[TrainProgress, None, tuple[Any, int]]:
    """One round's fine-tuning to its end, yielding its steps numbered after ``steps_before``; returns the tuned
    model and the number of the last step. Cancelled if stopped. A round whose first validation (of the model it
    starts from) has no score, because nothing the user corrected could be held out (or nothing at all), stops
    there and returns None for the model: training on would keep the cores busy for a round that makes no
    version, and delay the round that can, once the next strokes arrive. With ``scored`` False (a round that
    newer strokes will judge) it holds nothing out, trains until ``cancel()`` or its budget and returns its
    latest weights."""
    from napari_unet.core.training import finetune_steps

    if not scored:
        options = {**options, "validation_fraction": 0.0}
    steps = finetune_steps(model, samples, cancel=cancel, on_cancel="none" if scored else "best", seed=seed,
                           **options)
    last, first = steps_before, scored
    while True:
        try:
            progress = next(steps)
        except StopIteration as stop:
            return stop.value, last
        if first and progress.val_f1 is None and progress.val_dice is None:
            steps.close()  # step 0 validated without a score, or (no validation at all) step 1 came first
            return None, last
        first = False
        last = steps_before + progress.step
        yield replace(progress, step=last, message="")


def _judge(tuned: Any, number: int, snapshot: int) -> tuple[LiveRound, bool]:
    """The round's report (without its version) and whether it beat the model it started from."""
    from napari_unet.core.training_process import held_out_scores

    before, after, improved = held_out_scores(tuned)
    name = next((key for key in ("val_f1", "val_dice") if key in after), None)
    if name is None:
        return LiveRound(number, snapshot), False
    report = LiveRound(number, snapshot, name, before.get(name), after[name], on_corrections="val_net" in after)
    return report, beats(before, after, improved)


def _judge_on_newer(current: Any, guess: _Guess, samples: list, snapshot: int) -> tuple[LiveRound, bool]:
    """The report of a round trained on ``guess.samples``, scored beside ``current`` on what changed in ``samples``
    since (:mod:`napari_unet.core.newer_strokes`), and whether it beat the current model there."""
    import torch

    from napari_unet.core.holdout import validate
    from napari_unet.core.newer_strokes import newer_strokes_validation

    if guess.model.config.normalization != current.config.normalization:  # it flipped dark objects: not comparable
        return LiveRound(guess.number, snapshot), False
    validation = newer_strokes_validation(current, guess.samples, samples)
    if validation is None:
        return LiveRound(guess.number, snapshot), False
    cpu = torch.device("cpu")  # both models are there after training, and a block or two is quick to score
    before = validate(current.network.to(cpu), validation, cpu)
    after = validate(guess.model.network.to(cpu), validation, cpu)
    name = next((key for key in ("val_f1", "val_dice") if key in after), None)
    if name is None:
        return LiveRound(guess.number, snapshot), False
    report = LiveRound(guess.number, snapshot, name, before.get(name), after[name], on_corrections=True,
                       on_newer=True)
    return report, beats(before, after, after["val_loss"] < before["val_loss"])


def beats(before: dict[str, float], after: dict[str, float], improved: bool | None) -> bool:
    """Whether a round's version beats the model it started from: training lowered the held-out loss and the
    held-out score rose. Strictly: on held-out corrections the current model scores low by construction (they
    are where it was wrong), and a version that does no better there has shown nothing; a tie is noise. On
    held-out corrections it must also get more of them right than it changes of the objects around them that
    the user left as they were (``val_net``): a change there is unverified, and it is what the view shows."""
    name = next((key for key in ("val_f1", "val_dice") if key in after), None)
    if improved is not True or name is None or after[name] <= before.get(name, float("-inf")):
        return False
    return "val_net" not in after or after["val_net"] > before.get("val_net", float("-inf"))


def live_in_child(model_path: Path, samples: list, cancel: CancelLike, options: dict[str, Any],
                  outbox: queue.Queue) -> Generator[Any, None, Any]:
    """The Live worker: :func:`live_rounds` in a training child, fed the snapshots put in ``outbox``; yields
    each :class:`LiveRound` as it arrives. The child is stopped however this generator ends."""
    from napari_unet.core.training_process import TrainingProcess

    with TrainingProcess(model_path, samples, options, body=live_rounds, feed=True) as child:
        return (yield from child.relay(cancel, outbox))
