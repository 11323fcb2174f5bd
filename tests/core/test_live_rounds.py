"""Live rounds judge a version only on what the user corrected when the labels are Segment's output (the model's
own labels cannot say whether a change is better): a round with nothing corrected held out has no score and
makes no version, and a version must score higher than the current model, not as high."""
from __future__ import annotations

from pathlib import Path

import pytest

from napari_unet.core.live_training import LiveRound, live_rounds
from napari_unet.core.models import Model, ModelConfig, save_model
from napari_unet.core.training import TrainProgress
from napari_unet.core.training_data import Sample
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei
from test_corrections import pairs_in

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {"steps": 6, "time_budget_s": None, "batch_size": 2, "seed": 0}


class OneSnapshot:
    """The snapshots of a live child that never gets a newer one: waiting for one ends the rounds."""

    def __init__(self, samples: list, waits: int = 1) -> None:
        self.samples, self.waited = samples, 0

    def latest(self) -> tuple[int, list]:
        return 1, self.samples

    def wait_newer(self, number: int, cancel) -> None:
        self.waited += 1


def live_events(samples: list, waits: int = 1) -> list:
    """Everything a live child reports on one snapshot until it has waited ``waits`` times for a newer one."""
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    path = save_model(Model.from_config(ModelConfig(network, axes="YX"), seed=0), "tiny")
    snapshots = OneSnapshot(samples, waits)
    return list(live_rounds(Path(path), snapshots, lambda: snapshots.waited >= waits, OPTIONS))


def first_round(samples: list) -> LiveRound:
    return next(event for event in live_events(samples) if isinstance(event, LiveRound))


def test_segment_labels_without_a_correction_give_no_score_and_no_version_and_train_no_step():
    image, labels = generate_nuclei((128, 128), "dense", seed=0)
    events = live_events([Sample(image, labels, prediction=labels.copy())])
    found = next(event for event in events if isinstance(event, LiveRound))
    assert found.score_name is None and found.version is None and found.waiting
    trained = [event for event in events if isinstance(event, TrainProgress) and event.loss is not None]
    assert trained == [], "a round that cannot make a version leaves the cores to the viewer"


def test_labels_the_user_painted_themselves_are_all_held_out_evidence():
    image, labels = generate_nuclei((128, 128), "dense", seed=0)
    found = first_round([Sample(image, labels)])
    assert found.score_name == "val_f1" and found.before is not None and found.after is not None
    assert not found.on_corrections


def test_corrected_segment_labels_are_scored_on_the_held_out_corrections():
    from test_corrections import merge, pairs_in

    image, labels = generate_nuclei((128, 128), "dense", seed=0)
    predicted = merge(labels, pairs_in(labels, slice(0, 64), slice(0, 128)))  # the user split these again
    found = first_round([Sample(image, labels, prediction=predicted)])
    assert found.score_name == "val_f1" and found.on_corrections


@pytest.mark.parametrize("before, after, improved, expected", [
    ({"val_f1": 0.0}, {"val_f1": 0.5}, True, True),
    ({"val_f1": 0.0}, {"val_f1": 0.0}, True, False),  # still wrong on the held-out corrections: a tie is noise
    ({"val_f1": 0.5}, {"val_f1": 0.4}, True, False),
    ({"val_f1": 0.0}, {"val_f1": 0.5}, False, False),  # held-out loss never fell: the weights are the start's
    ({"val_dice": 0.7}, {"val_dice": 0.8}, True, True),
    ({}, {}, True, False),  # nothing scored
    ({"val_f1": 0.0, "val_net": -1.0}, {"val_f1": 0.5, "val_net": 0.0}, True, True),
    ({"val_f1": 0.0, "val_net": 0.0}, {"val_f1": 0.5, "val_net": 0.0}, True, False),  # one fixed, one changed
])
def test_a_round_beats_the_current_model_only_by_scoring_higher(before, after, improved, expected):
    from napari_unet.core.live_training import beats

    assert beats(before, after, improved) is expected


