"""Batch segmentation on a Dask cluster gives what ``segment`` gives in-process, survives bad files and dead
workers, resumes, and leaves no half-written file behind.

One two-worker ``LocalCluster`` (processes) serves the whole module; the model is a tiny U-Net saved to a
temporary folder, the images are small synthetic nuclei.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_unet import batch  # noqa: E402
from napari_unet.batch import worker_models  # noqa: E402
from napari_unet.batch.files import _plan_outputs  # noqa: E402
from napari_unet.core.inference import segment  # noqa: E402
from napari_unet.core.models import Model, load_model, save_model  # noqa: E402
from napari_unet.synthetic import generate_nuclei  # noqa: E402
from tiny_models import tiny_unet  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """The bundled nuclei model saved to a temporary folder: it finds real objects (a random network finds
    one blob), many of which cross tile borders, which is what the merging across workers must get right."""
    return save_model(load_model("nuclei"), tmp_path_factory.mktemp("models") / "nuclei-copy")


def test_the_worker_cache_reloads_a_model_saved_again(tmp_path):
    path = save_model(tiny_unet(), tmp_path / "tiny")
    ref = worker_models._model_ref(path)
    loads = worker_models._LOADS[0]
    first = batch.worker_model(ref)
    assert batch.worker_model(ref) is first and worker_models._LOADS[0] == loads + 1
    save_model(tiny_unet(), path, overwrite=True)
    assert batch.worker_model(ref) is not first and worker_models._LOADS[0] == loads + 2


def test_the_worker_network_follows_the_model_object():
    """Models sent in memory are told apart by identity, and only the last one's ready copies are kept."""
    first, second = tiny_unet(), tiny_unet()
    network = worker_models._worker_network(first, "cpu", "float32", False)
    assert worker_models._worker_network(first, "cpu", "float32", False) is network
    assert worker_models._worker_network(second, "cpu", "float32", False) is not network
    assert all(held is second for held, _ in worker_models._NETWORKS.values())


@pytest.fixture(scope="module")
def model(model_path) -> Model:
    return load_model(model_path)


@pytest.fixture(scope="module")
def client():
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the test module
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _write_images(folder: Path, count: int, size: int = 128, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, _ = generate_nuclei((size, size + 8 * i), seed=seed + i)
        paths.append(folder / f"img{i}.tif")
        tifffile.imwrite(paths[-1], image)
    return paths


def _same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a renumbering of the ids (0 stays background)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(f"*{batch.PARTIAL}")]


def _in_process(path: Path, model: Model) -> np.ndarray:
    return segment(tifffile.imread(path), model, axes="YX", device="cpu", probabilities=False).labels


def _arm_crash() -> None:
    """Make this worker process die the next time it would rename a finished output into place."""
    from napari_unet.batch import outputs as remote

    def crash(temporary, target, replace_folder=False):
        os._exit(1)

    remote.commit = crash


def _arm_one_worker(client) -> str:
    address = sorted(client.scheduler_info()["workers"])[0]
    client.run(_arm_crash, workers=[address])
    return address


# --------------------------------------------------------------------------------------------------------------


def test_many_files_equal_in_process_and_a_broken_file_is_reported(client, model, model_path, tmp_path):
    images = _write_images(tmp_path / "in", 5)
    broken = tmp_path / "in" / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    out = tmp_path / "labels"
    done = []
    report = batch.segment_many(sorted(tmp_path.glob("in/*.tif")), model_path, out, client=client, device="cpu",
                                progress=lambda d, t, name: done.append((d, t)))
    print(report)
    rows = {Path(f.file).name: f for f in report.files}
    assert rows["broken.tif"].error and "broken.tif" in rows["broken.tif"].error
    assert [f.file for f in report.failed] == [str(broken)]
    assert done[-1] == (6, 6)
    for path in images:
        row = rows[path.name]
        assert row.error is None and row.status == "done", row.error
        labels = tifffile.imread(out / path.name)
        expected = _in_process(path, model)
        assert _same_objects(labels, expected)
        assert row.objects == expected.max() > 3
    assert not (out / "broken.tif").exists()
    assert _partials(tmp_path) == []
    assert "broken.tif" in report.table() and "1 failed" in report.table()
    loads = client.run(lambda: __import__("napari_unet.batch.worker_models").batch.worker_models._LOADS[0])
    assert all(n <= 1 for n in loads.values()), loads  # once per worker, not once per file

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = batch.segment_many(sorted(tmp_path.glob("in/*.tif")), model_path, out, client=client, device="cpu")
    assert [f.status for f in again.files if f.file != str(broken)] == ["skipped"] * len(images)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert again.failed[0].file == str(broken)  # a failed file is tried again on a rerun


