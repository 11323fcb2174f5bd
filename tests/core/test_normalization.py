"""Normalisation statistics: sampled fairly from the whole image, whatever its number of axes."""
from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.inference import segment
from napari_unet.core.normalization import SAMPLE_PIXELS, Normalization, sample_pixels
from test_inference import blobs, nuclei_model

pytestmark = pytest.mark.usefixtures("one_thread")


def plane() -> np.ndarray:
    """A 512 x 512 image of blobs whose top-left 64 x 64 corner is empty background."""
    image = blobs((512, 512), seed=3)
    image[:64, :64] = 100
    return image


@pytest.mark.parametrize("shape", [(8, 4, 256, 1024), (3, 2, 8, 512, 512), (40, 300, 400)])
def test_a_sample_of_a_large_array_covers_all_of_it(shape):
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)  # each value says where it lies
    assert data.size > SAMPLE_PIXELS
    sample = sample_pixels(data)
    assert SAMPLE_PIXELS // 4 <= sample.size <= 2 * SAMPLE_PIXELS
    where = np.unravel_index(sample.astype(np.int64), shape)
    for axis, n in enumerate(shape):
        if n >= 8:  # every quarter of every long axis is seen
            quarters = np.unique(where[axis] * 4 // n)
            assert quarters.tolist() == [0, 1, 2, 3], (axis, quarters)


def test_identical_copies_get_the_statistics_and_labels_of_one_plane():
    """A plane, a volume of copies of it and a time series of such volumes (with a channel axis or without)
    are normalised alike, so every copy gets the plane's labels."""
    model = nuclei_model()
    image = plane()
    volume = np.stack([image] * 8)  # 2M pixels: read whole
    series = np.stack([volume] * 4)  # 8M pixels: sampled
    assert volume.size <= SAMPLE_PIXELS < series.size
    norm = Normalization()
    expected = norm.statistics(image[None])
    for data in (volume, series, series[:, None]):
        stats = norm.statistics(data[None])
        np.testing.assert_allclose(stats, expected, rtol=0.01)

    alone = segment(image, model, axes="YX", device="cpu").labels
    for data, axes in ((volume, "ZYX"), (series, "TZYX"), (series[:, :, None], "TZCYX")):
        # plane by plane: every copy is then labelled as the plane alone is, up to the few pixels at a threshold
        # that float round-off of a batch of planes can flip (a normalisation that differed would move hundreds)
        labels = segment(data, model, axes=axes, device="cpu", probabilities=False,
                         stack="planes").labels.reshape(-1, 512, 512)
        for copy in labels:
            differ = int(((copy > 0) != (alone > 0)).sum())
            assert differ <= 0.001 * (alone > 0).sum(), (axes, differ)
