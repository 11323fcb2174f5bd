"""3D objects from a 2D model: the YX, ZX and ZY passes, their average, voxel size, time-lapses and the old route."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from napari_unet.cli import main
from napari_unet.core import orthogonal, zsampling
from napari_unet.core.cancel import CancelToken
from napari_unet.core.errors import Cancelled, InvalidInputError
from napari_unet.core.inference import segment
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.normalization import Normalization
from napari_unet.core.postprocess import instance_labels
from napari_unet.core.unet import UNet, UNetConfig
from napari_unet.synthetic import STYLES, generate_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")
FLOAT32 = {"device": "cpu", "precision": "float32"}


def random_model(task="instance", normalization=None, seed=0):
    """A depth-1 U-Net with random weights: its output depends on each pixel's neighbours, so the orientation of
    the planes it sees changes the result."""
    names = ("background", "interior", "boundary") if task == "instance" else ("a", "b")
    net = UNetConfig(in_channels=1, out_channels=len(names), depth=1, base_features=4, padding="same",
                     upsampling="bilinear", norm="batch")
    config = ModelConfig(net, task=task, classes=names, normalization=normalization or Normalization())
    model = Model.from_config(config, seed=seed)
    with torch.no_grad():
        model.network.head.weight.mul_(50.0)  # confident, varied classes instead of a near-uniform softmax
    model.network.eval()
    return model


def probabilities_of_planes(model, planes, stats):
    """Softmax of the network on each 2D plane of ``planes`` (N, A, B), normalised with ``stats``."""
    norm = model.config.normalization
    a, b = planes.shape[1:]
    x = np.zeros((len(planes), 1, a + a % 2, b + b % 2), np.float32)  # zeros beyond the edge, as the engine pads
    x[:, :, :a, :b] = np.stack([norm.apply(p[None], stats) for p in planes])
    with torch.no_grad():
        return torch.softmax(model.network(torch.from_numpy(x)), 1).numpy()[:, :, :a, :b]  # (N, 3, A, B)


def volume(shape=(8, 12, 16), seed=3):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_the_average_of_the_yx_zx_and_zy_passes_is_labelled_in_3d():
    model = random_model(seed=4)  # gives all three classes and several objects on this stack
    stack = volume(seed=0)
    result = segment(stack, model, **FLOAT32)
    stats = model.config.normalization.statistics(stack[None])  # one normalisation for the whole stack
    yx = probabilities_of_planes(model, stack, stats).transpose(1, 0, 2, 3)  # planes stack[z] -> (3, Z, Y, X)
    zx = probabilities_of_planes(model, stack.transpose(1, 0, 2), stats).transpose(1, 2, 0, 3)  # stack[:, y]
    zy = probabilities_of_planes(model, stack.transpose(2, 0, 1), stats).transpose(1, 2, 3, 0)  # stack[:, :, x]
    assert np.abs(yx - zx).max() > 0.01 and np.abs(yx - zy).max() > 0.01, "the orientations must differ"
    mean = (yx + zx + zy) / 3
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-5)
    classes = [np.argmax(p, 0) for p in (yx, zx, zy)]
    interior = np.logical_and.reduce([c == 1 for c in classes])  # seeds: interior in all three passes
    foreground = np.logical_and.reduce([c > 0 for c in classes])  # extent: foreground in all three
    expected = orthogonal.label_volume(mean, interior, foreground, model.config.object_filter)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.labels_axes == "ZYX" and result.objects == result.labels.max() > 1


def test_seeds_need_all_three_passes_so_one_missed_boundary_does_not_merge_objects():
    shape = (6, 4, 9)
    interior = np.array([0.05, 0.9, 0.05], np.float32)  # background, interior, boundary
    weak_boundary = np.array([0.05, 0.45, 0.5], np.float32)
    passes = [np.broadcast_to(interior[:, None, None, None], (3, *shape)).copy() for _ in range(3)]
    for p in passes[:2]:  # two passes see the boundary plane between two nuclei, the third does not
        p[:, :, :, 4] = weak_boundary[:, None, None]
    mean = sum(passes) / 3
    assert instance_labels(mean).max() == 1, "the averaged map alone merges them"
    inside, foreground = np.ones(shape, bool), np.ones(shape, bool)
    for p in passes:
        orthogonal.agree(p, inside, foreground)
    labels = orthogonal.label_volume(mean, inside, foreground)
    assert labels.max() == 2 and (labels > 0).all()
    assert len(np.unique(labels[:, :, :4])) == len(np.unique(labels[:, :, 5:])) == 1


def test_two_nuclei_whose_interiors_touch_through_a_thin_bridge_stay_two_objects():
    z, y, x = np.indices((24, 24, 40))
    balls = [(z - 12) ** 2 + (y - 12) ** 2 + (x - c) ** 2 <= 7 ** 2 for c in (10, 29)]
    bridge = (np.abs(z - 12) <= 1) & (np.abs(y - 12) <= 1) & (x >= 10) & (x <= 29)  # 3 voxels thick
    inside = balls[0] | balls[1] | bridge  # where all three passes missed the boundary between them
    foreground = ndimage.binary_dilation(inside, iterations=2)
    probabilities = np.stack([~foreground, inside, foreground & ~inside]).astype(np.float32)
    labels = orthogonal.label_volume(probabilities, inside, foreground)
    assert labels.max() == 2
    assert labels[12, 12, 10] != labels[12, 12, 29] and labels[12, 12, 10] > 0 and labels[12, 12, 29] > 0
    assert (labels > 0).sum() == foreground.sum()  # the bridge and the rims still belong to one of them


def test_a_volume_that_is_interior_throughout_is_one_object():
    inside = np.ones((4, 8, 8), bool)  # no background anywhere: no voxel has a distance to an edge
    probabilities = np.stack([~inside, inside, ~inside]).astype(np.float32)
    labels = orthogonal.label_volume(probabilities, inside, inside.copy())
    assert labels.max() == 1 and (labels == 1).all()


@pytest.fixture(scope="module")
def nuclei_stack():
    """A small generated stack of well separated nuclei, each spanning several planes, and its labels."""
    style = dataclasses.replace(STYLES["default"], clustering=0.0, density=0.08, z_anisotropy=1.0, axial_blur=1.0)
    return generate_nuclei((16, 64, 64), style, seed=1)


def test_a_nucleus_through_several_planes_gets_one_id(nuclei_stack):
    image, truth = nuclei_stack
    model = load_model("nuclei")
    objects = segment(image, model, **FLOAT32)
    planes = segment(image, model, stack="planes", **FLOAT32)
    assert objects.labels.shape == planes.labels.shape == image.shape
    assert abs(objects.objects - truth.max()) <= 1, (objects.objects, truth.max())
    assert planes.objects >= 5 * objects.objects, "plane by plane, each plane of a nucleus is its own object"
    for true_id in range(1, truth.max() + 1):
        inside = truth == true_id
        depth = np.flatnonzero(inside.sum((1, 2)) >= 20)  # planes where the nucleus is more than a sliver
        assert len(depth) >= 4
        found = objects.labels[inside]
        main_id = np.bincount(found[found > 0]).argmax()
        assert all(main_id in objects.labels[z][inside[z]] for z in depth), "one id in every plane it spans"
        assert len(np.unique(planes.labels[inside])) > len(depth) / 2


def test_planes_reproduces_the_plane_by_plane_result():
    model = random_model()
    stack = volume((4, 24, 20))
    planes = segment(stack, model, stack="planes", **FLOAT32)
    frames = segment(stack, model, axes="TYX", **FLOAT32)  # T is always frame by frame: the old route
    np.testing.assert_array_equal(planes.labels, frames.labels)
    np.testing.assert_array_equal(planes.probabilities, frames.probabilities)
    semantic = random_model(task="semantic")  # class ids need no 3D objects: planes by default
    np.testing.assert_array_equal(segment(stack, semantic, **FLOAT32).probabilities,
                                  segment(stack, semantic, axes="TYX", **FLOAT32).probabilities)
    with pytest.raises(InvalidInputError, match="stack='planes'"):
        segment(stack, semantic, stack="3d", **FLOAT32)


def test_a_time_lapse_gives_3d_objects_per_time_point():
    model = random_model(seed=2)
    stack = volume((6, 16, 16), seed=4)
    single = segment(stack, model, **FLOAT32)
    series = segment(np.stack([stack, stack]), model, **FLOAT32)  # TZYX: same statistics as the single volume
    assert series.labels_axes == "TZYX" and single.objects > 1
    np.testing.assert_array_equal(series.labels[0], single.labels)
    np.testing.assert_array_equal(series.labels[1], np.where(single.labels > 0, single.labels + single.objects, 0))
    np.testing.assert_allclose(series.probabilities[:, 1], single.probabilities, atol=1e-4)
    assert series.objects == 2 * single.objects


def test_a_coarse_z_is_resampled_for_the_passes_and_the_labels_come_back_to_the_stack():
    model = random_model(seed=4)
    stack = volume((5, 16, 16), seed=7)
    result = segment(stack, model, scale=(2.0, 0.5, 0.5), **FLOAT32)  # Z steps four times the pixel size
    assert result.labels.shape == result.probabilities.shape[1:] == stack.shape
    assert any("Z resampled from 5 to 17 planes" in m for m in result.messages)
    fine = ndimage.zoom(stack, (17 / 5, 1, 1), order=1, prefilter=False)
    np.testing.assert_allclose(fine[::4], stack, atol=1e-6)  # the stack's own planes are planes of the fine grid
    across = ndimage.gaussian_filter(fine, (0, orthogonal.lateral_blur(4.0), orthogonal.lateral_blur(4.0)))
    stats = model.config.normalization.statistics(stack[None])  # the stack's, for its resampled YX planes
    own = model.config.normalization.statistics(across[None])  # the blurred volume's own, for ZX and ZY
    yx = probabilities_of_planes(model, fine, stats).transpose(1, 0, 2, 3)
    zx = probabilities_of_planes(model, across.transpose(1, 0, 2), own).transpose(1, 2, 0, 3)
    zy = probabilities_of_planes(model, across.transpose(2, 0, 1), own).transpose(1, 2, 3, 0)
    mean = (yx + zx + zy) / 3
    np.testing.assert_allclose(result.probabilities, mean[:, ::4], atol=1e-5)
    classes = [np.argmax(p, 0) for p in (yx, zx, zy)]
    fine_labels = orthogonal.label_volume(mean, np.logical_and.reduce([c == 1 for c in classes]),
                                          np.logical_and.reduce([c > 0 for c in classes]))
    ids = np.unique(fine_labels[::4])  # objects on the stack's own planes, numbered again 1..N
    np.testing.assert_array_equal(result.labels, np.searchsorted(ids, fine_labels[::4]))
    assert orthogonal.lateral_blur(4.0) == pytest.approx(np.sqrt(15 / 12)) and orthogonal.lateral_blur(1.0) == 0
    oblong = segment(stack, model, scale=(2.0, 0.4, 0.625), **FLOAT32)  # the same area per pixel: the same Z step
    np.testing.assert_array_equal(oblong.labels, result.labels)
    assert any("pixels are not square (Y 0.4, X 0.625)" in m for m in oblong.messages)
    unscaled = segment(stack, model, **FLOAT32)
    assert not np.allclose(unscaled.probabilities, result.probabilities, atol=1e-3), "Z is not treated like X"
    np.testing.assert_array_equal(zsampling.nearest_planes(5, 9), [0, 2, 4, 6, 8])
    assert zsampling.resampled_depth(16, 1.0) == 16 and zsampling.resampled_depth(16, 2.0) == 31


def test_thin_zx_and_zy_planes_are_batched_up_to_the_pixels_of_a_yx_tile(monkeypatch):
    shapes = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x: shapes.append(tuple(x.shape)) or forward(self, x))
    segment(volume((4, 32, 32)), random_model(), **FLOAT32)
    assert (1, 1, 32, 32) in shapes  # YX planes: one per batch on a CPU
    assert (8, 1, 4, 32) in shapes, shapes  # ZX and ZY planes: 4 x 32 pixels, eight per batch
    assert sum(n for n, _, *plane in shapes if plane == [32, 32]) == 4  # every plane once
    assert sum(n for n, _, *plane in shapes if plane == [4, 32]) == 32 + 32


@pytest.mark.parametrize("kwargs, words", [
    ({"stack": "volume"}, "stack must be '3d'"),
    ({"scale": (1.0, 1.0)}, "one positive pixel size per spatial axis"),
    ({"scale": (2.0, 0.0, 1.0)}, "one positive pixel size"),
])
def test_bad_stack_and_scale_options_say_what_to_do(kwargs, words):
    with pytest.raises(InvalidInputError, match=words):
        segment(volume(), random_model(), **kwargs, **FLOAT32)


def test_a_stack_too_large_for_memory_goes_plane_by_plane_with_a_note_or_is_refused_if_3d_was_asked(monkeypatch):
    stack, model = volume(), random_model()
    monkeypatch.setattr(orthogonal, "physical_memory", lambda: 4 * 8 * 12 * 16 * 50)  # under 60 bytes a voxel
    with pytest.raises(InvalidInputError, match="stack='planes'.*nuclei-3d"):
        segment(stack, model, stack="3d", **FLOAT32)
    result = segment(stack, model, **FLOAT32)
    np.testing.assert_array_equal(result.labels, segment(stack, model, stack="planes", **FLOAT32).labels)
    assert any("segmented plane by plane" in m and "GiB" in m and "nuclei-3d" in m for m in result.messages)


def test_progress_spans_the_three_passes_and_cancel_stops_them(monkeypatch):
    reports = []
    segment(volume(), random_model(), progress=lambda *report: reports.append(report), batch_size=1, **FLOAT32)
    done = [d for d, _, _ in reports]
    assert done == sorted(done) and reports[-1][0] == reports[-1][1] == reports[0][1]
    for name in ("YX", "ZX", "ZY"):
        assert any(f"{name} planes" in message for _, _, message in reports)

    calls = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x: calls.append(1) or forward(self, x))
    token = CancelToken()
    out = np.full((8, 12, 16), 5, np.int32)

    def stop_in_second_pass(done, total, message):
        if "ZX planes" in message:
            token.cancel()

    with pytest.raises(Cancelled):
        segment(volume(), random_model(), cancel=token, out=out, progress=stop_in_second_pass,
                batch_size=1, **FLOAT32)
    yx_tiles = next(d for d, _, m in reports if "ZX planes" in m) - 1
    assert len(calls) == yx_tiles + 1, "stopped one tile into the second pass"
    assert (out == 5).all(), "the caller's labels are untouched until a volume is finished"


def test_the_command_line_takes_scale_and_stack(tmp_path):
    model = random_model(normalization=Normalization(method="none"))
    save_model(model, "tiny")
    stack = volume((5, 16, 16), seed=7)
    tifffile.imwrite(tmp_path / "input.tif", stack, metadata={"axes": "ZYX"})
    for options, expected in ((["--scale", "2", "0.5", "0.5"], {"scale": (2.0, 0.5, 0.5)}),
                              (["--stack", "planes"], {"stack": "planes"})):
        target = tmp_path / f"{options[0][2:]}.tif"
        argv = ["segment", str(tmp_path / "input.tif"), "-o", str(target), "--model", "tiny", "--device", "cpu",
                "--precision", "float32", "-q", *options]
        assert main(argv) == 0
        np.testing.assert_array_equal(tifffile.imread(target), segment(stack, model, **expected, **FLOAT32).labels)