def test_a_worker_that_dies_mid_write_leaves_nothing_half_written(client, model, model_path, tmp_path):
    images = _write_images(tmp_path / "in", 4, seed=10)
    out = tmp_path / "labels"
    armed = _arm_one_worker(client)
    report = batch.segment_many(images, model_path, out, client=client, device="cpu", suffix=".npy")
    assert armed not in client.scheduler_info()["workers"], "the armed worker never wrote: nothing was tested"
    assert report.failed == [], report.table()
    for path in images:
        assert _same_objects(np.load(out / f"{path.stem}.npy"), _in_process(path, model))
    assert _partials(tmp_path) == []
    client.wait_for_workers(2, timeout=60)


def _zarr_image(path: Path, size: int = 1024, chunk: int = 256) -> zarr.Array:
    image, _ = generate_nuclei((size, size), seed=3)
    array = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(chunk, chunk), dtype=image.dtype)
    array[...] = image
    return array


def test_a_large_zarr_image_across_workers_equals_in_process(client, model, model_path, tmp_path):
    image = _zarr_image(tmp_path / "big.zarr")
    expected = segment(image, model, device="cpu", tile_shape=384, probabilities=False)
    out = tmp_path / "labels.zarr"
    result = batch.segment_large(image, model_path, out, client=client, device="cpu", tile_shape=384)
    print(f"{result.tiles} tiles in {result.tasks} tasks: {result.timings}")
    labels = zarr.open_array(str(out), mode="r")[...]
    assert result.tasks > 1 and result.objects == expected.objects > 100
    assert _same_objects(labels, expected.labels)
    assert np.array_equal(labels, expected.labels)  # the same tiles in the same order: even the same ids
    assert _partials(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr", "labels.zarr"]


def test_a_large_image_survives_a_dead_worker(client, model, tmp_path):
    image = _zarr_image(tmp_path / "big.zarr", size=512, chunk=128)
    expected = segment(image, model, device="cpu", tile_shape=192)
    armed = _arm_one_worker(client)
    probabilities = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=(3, 512, 512), chunks=(3, 256, 256),
                                    dtype="float32")
    result = batch.segment_large(image, model, tmp_path / "labels.zarr", client=client, device="cpu",
                                 tile_shape=192, tiles_per_task=2, probabilities=probabilities)
    assert armed not in client.scheduler_info()["workers"], "the armed worker never wrote: nothing was tested"
    assert result.tasks > 2 and np.array_equal(result.labels[...], expected.labels)
    # the same up to float round-off: the restarted worker's tiles may run with other kernels or thread counts
    np.testing.assert_allclose(probabilities[...], expected.probabilities, rtol=0, atol=1e-5)
    assert _partials(tmp_path) == [] and not list(tmp_path.glob(".napari-unet-tiles-*"))
    client.wait_for_workers(2, timeout=60)


def test_a_numpy_image_and_a_model_only_in_memory_across_workers_equal_in_process(client, model, model_path):
    """Arrays and models that live only in the caller's memory reach the workers as data: the image once, the
    model once (it has no folder for them to load), each task getting them as its own arguments."""
    image, _ = generate_nuclei((256, 256), seed=5)
    expected = segment(image, model, device="cpu", tile_shape=128, probabilities=False)
    unsaved = Model(model.network, model.config)  # the nuclei weights, with no folder
    assert unsaved.path is None
    for source in (model_path, unsaved):
        result = batch.segment_large(image, source, client=client, device="cpu", tile_shape=128, tiles_per_task=2)
        assert result.tasks > 2 and result.objects == expected.objects > 5
        assert _same_objects(result.labels, expected.labels)


def test_the_command_runs_a_glob_on_a_scheduler_with_a_progress_bar_and_a_table(client, model, model_path,
                                                                                tmp_path, capsys):
    from napari_unet.cli import main

    images = _write_images(tmp_path / "plates", 3, seed=20)
    out = tmp_path / "labels"
    args = ["segment", str(tmp_path / "plates" / "*.tif"), "--out", str(out), "--model", str(model_path),
            "--device", "cpu", "--scheduler", client.scheduler.address]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Dask dashboard" in captured.err and "3/3 files" in captured.err
    assert "img0.tif" in captured.out and "3 done, 0 skipped" in captured.out
    assert _same_objects(tifffile.imread(out / "img1.tif"), _in_process(images[1], model))
    assert main(args) == 0 and "0 done, 3 skipped" in capsys.readouterr().out
    assert main(["segment", str(images[0])]) == 2 and "--out DIR" in capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "x.tif")]) == 2 and "not both" in capsys.readouterr().err


