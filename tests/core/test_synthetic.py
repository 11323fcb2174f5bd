"""The synthetic nuclei generator: every test of the project trusts its labels, so they are checked here."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.synthetic import STYLES, NucleiStyle, generate_nuclei, random_style


def _invisible_objects(image: np.ndarray, labels: np.ndarray, margin: int = 4) -> list[int]:
    """Ids whose mean intensity does not exceed the median of the background ring around them."""
    invisible = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        padded = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)
        local = labels[padded]
        inside = local == index
        ring = ndimage.binary_dilation(inside, iterations=margin) & (local == 0)
        if ring.any() and image[padded][inside].mean() <= np.median(image[padded][ring]):
            invisible.append(index)
    return invisible


def _check_labels(labels: np.ndarray) -> None:
    """int32, ids 1..N without gaps, and each id one face-connected component."""
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids[1:], np.arange(1, ids.size))
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        _, pieces = ndimage.label(labels[box] == index)
        assert pieces == 1, f"object {index} has {pieces} pieces"


def test_same_seed_gives_identical_output_and_another_seed_does_not() -> None:
    image, labels = generate_nuclei((96, 128), seed=5)
    again, labels_again = generate_nuclei((96, 128), seed=5)
    other, other_labels = generate_nuclei((96, 128), seed=6)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(image, other)
    assert not np.array_equal(labels, other_labels)


@pytest.mark.parametrize(("bit_depth", "dtype", "full_scale"),
                         [(8, np.uint8, 255), (12, np.uint16, 4095), (16, np.uint16, 65535)])
def test_dtype_and_full_scale_follow_the_bit_depth(bit_depth: int, dtype: type, full_scale: int) -> None:
    typical, _ = generate_nuclei((64, 64), replace(STYLES["default"], bit_depth=bit_depth), seed=1)
    # a stain far above full scale saturates exactly at the detector's maximum, never beyond
    saturated, labels = generate_nuclei((64, 64), replace(STYLES["default"], bit_depth=bit_depth, signal=3.0),
                                        seed=1)
    assert typical.dtype == dtype and saturated.dtype == dtype
    assert typical.max() < full_scale
    assert saturated.max() == full_scale
    assert (saturated[labels > 0] == full_scale).mean() > 0.5


@pytest.mark.parametrize("name", sorted(STYLES))
def test_every_preset_generates_valid_labels(name: str) -> None:
    image, labels = generate_nuclei((128, 128), name, seed=2)
    assert image.shape == labels.shape == (128, 128)
    assert labels.max() > 0
    _check_labels(labels)
    assert image[labels > 0].mean() > image[labels == 0].mean()


def test_default_style_objects_are_brighter_than_their_surroundings() -> None:
    for seed in range(2):
        image, labels = generate_nuclei((192, 192), seed=seed)
        assert labels.max() > 20
        assert _invisible_objects(image, labels) == []


def test_3d_stack_has_valid_labels_and_visible_objects() -> None:
    image, labels = generate_nuclei((12, 64, 64), seed=3)
    assert image.shape == labels.shape == (12, 64, 64)
    assert labels.max() > 5
    _check_labels(labels)
    assert _invisible_objects(image, labels, margin=2) == []
    # Z is sampled coarser than Y and X, so nuclei span fewer planes than rows
    boxes = ndimage.find_objects(labels)
    depth = np.median([b[0].stop - b[0].start for b in boxes])
    height = np.median([b[1].stop - b[1].start for b in boxes])
    assert depth < height


def test_depth_attenuation_dims_deeper_planes_and_leaves_labels_alone() -> None:
    style = replace(STYLES["default"], z_anisotropy=1.0, background=0.0, read_noise=0.0, photon_scale=1e6)
    even, labels = generate_nuclei((24, 64, 64), style, seed=5)
    dimmed, same_labels = generate_nuclei((24, 64, 64), replace(style, depth_attenuation=0.6), seed=5)
    np.testing.assert_array_equal(labels, same_labels)
    ratio = [dimmed[z].astype(float).sum() / max(even[z].astype(float).sum(), 1.0) for z in (2, 21)]
    assert ratio[0] > 0.9  # near the top hardly anything is lost ...
    assert 0.35 < ratio[1] < 0.55  # ... near the bottom most of 60 %
    with pytest.raises(ValueError, match="depth_attenuation"):
        NucleiStyle(depth_attenuation=1.5)


def test_density_and_scale_knobs_act_as_documented() -> None:
    _, sparse = generate_nuclei((192, 192), replace(STYLES["default"], density=0.1), seed=4)
    _, crowded = generate_nuclei((192, 192), replace(STYLES["default"], density=0.4), seed=4)
    assert abs((sparse > 0).mean() - 0.1) < 0.03
    assert abs((crowded > 0).mean() - 0.4) < 0.05

    _, small = generate_nuclei((192, 192), seed=4)
    _, large = generate_nuclei((192, 192), replace(STYLES["default"], scale=2.0), seed=4)
    area_ratio = np.median(np.bincount(large.ravel())[1:]) / np.median(np.bincount(small.ravel())[1:])
    assert 2.5 < area_ratio < 5.5


def test_dense_style_has_touching_nuclei() -> None:
    _, labels = generate_nuclei((128, 128), "dense", seed=0)
    left, right = labels[:, :-1], labels[:, 1:]
    contacts = (left > 0) & (right > 0) & (left != right)
    assert contacts.sum() > 50


def test_random_style_is_seeded_and_generates() -> None:
    style = random_style(np.random.default_rng(11))
    assert style == random_style(np.random.default_rng(11))
    assert style != random_style(np.random.default_rng(12))
    image, labels = generate_nuclei((96, 96), style, seed=0)
    assert image.dtype == (np.uint8 if style.bit_depth == 8 else np.uint16)
    _check_labels(labels)


@pytest.mark.parametrize("shape", [(), (64,), (2, 3, 4, 5), (0, 64), (64, -1), (8.5, 8), "ab", None])
def test_bad_shapes_raise_value_error(shape: object) -> None:
    with pytest.raises(ValueError, match="shape"):
        generate_nuclei(shape)  # type: ignore[arg-type]


def test_bad_style_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown style"):
        generate_nuclei((32, 32), "no-such-style")
    with pytest.raises(ValueError, match="bit_depth"):
        NucleiStyle(bit_depth=10)
    with pytest.raises(ValueError, match="elongation"):
        NucleiStyle(elongation=(2.0, 1.0))
