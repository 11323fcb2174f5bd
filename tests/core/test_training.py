"""Fine-tuning: it learns, it only learns from annotated pixels, it never touches the starting model, it keeps
provenance and the annotations, it can be cancelled, and it refuses bad input with a helpful message."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from napari_unet.core.cancel import CancelToken
from napari_unet.core.errors import Cancelled, InvalidInputError
from napari_unet.core.models import Model, ModelConfig
from napari_unet.core.targets import instance_targets
from napari_unet.core.training import Sample, TrainProgress, finetune, finetune_steps
from napari_unet.core.unet import UNetConfig
from napari_unet.core.versions import read_annotations
from napari_unet.synthetic import generate_nuclei

FAST = {"time_budget_s": None, "batch_size": 2, "validation_fraction": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(task: str = "instance", padding: str = "same", spatial_dims: int = 2, classes: int = 3,
               in_channels: int = 1, ignore_value: int | None = None) -> Model:
    network = UNetConfig(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=classes, depth=2,
                         base_features=4, padding=padding, norm="batch", upsampling="bilinear")
    names = ("background", "interior", "boundary") if task == "instance" else tuple(f"c{i}" for i in range(classes))
    config = ModelConfig(network, task=task, classes=names, axes="YX" if spatial_dims == 2 else "ZYX",
                         name="tiny", ignore_value=ignore_value)
    return Model.from_config(config, seed=0)


def nuclei(shape=(48, 48), seed=0, style="dense") -> Sample:
    image, labels = generate_nuclei(shape, style, seed=seed)
    return Sample(image, labels, axes="YX" if len(shape) == 2 else "ZYX")


def state_hash(model: Model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def run_steps(generator) -> tuple[list[TrainProgress], Model]:
    records = []
    while True:
        try:
            records.append(next(generator))
        except StopIteration as stop:
            return records, stop.value


def test_loss_falls_on_generated_nuclei():
    samples = [nuclei(seed=s) for s in range(2)]
    records, tuned = run_steps(finetune_steps(tiny_model(), samples, steps=60, seed=0, learning_rate=1e-2,
                                              **FAST))
    losses = [r.loss for r in records]
    assert len(losses) == 60 and records[-1].step == 60 and records[-1].total_steps == 60
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:5])
    assert len(tuned.history) == 60 and tuned.history[-1]["loss"] == pytest.approx(losses[-1])


def test_a_fixed_seed_repeats_a_run_exactly():
    sample = nuclei()
    first = finetune(tiny_model(), [sample], steps=4, seed=7, **FAST)
    second = finetune(tiny_model(), [sample], steps=4, seed=7, **FAST)
    third = finetune(tiny_model(), [sample], steps=4, seed=8, **FAST)
    assert state_hash(first) == state_hash(second) != state_hash(third)


def test_labels_outside_the_mask_have_no_influence_on_the_update():
    image, labels = generate_nuclei((48, 48), "dense", seed=3)
    mask = np.zeros(labels.shape, bool)
    mask[8:40, 4:28] = True
    scribbled = labels.copy()
    scribbled[~mask] = np.random.default_rng(0).integers(0, 40, size=int((~mask).sum()))
    a = finetune(tiny_model(), [Sample(image, labels, mask)], steps=3, seed=1, **FAST)
    b = finetune(tiny_model(), [Sample(image, scribbled, mask)], steps=3, seed=1, **FAST)
    assert state_hash(a) == state_hash(b)
    c = finetune(tiny_model(), [Sample(image, np.where(mask, 0, labels), mask)], steps=3, seed=1, **FAST)
    assert state_hash(c) != state_hash(a)  # labels inside the mask do matter


def test_the_starting_model_is_never_modified_and_the_result_is_a_new_model():
    model = tiny_model()
    before = state_hash(model)
    tuned = finetune(model, [nuclei()], steps=3, **FAST)
    assert state_hash(model) == before and model.config.provenance == {} and model.history == []
    assert tuned is not model and state_hash(tuned) != before
    assert tuned.path is None and not tuned.network.training


def test_cancel_returns_the_best_model_so_far_or_raises_and_never_changes_the_start():
    model = tiny_model()
    before = state_hash(model)
    token = CancelToken()
    steps = finetune_steps(model, [nuclei()], steps=50, cancel=token, **FAST)
    next(steps)
    next(steps)
    token.cancel()
    records, tuned = run_steps(steps)
    assert records == [] and tuned.config.provenance["steps"] == 2
    assert tuned.config.provenance["stopped"] == "cancelled"
    assert state_hash(model) == before and state_hash(tuned) != before

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        finetune(model, [nuclei()], steps=50, cancel=token, on_cancel="none", **FAST)
    untouched = finetune(model, [nuclei()], steps=50, cancel=token, **FAST)
    assert state_hash(untouched) == before and state_hash(model) == before


def test_validation_is_held_out_reported_and_the_best_state_is_kept():
    samples = [nuclei((64, 64), seed=s) for s in range(2)]
    progress_calls = []
    records, tuned = run_steps(finetune_steps(tiny_model(), samples, steps=20, time_budget_s=None, batch_size=2,
                                              validations=4, progress=lambda *a: progress_calls.append(a)))
    validated = [r for r in records if r.val_loss is not None]
    assert records[0].step == 0 and records[0].loss is None  # the starting model, validated
    assert [r.step for r in validated] == [0, 5, 10, 15, 20]
    assert all(0 <= r.val_dice <= 1 and 0 <= r.val_f1 <= 1 for r in validated)
    best = [r for r in validated if r.best][-1]
    assert best.val_loss <= min(r.val_loss for r in validated) * 1.01
    assert tuned.config.provenance["metrics"]["val_loss"] == pytest.approx(best.val_loss, abs=1e-4)
    assert progress_calls[-1][:2] == (20, 20) and "val" in progress_calls[-1][2]


def test_provenance_history_and_annotation_snapshot_are_recorded():
    model = tiny_model()
    model.config.history = [{"note": "pretraining"}]
    sample = nuclei()
    mask = np.ones(np.shape(sample.labels), bool)
    mask[:, :4] = False
    tuned = finetune(model, [Sample(sample.image, sample.labels, mask)], steps=2, seed=5, **FAST)
    provenance = tuned.config.provenance
    assert provenance["parent"] == "tiny" and provenance["steps"] == 2 and provenance["seed"] == 5
    assert provenance["data_fingerprint"].startswith("sha256:") and len(provenance["data_fingerprint"]) == 71
    assert set(provenance["versions"]) == {"napari_unet", "torch", "numpy"}
    assert tuned.config.history[0] == {"note": "pretraining"} and tuned.config.history[1]["steps"] == 2
    assert len(tuned.config.history) == 2 and len(model.config.history) == 1
    (labels, annotated, axes), = read_annotations(tuned)
    assert np.array_equal(labels, sample.labels) and np.array_equal(annotated, mask) and axes == "YX"
    assert np.load(io.BytesIO(tuned.attachments["annotations.npz"])).files  # a plain npz
    other = finetune(model, [Sample(sample.image, sample.labels)], steps=1, **FAST)
    assert other.config.provenance["data_fingerprint"] != provenance["data_fingerprint"]


def test_the_users_arrays_are_only_read():
    image, labels = generate_nuclei((48, 48), "dense", seed=0)
    mask = np.ones(labels.shape, bool)
    for array in (image, labels, mask):
        array.flags.writeable = False  # any write would raise
    finetune(tiny_model(), [Sample(image, labels, mask)], steps=2, **FAST)


def test_one_annotated_object_on_a_small_image_trains():
    image, labels = generate_nuclei((48, 48), "default", seed=1)
    one = np.where(labels == labels.max(), labels, 0)
    mask = np.zeros(labels.shape, bool)
    mask[np.nonzero(one)] = True
    tuned = finetune(tiny_model(), [Sample(image[:20, :24], one[:20, :24], mask[:20, :24] | True)], steps=2,
                     **FAST)
    assert tuned.config.provenance["steps"] == 2


def test_one_labelled_slice_of_a_stack_trains_a_2d_model():
    image, labels = generate_nuclei((6, 40, 40), "default", seed=2)
    only_one = np.zeros_like(labels)
    only_one[3] = labels[3]
    tuned = finetune(tiny_model(), [Sample(image, only_one, axes="ZYX")], steps=2, **FAST)
    assert tuned.config.provenance["annotated_pixels"] == 40 * 40
    (_, annotated, axes), = read_annotations(tuned)
    assert axes == "ZYX" and annotated[3].all() and not annotated[[0, 1, 2, 4, 5]].any()


def test_a_3d_model_learns_from_a_few_labelled_planes_of_a_stack_and_only_from_them():
    image, labels = generate_nuclei((8, 32, 32), "dense", seed=5)
    sparse = np.zeros_like(labels)
    sparse[[2, 5]] = labels[[2, 5]]
    tuned = finetune(tiny_model(spatial_dims=3), [Sample(image, sparse, axes="ZYX")], steps=2, **FAST)
    (_, annotated, axes), = read_annotations(tuned)
    assert axes == "ZYX" and annotated[[2, 5]].all() and not annotated[[0, 1, 3, 4, 6, 7]].any()
    # the unlabelled planes above and below are unknown, not background: objects keep their interior
    targets = instance_targets(sparse, annotated)
    for plane in (2, 5):
        alone = instance_targets(labels[plane], np.ones(labels.shape[1:], bool))
        np.testing.assert_array_equal(targets.classes[plane], alone.classes)


def test_3d_semantic_multichannel_and_valid_padding_models_train():
    image, labels = generate_nuclei((8, 32, 32), "default", seed=3)
    finetune(tiny_model(spatial_dims=3), [Sample(image, labels, axes="ZYX")], steps=1, **FAST)
    semantic = tiny_model("semantic", classes=2)
    finetune(semantic, [Sample(image[4], (labels[4] > 0).astype(np.uint8))], steps=1, **FAST)
    two_channels = np.stack([image[4], image[5]], axis=-1)
    finetune(tiny_model(in_channels=2), [Sample(two_channels, labels[4], axes="YXC")], steps=1, **FAST)
    valid = tiny_model(padding="valid")
    tuned = finetune(valid, [nuclei((40, 40))], steps=1, **FAST)
    assert tuned.config.provenance["settings"]["patch_shape"] == [80, 80]  # 40 px of output + 2 x 20 px halo


def test_ignore_value_marks_unannotated_pixels():
    image, labels = generate_nuclei((48, 48), "dense", seed=4)
    partial = labels.copy()
    partial[:, 24:] = 255
    model = tiny_model(ignore_value=255)
    tuned = finetune(model, [Sample(image, partial)], steps=1, **FAST)
    assert tuned.config.provenance["annotated_pixels"] == 48 * 24


@pytest.mark.parametrize(
    "sample, model, message",
    [
        (Sample(np.zeros((32, 32)), np.zeros((32, 30), np.int32)), tiny_model(), "labels have shape"),
        (Sample(np.zeros((32, 32)), np.zeros((32, 32), np.int32)), tiny_model(), "nothing is annotated"),
        (Sample(np.zeros((32, 32)), np.ones((32, 32), np.int32), np.zeros((32, 32), bool)), tiny_model(),
         "nothing is annotated"),
        (Sample(np.zeros((32, 32)), np.ones((32, 32), np.float32)), tiny_model(), "integers"),
        (Sample(np.zeros((32, 32)), -np.ones((32, 32), np.int32)), tiny_model(), "negative"),
        (Sample(np.zeros((32, 32)), np.full((32, 32), 4)), tiny_model("semantic", classes=3), "class id 4"),
        # channels that are not colour (colour last is converted to one channel: tests/core/test_colour.py)
        (Sample(np.zeros((3, 32, 32)), np.ones((32, 32), np.int32), axes="CYX"), tiny_model(), "3"),
        (Sample(np.zeros((32, 32)), np.ones((32, 32), np.int32), axes="ZYX"), tiny_model(), "axes"),
    ],
)
def test_bad_input_is_refused_with_a_helpful_message(sample, model, message):
    with pytest.raises(InvalidInputError, match=f"sample 0: .*{message}"):
        finetune(model, [sample], steps=1, **FAST)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": None, "time_budget_s": None}, "time budget"),
        ({"steps": 1, "time_budget_s": float("inf")}, "time_budget_s"),
        ({"steps": 0}, "steps"),
        ({"steps": 1, "batch_size": 0}, "batch_size"),
        ({"steps": 1, "validation_fraction": 0.9}, "validation"),
        ({"steps": 1, "validations": 0}, "validations"),
        ({"steps": 1, "on_cancel": "later"}, "on_cancel"),
        ({"steps": 1, "patch_shape": (32, 32, 32)}, "patch_shape"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidInputError, match=message):
        finetune(tiny_model(), [nuclei()], **{"time_budget_s": None, **options})


def test_samples_must_be_a_list_of_samples():
    with pytest.raises(InvalidInputError, match="list"):
        finetune(tiny_model(), nuclei(), steps=1)
    with pytest.raises(InvalidInputError, match="Sample"):
        finetune(tiny_model(), [(np.zeros((8, 8)), np.ones((8, 8), int))], steps=1)


def test_dask_and_zarr_images_train_without_being_converted_by_the_caller():
    import dask.array as da
    import zarr

    image, labels = generate_nuclei((4, 32, 32), "default", seed=5)
    only_two = np.zeros_like(labels)
    only_two[[1, 2]] = labels[[1, 2]]
    store = zarr.create_array(store=zarr.storage.MemoryStore(), shape=image.shape, chunks=(1, 16, 16),
                              dtype=image.dtype)
    store[:] = image
    from_zarr = finetune(tiny_model(), [Sample(store, only_two, axes="ZYX")], steps=1, seed=2, **FAST)
    from_dask = finetune(tiny_model(), [Sample(da.from_array(image, chunks=8), only_two, axes="ZYX")], steps=1,
                         seed=2, **FAST)
    from_numpy = finetune(tiny_model(), [Sample(image, only_two, axes="ZYX")], steps=1, seed=2, **FAST)
    assert state_hash(from_zarr) == state_hash(from_dask) == state_hash(from_numpy)


def _running_means(model: Model) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_batchnorm_statistics_are_frozen_for_tiny_batches_once_the_model_has_them():
    fresh = tiny_model()
    trained = finetune(fresh, [nuclei()], steps=2, **{**FAST, "batch_size": 4})  # estimates its statistics
    assert not all(torch.equal(a, b) for a, b in zip(_running_means(fresh), _running_means(trained)))
    tuned = finetune(trained, [nuclei(seed=1)], steps=2, **FAST)  # batch 2: too small to estimate
    assert tuned.config.provenance["settings"]["freeze_batchnorm"] is True
    assert all(torch.equal(a, b) for a, b in zip(_running_means(trained), _running_means(tuned)))
    assert state_hash(tuned) != state_hash(trained)  # the weights still learn


def test_no_validation_when_too_little_is_annotated():
    records, tuned = run_steps(finetune_steps(tiny_model(), [nuclei((40, 40))], steps=3, time_budget_s=None,
                                              batch_size=2))
    assert [r.step for r in records] == [1, 2, 3] and all(r.val_loss is None for r in records)
    assert "val_loss" not in tuned.config.provenance["metrics"]


def test_the_validation_block_is_taken_out_of_the_training_loss():
    from napari_unet.core.holdout import hold_out_validation
    from napari_unet.core.targets import Item, instance_targets

    _, labels = generate_nuclei((96, 96), "dense", seed=0)
    annotated = np.ones(labels.shape, bool)
    annotated[:10] = False
    items = [Item(np.zeros((1, 96, 96), np.float32), instance_targets(labels, annotated), 0)]
    validation = hold_out_validation(items, 0.2, tiny_model().config.network, "instance")
    total = 86 * 96
    assert 0.2 * total <= validation.annotated_pixels < 0.3 * total
    training = items[0].targets
    assert training.annotated.sum() == total - validation.annotated_pixels
    assert (training.weights[~training.annotated] == 0).all()
    block, = validation.blocks
    assert block.annotated.sum() == validation.annotated_pixels
    assert block.input.shape[0] == 1 and all(n >= s + 32 for n, s in zip(block.input.shape[1:], block.classes.shape))


def test_the_planes_of_a_stack_do_not_train_where_one_of_them_is_held_out():
    from napari_unet.core.training_data import prepare_data

    image, labels = generate_nuclei((12, 96, 96), "dense", seed=3)  # neighbouring planes are near copies
    data = prepare_data(tiny_model(), [Sample(image, labels, axes="ZYX")], 48, 0.2, 10.0, 5.0)
    assert len(data.items) == 12 and data.validation is not None
    training = np.array([item.targets.annotated for item in data.items])
    held = ~training.all(axis=0)  # the YX pixels some plane holds out
    assert held.any() and not training[:, held].any(), "no plane of the stack trains where another is judged"
    assert training.any(axis=(1, 2)).all(), "every plane still trains elsewhere"


def test_finetune_spells_out_the_options_of_finetune_steps():
    import inspect

    ours, steps = inspect.signature(finetune), inspect.signature(finetune_steps)
    assert list(ours.parameters) == list(steps.parameters), "no **options: every option is named and typed"
    assert all(ours.parameters[n].default == steps.parameters[n].default for n in steps.parameters)


def test_preparing_the_data_does_not_use_up_the_time_budget(monkeypatch):
    import time as time_module

    import napari_unet.core.training as training_module

    real = training_module.prepare_data

    def slow_prepare(*args, **kwargs):
        time_module.sleep(1.5)  # a busy machine, or large images
        return real(*args, **kwargs)

    monkeypatch.setattr(training_module, "prepare_data", slow_prepare)
    tuned = finetune(tiny_model(), [nuclei()], time_budget_s=1.0, batch_size=2, validation_fraction=0.0)
    provenance = tuned.config.provenance
    assert provenance["steps"] >= 1 and provenance["settings"]["prepare_s"] >= 1.5
    assert provenance["time_s"] < 1.5, "the budget counts training time"
