"""The bundled model finds no objects in noise: a blank image, pure noise, or the empty background of a real
image gives none, and an image with a handful of dim nuclei gives those nuclei and no more.

Generated images come from ``napari_unet.synthetic``; the real crops in ``tests/data/dsb2018`` are 96 x 96 px
pieces of validation-split images of the 2018 Data Science Bowl (CC0; see the README there).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.core.metrics import object_matching
from napari_unet.synthetic import STYLES, generate_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parents[1] / "data" / "dsb2018"


@pytest.fixture(scope="module")
def model():
    return nu.load_model("nuclei")


def objects(model, image):
    return nu.segment(image, model, axes="YX", device="cpu", probabilities=False).objects


NOISE = {
    "blank": lambda rng: np.zeros((256, 256), np.uint16),
    "blank with an offset": lambda rng: np.full((256, 256), 100, np.uint8),
    "gaussian read noise, 16 bit": lambda rng: (1000 + rng.normal(0, 30, (256, 256))).astype(np.uint16),
    "shot noise, 5 photons": lambda rng: rng.poisson(5.0, (256, 256)).astype(np.uint16),
    "shot noise, 0.5 photons": lambda rng: rng.poisson(0.5, (256, 256)).astype(np.uint16),
    "uniform 8-bit noise": lambda rng: rng.integers(0, 256, (256, 256)).astype(np.uint8),
}


@pytest.mark.parametrize("name", list(NOISE))
def test_blank_and_pure_noise_images_give_no_objects(model, name):
    assert objects(model, NOISE[name](np.random.default_rng(0))) == 0


@pytest.mark.parametrize("style", ["sparse_dim", "default"])
def test_a_generated_field_without_nuclei_gives_no_objects(model, style):
    image, labels = generate_nuclei((256, 256), replace(STYLES[style], density=0.0), seed=3)
    assert labels.max() == 0
    assert objects(model, image) == 0


@pytest.mark.parametrize("seed", [5, 6])
def test_a_handful_of_dim_nuclei_gives_those_and_no_more(model, seed):
    # sparse_dim's dim 12-bit look with only a few nuclei: about 12 photons of signal on 12 of background.
    # Objects are counted, so they are matched at IoU 0.3: the dimmest nucleus of seed 6 comes out at 70 of
    # its 174 px (IoU 0.40), found but too small, which the held-out sparse_dim style measures as a size error
    style = replace(STYLES["sparse_dim"], density=0.02)
    image, truth = generate_nuclei((256, 256), style, seed=seed)
    assert 3 <= truth.max() <= 12
    labels = nu.segment(image, model, axes="YX", device="cpu", probabilities=False).labels
    match = object_matching(labels, truth, 0.3)
    assert (match.tp, match.fp, match.fn) == (int(truth.max()), 0, 0)


@pytest.mark.xfail(strict=True, reason=(
    "known failure: a crop of nothing but this camera's background (values 0-13) is stretched by the percentile "
    "normalisation until its correlated noise looks like texture, and the model finds about 60 objects in it. "
    "In the whole image (nuclei set the range) the same window gets none. Its contrast-to-noise ratio (range "
    "over noise, about 7.5) equals that of the generated sparse_dim style, whose nuclei the model must find, "
    "so no intensity rule separates the two; it needs spatial evidence (or training on such crops)"))
def test_the_empty_background_of_a_real_image_gives_no_objects(model):
    crop = np.load(DATA / "background.npz")
    assert crop["labels"].max() == 0
    assert objects(model, crop["image"]) == 0


# dim_nuclei_3 has a faint elongated smear of debris beside its small bright nucleus, which must stay background
@pytest.mark.parametrize("name", ["dim_nuclei_1", "dim_nuclei_2", "dim_nuclei_3"])
def test_dim_real_nuclei_are_found_and_nothing_else(model, name):
    crop = np.load(DATA / f"{name}.npz")
    labels = nu.segment(crop["image"], model, axes="YX", device="cpu", probabilities=False).labels
    match = object_matching(labels, crop["labels"], 0.5)
    assert match.fp == 0 and match.fn == 0, match
