"""Autosave: snapshots are atomic, listed for recovery, restored as new layers, and never run code."""
from __future__ import annotations

import numpy as np
import pytest

import napari_unet.core.autosave as autosave
from conftest import array_hash, leftovers
from napari_unet.core.autosave import (
    autosave_dir,
    autosave_enabled,
    discard_snapshot,
    list_snapshots,
    load_snapshot,
    new_key,
    save_snapshot,
    set_autosave_enabled,
)
from napari_unet.core.errors import InvalidInputError


def _labels(value: int = 1) -> np.ndarray:
    data = np.zeros((40, 50), np.uint16)
    data[5:20, 10:30] = value
    return data


def test_round_trip_and_listing(isolated_home):
    first = save_snapshot(new_key("cells labels"), _labels(3), "cells labels", "cells")
    second = save_snapshot(new_key("other/../name"), _labels(4).astype(np.int32), "other/../name")
    assert autosave_dir() == isolated_home / "autosave"
    listed = {s.key: s for s in list_snapshots()}
    assert set(listed) == {first.key, second.key}
    assert "/" not in second.key and ".." not in second.key, "a layer name never escapes the autosave folder"
    assert (listed[first.key].name, listed[first.key].source, listed[first.key].shape) == \
        ("cells labels", "cells", (40, 50))
    data, snapshot = load_snapshot(first.key)
    assert array_hash(data) == array_hash(_labels(3)) and snapshot.dtype == "uint16"
    discard_snapshot(first.key)
    assert [s.key for s in list_snapshots()] == [second.key]


def test_a_crash_mid_write_keeps_the_previous_snapshot(isolated_home, monkeypatch):
    key = new_key("cells labels")
    save_snapshot(key, _labels(1), "cells labels")

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process dies mid-write

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(autosave.np, "savez_compressed", crash)
        save_snapshot(key, _labels(2), "cells labels")
    data, _ = load_snapshot(key)
    assert array_hash(data) == array_hash(_labels(1))
    assert leftovers(autosave_dir()) == []


def test_damaged_or_foreign_files_are_skipped_not_deleted(isolated_home):
    good = save_snapshot(new_key("good"), _labels(), "good")
    folder = autosave_dir()
    (folder / "truncated.npz").write_bytes(good.path.read_bytes()[:100])
    (folder / "random.npz").write_bytes(np.random.default_rng(0).bytes(500))
    np.savez(folder / "pickled.npz", labels=np.array([object()], dtype=object), meta=np.array("{}"))
    assert [s.key for s in list_snapshots()] == [good.key]
    assert (folder / "truncated.npz").exists() and (folder / "random.npz").exists()
    with pytest.raises(ValueError):
        load_snapshot("pickled")  # an object array would need unpickling: refused


@pytest.mark.parametrize("data", [np.zeros((4, 4), np.float32), [[1, 2]]], ids=["float", "list"])
def test_only_integer_numpy_labels_are_saved(data, isolated_home):
    with pytest.raises(InvalidInputError):
        save_snapshot("k", data, "x")
    with pytest.raises(InvalidInputError):
        save_snapshot("../escape", np.zeros((2, 2), np.int32), "x")


def test_the_setting_is_on_by_default_and_remembered(isolated_home):
    assert autosave_enabled()
    set_autosave_enabled(False)
    assert not autosave_enabled()
    set_autosave_enabled(True)
    assert autosave_enabled()
    assert leftovers(autosave_dir()) == []


# --------------------------------------------------------------------------------------------------------------
# In napari
# --------------------------------------------------------------------------------------------------------------


def test_autosaver_writes_changed_layers_only(make_napari_viewer, isolated_home):
    from napari_unet.widgets._autosave import autosaver_for

    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="corrected")
    saver = autosaver_for(viewer)
    assert autosaver_for(viewer) is saver and saver.timer.isActive()
    saver.watch(layer)
    assert saver.save_changed() == 1 and saver.wait()
    assert saver.save_changed() == 0, "nothing changed: nothing written"
    layer.paint((30, 30), 9)  # napari's paint tool
    assert saver.save_changed() == 1 and saver.wait()
    (snapshot,) = list_snapshots()
    data, _ = load_snapshot(snapshot.key)
    assert array_hash(data) == array_hash(layer.data)
    set_autosave_enabled(False)
    layer.paint((35, 35), 9)
    assert saver.save_changed() == 0, "the setting turns autosave off"


