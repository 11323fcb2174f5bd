"""Z steps: a 3D model sees a stack on the grid it was trained on, and its results come back on the stack's planes."""
import numpy as np
import pytest

from napari_unet.core import zsampling
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.models import ModelConfig
from napari_unet.synthetic import generate_nuclei
from tiny_models import tiny_unet

FLOAT32 = {"device": "cpu", "precision": "float32"}


def tiny_3d(z_step: float | None = 1.0):
    return tiny_unet(network={"spatial_dims": 3}, axes="ZYX", z_step=z_step)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    image, _ = generate_nuclei((7, 32, 32), "dense", seed=2)
    return image


def test_resampled_labels_come_back_unchanged_on_the_stack_planes() -> None:
    _, labels = generate_nuclei((9, 24, 24), "dense", seed=1)
    fine = zsampling.labels_to_model_grid(labels, 3.0)
    assert fine.shape == (25, 24, 24)  # (9 - 1) * 3 + 1 planes, the first and last kept
    back = fine[zsampling.nearest_planes(9, 25)]
    np.testing.assert_array_equal(back, labels)
    image = zsampling.to_model_grid(np.arange(3, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8), 2.0)
    np.testing.assert_allclose(image[:, 0, 0], [0, 0.5, 1, 1.5, 2])  # linear between the planes
    np.testing.assert_array_equal(zsampling.renumbered(np.array([[0, 7], [7, 3]])), [[0, 2], [2, 1]])
    np.testing.assert_array_equal(zsampling.renumbered(np.array([5, 9])), [1, 2])  # no background at all


def test_a_3d_model_sees_the_stack_resampled_to_its_z_step(stack) -> None:
    model = tiny_3d(z_step=1.0)
    result = segment(stack, model, scale=(3.0, 1.0, 1.0), **FLOAT32)
    fine = zsampling.to_model_grid(stack, 3.0)
    assert fine.shape[0] == 19
    expected = segment(fine, model, **FLOAT32)
    planes = zsampling.nearest_planes(7, 19)
    assert result.labels.shape == stack.shape
    np.testing.assert_array_equal(result.probabilities, expected.probabilities[:, planes])
    np.testing.assert_array_equal(result.labels, zsampling.renumbered(expected.labels[planes]))
    assert result.objects == result.labels.max()
    assert any("resampled to the model's 1 (7 planes -> 19)" in m for m in result.messages)
    as_is = segment(stack, model, **FLOAT32)
    assert not np.allclose(as_is.probabilities, result.probabilities, atol=1e-3), "Z was treated like X"


def test_a_stack_already_on_the_model_grid_or_a_model_without_z_step_is_not_resampled(stack) -> None:
    model = tiny_3d(z_step=2.0)
    same = segment(stack, model, scale=(1.0, 0.5, 0.5), **FLOAT32)  # Z step 2 pixel sizes, as trained
    np.testing.assert_array_equal(same.probabilities, segment(stack, model, **FLOAT32).probabilities)
    assert not any("resampled" in m for m in same.messages)
    unknown = segment(stack, tiny_3d(z_step=None), scale=(3.0, 1.0, 1.0), **FLOAT32)
    assert unknown.labels.shape == stack.shape
    assert any("records no Z step" in m for m in unknown.messages)


def test_z_step_is_saved_with_the_model_and_checked() -> None:
    config = tiny_3d(z_step=2.5).config
    assert ModelConfig.from_dict(config.to_dict()).z_step == 2.5
    assert ModelConfig.from_dict({**config.to_dict(), "z_step": None}).z_step is None
    with pytest.raises(InvalidInputError, match="z_step must be a positive number"):
        tiny_3d(z_step=0)


def test_class_labels_of_a_resampled_stack_keep_their_class_ids(stack) -> None:
    model = tiny_3d(z_step=1.0)
    model.config.task, model.config.classes = "semantic", ("c0", "c1", "c2")

    def run(image, model, axes, **options):
        from types import SimpleNamespace

        labels = np.zeros(image.shape, np.int32)
        labels[:, 8:16, 8:16] = 2  # only class 2 present
        yield "progress"
        return SimpleNamespace(labels=labels, probabilities=None, labels_axes="ZYX", messages=[], objects=None)

    steps = zsampling.segment_on_model_grid(run, stack, model, "ZYX", scale=(3.0, 1.0, 1.0), probabilities=False)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result = stop.value
            break
    assert set(np.unique(result.labels)) == {0, 2} and result.objects is None
