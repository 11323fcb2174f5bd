"""Labels from probabilities, block by block: the same objects as a whole-image labelling, ids unique."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from skimage.segmentation import find_boundaries

from napari_unet.core.axes import Layout
from napari_unet.core.postprocess import (
    InstanceLabeller,
    ObjectFilter,
    SemanticLabeller,
    class_labels,
    fill,
    instance_labels,
)
from napari_unet.core.tiling import plan_tiles
from napari_unet.core.unet import UNetConfig


def probabilities_from(labels, seed=0, noise=0.15):
    """Background / interior / boundary probabilities that a good nuclei model would give for ``labels``."""
    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    interior = (labels > 0) & ~boundary
    onehot = np.stack([labels == 0, interior, boundary]).astype(np.float32)
    rng = np.random.default_rng(seed)
    scores = onehot * 2 + rng.normal(0, noise, onehot.shape)
    e = np.exp(scores - scores.max(0))
    return (e / e.sum(0)).astype(np.float32)


def scene_2d(shape=(150, 190)):
    """Discs (some touching), a bar across the whole width, and a U whose arms meet far away."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    rng = np.random.default_rng(1)
    n = 1
    for _ in range(40):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(4, 10)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)
        if disc.sum() > 20:
            labels[disc] = n
            n += 1
    labels[70:78, :] = n  # a bar crossing every tile column
    u = np.zeros(shape, bool)
    u[100:140, 20:26] = u[100:140, 60:66] = u[134:140, 20:66] = True
    labels[u] = n + 1
    return labels


def label_blockwise(probabilities, tile, layout=None, labeller_cls=InstanceLabeller, out=None, **options):
    """Feed probabilities tile by tile through a labeller, as inference does."""
    shape = probabilities.shape[1:]
    layout = layout or Layout.create("YX" if len(shape) == 2 else "ZYX", shape, "YX" if len(shape) == 2 else "ZYX")
    labels = np.zeros(layout.output_shape, np.int32) if out is None else out
    labeller = labeller_cls(labels, layout, **options)
    plan = plan_tiles(UNetConfig(spatial_dims=len(shape), padding="same", depth=2), shape, (tile,) * len(shape),
                      margin=4)
    labeller.start_plane({}, plan)
    for index in plan.indices():
        _, _, place = plan.tile(index)
        labeller.add_tile(index, probabilities[(slice(None),) + place], place)
    assert not getattr(labeller, "blocks", None)  # every block was released once its neighbours were labelled
    labeller.end_plane(False)
    list(labeller.finish())
    return labels, labeller, plan


