"""A Live round started with one correction is judged on the strokes made after it: the objects they changed, in
blocks around them, and nothing else."""
from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.newer_strokes import newer_strokes_validation
from napari_unet.core.training_data import Sample
from napari_unet.synthetic import generate_nuclei
from test_corrections import merge, pairs_in, tiny_model


@pytest.fixture
def strokes():
    """Segment merged two pairs of nuclei, one in the top half and one in the bottom; the user split the top
    one (the snapshot a round trained on), then the bottom one (the newer snapshot)."""
    image, truth = generate_nuclei((128, 128), "dense", seed=0)
    top, bottom = pairs_in(truth, slice(0, 56), slice(0, 128))[0], pairs_in(truth, slice(72, 128), slice(0, 128))[0]
    predicted = merge(truth, [top, bottom])
    first = merge(truth, [bottom])
    return image, truth, predicted, first, top, bottom


def test_the_newer_strokes_objects_are_scored_and_nothing_else(strokes):
    image, truth, predicted, first, top, bottom = strokes
    model = tiny_model()
    validation = newer_strokes_validation(model, [Sample(image, first, prediction=predicted)],
                                          [Sample(image, truth, prediction=predicted)])
    (block,) = validation.blocks
    scored = set(np.unique(block.instances[block.vouched])) - {0}
    assert scored == set(bottom), "the bottom pair, as the user split it; not the top pair trained on"
    assert block.annotated.shape[0] >= 48 and block.annotated.shape[1] >= 48, "with its neighbours around it"
    assert validation.objects == model.config.object_filter


def test_no_newer_strokes_or_other_pairs_give_no_score(strokes):
    image, truth, predicted, first, _, _ = strokes
    model, trained_on = tiny_model(), [Sample(image, first, prediction=predicted)]
    assert newer_strokes_validation(model, trained_on, trained_on) is None, "nothing changed"
    assert newer_strokes_validation(model, trained_on, trained_on * 2) is None, "a pair was added"
    smaller = [Sample(image[:100], truth[:100], prediction=predicted[:100])]
    assert newer_strokes_validation(model, trained_on, smaller) is None, "not the same pair any more"


def test_a_sample_of_large_objects_is_scored_at_the_scale_it_trains_at(strokes, monkeypatch):
    from napari_unet.core import sizing

    image, truth, predicted, first, _, bottom = strokes
    monkeypatch.setattr(sizing, "training_factor", lambda *args, **kwargs: 0.5)  # large objects: trained at half
    validation = newer_strokes_validation(tiny_model(), [Sample(image, first, prediction=predicted)],
                                          [Sample(image, truth, prediction=predicted)])
    (block,) = validation.blocks
    assert set(np.unique(block.instances[block.vouched])) - {0} == set(bottom)
    assert block.instances.shape[0] <= 64, "the block lies in the half-size item"
