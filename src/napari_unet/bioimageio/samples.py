"""The package's test input (the caller's sample, checked, or a generated nuclei image of a valid size) and its
cover picture (the input beside the network's probabilities)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import InvalidInputError


def _test_image(model: Any, sample: np.ndarray | None, smallest: int, step: int, margin: int) -> np.ndarray:
    """The test input, channel first: ``sample`` checked, or a generated nuclei image of a valid size."""
    from napari_unet.core.unet import output_size

    config = model.config
    dims = config.network.spatial_dims
    channels = config.network.in_channels
    if sample is not None:
        image = np.asarray(sample)
        if image.ndim == dims:
            image = image[None]
        if image.ndim != dims + 1 or image.shape[0] != channels:
            raise InvalidInputError(f"the sample must have the model's axes {config.axes} (channels first for a "
                                    f"{channels}-channel model); got shape {image.shape}")
        for n in image.shape[1:]:
            if n < smallest or (n - smallest) % step:
                raise InvalidInputError(f"the sample's spatial sizes must be {smallest} + k * {step}; got "
                                        f"{image.shape[1:]}")
        return image.astype(np.float32)
    from napari_unet import synthetic

    edge = max(128 if dims == 2 else 32, smallest, 2 * margin + 2 * step)
    size = smallest + -(-(edge - smallest) // step) * step
    assert output_size(config.network, size) is not None
    if dims == 3:
        image, _ = synthetic.generate_nuclei((size, size, size), seed=1)
    else:
        image, _ = synthetic.generate_nuclei((size, size), seed=1)
    image = image.astype(np.float32)
    if config.normalization.invert:
        image = image.max() - image
    return np.repeat(image[None], channels, axis=0)


def _cover(x: np.ndarray, y: np.ndarray, config: Any, target: Path) -> None:
    """cover.png: the normalised test input beside its probabilities (2:1), the middle plane of a stack."""
    import imageio.v3 as iio

    if x.ndim == 4:
        x, y = x[:, x.shape[1] // 2], y[:, :, y.shape[2] // 2]
    grey = np.clip(x[0], 0, 1)
    probs = y[0]
    colours = np.array([[0, 0, 0], [0.1, 0.9, 0.2], [0.95, 0.2, 0.8], [0.2, 0.5, 1], [1, 0.8, 0.1],
                        [0.1, 0.9, 0.9], [0.9, 0.4, 0.1]], dtype=np.float32)
    if probs.shape[0] == 1:
        right = np.repeat(probs[0][..., None], 3, axis=-1)
    else:
        palette = colours[np.arange(probs.shape[0]) % len(colours)]
        palette[0] = 0  # background stays black
        right = np.tensordot(np.moveaxis(probs, 0, -1), palette, axes=1)
    canvas = np.zeros(grey.shape + (3,), dtype=np.float32)  # valid networks: the output is smaller, centred
    dy, dx = (grey.shape[0] - right.shape[0]) // 2, (grey.shape[1] - right.shape[1]) // 2
    canvas[dy:dy + right.shape[0], dx:dx + right.shape[1]] = right
    picture = np.concatenate([np.repeat(grey[..., None], 3, axis=-1), canvas], axis=1)
    scale = max(1, 256 // grey.shape[0])
    picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    iio.imwrite(target, (np.clip(picture, 0, 1) * 255).astype(np.uint8))
