"""segment(): inputs of every kind, axes, progress, cancel, out-of-memory fallback and bad input."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_unet.core import inference, run_outputs
from napari_unet.core.cancel import CancelToken
from napari_unet.core.errors import Cancelled, InvalidInputError
from napari_unet.core.inference import SegmentProgress, segment, segment_steps
from napari_unet.core.models import Model, ModelConfig
from napari_unet.core.postprocess import instance_labels
from napari_unet.core.runner import cpu_has_native_bfloat16
from napari_unet.core.unet import UNet, UNetConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(dims=2, channels=1, task="instance", classes=3, depth=2, seed=0):
    names = ("background", "interior", "boundary") if task == "instance" else tuple(f"c{i}" for i in range(classes))
    net = UNetConfig(spatial_dims=dims, in_channels=channels, out_channels=len(names), depth=depth,
                     base_features=4, padding="same", upsampling="bilinear", norm="batch")
    model = Model.from_config(ModelConfig(net, task=task, classes=names, axes="YX" if dims == 2 else "ZYX"),
                              seed=seed)
    model.network.eval()
    return model


def nuclei_model():
    """A one-pixel 'U-Net' that reads bright as interior, medium as boundary and dark as background.

    Its output is known, so tests can check labels: a bright blob gives one object with a rim.
    """
    net = UNetConfig(depth=0, base_features=1, out_channels=3, padding="same", norm="none")
    model = Model.from_config(ModelConfig(net))
    with torch.no_grad():
        for conv in (model.network.inc[0], model.network.inc[2]):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
        model.network.head.weight.copy_(torch.tensor([0.0, 20.0, 10.0]).reshape(3, 1, 1, 1))
        model.network.head.bias.copy_(torch.tensor([0.0, -10.0, -3.0]))
    model.network.eval()
    return model


def blobs(shape=(120, 150), seed=0, bar=True):
    """uint16 gaussian blobs on a dark background, plus a ridge across the whole width."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    for _ in range(12):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        image = np.maximum(image, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 50))
    if bar:
        image = np.maximum(image, np.exp(-((yy - shape[0] // 2) ** 2) / 50))
    return (100 + 3000 * image).astype(np.uint16)


def test_segment_returns_labels_probabilities_and_what_it_did():
    model = random_model()
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    result = segment(image, model, device="cpu")
    assert result.labels.shape == (70, 90) and result.labels.dtype == np.int32
    assert result.probabilities.shape == (3, 70, 90) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(0), 1, atol=1e-5)
    assert result.axes == result.labels_axes == "YX" and result.device == "cpu"
    assert result.precision == ("bfloat16" if cpu_has_native_bfloat16() else "float32")
    assert result.objects == result.labels.max()
    assert {"statistics", "network", "labels", "total"} <= set(result.timings)


def test_instance_objects_crossing_tile_borders_keep_one_id():
    model = nuclei_model()
    image = blobs()
    result = segment(image, model, tile_shape=32, device="cpu")
    assert max(result.tile_shape) <= 32 and result.margin == (2, 2)  # 4 x 5 tiles
    whole = instance_labels(result.probabilities)
    relabelled = np.unique(np.stack([result.labels.ravel(), whole.ravel()]), axis=1)
    assert relabelled.shape[1] == whole.max() + 1  # the same objects as one whole-image labelling
    ridge = np.unique(result.labels[60, :])
    assert len(ridge) == 1 and ridge[0] > 0  # the ridge crosses every tile column and is one object
    np.testing.assert_array_equal(np.unique(result.labels), np.arange(result.objects + 1))


@pytest.mark.parametrize("wrap", [lambda a: da.from_array(a, chunks=(33, 40)),
                                  lambda a: zarr.array(a, chunks=(32, 32))])
def test_dask_and_zarr_inputs_give_the_numpy_result(wrap):
    model = nuclei_model()
    image = blobs()
    expected = segment(image, model, tile_shape=48, device="cpu")
    result = segment(wrap(image), model, tile_shape=48, device="cpu")
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)


def test_outputs_can_be_zarr_arrays():
    model = nuclei_model()
    image = zarr.array(blobs(), chunks=(40, 40))
    labels = zarr.zeros(image.shape, chunks=(40, 40), dtype=np.int32)
    probabilities = zarr.zeros((3, *image.shape), chunks=(1, 40, 40), dtype=np.float32)
    result = segment(image, model, tile_shape=48, device="cpu", out=labels, probabilities=probabilities)
    assert result.labels is labels and result.probabilities is probabilities
    expected = segment(blobs(), model, tile_shape=48, device="cpu")
    np.testing.assert_array_equal(labels[:], expected.labels)
    np.testing.assert_array_equal(probabilities[:], expected.probabilities)
    assert segment(image, model, device="cpu", probabilities=False).probabilities is None


def test_segment_steps_yields_progress_with_a_growing_preview_and_returns_the_result():
    model = nuclei_model()
    calls = []
    steps = segment_steps(blobs(), model, tile_shape=48, device="cpu",
                          progress=lambda done, total, message: calls.append((done, total)))
    events = []
    while True:
        try:
            events.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert all(isinstance(e, SegmentProgress) for e in events)
    assert [(e.done, e.total) for e in events] == calls
    assert events[-1].done == events[-1].total == len(events) - 1  # one event per tile, then "numbering objects"
    assert sum(len(e.regions) for e in events) >= events[-1].total
    assert events[0].preview is result.labels and result.objects > 0


def counting_forward(monkeypatch, fail=None):
    """Count forward passes (and the tiles in each); ``fail(x)`` may raise to simulate running out of memory."""
    calls = []
    original = UNet.forward

    def forward(self, x):
        if x.dtype == torch.float64:  # the probe that measures the network's reach, not inference
            return original(self, x)
        calls.append(tuple(x.shape))
        if fail is not None:
            fail(x)
        return original(self, x)

    monkeypatch.setattr(UNet, "forward", forward)
    return calls


@pytest.mark.parametrize("keep_partial", [False, True])
def test_cancel_stops_within_one_batch_and_clears_the_callers_output(monkeypatch, keep_partial):
    model = random_model(task="semantic", classes=2, depth=1)
    token = CancelToken()
    calls = counting_forward(monkeypatch)
    out = np.full((120, 150), 7, np.int32)
    probabilities = np.zeros((2, 120, 150), np.float32)
    with pytest.raises(Cancelled):
        segment(blobs(), model, tile_shape=32, batch_size=3, device="cpu", cancel=token, out=out,
                probabilities=probabilities, keep_partial=keep_partial, progress=lambda *args: token.cancel())
    assert len(calls) == 1 and calls[0][0] == 3  # one batch of three tiles ran, then it stopped
    assert probabilities.any() == keep_partial
    if keep_partial:  # the first tiles were written, the rest is as it was
        assert (out == 7).any() and (out != 7).any()
    else:  # the planes it wrote to are zero again
        assert not out.any()


def test_closing_the_generator_clears_the_callers_output():
    out = zarr.zeros((120, 150), chunks=(40, 40), dtype=np.int32)
    steps = segment_steps(blobs(), nuclei_model(), tile_shape=32, device="cpu", out=out)
    for _ in range(30):
        next(steps)
    assert out[:].any()
    steps.close()  # what a napari worker does when it is quit
    assert not out[:].any()


def test_out_of_memory_retries_with_smaller_batches_then_tiles(monkeypatch):
    model = random_model()
    image = np.random.default_rng(1).random((150, 150)).astype(np.float32)
    expected = segment(image, model, tile_shape=96, device="cpu")

    def fail(x):
        if x.shape[0] > 1 or x.shape[2] * x.shape[3] > 80 * 80:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    calls = counting_forward(monkeypatch, fail)
    messages = []
    result = segment(image, model, tile_shape=150, batch_size=4, device="cpu",
                     progress=lambda done, total, message: messages.append(message))
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=2e-5)
    assert result.batch_size == 1 and np.prod(result.tile_shape) <= 80 * 80
    assert any("retrying with 2 tiles per batch" in m for m in messages)
    assert any("retrying with tiles of" in m for m in messages)
    assert result.messages == [m for m in messages if "out of memory" in m]
    assert len(calls) > 3


def test_out_of_memory_on_the_gpu_falls_back_to_the_cpu(monkeypatch):
    """Stand in for a GPU with PyTorch's 'meta' device, which runs nothing: every forward pass there fails."""
    model = random_model()
    image = np.random.default_rng(2).random((64, 80)).astype(np.float32)
    expected = segment(image, model, device="cpu")
    monkeypatch.setattr(inference, "resolve_device", lambda device: torch.device("meta"))

    def fail(x):
        if x.device.type == "meta":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    counting_forward(monkeypatch, fail)
    result = segment(image, model, device="cuda", batch_size=2)
    assert result.device == "cpu"
    assert any("continuing on the CPU" in m for m in result.messages)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=2e-5)


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    def fail(x):
        raise RuntimeError("something else broke")

    counting_forward(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="something else"):
        segment(np.zeros((32, 32), np.float32), random_model(), device="cpu")


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_nan_and_inf_pixels_are_background_with_a_warning():
    model = nuclei_model()
    image = blobs().astype(np.float32)
    image[55:65, 10:20] = np.nan  # on the ridge
    image[0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        result = segment(image, model, tile_shape=48, device="cpu")
    assert (result.labels[55:65, 10:20] == 0).all() and result.labels[0, 0] == 0
    np.testing.assert_array_equal(result.probabilities[0, 55:65, 10:20], 1)
    assert result.labels[60, 30] > 0 and any("NaN" in m for m in result.messages)


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_a_constant_image_has_no_objects(value):
    result = segment(np.full((40, 50), value, np.uint16), random_model(), device="cpu")
    assert not result.labels.any() and result.objects == 0
    np.testing.assert_array_equal(result.probabilities[0], 1)
    assert any("constant" in m for m in result.messages)


def test_uint16_gives_the_result_of_its_float32_copy():
    image = blobs()
    image[5, 5] = 65535
    model = nuclei_model()
    a = segment(image, model, device="cpu")
    b = segment(image.astype(np.float32), model, device="cpu")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


@pytest.mark.parametrize("dtype", [bool, np.float16, np.int8, np.uint8, np.int64, np.float64])
def test_other_dtypes_work(dtype):
    image = blobs() > 1000 if dtype is bool else blobs().astype(dtype)
    result = segment(image, nuclei_model(), device="cpu")
    assert result.objects > 0


@pytest.mark.parametrize("image, words", [
    (np.zeros((0, 10)), "empty"),
    (np.zeros((10, 10), complex), "dtype complex128"),
    (np.array([["a", "b"], ["c", "d"]]), "dtype <U1"),
])
def test_unusable_images_raise_a_value_error(image, words):
    with pytest.raises(InvalidInputError, match=words):
        segment(image, random_model(), device="cpu")


def test_a_channel_mismatch_suggests_the_axes():
    with pytest.raises(ValueError, match=r"takes 1 input channel.*axes='ZYX'"):
        segment(np.zeros((3, 32, 32)), random_model(), axes="CYX", device="cpu")
    with pytest.raises(ValueError, match=r"takes 2 input channel.*axes='CYX'"):
        segment(np.zeros((2, 32, 32)), random_model(channels=2), axes="ZYX", device="cpu")


@pytest.mark.parametrize("kwargs, words", [
    ({"tile_shape": (64,)}, "tile_shape"), ({"tile_shape": 0}, "tile_shape"), ({"batch_size": 0}, "batch_size"),
    ({"overlap": -1}, "overlap"), ({"precision": "half"}, "precision"), ({"out": np.zeros((5, 5), np.int32)}, "shape"),
    ({"out": np.zeros((32, 32), np.float32)}, "integer"), ({"probabilities": np.zeros((2, 32, 32))}, "shape"),
    ({"device": "tpu"}, "unknown device"),
])
def test_bad_options_raise_a_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        segment(np.zeros((32, 32), np.float32), random_model(), **{"device": "cpu", **kwargs})


def test_tiles_too_small_for_the_networks_reach_are_refused():
    with pytest.raises(ValueError, match="tiles of at least 56"):
        segment(np.zeros((100, 100), np.float32), random_model(), tile_shape=40, device="cpu")


def test_outputs_too_large_for_memory_ask_for_zarr(monkeypatch):
    monkeypatch.setattr(run_outputs, "physical_memory", lambda: 4 * 64 * 64 * 4)  # room for labels, not probabilities
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with pytest.raises(InvalidInputError, match="probabilities=False"):
        segment(image, random_model(), device="cpu")
    assert segment(image, random_model(), device="cpu", probabilities=False).labels.shape == (64, 64)


def test_not_a_model_is_refused():
    with pytest.raises(InvalidInputError, match="load_model"):
        segment(np.zeros((8, 8)), object())


# --------------------------------------------------------------------------------------------------------------
# Axes and options end to end
# --------------------------------------------------------------------------------------------------------------


def test_2d_axes_layouts_give_the_same_labels():
    model = random_model(channels=3, task="semantic", classes=2)
    image = np.random.default_rng(4).random((3, 40, 56)).astype(np.float32)
    cyx = segment(image, model, axes="CYX", device="cpu")
    yxc = segment(np.moveaxis(image, 0, -1), model, device="cpu")  # colour last is inferred
    assert yxc.axes == "YXC"
    np.testing.assert_array_equal(cyx.labels, yxc.labels)
    np.testing.assert_allclose(cyx.probabilities, yxc.probabilities, atol=1e-6)


def test_2d_model_on_stacks_runs_plane_by_plane():
    model = random_model()
    stack = np.random.default_rng(5).random((2, 3, 40, 48)).astype(np.float32)  # TZYX
    result = segment(stack, model, device="cpu", precision="float32", axes="TZYX", stack="planes")
    assert result.labels.shape == (2, 3, 40, 48) and result.probabilities.shape == (3, 2, 3, 40, 48)
    stats = model.config.normalization.statistics(stack[None])  # one normalisation for the whole stack
    for t, z in [(0, 0), (1, 2)]:
        x = torch.from_numpy(model.config.normalization.apply(stack[t, z][None], stats))[None]
        with torch.no_grad():
            expected = torch.softmax(model.network(x), 1)[0].numpy()
        np.testing.assert_allclose(result.probabilities[:, t, z], expected, atol=2e-5)
    ids = [set(np.unique(result.labels[t, z])) - {0} for t in range(2) for z in range(3)]
    assert all(a.isdisjoint(b) for i, a in enumerate(ids) for b in ids[i + 1:])  # unique over the whole image


def test_3d_model_on_zyx_and_tzyx_and_tczyx():
    model = random_model(dims=3, depth=1)
    volume = np.random.default_rng(6).random((2, 12, 30, 20)).astype(np.float32)
    single = segment(volume[1], model, device="cpu")
    assert single.axes == "ZYX" and single.labels.shape == (12, 30, 20)
    series = segment(volume, model, device="cpu", precision="float32")
    assert series.axes == "TZYX"
    stats = model.config.normalization.statistics(volume[None])
    x = torch.from_numpy(model.config.normalization.apply(volume[1][None], stats))[None]
    with torch.no_grad():
        expected = torch.softmax(model.network(x), 1)[0].numpy()
    np.testing.assert_allclose(series.probabilities[:, 1], expected, atol=2e-5)
    two_channel = random_model(dims=3, depth=1, channels=2)
    tczyx = np.stack([volume, volume * 2], axis=1)
    result = segment(tczyx, two_channel, device="cpu")
    assert result.axes == "TCZYX" and result.labels.shape == (2, 12, 30, 20)
    with pytest.raises(ValueError, match="needs a Z axis"):
        segment(volume[0, 0], model, device="cpu")


def test_tyx_time_lapse_matches_frame_by_frame_with_shared_normalisation():
    model = nuclei_model()
    frames = np.stack([blobs(seed=1), blobs(seed=2)])
    result = segment(frames, model, axes="TYX", device="cpu")
    assert result.labels.shape == frames.shape and result.labels_axes == "TYX"
    assert result.labels[0].max() < result.labels[1][result.labels[1] > 0].min()  # ids continue over frames


def test_forced_bfloat16_is_close_to_float32():
    model = random_model()
    image = np.random.default_rng(8).random((48, 48)).astype(np.float32)
    full = segment(image, model, device="cpu", precision="float32")
    half = segment(image, model, device="cpu", precision="bfloat16")
    assert half.precision == "bfloat16" and full.precision == "float32"
    np.testing.assert_allclose(half.probabilities, full.probabilities, atol=0.05)


def test_the_callers_model_is_left_as_it_was():
    model = random_model()
    model.network.train()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    segment(np.random.default_rng(9).random((40, 40)).astype(np.float32), model, device="cpu")
    assert model.network.training
    after = model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(model.network.parameters()).is_contiguous()


@pytest.mark.parametrize("given", ["cells.tif", b"cells.tif", __import__("pathlib").Path("cells.tif")])
def test_a_file_name_is_not_an_image(given):
    with pytest.raises(InvalidInputError, match="read the file first") as caught:
        segment(given, random_model(), device="cpu")
    assert "tifffile.imread" in str(caught.value) and "<U" not in str(caught.value)


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_on_a_cpu_without_it_warns_that_it_is_slower(native, monkeypatch, recwarn):
    import napari_unet.core.runner as runner

    monkeypatch.setattr(runner, "cpu_has_native_bfloat16", lambda: native)
    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    result = segment(image, random_model(), device="cpu", precision="bfloat16")
    assert result.precision == "bfloat16", "it does what was asked"
    slower = [w for w in recwarn if "slower" in str(w.message)]
    if native:
        assert slower == []
    else:
        assert len(slower) == 1 and "bfloat16" in str(slower[0].message) and "float32" in str(slower[0].message)
    segment(image, random_model(), device="cpu", precision="auto")
    assert len([w for w in recwarn if "slower" in str(w.message)]) == len(slower), "only when asked for"


def test_tiles_shrink_by_about_half_their_longest_side_until_they_cannot():
    from napari_unet.core.runner import smaller_tile_shape

    config = UNetConfig(spatial_dims=2, depth=2, padding="same")
    smaller = smaller_tile_shape(config, (512, 300), (256, 128))
    assert smaller is not None and smaller[1] == 128 and 128 <= smaller[0] < 256 and smaller[0] % 4 == 0
    sizes = [(256, 128)]
    while (next_size := smaller_tile_shape(config, (512, 300), sizes[-1])) is not None:
        assert max(next_size) <= max(sizes[-1]) and next_size != sizes[-1]
        sizes.append(next_size)
    assert len(sizes) > 2 and max(sizes[-1]) <= 64  # shrinks step by step down to the smallest tiles


def test_the_api_says_what_model_and_cancel_take():
    import threading
    import typing

    from napari_unet.core.training import finetune

    for function in (segment, segment_steps, finetune):
        hints = typing.get_type_hints(function)
        assert hints["model"] is Model
        assert set(typing.get_args(hints["cancel"])) >= {CancelToken, threading.Event, type(None)}


def grid_of_blobs(shape=(200, 200), step=16, radius=5) -> np.ndarray:
    """Many small bright blobs: more pieces, counted tile by tile, than a uint8 can number."""
    rows, cols = np.indices(shape)
    image = np.zeros(shape, np.float32)
    for y in range(step // 2, shape[0], step):
        for x in range(step // 2, shape[1], step):
            image[(rows - y) ** 2 + (cols - x) ** 2 <= radius ** 2] = 1.0
    return image


def test_an_out_array_too_narrow_for_the_ids_is_refused_not_filled_with_wrapped_ids():
    model, image = nuclei_model(), grid_of_blobs()
    expected = segment(image, model, tile_shape=16, device="cpu")
    assert expected.objects == 144  # the final count fits a uint8; the pieces met tile by tile do not
    out = np.zeros(image.shape, np.uint8)
    try:
        result = segment(image, model, tile_shape=16, device="cpu", out=out)
    except InvalidInputError as exc:
        assert "int32" in str(exc) and not out.any(), "refused, with nothing left in the caller's array"
    else:  # or, if it is accepted, the labels are the int32 ones
        np.testing.assert_array_equal(result.labels, expected.labels)
    with pytest.raises(InvalidInputError, match="int32"):  # a ValueError, as bad input is
        segment(image, model, tile_shape=16, device="cpu", out=np.zeros(image.shape, np.int8))


@pytest.mark.parametrize("tile", [64.0, np.float32(64.0), "64"])
def test_a_tile_shape_that_is_not_whole_numbers_is_refused_clearly(tile):
    with pytest.raises(InvalidInputError, match="tile_shape"):
        segment(blobs(), nuclei_model(), tile_shape=tile, device="cpu")


def test_nan_pixels_are_background_for_a_one_class_model_too():
    model = random_model(task="semantic", classes=1)
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    image[5:10, 5:10] = np.nan
    result = segment(image, model, device="cpu")
    assert not result.labels[5:10, 5:10].any() and not result.probabilities[0, 5:10, 5:10].any()
    constant = segment(np.zeros((32, 32), np.float32), model, device="cpu")
    assert not constant.labels.any() and not constant.probabilities.any(), "P(foreground) 0 where labels are 0"


@pytest.mark.parametrize("options, word", [({"cancel": "yes"}, "cancel"), ({"progress": 5}, "progress"),
                                           ({"diameter": True}, "diameter")])
def test_options_of_the_wrong_kind_are_refused_before_anything_runs(options, word):
    with pytest.raises(InvalidInputError, match=word):
        segment(blobs(), nuclei_model(), device="cpu", **options)