def test_labels_live_mode_re_segments_are_autosaved_too(make_napari_viewer, isolated_home):
    """Live mode writes a new version's labels straight into the array (no paint event): the next autosave must
    still hold them, or a crash would bring back labels older than the screen showed."""
    from napari_unet.widgets._autosave import autosaver_for
    from napari_unet.widgets._predictions import keep_prediction, write_unedited

    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="cells labels")
    keep_prediction(layer)  # as a Segment run leaves it
    saver = autosaver_for(viewer)
    saver.watch(layer)
    assert saver.save_changed() == 1 and saver.wait()
    new = np.zeros((40, 50), np.uint16)
    new[25:35, 5:15] = 1
    assert write_unedited(layer, (slice(0, 40), slice(0, 50)), new, instance=True)
    assert saver.save_changed() == 1 and saver.wait()
    (snapshot,) = list_snapshots()
    data, _ = load_snapshot(snapshot.key)
    assert array_hash(data) == array_hash(layer.data) and data[30, 10] > 0


@pytest.fixture
def warnings_shown():
    """The texts of the napari warning notifications shown during the test."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    shown: list[str] = []

    def collect(notification):
        if notification.severity == NotificationSeverity.WARNING:
            shown.append(str(notification.message))

    notification_manager.notification_ready.connect(collect)
    yield shown
    notification_manager.notification_ready.disconnect(collect)


def test_a_save_compresses_and_writes_in_a_worker_thread(make_napari_viewer, isolated_home, monkeypatch, qtbot):
    """The main thread only copies the labels; compressing and writing happen in a worker, one save per layer
    at a time, and what is saved is the labels as they were when the save started."""
    import threading
    import time

    from napari_unet.widgets._autosave import autosaver_for

    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(1), name="corrected")
    saver = autosaver_for(viewer)
    saver.watch(layer)
    real, busy, seen = autosave.np.savez_compressed, [], {"most": 0, "threads": set(), "labels": []}
    release = threading.Event()

    def slow(file, **arrays):
        busy.append(1)
        seen["most"] = max(seen["most"], len(busy))
        seen["threads"].add(threading.get_ident())
        seen["labels"].append(arrays["labels"].copy())
        release.wait(10)
        real(file, **arrays)
        busy.pop()

    monkeypatch.setattr(autosave.np, "savez_compressed", slow)
    started = time.perf_counter()
    assert saver.save_changed() == 1
    assert time.perf_counter() - started < 0.5, "the main thread does not wait for the write"
    assert list_snapshots() == []
    layer.paint((30, 30), 9)  # the user paints on while the first save is being written
    assert saver.save_changed() == 0, "no second save of a layer while its first one runs"
    qtbot.wait(100)
    release.set()
    assert saver.wait()
    assert seen["most"] == 1 and threading.get_ident() not in seen["threads"]
    first, second = seen["labels"]  # the paint asked for a save, made once the first one was written
    assert array_hash(first) == array_hash(_labels(1)), "the labels as they were when the save started"
    (snapshot,) = list_snapshots()
    saved, _ = load_snapshot(snapshot.key)
    assert array_hash(second) == array_hash(saved) == array_hash(layer.data)
    assert saver.save_changed() == 0 and leftovers(autosave_dir()) == []


def test_a_save_during_a_run_leaves_the_runs_warnings_to_it(make_napari_viewer, isolated_home, monkeypatch, qtbot,
                                                            warnings_shown):
    """napari's workers replace the process-wide warnings hook while they run; an autosave ending while a
    Fine-tune worker runs must not take that worker's hook away (its warnings would then go unseen)."""
    import threading
    import warnings

    from qtpy.QtCore import QObject

    from napari_unet.core.cancel import CancelToken
    from napari_unet.widgets._autosave import autosaver_for
    from napari_unet.widgets._workers import Outcome, start_worker

    viewer = make_napari_viewer()
    saver = autosaver_for(viewer)
    saver.watch(viewer.add_labels(_labels(), name="corrected"))
    real, writing, release, saved = autosave.np.savez_compressed, threading.Event(), threading.Event(), \
        threading.Event()

    def slow(file, **arrays):
        writing.set()
        release.wait(10)
        real(file, **arrays)

    monkeypatch.setattr(autosave.np, "savez_compressed", slow)
    assert saver.save_changed() == 1
    assert writing.wait(10)

    def steps():
        saved.wait(10)  # the autosave ended while this run went on
        warnings.warn("the batch had odd values", UserWarning, stacklevel=1)
        yield "step"

    outcomes, owner = [], QObject()
    start_worker(steps, lambda event: outcomes.append(event) if isinstance(event, Outcome) else None, owner,
                 CancelToken(), "Fine-tune")
    qtbot.wait(200)  # the run has started
    release.set()
    assert saver.wait()
    saved.set()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=10_000)
    qtbot.wait(100)
    assert outcomes[0].status == "done"
    assert warnings_shown == ["Fine-tune: the batch had odd values"]


