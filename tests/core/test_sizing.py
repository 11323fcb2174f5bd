"""Object size: images are resampled to the object size the model was trained at, and results come back to
the image's grid; a model that records no size segments as it always did."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_unet.core import sizing
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(object_diameter: float | None = 20.0) -> Model:
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    return Model.from_config(ModelConfig(network, axes="YX", name="tiny", object_diameter=object_diameter), seed=0)


def discs(shape: tuple[int, int], radius: float, count: int = 9) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    step = shape[0] // 3
    for i in range(count):
        rr, cc = disk((step // 2 + step * (i // 3), step // 2 + step * (i % 3)), radius, shape=shape)
        labels[rr, cc] = i + 1
    return labels


class FakeRun:
    """segment_steps as seen by the sizing layer: records what it was given, labels objects of a chosen size."""

    def __init__(self, radius: float) -> None:
        self.radius, self.calls = radius, []

    def __call__(self, image, model, axes, **options):
        from types import SimpleNamespace

        self.calls.append((image.shape, axes, options))
        yield "progress"
        labels = discs(image.shape, self.radius * image.shape[0] / 240)
        probabilities = np.stack([labels == 0, labels > 0, np.zeros_like(labels, bool)]).astype(np.float32)
        return SimpleNamespace(labels=labels, probabilities=probabilities, labels_axes="YX", messages=[])


def run_to_end(steps):
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def test_the_estimate_is_the_median_equivalent_diameter():
    assert sizing.estimate_diameter(discs((240, 240), 10)) == pytest.approx(20, rel=0.05)
    assert sizing.estimate_diameter(np.stack([discs((240, 240), 10)] * 2)) == pytest.approx(20, rel=0.05)
    assert sizing.estimate_diameter(discs((240, 240), 10, count=3)) is None, "too few objects to say"


def test_a_given_diameter_resamples_y_and_x_and_brings_the_result_back():
    fake = FakeRun(radius=10)
    image = np.random.default_rng(0).random((240, 240)).astype(np.float32)
    result = run_to_end(sizing.segment_at_size(fake, image, tiny_model(20), "YX", 40.0, {"probabilities": True}))
    ((shape, axes, _),) = fake.calls
    assert shape == (120, 120) and axes == "YX", "40 px objects for a 20 px model: half the size"
    assert result.labels.shape == image.shape and result.probabilities.shape == (3, 240, 240)
    assert "resampled by 0.50" in result.messages[-1]


def test_a_diameter_near_the_trained_one_changes_nothing():
    fake = FakeRun(radius=10)
    image = np.zeros((240, 240), np.float32)
    run_to_end(sizing.segment_at_size(fake, image, tiny_model(20), "YX", 21.0, {"probabilities": True}))
    assert fake.calls[0][0] == (240, 240)


def test_no_diameter_segments_again_at_the_models_size_when_objects_are_much_larger():
    image = np.zeros((240, 240), np.float32)
    far = FakeRun(radius=30)  # objects of 60 px for a 20 px model
    result = run_to_end(sizing.segment_at_size(far, image, tiny_model(20), None, None, {"probabilities": True}))
    assert [call[0] for call in far.calls] == [(240, 240), (80, 80)], "a second pass, a third of the size"
    assert result.labels.shape == image.shape and result.probabilities.shape == (3, 240, 240)
    assert "about 60 px across" in result.messages[-1] and "segmented again" in result.messages[-1]
    assert "set a diameter" in result.messages[-1] and "diameter=" not in result.messages[-1]


@pytest.mark.parametrize("radius", [6, 12.5])
def test_no_diameter_segments_once_and_reports_objects_smaller_or_near_the_models_size(radius):
    image = np.zeros((240, 240), np.float32)
    fake = FakeRun(radius=radius)  # 12 px (smaller: never enlarged) or 25 px (within 1.5x) for a 20 px model
    result = run_to_end(sizing.segment_at_size(fake, image, tiny_model(20), None, None, {"probabilities": True}))
    assert [call[0] for call in fake.calls] == [(240, 240)], "no second pass"
    assert f"about {2 * radius:.0f} px across" in result.messages[-1] and "set a diameter" in result.messages[-1]
    assert "diameter=" not in result.messages[-1], "the note is shown in the dock and by the command too"


def test_a_stack_is_measured_but_not_segmented_again():
    image = np.zeros((3, 240, 240), np.float32)

    def stack_run(image, model, axes, **options):
        from types import SimpleNamespace

        labels = np.stack([discs((240, 240), 30)] * 3)
        yield "progress"
        return SimpleNamespace(labels=labels, probabilities=None, labels_axes="ZYX", messages=[])

    result = run_to_end(sizing.segment_at_size(stack_run, image, tiny_model(20), "ZYX", None,
                                               {"probabilities": False}))
    assert "about 60 px across" in result.messages[-1] and "set a diameter" in result.messages[-1]


def test_the_typical_diameter_sees_through_a_large_object_shattered_into_pieces():
    labels = discs((240, 240), 30, count=6)  # six nuclei of 60 px
    pieces = np.zeros_like(labels)
    rows, cols = np.indices((60, 220))
    pieces[170:230, 10:230] = 100 + (rows // 6) * 40 + cols // 6  # one more, shattered into 6 x 6 px pieces
    labels = np.where(pieces > 0, pieces, labels)
    assert sizing.estimate_diameter(labels) < 20, "the median over objects measures the pieces"
    assert sizing.typical_diameter(labels) == pytest.approx(60, rel=0.1)


def test_a_model_without_an_object_size_ignores_the_diameter_and_says_so():
    fake = FakeRun(radius=10)
    image = np.zeros((240, 240), np.float32)
    result = run_to_end(sizing.segment_at_size(fake, image, tiny_model(None), "YX", 40.0, {"probabilities": True}))
    assert fake.calls[0][0] == (240, 240) and "ignored" in result.messages[-1]


@pytest.mark.parametrize("bad", [0, -3, float("nan"), "big", 1000.0])
def test_a_meaningless_diameter_is_refused(bad):
    with pytest.raises(InvalidInputError, match="diameter"):
        segment(np.zeros((64, 64), np.float32), tiny_model(20), diameter=bad)


def test_segment_with_a_diameter_returns_labels_on_the_image_grid(tmp_path):
    import zarr

    image = np.random.default_rng(1).random((100, 90)).astype(np.float32)
    out = zarr.zeros((100, 90), dtype="int32", store=str(tmp_path / "labels.zarr"))
    result = segment(image, tiny_model(20), axes="YX", device="cpu", diameter=35.0, out=out)
    assert result.labels is out and out.shape == (100, 90)
    assert result.probabilities.shape == (3, 100, 90)


def test_the_object_size_is_saved_with_the_model(tmp_path):
    assert load_model(save_model(tiny_model(17.5), tmp_path / "m")).config.object_diameter == 17.5
    with pytest.raises(InvalidInputError, match="object_diameter"):
        tiny_model(-1.0)


def test_fine_tuning_records_the_size_of_the_annotated_objects():
    from napari_unet.core.training_data import Sample, prepare_data

    labels = discs((240, 240), 13)  # objects of 26 px, within 1.5 times the model's 20 px
    image = (labels > 0).astype(np.float32) * 100 + 10
    data = prepare_data(tiny_model(20), [Sample(image, labels)], None, 0.0, 10.0, 5.0)
    assert data.object_sizes == [pytest.approx(26, rel=0.05)]
    assert data.items[0].targets.annotated.sum() == 240 * 240, "trained at the image's own scale, as segmented"


def test_fine_tuning_sees_large_objects_at_the_scale_segment_will_show_them():
    from napari_unet.core.training_data import Sample, prepare_data

    labels = discs((240, 240), 30)  # objects of 60 px: segment(diameter=None) goes again at a third of the size
    image = (labels > 0).astype(np.float32) * 100 + 10
    prediction = np.where(labels == 5, 0, labels)  # the model missed one; the user painted it
    data = prepare_data(tiny_model(20), [Sample(image, labels, prediction=prediction)], None, 0.0, 10.0, 5.0)
    item = data.items[0]
    assert item.image.shape == (1, 80, 80) and item.targets.annotated.shape == (80, 80)
    assert data.object_sizes == [pytest.approx(60, rel=0.05)], "the size recorded is the annotated one"
    assert 0.8 * (np.pi * 10 ** 2) < item.targets.corrected.sum() < 1.2 * (np.pi * 10 ** 2 + 2 * np.pi * 10 * 2)
    (kept_labels, _, _), = data.annotations
    assert kept_labels.shape == (240, 240), "the snapshot keeps the user's labels as they are"
    stack = prepare_data(tiny_model(20), [Sample(np.stack([image] * 2), np.stack([labels] * 2), axes="ZYX")],
                         None, 0.0, 10.0, 5.0)
    assert stack.items[0].image.shape == (1, 240, 240), "stacks are segmented at their own scale, so trained so"


def test_the_estimate_takes_ids_of_any_size_and_sign():
    labels = discs((240, 240), 10).astype(np.int64) * (2**40)  # huge ids
    labels[0, :5] = -3  # negative values are not objects
    assert sizing.estimate_diameter(labels) == pytest.approx(20, rel=0.05)


def test_objects_lost_on_the_way_back_to_the_image_grid_are_not_counted_and_ids_stay_1_to_n():
    def run(image, model, axes, **options):
        from types import SimpleNamespace

        labels = discs(image.shape, 20)
        labels[1, :80] = np.arange(10, 90)  # one-pixel objects side by side: half of them or more fall out
        yield "progress"
        return SimpleNamespace(labels=labels, probabilities=None, labels_axes="YX", messages=[], objects=89)

    image = np.zeros((120, 120), np.float32)
    result = run_to_end(sizing.segment_at_size(run, image, tiny_model(20), "YX", 10.0, {"probabilities": False}))
    ids = np.unique(result.labels)
    assert len(ids) <= 50, "the one-pixel objects fell between the image's pixels, half of them at least"
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    assert result.objects == len(ids) - 1


def test_class_labels_keep_their_class_ids_on_the_way_back():
    def run(image, model, axes, **options):
        from types import SimpleNamespace

        labels = np.where(discs(image.shape, 20) > 0, 2, 0)  # only class 2 present
        yield "progress"
        return SimpleNamespace(labels=labels, probabilities=None, labels_axes="YX", messages=[], objects=None)

    model = tiny_model(20)
    model.config.task, model.config.classes = "semantic", ("c0", "c1", "c2")
    result = run_to_end(sizing.segment_at_size(run, np.zeros((120, 120), np.float32), model, "YX", 10.0,
                                               {"probabilities": False}))
    assert set(np.unique(result.labels)) == {0, 2} and result.objects is None


def test_ids_that_do_not_fit_the_callers_array_are_refused():
    def run(image, model, axes, **options):
        from types import SimpleNamespace

        rows, cols = np.indices(image.shape)
        yield "progress"
        return SimpleNamespace(labels=1 + rows // 8 * 30 + cols // 8, probabilities=None, labels_axes="YX",
                               messages=[], objects=900)  # 900 squares of 8 x 8 px, 4 x 4 on the way back

    out = np.zeros((120, 120), np.uint8)
    with pytest.raises(InvalidInputError, match="int32"):
        run_to_end(sizing.segment_at_size(run, np.zeros((120, 120), np.float32), tiny_model(20), "YX", 10.0,
                                          {"probabilities": False, "out": out}))


@pytest.mark.parametrize("keep_partial", [False, True])
def test_a_cancel_during_the_second_pass_clears_what_the_first_wrote(keep_partial):
    from napari_unet.core.errors import Cancelled

    def run(image, model, axes, **options):
        from types import SimpleNamespace

        labels = discs(image.shape, 30 * image.shape[0] / 240)  # 60 px objects on the image's grid
        yield "progress"
        if options["out"] is None:  # the second pass, on the resampled image: the user cancels
            raise Cancelled("cancelled by the user")
        options["out"][...] = labels  # the engine writes into the caller's arrays as it goes
        options["probabilities"][...] = 0.5
        return SimpleNamespace(labels=options["out"], probabilities=options["probabilities"], labels_axes="YX",
                               messages=[], objects=9)

    out, probabilities = np.zeros((240, 240), np.int32), np.zeros((3, 240, 240), np.float32)
    options = {"probabilities": probabilities, "out": out, "keep_partial": keep_partial}
    with pytest.raises(Cancelled):
        run_to_end(sizing.segment_at_size(run, np.zeros((240, 240), np.float32), tiny_model(20), "YX", None,
                                          options))
    assert out.any() == keep_partial and probabilities.any() == keep_partial


def test_the_progress_callback_hears_why_the_second_pass_runs():
    heard = []

    def run(image, model, axes, **options):
        from types import SimpleNamespace

        options["progress"](1, 1, "tile 1 of 1")
        yield "progress"
        labels = discs(image.shape, 30 * image.shape[0] / 240)  # 60 px objects on the image's grid
        return SimpleNamespace(labels=labels, probabilities=None, labels_axes="YX", messages=[], objects=9)

    options = {"probabilities": False, "progress": lambda done, total, message: heard.append(message)}
    run_to_end(sizing.segment_at_size(run, np.zeros((240, 240), np.float32), tiny_model(20), "YX", None, options))
    assert heard[0] == "tile 1 of 1" and "segmenting again" in heard[1]


def test_a_colour_image_segmented_twice_is_converted_and_announced_once():
    import warnings

    from napari_unet.core.colour import grey_for_model

    def run(image, model, axes, **options):
        from types import SimpleNamespace

        grey, grey_axes, note = grey_for_model(image, axes, 2, 1)  # as the engine does: warns when it converts
        labels = discs(grey.shape[:2], 30 * grey.shape[0] / 240)  # 60 px objects on the image's grid
        yield "progress"
        return SimpleNamespace(labels=labels, probabilities=None, labels_axes="YX", axes=axes or "YXC",
                               messages=[note] if note else [], objects=9)

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (240, 240, 3)).astype(np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_to_end(sizing.segment_at_size(run, colour, tiny_model(20), "YXC", None,
                                                   {"probabilities": False}))
    assert len([w for w in caught if "colour" in str(w.message)]) == 1
    assert sum("colour" in m for m in result.messages) == 1 and result.axes == "YXC"
    assert "segmented again" in result.messages[-1]
