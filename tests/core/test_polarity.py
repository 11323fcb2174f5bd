"""Dark objects on a bright background: fine-tuning flips them to the polarity the starting model knows, and
the tuned model inverts every image it segments, so that it sees what it was trained on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core import training
from napari_unet.core.inference import segment
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.normalization import Normalization
from napari_unet.core.training import Sample, finetune
from napari_unet.core.training_data import prepare_data
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> Model:
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    return Model.from_config(ModelConfig(network, axes="YX", name="tiny"), seed=0)


def bright_and_dark(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, labels = generate_nuclei((64, 64), seed=seed)
    return image, (image.max() - image).astype(image.dtype), labels


def test_inverted_normalisation_is_one_minus_the_plain_one_and_is_saved(tmp_path):
    image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32) * 1000
    plain, inverted = Normalization(), Normalization(invert=True)
    stats = plain.statistics(image)
    np.testing.assert_allclose(inverted.apply(image, stats), 1.0 - plain.apply(image, stats), atol=1e-6)
    assert "invert" not in plain.to_dict(), "models without inversion keep the config they had"
    assert Normalization.from_dict(inverted.to_dict()) == inverted
    model = tiny_model()
    model.config.normalization = inverted
    assert load_model(save_model(model, tmp_path / "inverted")).config.normalization.invert


def test_dark_objects_are_flipped_and_bright_ones_are_not():
    bright, dark, labels = bright_and_dark()
    model = tiny_model()
    plain = prepare_data(model, [Sample(bright, labels)], None, 0.0, 10.0, 5.0)
    flipped = prepare_data(model, [Sample(dark, labels)], None, 0.0, 10.0, 5.0)
    kept = prepare_data(model, [Sample(dark, labels)], None, 0.0, 10.0, 5.0, polarity=False)
    assert not plain.inverted and flipped.inverted and not kept.inverted
    objects = labels > 0
    for data, brighter in ((plain, True), (flipped, True), (kept, False)):
        image = data.items[0].image[0]
        assert (image[objects].mean() > image[~objects].mean()) == brighter


def test_a_model_tuned_on_dark_objects_inverts_what_it_segments():
    _, dark, labels = bright_and_dark()
    tuned = finetune(tiny_model(), [Sample(dark, labels)], time_budget_s=None, steps=2, batch_size=2,
                     validation_fraction=0.0)
    assert tuned.config.normalization.invert
    assert tuned.config.provenance["settings"]["inverted_input"] is True
    # with min/max scaling, the tuned model on the dark image sees exactly what a plain one sees on the
    # flipped image
    tuned.config.normalization = Normalization(low=0.0, high=100.0, invert=True)
    reference = tuned.copy()
    reference.config.normalization = Normalization(low=0.0, high=100.0)
    flipped = (int(dark.max()) + int(dark.min())) - dark.astype(np.float64)
    ours = segment(dark, tuned, axes="YX", device="cpu", precision="float32").probabilities
    plain = segment(flipped, reference, axes="YX", device="cpu", precision="float32").probabilities
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    again = finetune(tuned, [Sample(dark, labels)], time_budget_s=None, steps=1, batch_size=2,
                     validation_fraction=0.0)
    assert again.config.normalization.invert, "a tuned model's data already have its polarity"


def test_a_new_kind_of_image_gets_the_faster_schedule_and_a_known_one_the_gentle_one():
    bright, dark, labels = bright_and_dark()
    options = {"time_budget_s": None, "steps": 1, "batch_size": 2, "validation_fraction": 0.0}
    known = finetune(tiny_model(), [Sample(bright, labels)], **options).config.provenance["settings"]
    new = finetune(tiny_model(), [Sample(dark, labels)], **options).config.provenance["settings"]
    chosen = finetune(tiny_model(), [Sample(dark, labels)], learning_rate=5e-4, new_kind=False,
                      **options).config.provenance["settings"]
    assert (known["new_kind"], known["learning_rate"]) == (False, training.LEARNING_RATE)
    assert (new["new_kind"], new["learning_rate"]) == (True, training.NEW_KIND_LEARNING_RATE)
    assert (chosen["new_kind"], chosen["learning_rate"]) == (False, 5e-4)


def test_from_scratch_starts_from_random_weights_of_the_same_architecture():
    bright, _, labels = bright_and_dark()
    start = tiny_model()
    start_weights = {k: v.clone() for k, v in start.network.state_dict().items()}
    tuned = finetune(start, [Sample(bright, labels)], time_budget_s=None, steps=1, batch_size=2,
                     validation_fraction=0.0, learning_rate=1e-9, from_scratch=True, seed=7)
    after = tuned.network.state_dict()
    convs = [k for k in start_weights if k.endswith("weight") and start_weights[k].ndim == 4]
    assert all(not torch.allclose(after[k], start_weights[k]) for k in convs), "every convolution was redrawn"
    assert tuned.config.network == start.config.network
    assert tuned.config.provenance["settings"]["from_scratch"] is True
    assert all(torch.equal(v, start.network.state_dict()[k]) for k, v in start_weights.items()), "start untouched"


def test_a_run_that_never_beats_the_start_on_validation_says_so_and_keeps_its_weights():
    image, labels = generate_nuclei((96, 96), seed=3)
    start = tiny_model()
    common = {"time_budget_s": None, "steps": 4, "batch_size": 2, "validation_fraction": 0.25, "validations": 4}
    stalled = finetune(start, [Sample(image, labels)], learning_rate=1e-12, **common)
    assert stalled.config.history[-1]["improved"] is False
    assert all(torch.equal(v, start.network.state_dict()[k]) for k, v in stalled.network.state_dict().items()
               if "running" not in k and "num_batches" not in k)
    learned = finetune(start, [Sample(image, labels)], learning_rate=1e-2, **{**common, "steps": 20})
    assert learned.config.history[-1]["improved"] is True