def same_partition(a, b):
    """True when two label images describe the same objects, whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and ((pairs[0] == 0) == (pairs[1] == 0)).all())


def test_blockwise_instance_labels_equal_whole_image_labels():
    truth = scene_2d()
    probabilities = probabilities_from(truth)
    whole = instance_labels(probabilities)
    labels, labeller, plan = label_blockwise(probabilities, tile=64)
    assert len(plan) >= 12  # many blocks and block borders
    assert same_partition(labels, whole)
    assert labeller.objects == whole.max() > 30
    np.testing.assert_array_equal(np.unique(labels), np.arange(labeller.objects + 1))  # ids 1..N


def test_objects_crossing_block_borders_keep_one_id():
    truth = scene_2d()
    probabilities = probabilities_from(truth, noise=0.05)
    labels, _, plan = label_blockwise(probabilities, tile=64)
    assert same_partition(labels, instance_labels(probabilities))
    for value in (truth.max() - 1, truth.max()):  # the bar crosses every column; the U's arms meet far away
        ids = np.unique(labels[truth == value])
        assert len(ids) == 1 and ids[0] > 0
    assert len(plan.axes[1].starts) >= 3


def test_touching_objects_stay_apart():
    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    labels[((yy - 20) ** 2 + (xx - 39) ** 2 <= 100) & (labels == 0)] = 2
    result = instance_labels(probabilities_from(labels, noise=0.0))
    assert same_partition(result, labels)


def test_blockwise_3d_matches_whole_volume():
    zz, yy, xx = np.mgrid[:20, :70, :70]
    truth = np.zeros((20, 70, 70), np.int32)
    for i, (cz, cy, cx) in enumerate([(10, 20, 20), (10, 35, 35), (5, 50, 60), (14, 60, 10)], start=1):
        truth[((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= 64) & (truth == 0)] = i
    truth[2:6, 2:6, :] = 5  # a rod through every block along X
    probabilities = probabilities_from(truth)
    labels, labeller, _ = label_blockwise(probabilities, tile=32)
    assert same_partition(labels, instance_labels(probabilities))
    assert same_partition(labels, truth) and labeller.objects == 5


def test_ids_are_unique_over_planes_and_constant_planes_are_empty():
    truth = scene_2d((64, 64))
    probabilities = probabilities_from(truth)
    layout = Layout.create("TYX", (3, 64, 64), "YX")
    labels = np.zeros(layout.output_shape, np.int32)
    labeller = InstanceLabeller(labels, layout)
    plan = plan_tiles(UNetConfig(padding="same", depth=2), (64, 64), (32, 32), margin=4)
    for t in range(3):
        labeller.start_plane({"T": t}, plan)
        for index in plan.indices():
            _, _, place = plan.tile(index)
            labeller.add_tile(index, probabilities[(slice(None),) + place], place)
        labeller.end_plane(constant=t == 1)
    list(labeller.finish())
    assert labels[1].max() == 0
    assert set(np.unique(labels[0])[1:]).isdisjoint(np.unique(labels[2])[1:])
    assert labeller.objects == 2 * (len(np.unique(labels[0])) - 1)


def test_labelling_into_zarr_matches_numpy():
    truth = scene_2d()
    probabilities = probabilities_from(truth)
    expected, _, _ = label_blockwise(probabilities, tile=64)
    store = zarr.zeros(truth.shape, chunks=(32, 48), dtype=np.int32)
    label_blockwise(probabilities, tile=64, out=store)
    np.testing.assert_array_equal(store[:], expected)


def test_semantic_labels_are_the_most_probable_class():
    rng = np.random.default_rng(0)
    probabilities = rng.random((4, 50, 70)).astype(np.float32)
    labels, labeller, _ = label_blockwise(probabilities, tile=32, labeller_cls=SemanticLabeller)
    np.testing.assert_array_equal(labels, probabilities.argmax(0))
    assert labeller.objects is None
    np.testing.assert_array_equal(class_labels(probabilities[:1]), probabilities[0] > 0.5)


def test_fill_writes_zarr_chunk_by_chunk():
    store = zarr.ones((3, 100, 130), chunks=(1, 32, 32), dtype=np.int32)
    fill(store, (1, slice(None), slice(10, 100)), 0)
    assert store[1, :, 10:100].sum() == 0
    assert store[1, :, :10].all() and store[1, :, 100:].all() and store[0].all() and store[2].all()


@pytest.mark.parametrize("tile", [16, 40])
def test_small_blocks_need_halos_from_several_neighbours(tile):
    truth = scene_2d((90, 90))
    probabilities = probabilities_from(truth, seed=3)
    labels, _, _ = label_blockwise(probabilities, tile=tile)
    assert same_partition(labels, instance_labels(probabilities))


def specks_and_nuclei(shape=(128, 128)):
    """Twelve nuclei of about 110 px, a 40 px bar cut in halves by the tile border at x = 64 (kept: each half
    alone would be small enough to drop), and three specks of 4 px, one of them across that border."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = [(16 + 32 * (i // 4), 12 + 34 * (i % 4)) for i in range(12)]
    for n, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = n
    labels[100:104, 54:74] = 0
    labels[100:104, 59:69] = 13
    specks = [(118, 63), (118, 30), (118, 100)]
    for n, (y, x) in enumerate(specks, 14):
        labels[y:y + 2, x:x + 2] = n
    return labels, specks


