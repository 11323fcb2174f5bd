"""The classical baseline a U-Net has to beat, and its object F1 on every synthetic style.

``classical_segmentation`` is the pipeline a microscopist would write without deep learning: gaussian
smoothing, a global Otsu threshold, and a watershed on the distance transform seeded at its local maxima to
split touching nuclei. Its parameters are fixed, as a user would leave them, so the scores show where such
a pipeline fails (low signal-to-noise, uneven illumination, crowded or very differently sized nuclei).

Run ``python bench/baseline.py [--size 512] [--seeds 3]`` to print the table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

from napari_unet.core.metrics import object_f1
from napari_unet.synthetic import STYLES, generate_nuclei


def classical_segmentation(image: np.ndarray, sigma: float = 1.0, min_distance: int = 5,
                           min_size: int = 10) -> np.ndarray:
    """Instance labels by Otsu thresholding and distance-transform watershed (2D or 3D, same spacing).

    ``sigma`` smooths noise before thresholding, ``min_distance`` is the smallest distance between two
    nucleus centres in pixels (smaller splits more), and foreground blobs under ``min_size`` pixels are
    dropped as noise.
    """
    smooth = gaussian(image.astype(np.float32), sigma=sigma, preserve_range=True)
    blobs, _ = ndimage.label(smooth > threshold_otsu(smooth))
    sizes = np.bincount(blobs.ravel())
    sizes[0] = 0
    foreground = (sizes >= min_size)[blobs]  # size filter by hand: skimage renamed its argument in 0.26
    blobs[~foreground] = 0
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def main() -> None:
    """Print the baseline's mean object F1 at IoU 0.5 and 0.75 for every style."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="side of the square test images")
    parser.add_argument("--seeds", type=int, default=3, help="images per style")
    args = parser.parse_args()
    print(f"{'style':<14}{'F1@0.5':>8}{'F1@0.75':>9}{'objects':>9}{'s/image':>9}")
    for name in STYLES:
        scores, count, seconds = [], 0, 0.0
        for seed in range(1000, 1000 + args.seeds):  # seeds away from those the tests and training use
            image, truth = generate_nuclei((args.size, args.size), name, seed=seed)
            start = time.perf_counter()
            pred = classical_segmentation(image)
            seconds += time.perf_counter() - start
            scores.append((object_f1(pred, truth, 0.5), object_f1(pred, truth, 0.75)))
            count += int(truth.max())
        f1_50, f1_75 = np.mean(scores, axis=0)
        print(f"{name:<14}{f1_50:>8.3f}{f1_75:>9.3f}{count / args.seeds:>9.0f}{seconds / args.seeds:>9.3f}")


if __name__ == "__main__":
    main()