def test_a_full_disk_warns_once_and_keeps_the_previous_autosave(make_napari_viewer, isolated_home, monkeypatch,
                                                                 warnings_shown):
    from napari_unet.widgets._autosave import autosaver_for

    viewer = make_napari_viewer()
    saver = autosaver_for(viewer)
    layer = viewer.add_labels(_labels(1), name="corrected")
    saver.watch(layer)
    assert saver.save_changed() == 1 and saver.wait()
    (previous,) = list_snapshots()
    layer.paint((30, 30), 9)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(autosave.np, "savez_compressed", disk_full)
        assert saver.save_changed() == 1 and saver.wait()
        assert len(warnings_shown) == 1 and "corrected" in warnings_shown[0], warnings_shown
        assert "No space left on device" in warnings_shown[0]
        assert saver.save_changed() == 1 and saver.wait(), "still marked changed: tried again"
        assert len(warnings_shown) == 1, "one warning while it keeps failing, not one every few minutes"
    data, _ = load_snapshot(previous.key)
    assert array_hash(data) == array_hash(_labels(1)), "the previous autosave is intact"
    assert leftovers(autosave_dir()) == []
    assert saver.save_changed() == 1 and saver.wait()
    data, _ = load_snapshot(previous.key)
    assert array_hash(data) == array_hash(layer.data)


def test_recover_widget_lists_and_restores_as_a_new_layer(make_napari_viewer, isolated_home):
    from napari_unet.widgets.recover_widget import RecoverWidget

    viewer = make_napari_viewer()
    save_snapshot(new_key("cells labels"), _labels(7), "cells labels", "cells")
    existing = viewer.add_labels(_labels(1), name="cells labels")
    widget = RecoverWidget(viewer)
    assert widget.list.count() == 1 and "cells labels" in widget.list.item(0).text()
    (restored,) = widget.restore([widget.list.item(0)])
    assert restored.name.startswith("cells labels (recovered ")
    assert array_hash(restored.data) == array_hash(_labels(7))
    assert array_hash(existing.data) == array_hash(_labels(1)), "restoring never overwrites a layer"
    widget.enabled_check.setChecked(False)
    assert not autosave_enabled()
    widget.discard([widget.list.item(0)])
    assert widget.list.count() == 0 and not widget.restore_button.isEnabled()


def test_a_recovered_layer_lies_where_the_autosaved_one_lay(make_napari_viewer, isolated_home):
    """Scale and translation are saved with the labels, so a restored layer overlays its image again."""
    from napari_unet.widgets._autosave import Autosaver
    from napari_unet.widgets.recover_widget import RecoverWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50)), name="cells", scale=(0.5, 0.25), translate=(10, -3))
    corrected = viewer.add_labels(_labels(5), name="corrected", scale=(0.5, 0.25), translate=(10, -3))
    saver = Autosaver(viewer)
    saver.watch(corrected)
    assert saver.save_changed() == 1 and saver.wait()
    widget = RecoverWidget(viewer)
    (restored,) = widget.restore([widget.list.item(0)])
    assert tuple(restored.scale) == (0.5, 0.25) and tuple(restored.translate) == (10, -3)
    assert array_hash(restored.data) == array_hash(_labels(5))


def test_the_recover_dock_fits_beside_the_canvas(make_napari_viewer, tmp_path, monkeypatch):
    """At most as wide as the Segment dock needs: a long option text or folder must wrap, not widen the dock."""
    from napari_unet.widgets.recover_widget import RecoverWidget

    monkeypatch.setenv("NAPARI_UNET_HOME", str(tmp_path / ("a-rather-long-folder-name-" * 4) / "napari-unet"))
    widget = RecoverWidget(make_napari_viewer())
    assert widget.minimumSizeHint().width() <= 320
    assert "every few minutes" in widget.enabled_check.toolTip(), "the details are a hover away"
