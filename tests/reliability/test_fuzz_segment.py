"""Case 7: fuzzing what users feed the plugin. Any dtype, 2 to 5 dimensions with size-1 axes, NaN, infinite,
constant and extreme values, non-contiguous views, dask arrays, napari's ``rgb`` flag: ``segment`` returns
labels of the right shape or raises an InvalidInputError (a ValueError) that says what to do, and never changes
the image. Labels of every dtype given for fine-tuning are converted or refused with an InvalidInputError."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import array_hash, save_tiny
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.models import load_model
from napari_unet.core.training import Sample, finetune

DTYPES = ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32",
          "float64"]
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 1-channel and a 3-channel tiny 2D model, loaded once for all examples (saved outside the library)."""
    import os

    home = tmp_path_factory.mktemp("fuzz-home")
    old = os.environ.get("NAPARI_UNET_HOME")
    os.environ["NAPARI_UNET_HOME"] = str(home)
    try:
        save_tiny("gray")
        save_tiny("rgb", in_channels=3)
        return {1: load_model("gray"), 3: load_model("rgb")}
    finally:
        if old is None:
            del os.environ["NAPARI_UNET_HOME"]
        else:
            os.environ["NAPARI_UNET_HOME"] = old


@st.composite
def images(draw) -> tuple[np.ndarray, str]:
    """An image and a description of how it was made (for the failure report)."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim - 2, max_size=ndim - 2))) + \
        (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    kind = draw(st.sampled_from(["random", "constant", "extremes", "nan", "inf"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == bool:
        data = rng.random(shape) > 0.5
    elif dtype.kind == "f":
        data = (rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e4, 1e-4]))).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if kind == "constant":
        data = np.full(shape, data.flat[0], dtype)
    elif kind == "extremes" and dtype != bool:
        info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
        data.flat[::2] = info.max
        data.flat[1::3] = info.min
    elif kind in ("nan", "inf") and dtype.kind == "f":
        data.flat[:: max(1, data.size // 7)] = np.nan if kind == "nan" else np.inf
        if kind == "inf":
            data.flat[1 :: max(1, data.size // 5)] = -np.inf
    view = draw(st.sampled_from(["contiguous", "reversed", "strided", "fortran", "dask"]))
    if view == "reversed":
        data = data[..., ::-1, :]
    elif view == "strided":
        data = np.repeat(data, 2, axis=-1)[..., ::2]
    elif view == "fortran":
        data = np.asfortranarray(data)
    elif view == "dask":
        data = da.from_array(data, chunks=tuple(max(1, n // 2) for n in shape))
    return data, f"{dtype} {shape} {kind} {view}"


@FUZZ
@given(case=images(), rgb=st.booleans(), axes_given=st.booleans())
@pytest.mark.filterwarnings("ignore:the image has NaN or infinite pixels")  # documented, tested on its own
def test_segment_gives_labels_of_the_right_shape_or_a_value_error(models, case, rgb, axes_given):
    from types import SimpleNamespace

    from napari_unet.widgets._layers import infer_axes

    image, how = case
    before = array_hash(image)
    channels = 3 if rgb and image.shape[-1] == 3 else 1
    layer = SimpleNamespace(data=image, rgb=rgb, axis_labels=(), multiscale=False)
    try:
        axes = infer_axes(layer, 2, channels) if axes_given else None
        result = segment(image, models[channels], axes=axes, tile_shape=48, probabilities=False)
    except InvalidInputError as exc:  # not any ValueError: numpy's or torch's own would not say what to do
        assert str(exc) and len(str(exc)) > 20, f"{how}: an unhelpful message {exc!r}"
        assert array_hash(image) == before
        return
    expected = tuple(n for n, a in zip(image.shape, result.axes) if a != "C")
    assert result.labels.shape == expected, how
    assert np.issubdtype(result.labels.dtype, np.integer)
    assert result.labels.min() >= 0
    assert array_hash(image) == before, "segmenting never changes the image"


@st.composite
def training_labels(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = draw(st.sampled_from(["ids", "negative", "huge", "fractional", "nan", "empty"]))
    labels = np.zeros((32, 32), np.float64)
    labels[4:14, 4:14], labels[18:28, 16:30] = 1, 2
    if values == "negative":
        labels[0:3] = -1
    elif values == "huge":
        labels[18:28, 16:30] = 2**40
    elif values == "fractional":
        labels += rng.random(labels.shape) * 0.5
    elif values == "nan":
        labels[0, 0] = np.nan
    elif values == "empty":
        labels[:] = 0
    with np.errstate(invalid="ignore", over="ignore"):
        return labels.astype(dtype) if dtype != bool else labels > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=training_labels())
def test_training_labels_of_any_dtype_are_converted_or_refused(models, labels):
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    before = array_hash(labels)
    try:
        tuned = finetune(models[1], [Sample(image, labels)], time_budget_s=None, steps=1, batch_size=1,
                         validation_fraction=0, augment=False)
    except InvalidInputError as exc:
        assert len(str(exc)) > 20
    else:
        assert any(record.get("loss") is not None for record in tuned.history)
    assert array_hash(labels) == before, "training never changes the user's labels"