def test_the_command_spreads_one_zarr_image_over_the_workers(client, model, model_path, tmp_path, capsys):
    from napari_unet.cli import main

    image = _zarr_image(tmp_path / "big.zarr", size=384, chunk=128)
    out = tmp_path / "labels.zarr"
    assert main(["segment", str(tmp_path / "big.zarr"), "-o", str(out), "--model", str(model_path), "--device",
                 "cpu", "--tile", "192", "--scheduler", client.scheduler.address, "--axes", "YX"]) == 0
    expected = segment(image, model, axes="YX", device="cpu", tile_shape=192, probabilities=False)
    assert np.array_equal(zarr.open_array(str(out), mode="r")[...], expected.labels)
    assert f"{expected.objects} objects" in capsys.readouterr().err


def test_a_package_from_another_tool_runs_on_the_workers_only_with_trust(client, tmp_path, capsys):
    """The workers load the package themselves, running its code: only with the caller's trust=True (--trust),
    and without it the run stops at once, in the caller, having written nothing."""
    pytest.importorskip("bioimageio.core")
    from foreign_packages import build_package, raw_image

    from napari_unet.cli import main
    from napari_unet.core.errors import UntrustedCodeError

    package = build_package(tmp_path / "foreign", ("pytorch_state_dict",), 2, ["segmentation"])
    (tmp_path / "plates").mkdir()
    images = [raw_image((70, 60 + 8 * i), seed=i) for i in range(2)]
    for i, image in enumerate(images):
        tifffile.imwrite(tmp_path / "plates" / f"img{i}.tif", image)
    pattern = str(tmp_path / "plates" / "*.tif")
    with pytest.raises(UntrustedCodeError, match="trust=True"):
        batch.segment_many(pattern, str(package), tmp_path / "refused", client=client, device="cpu")
    assert not any((tmp_path / "refused").iterdir())

    report = batch.segment_many(pattern, str(package), tmp_path / "labels", client=client, device="cpu",
                                precision="float32", trust=True)
    assert not report.failed, report.table()
    model = load_model(package, trust=True)
    expected = [segment(image, model, axes="YX", device="cpu", precision="float32").labels for image in images]
    for i, labels in enumerate(expected):
        assert np.array_equal(tifffile.imread(tmp_path / "labels" / f"img{i}.tif"), labels)
    assert 0 < expected[1].mean() < 1  # both classes occur

    command = ["segment", pattern, "--out", str(tmp_path / "cli"), "--model", str(package), "--device", "cpu",
               "--precision", "float32", "--scheduler", client.scheduler.address, "-q"]
    assert main(command) == 2 and "--trust" in capsys.readouterr().err
    assert main(command + ["--trust"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "cli" / "img1.tif"), expected[1])

    stored = zarr.open_array(str(tmp_path / "image.zarr"), mode="w", shape=images[1].shape, chunks=(32, 32),
                             dtype=images[1].dtype)
    stored[...] = images[1]
    large = batch.segment_large(stored, model, client=client, device="cpu", precision="float32", tile_shape=48,
                                trust=True)  # the loaded model goes to the workers as its package, with trust
    assert np.array_equal(large.labels, segment(images[1], model, axes="YX", device="cpu", precision="float32",
                                                tile_shape=48).labels)


def test_missing_distributed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install napari-unet\[batch\]") as info:
        batch.require_distributed()
    assert isinstance(info.value, ValueError)  # the command line reports it as a user error


def test_importing_the_module_loads_neither_torch_nor_distributed():
    import subprocess

    code = ("import napari_unet, napari_unet.batch, sys; napari_unet.segment_many; "
            "print([m for m in ('torch', 'distributed') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip() == "[]"


def test_outputs_that_would_collide_are_refused(tmp_path):
    with pytest.raises(ValueError, match="would both write"):
        _plan_outputs([tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"], tmp_path / "out", ".tif")


def test_an_old_output_set_aside_comes_back_if_the_new_one_fails_and_goes_once_it_is_made(tmp_path):
    from napari_unet.batch.outputs import set_aside

    target = tmp_path / "labels.zarr"
    target.mkdir()
    (target / "old").write_text("the last run's labels")
    with pytest.raises(RuntimeError), set_aside(target):
        assert not target.exists()
        raise RuntimeError("the cluster went away")
    assert (target / "old").read_text() == "the last run's labels"
    with set_aside(target):
        target.mkdir()
        (target / "new").write_text("this run's labels")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["labels.zarr", "new"]
