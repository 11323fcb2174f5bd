"""Sample data for File > Open Sample > napari-unet: generated nuclei images with their exact labels.

The images come from :mod:`napari_unet.synthetic`, so they need no download and their ground truth is exact:
a user can segment the image, compare with the ground truth layer, correct, and fine-tune. The ground truth is
added hidden so that it does not cover the prediction.
"""
from __future__ import annotations

from typing import Any

LayerData = tuple[Any, dict[str, Any], str]

SHAPE_2D = (512, 512)
SHAPE_3D = (32, 256, 256)


def nuclei_2d() -> list[LayerData]:
    """A 512 x 512 widefield nuclei image and its ground-truth instance labels."""
    return _sample(SHAPE_2D, "nuclei", ("y", "x"), (1.0, 1.0))


def nuclei_3d() -> list[LayerData]:
    """A 32 x 256 x 256 nuclei z-stack (z sampled more coarsely than y and x) and its ground-truth labels."""
    from napari_unet.synthetic import STYLES

    z_step = float(STYLES["default"].z_anisotropy)
    return _sample(SHAPE_3D, "nuclei 3D", ("z", "y", "x"), (z_step, 1.0, 1.0))


def _sample(shape: tuple[int, ...], name: str, axis_labels: tuple[str, ...],
            scale: tuple[float, ...]) -> list[LayerData]:
    from napari_unet.synthetic import generate_nuclei

    image, labels = generate_nuclei(shape, seed=0)
    common = {"axis_labels": axis_labels, "scale": scale}
    return [
        (image, {"name": name, "colormap": "gray", **common}, "image"),
        (labels, {"name": f"{name} ground truth", "visible": False, "opacity": 0.5, **common}, "labels"),
    ]
