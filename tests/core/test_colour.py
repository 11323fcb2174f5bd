"""Colour images and 1-channel models: converted to one channel with a warning (optical density in
transmitted light, luminance otherwise), alike in segment and fine-tuning; other channel layouts are still
refused."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_unet.core.colour import (LUMINANCE, LUMINANCE_ONLY, ChannelView, choose_conversion,
                                     grey_for_model, to_grey)
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.models import Model, ModelConfig
from napari_unet.core.training import Sample, finetune
from napari_unet.core.training_data import prepare_data
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")


def grey_model(seed=0):
    net = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same",
                     upsampling="bilinear", norm="batch")
    model = Model.from_config(ModelConfig(net), seed=seed)
    model.network.eval()
    return model


def stained(shape=(64, 72), seed=0):
    """A colour image of dark purple nuclei on a pale background, its luminance and its labels."""
    image, labels = generate_nuclei(shape, "default", seed=seed)
    signal = image.astype(np.float32) / max(float(image.max()), 1.0)
    rgb = np.stack([235 - 120 * signal, 225 - 170 * signal, 240 - 60 * signal], axis=-1).round().astype(np.uint8)
    return rgb, labels


def fluorescence_rgb(shape=(64, 72), seed=0):
    """Nuclei saved as RGB from a fluorescence microscope: blue nuclei on a black background."""
    image, labels = generate_nuclei(shape, "default", seed=seed)
    signal = image.astype(np.float32) / max(float(image.max()), 1.0)
    rgb = np.stack([10 * signal, 40 * signal, 250 * signal], axis=-1).round().astype(np.uint8)
    return rgb, labels


def test_luminance_weights_and_alpha():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    grey = to_grey(rgb, LUMINANCE_ONLY)
    np.testing.assert_allclose(grey[0], [255 * LUMINANCE[0], 255 * LUMINANCE[1], 255 * LUMINANCE[2],
                                         np.dot([10, 20, 30], LUMINANCE)], rtol=1e-6)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:-1] + (1,), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_grey(rgba, LUMINANCE_ONLY), grey)  # alpha is ignored
    assert grey.dtype == np.float32


def test_a_stained_section_becomes_optical_density_with_nuclei_bright():
    rgb, labels = stained()
    conversion = choose_conversion(rgb)
    assert conversion.kind == "optical density"
    np.testing.assert_allclose(conversion.white, np.percentile(rgb[..., :3].reshape(-1, 3), 99, axis=0), atol=1)
    grey = to_grey(rgb)
    assert grey[labels > 0].mean() > 5 * grey[labels == 0].mean()  # stain bright, glass near 0
    assert grey.min() >= 0 and np.isfinite(grey).all()
    luminance = to_grey(rgb, LUMINANCE_ONLY)
    assert luminance[labels > 0].mean() < luminance[labels == 0].mean()  # the nuclei were dark in its luminance
    black = rgb.copy()
    black[:4, :4] = 0  # fully absorbing pixels stay finite
    assert np.isfinite(to_grey(black)).all()


def test_fluorescence_saved_as_rgb_stays_luminance():
    rgb, labels = fluorescence_rgb()
    assert choose_conversion(rgb) == LUMINANCE_ONLY
    np.testing.assert_array_equal(to_grey(rgb), to_grey(rgb, LUMINANCE_ONLY))
    assert to_grey(rgb)[labels > 0].mean() > to_grey(rgb)[labels == 0].mean()


def test_lazy_images_stay_lazy_and_give_the_same_grey():
    rgb, _ = stained()
    store = zarr.array(rgb, chunks=(16, 16, 3))
    view = to_grey(store)
    assert isinstance(view, ChannelView) and view.shape == rgb.shape[:2]
    assert view.conversion == choose_conversion(rgb)  # decided once for the whole image, as for numpy
    np.testing.assert_array_equal(view[5:20, 7:30], to_grey(rgb)[5:20, 7:30])
    np.testing.assert_array_equal(np.asarray(to_grey(da.from_array(rgb, chunks=16))), to_grey(rgb))


def test_segment_converts_a_colour_image_for_a_one_channel_model_and_warns():
    model = grey_model()
    rgb, _ = stained()
    with pytest.warns(UserWarning, match="given its optical density"):
        result = segment(rgb, model, device="cpu", precision="float32")
    assert result.axes == "YXC" and result.labels_axes == "YX" and result.labels.shape == rgb.shape[:2]
    assert any("optical density" in m for m in result.messages)
    grey = segment(to_grey(rgb), model, axes="YX", device="cpu", precision="float32")
    np.testing.assert_array_equal(result.labels, grey.labels)
    np.testing.assert_allclose(result.probabilities, grey.probabilities, atol=1e-6)
    with pytest.warns(UserWarning, match="was given its"):  # given axes, and a lazy image, alike
        lazy = segment(zarr.array(rgb, chunks=(32, 32, 3)), model, axes="YXC", device="cpu", precision="float32")
    np.testing.assert_array_equal(lazy.labels, grey.labels)


def test_channels_that_are_not_colour_are_still_refused():
    model = grey_model()
    with pytest.raises(InvalidInputError, match="takes 1 input channel"):
        segment(np.zeros((3, 32, 32), np.float32), model, axes="CYX", device="cpu")
    with pytest.raises(InvalidInputError, match="takes 1 input channel"):
        segment(np.zeros((32, 32, 2), np.float32), model, axes="YXC", device="cpu")
    image = np.zeros((32, 32, 3), np.float32)
    assert grey_for_model(image, "YXC", 2, 3)[0] is image  # a 3-channel model takes colour as it is


def test_finetune_infers_axes_as_segment_does_and_trains_on_the_same_grey():
    model = grey_model()
    rgb, labels = stained()
    assert Sample(rgb, labels).axes is None  # inferred, as segment infers them
    with pytest.warns(UserWarning, match="was given its"):
        colour = prepare_data(model, [Sample(rgb, labels)], None, 0.0, 10.0, 5.0)
    grey = prepare_data(model, [Sample(to_grey(rgb), labels, axes="YX")], None, 0.0, 10.0, 5.0)
    np.testing.assert_array_equal(colour.items[0].image, grey.items[0].image)
    assert colour.annotations[0][2] == "YX"
    with pytest.warns(UserWarning, match="was given its"):
        tuned = finetune(model, [Sample(rgb, labels)], time_budget_s=None, steps=2, device="cpu",
                         batch_size=2, patch_shape=32, validation_fraction=0.0)
    assert tuned.config.history[-1]["steps"] == 2
    stack = np.stack([to_grey(rgb)] * 3)  # a 3D array with no axes is a z-stack for a 2D model, as in segment
    data = prepare_data(model, [Sample(stack, np.stack([labels] * 3))], None, 0.0, 10.0, 5.0)
    assert len(data.items) == 3


def test_the_axes_a_widget_checks_accept_colour_for_a_one_channel_model_as_segment_does():
    from napari_unet.core.colour import resolve_model_axes

    assert resolve_model_axes(None, (64, 80, 3), spatial_dims=2, in_channels=1, rgb=True) == "YXC"
    assert resolve_model_axes("TYXC", (2, 64, 80, 4), spatial_dims=2, in_channels=1) == "TYXC"
    with pytest.raises(InvalidInputError, match="input channel"):  # channels first are stains, not colours
        resolve_model_axes("CYX", (3, 64, 80), spatial_dims=2, in_channels=1)
    with pytest.raises(InvalidInputError, match="Z axis"):  # the grey image's axes are still checked
        resolve_model_axes("YXC", (64, 80, 3), spatial_dims=3, in_channels=1)
