"""The U-Net: the paper's geometry, both paddings in 2D and 3D, and helpful refusals of bad sizes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.unet import (
    UNet,
    UNetConfig,
    check_input_shape,
    count_conv_layers,
    halo,
    min_input_size,
    nearest_valid_sizes,
    output_size,
    valid_sizes_near,
)

PAPER = UNetConfig()  # depth 4, 64 features, valid padding, transposed up-convolutions


def test_paper_configuration_reproduces_figure_1():
    network = UNet(PAPER)
    assert count_conv_layers(network) == 23
    with torch.device("meta"):  # shapes only: the paper network is too large to run in a unit test
        meta_net = UNet(PAPER)
        out = meta_net(torch.empty(1, 1, 572, 572))
    assert tuple(out.shape) == (1, 2, 388, 388)
    assert output_size(PAPER, 572) == 388
    assert halo(PAPER, 572) == 92
    # the feature counts of Fig. 1: 64 at the top, 1024 at the bottom
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 1024


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("upsampling", ["transposed", "bilinear"])
def test_forward_shapes_match_geometry(dims, padding, upsampling):
    config = UNetConfig(spatial_dims=dims, in_channels=2, out_channels=3, depth=2, base_features=4,
                        padding=padding, upsampling=upsampling, norm="batch")
    size = nearest_valid_sizes(config, 44 if dims == 2 else 28)[1]
    network = UNet(config).eval()
    with torch.no_grad():
        out = network(torch.randn(1, 2, *([size] * dims)))
    expected = check_input_shape(config, (size,) * dims)
    assert tuple(out.shape) == (1, 3, *expected)
    if padding == "same":
        assert expected == (size,) * dims
    else:
        assert all(n < size for n in expected)


def test_anisotropic_3d_input():
    config = UNetConfig(spatial_dims=3, depth=1, base_features=2, padding="same")
    with torch.no_grad():
        out = UNet(config)(torch.zeros(1, 1, 4, 16, 10))
    assert tuple(out.shape) == (1, 2, 4, 16, 10)


def test_no_per_sample_normalisation_layers():
    for norm in ("batch", "none"):
        network = UNet(UNetConfig(depth=2, base_features=4, norm=norm))
        kinds = (nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm3d)
        assert not any(isinstance(m, kinds) for m in network.modules())
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
        assert has_bn == (norm == "batch")


def test_odd_size_is_refused_with_the_nearest_valid_sizes():
    with pytest.raises(InvalidInputError) as info:
        check_input_shape(PAPER, (570, 572))
    message = str(info.value)
    assert "556" in message and "572" in message and "axis 0" in message


def test_same_padding_requires_multiples_of_two_to_the_depth():
    config = UNetConfig(depth=3, padding="same")
    assert output_size(config, 40) == 40
    assert output_size(config, 36) is None
    with pytest.raises(ValueError, match="multiple of 8.*32 or 40"):
        check_input_shape(config, (36, 40))


def test_wrong_number_of_axes_is_refused():
    with pytest.raises(InvalidInputError, match="3D U-Net needs 3 spatial axes"):
        check_input_shape(UNetConfig(spatial_dims=3), (64, 64))


def test_every_valid_size_near_a_request_really_runs():
    config = UNetConfig(depth=2, base_features=2, padding="valid")
    sizes = valid_sizes_near(config, 50)
    assert sizes == [44, 48, 52, 56, 60]  # 40 is too small: the bottom level would have nothing left
    assert min_input_size(config) == 44
    network = UNet(config).eval()
    with torch.no_grad():
        for size in sizes:
            assert network(torch.zeros(1, 1, size, size)).shape[-1] == output_size(config, size)


@pytest.mark.parametrize("bad", [dict(spatial_dims=4), dict(padding="reflect"), dict(norm="instance"),
                                 dict(depth=-1), dict(base_features=0), dict(upsampling="nearest")])
def test_invalid_config_is_refused(bad):
    with pytest.raises(InvalidInputError, match="invalid U-Net config"):
        UNetConfig(**bad)


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = UNetConfig(spatial_dims=3, depth=2)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidInputError, match="unknown U-Net config keys"):
        UNetConfig.from_dict({**config.to_dict(), "dropout": 0.5})