def test_specks_are_dropped_and_nuclei_kept_however_the_image_is_cut():
    truth, specks = specks_and_nuclei()
    probabilities = probabilities_from(truth, noise=0.0)
    probabilities[:, truth > 13] = np.array([[0.1], [0.8], [0.1]])  # all interior, as a network firing on noise
    whole = instance_labels(probabilities)
    assert whole.max() == 13 and len(np.unique(whole[truth == 13])) == 1
    assert all(whole[y, x] == 0 for y, x in specks)
    blockwise, labeller, plan = label_blockwise(probabilities, tile=64)
    assert len(plan.axes[1].starts) >= 2  # the speck at x = 63..64 is cut by a block border
    assert labeller.objects == 13 and same_partition(blockwise, whole)
    kept = instance_labels(probabilities, ObjectFilter(0, 0))
    assert kept.max() == 16 and all(kept[y, x] > 0 for y, x in specks)


def test_the_size_bound_follows_the_median_object():
    """Small nuclei are kept where all nuclei are small; the same object among large ones is dropped."""
    objects = ObjectFilter(min_size=8, min_fraction=0.2)
    assert objects.keep(np.array([20, 22, 25, 30])).all()
    np.testing.assert_array_equal(objects.keep(np.array([20, 400, 420, 450])), [False, True, True, True])
    np.testing.assert_array_equal(objects.keep(np.array([5, 7, 9])), [False, False, True])
    assert objects.keep(np.array([], dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="min_fraction"):
        ObjectFilter(min_fraction=1.5)


def haloed_probabilities(labels, halo=4):
    """Probabilities of a model that overstates the faint surroundings of its objects: around each object a
    band of ``halo`` pixels where boundary narrowly beats background (0.5 against 0.45)."""
    from scipy import ndimage

    probabilities = probabilities_from(labels)

    band = ndimage.binary_dilation(labels > 0, iterations=halo) & (labels == 0)
    probabilities[:, band] = np.array([0.45, 0.05, 0.5], np.float32)[:, None]
    return probabilities


def test_foreground_and_seed_thresholds_keep_objects_out_of_their_halo():
    truth = scene_2d()
    probabilities = haloed_probabilities(truth)
    swollen = instance_labels(probabilities)  # the most probable class: the halo joins the objects
    assert (swollen > 0).sum() > 1.3 * (truth > 0).sum()
    strict = ObjectFilter(foreground=0.3, seed=0.4)
    tight = instance_labels(probabilities, strict)
    assert same_partition(tight, instance_labels(probabilities_from(truth), strict))  # as if there were no halo
    assert abs((tight > 0).sum() / (truth > 0).sum() - 1) < 0.05
    for tile in (40, 64):  # block by block alike, however the image is cut
        blockwise, _, _ = label_blockwise(probabilities, tile, object_filter=strict)
        assert same_partition(blockwise, tight)


def test_default_thresholds_are_the_most_probable_class():
    probabilities = np.random.default_rng(3).dirichlet((1, 1, 1), size=(40, 50)).transpose(2, 0, 1)
    classes = ObjectFilter().classes(probabilities.astype(np.float32))
    argmax = np.argmax(probabilities, axis=0)
    np.testing.assert_array_equal(classes == 1, argmax == 1)
    np.testing.assert_array_equal(classes > 0, argmax > 0)


def test_thresholds_round_trip_and_stay_out_of_configs_that_do_not_set_them():
    assert ObjectFilter().to_dict() == {"min_size": 8, "min_fraction": 0.2}  # older versions read it as before
    chosen = ObjectFilter(16, 0.1, foreground=0.3, seed=0.45)
    assert ObjectFilter.from_dict(chosen.to_dict()) == chosen
    with pytest.raises(ValueError, match="foreground threshold"):
        ObjectFilter(foreground=1.5)