def test_the_steps_of_every_round_are_reported_on_one_rising_step_axis(monkeypatch):
    import napari_unet.core.live_training as live_training

    monkeypatch.setattr(live_training, "ROUNDS_WITHOUT_GAIN", 1)  # a round without a version waits for strokes
    monkeypatch.setattr(live_training, "beats", lambda *args: False)
    image, labels = generate_nuclei((128, 128), "dense", seed=0)
    events = live_events([Sample(image, labels)], waits=2)
    rounds = [i for i, event in enumerate(events) if isinstance(event, LiveRound)]
    assert len(rounds) == 2
    steps = [event.step for event in events if isinstance(event, TrainProgress) and event.loss is not None]
    assert len(steps) == 2 * OPTIONS["steps"]  # every training step of both rounds, for the loss plot
    assert steps == sorted(set(steps))  # the second round goes on where the first ended
    first = [e for e in events[:rounds[0]] if isinstance(e, TrainProgress)]
    assert first and first[-1].loss is not None and first[-1].step == OPTIONS["steps"]


class TwoSnapshots(OneSnapshot):
    """A live child whose user makes their second correction once the first round has trained."""

    def __init__(self, first: list, second: list) -> None:
        super().__init__(first)
        self.second, self.number = second, 1

    def latest(self) -> tuple[int, list]:
        return (1, self.samples) if self.number == 1 else (2, self.second)

    def wait_newer(self, number: int, cancel) -> None:
        self.number = 2  # the second correction arrives


def one_split_then_two(monkeypatch) -> tuple[Path, TwoSnapshots]:
    """A tiny model, and a user who splits one merged pair (nothing to hold out) and then the other; every
    round beats the model in use."""
    from test_corrections import merge

    import napari_unet.core.live_training as live_training

    image, labels = generate_nuclei((128, 128), "dense", seed=0)
    top, bottom = pairs_in(labels, slice(0, 56), slice(0, 128))[0], pairs_in(labels, slice(72, 128), slice(0, 128))[0]
    predicted = merge(labels, [top, bottom])
    first = [Sample(image, merge(labels, [bottom]), prediction=predicted)]  # one split: nothing to hold out
    second = [Sample(image, labels, prediction=predicted)]  # the user split the other pair too
    monkeypatch.setattr(live_training, "beats", lambda before, after, improved: True)
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    path = save_model(Model.from_config(ModelConfig(network, axes="YX"), seed=0), "tiny")
    return Path(path), TwoSnapshots(first, second)


def test_a_round_started_with_one_correction_trains_and_is_judged_by_the_next_one(monkeypatch):
    path, snapshots = one_split_then_two(monkeypatch)
    events = []
    for event in live_rounds(path, snapshots, lambda: False, OPTIONS):
        events.append(event)
        if isinstance(event, LiveRound) and (event.on_newer or event.snapshot == 2):
            break  # every round beats here: the rounds after it would go on making versions
    rounds = [event for event in events if isinstance(event, LiveRound)]
    guessed, judged = rounds[0], rounds[1]
    assert guessed.guessing and guessed.waiting and guessed.score_name is None and guessed.snapshot == 1
    trained = [e for e in events[:events.index(guessed)] if isinstance(e, TrainProgress) and e.loss is not None]
    assert len(trained) == OPTIONS["steps"], "it trained on its one correction"
    assert judged.on_newer and judged.number == guessed.number and judged.snapshot == 2
    assert judged.score_name == "val_f1" and judged.before is not None and judged.after is not None
    assert judged.version is not None and judged.version.name == "tiny-v2", "saved: the judge said it beat"


def test_a_round_started_with_one_correction_trains_to_its_end_and_is_judged_by_all_the_strokes_since(monkeypatch):
    """Strokes arriving while the round trains do not cut it short: measured, a round stopped at the second
    correction (ten seconds in) changed the view for the worse more often than for the better; it trains its
    whole budget, and every correction made meanwhile judges it."""
    path, snapshots = one_split_then_two(monkeypatch)
    events = []
    for event in live_rounds(path, snapshots, lambda: False, OPTIONS):
        events.append(event)
        if isinstance(event, TrainProgress) and event.loss is not None and event.step == 2:
            snapshots.number = 2  # the second correction arrives two steps into the round
        if isinstance(event, LiveRound):
            break
    judged = events[-1]
    trained = [e for e in events if isinstance(e, TrainProgress) and e.loss is not None]
    assert len(trained) == OPTIONS["steps"], "the round trained to its end"
    assert judged.on_newer and judged.snapshot == 2 and judged.version is not None
