"""Tiling: plans cover the image exactly once, and a tiled run equals one whole-image forward pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.models import Model, ModelConfig
from napari_unet.core.tiling import _reflect, boundary_margin, plan_tiles, read_tile
from napari_unet.core.unet import UNetConfig, output_size


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(dims=2, padding="same", depth=2, upsampling="bilinear", norm="batch", channels=1, classes=3,
               task="instance", seed=0):
    net = UNetConfig(spatial_dims=dims, in_channels=channels, out_channels=classes, depth=depth, base_features=4,
                     padding=padding, upsampling=upsampling, norm=norm)
    names = ("background", "interior", "boundary") if task == "instance" else tuple(f"c{i}" for i in range(classes))
    model = Model.from_config(ModelConfig(net, task=task, classes=names, axes="YX" if dims == 2 else "ZYX"),
                              seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is tested too
        for module in model.network.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
    model.network.eval()
    return model


def whole_image(model, image):
    """Probabilities of one forward pass over the whole (channel-first or single-channel) image.

    Same padding: zeros appended to a multiple of 2**depth. Valid padding: the image mirrored by the halo.
    """
    cfg = model.config.network
    x = model.preprocess(image)
    spatial = x.shape[1:]
    g = 2**cfg.depth
    if cfg.padding == "same":
        x = np.pad(x, [(0, 0)] + [(0, -(-n // g) * g - n) for n in spatial])
    else:
        pads = [(0, 0)]
        for n in spatial:
            size = n + 1
            while output_size(cfg, size) is None or output_size(cfg, size) < n:
                size += 1
            halo = (size - output_size(cfg, size)) // 2
            pads.append((halo, size - n - halo))
        x = np.pad(x, pads, mode="reflect")
    with torch.no_grad():
        y = torch.softmax(model.network(torch.from_numpy(x)[None]), 1)[0].numpy()
    return y[(slice(None),) + tuple(slice(0, n) for n in spatial)]


def test_reflect_matches_numpy_pad_for_any_distance():
    for n in (1, 2, 3, 7):
        expected = np.pad(np.arange(n), (40, 45), mode="reflect")
        np.testing.assert_array_equal(_reflect(np.arange(-40, n + 45), n), expected)


def test_margin_is_zero_for_the_papers_valid_network_and_positive_for_same_padding():
    assert boundary_margin(UNetConfig(padding="valid", depth=3)) == (0, 0)
    same = boundary_margin(UNetConfig(padding="same", depth=2, upsampling="transposed"))
    deeper = boundary_margin(UNetConfig(padding="same", depth=3, upsampling="transposed"))
    assert 0 < same[0] < deeper[0]
    # bilinear up-sampling reaches further than transposed convolutions, even with valid padding
    assert boundary_margin(UNetConfig(padding="valid", depth=2, upsampling="bilinear"))[0] > 0


def furthest_reach(network, start, dtype=torch.float32):
    """The last output row that any input row before ``start`` changes."""
    x = torch.rand(1, 1, 128, 32, dtype=dtype, generator=torch.Generator().manual_seed(0))
    furthest = 0
    with torch.no_grad():
        base = network(x)
        for q in range(start - 32, start):
            changed = x.clone()
            changed[0, 0, q] += 5
            diff = (network(changed) - base).abs().amax(dim=(0, 1, 3))
            furthest = max(furthest, int(torch.nonzero(diff > 1e-7)[-1]))
    return furthest


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
def test_margin_is_exactly_the_reach_of_the_architecture(upsampling):
    """Nothing before a tile changes an output past the margin; without ReLUs and max-pooling (which hide
    paths for some inputs) the reach is exactly the margin."""
    model = make_model(depth=2, upsampling=upsampling)
    before, _ = boundary_margin(model.config.network)
    start = 48  # a tile start on the pooling grid
    assert furthest_reach(model.network, start) < start + before
    linear = model.network.double()
    for module in list(linear.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.MaxPool2d):
                setattr(module, name, torch.nn.AvgPool2d(2))
            elif isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Identity())
    assert furthest_reach(linear, start, torch.float64) == start + before - 1


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_plan_cores_partition_each_axis(padding):
    cfg = UNetConfig(padding=padding, depth=3)
    g = 8
    for n, tile in [(1, 128), (37, 200), (300, 200), (1000, 256), (4096, 1024)]:
        axis = plan_tiles(cfg, (n,), (tile,)).axes[0]
        covered = np.zeros(n, int)
        for start, (a, b) in zip(axis.starts, axis.cores):
            covered[a:b] += 1
            assert (start + axis.offset) % g == 0  # tiles sit on the pooling grid of the whole image
        assert (covered == 1).all()
        assert axis.in_size <= max(tile, axis.in_size if padding == "valid" else tile)


def test_plan_shrinks_tiles_to_the_fewest_needed():
    cfg = UNetConfig(padding="same", depth=3, upsampling="bilinear")
    axis = plan_tiles(cfg, (4096,), (1200,)).axes[0]
    assert len(axis.starts) == 4 and axis.in_size < 1200
    assert plan_tiles(cfg, (1000,), (2048,)).axes[0].in_size == 1000  # one tile, padded to a multiple of 8 only


def test_plan_refuses_tiles_too_small_for_the_margin():
    with pytest.raises(InvalidInputError, match="at least"):
        plan_tiles(UNetConfig(padding="same", depth=3), (500,), (64,))


def test_read_tile_pads_zeros_or_mirrors_and_flags_bad_pixels():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    image[0, 1, 1] = np.nan
    tile = read_tile(image, (-2, 2), (6, 5), "reflect", lambda raw: np.nan_to_num(raw).astype(np.float32))
    expected = np.pad(np.nan_to_num(image[0]), ((2, 1), (0, 3)), mode="reflect")[:6, 2:7]
    np.testing.assert_array_equal(tile.data[0], expected)
    np.testing.assert_array_equal(tile.bad, np.pad(np.isnan(image[0]), ((2, 1), (0, 3)), mode="reflect")[:6, 2:7])
    assert tile.low[0] == 0 and tile.high[0] == 11  # the finite range of what was read
    zeros = read_tile(image, (2, 0), (4, 8), "zeros", lambda raw: raw.astype(np.float32) + 1)
    assert zeros.data[0, 1:].sum() == 0 and zeros.data[0, 0, 4:].sum() == 0
    np.testing.assert_array_equal(zeros.data[0, 0, :4], image[0, 2] + 1)


EXACT = 2e-5  # float32 round-off through a few dozen layers
# Exactness is a float32 property: "auto" precision is bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX).
FLOAT32 = {"device": "cpu", "precision": "float32"}


@pytest.mark.parametrize("padding, upsampling", [("same", "bilinear"), ("same", "transposed"),
                                                 ("valid", "transposed")])
@pytest.mark.parametrize("shape", [(117, 203), (37, 29), (5, 3)])
def test_tiled_equals_whole_image_2d(padding, upsampling, shape):
    model = make_model(padding=padding, upsampling=upsampling)
    image = np.random.default_rng(sum(shape)).normal(100, 20, shape).astype(np.float32)
    result = segment(image, model, tile_shape=64, **FLOAT32)
    if shape == (117, 203):
        assert np.prod([len(a.starts) for a in plan_tiles(model.config.network, shape, (64, 64)).axes]) > 4
    np.testing.assert_allclose(result.probabilities, whole_image(model, image), atol=EXACT)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_tiled_equals_whole_image_3d(padding):
    model = make_model(dims=3, padding=padding, depth=1, upsampling="transposed")
    image = np.random.default_rng(3).random((9, 45, 38)).astype(np.float32)
    tile = (16, 32, 32) if padding == "same" else (20, 24, 24)
    result = segment(image, model, tile_shape=tile, **FLOAT32, axes="ZYX")
    np.testing.assert_allclose(result.probabilities, whole_image(model, image), atol=EXACT)


def test_tiled_multichannel_equals_whole_image():
    model = make_model(channels=2, task="semantic", classes=4)
    image = np.random.default_rng(5).random((70, 90, 2)).astype(np.float32)  # YXC
    result = segment(image, model, axes="YXC", tile_shape=64, **FLOAT32)
    np.testing.assert_allclose(result.probabilities, whole_image(model, np.moveaxis(image, -1, 0)), atol=EXACT)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(0))


def test_tta_tiled_equals_tta_whole_image():
    model = make_model()
    image = np.random.default_rng(7).random((100, 76)).astype(np.float32)
    result = segment(image, model, tile_shape=64, tta=True, **FLOAT32)
    flipped = [whole_image(model, image[::sy, ::sx])[:, ::sy, ::sx] for sy in (1, -1) for sx in (1, -1)]
    # whole-image flips only commute with the zero padding when the size is a multiple of 2**depth
    np.testing.assert_allclose(result.probabilities[:, :100, :76], np.mean(flipped, axis=0), atol=EXACT)
    assert np.abs(result.probabilities - whole_image(model, image)).max() > 1e-3  # TTA changes the answer
