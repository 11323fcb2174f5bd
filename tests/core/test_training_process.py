"""Fine-tuning in a child process: progress arrives, a cancel or a failure ends the child, a killed child leaves
no partial version, and no child outlives its run or its parent.

Each test starts a spawned child (a few seconds to import torch), so they are few and share what they can."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import child_training
from napari_unet.core.cancel import CancelToken
from napari_unet.core.errors import InvalidInputError
from napari_unet.core.library import library_dir, list_models
from napari_unet.core.models import Model, ModelConfig, load_model, save_model
from napari_unet.core.training_data import Sample
from napari_unet.core.training_process import TrainingProcess, TrainingProcessError, TunedVersion
from napari_unet.core.unet import UNetConfig
from napari_unet.synthetic import generate_nuclei

OPTIONS = {"steps": 4, "time_budget_s": None, "batch_size": 2, "seed": 0}
LONG = {**OPTIONS, "steps": 500}


@pytest.fixture
def tiny() -> Path:
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4, padding="same")
    return save_model(Model.from_config(ModelConfig(network, axes="YX"), seed=0), "tiny")


@pytest.fixture
def samples() -> list[Sample]:
    image, labels = generate_nuclei((96, 96), seed=1)
    return [Sample(image, labels, axes="YX")]


def drain(steps, on_record=None):
    """Run a relay to its end; returns (records, value)."""
    records = []
    while True:
        try:
            records.append(next(steps))
        except StopIteration as stop:
            return records, stop.value
        if on_record is not None:
            on_record(records)


def assert_no_version(tiny: Path) -> None:
    """Only the base model in the library, and nothing half-written beside it."""
    assert [info.name for info in list_models() if info.source == "library"] == ["tiny"]
    assert sorted(p.name for p in library_dir().iterdir()) == ["tiny"], "no staging folder left behind"
    load_model(tiny)


def test_progress_and_the_saved_version_come_from_the_child(tiny, samples):
    with TrainingProcess(tiny, samples, OPTIONS) as child:
        assert child.process.pid != os.getpid()
        records, version = drain(child.relay())
    assert not child.process.is_alive(), "the child ends with its run"
    assert [r.step for r in records] == [0, 1, 2, 3, 4] and all(np.isfinite(r.loss) for r in records[1:])
    assert isinstance(version, TunedVersion) and version.path == library_dir() / "tiny-v2"
    assert version.parent == tiny and load_model(version.path).config.provenance["parent"] == "tiny"
    assert version.before == {k: v for k, v in records[0].as_record().items() if k.startswith("val_")}
    assert set(version.after) == {"val_loss", "val_dice", "val_f1"} and version.score_name == "val_f1"


def test_cancel_stops_the_child_within_seconds_and_keeps_the_best_so_far(tiny, samples):
    token = CancelToken()
    with TrainingProcess(tiny, samples, LONG, body=child_training.body(child_training.slow, seconds=0.1)) as child:
        def cancel_after_two(records):
            if len(records) == 3 and not token.cancelled:
                token.cancel()
                cancelled_at[0] = time.perf_counter()

        cancelled_at = [0.0]
        records, version = drain(child.relay(token), cancel_after_two)
        child.process.join(5)
        assert not child.process.is_alive()
        assert time.perf_counter() - cancelled_at[0] < 5, "stopped within a few seconds"
    assert len(records) < 10 and version.path.name == "tiny-v2", "the best so far is saved"
    assert load_model(version.path).config.history[-1]["stopped"] == "cancelled"


def test_an_error_in_the_child_comes_back_with_its_traceback(tiny, samples):
    failing = child_training.body(child_training.fail_at, k=2, error=InvalidInputError("bad target: relabel it"))
    with TrainingProcess(tiny, samples, OPTIONS, body=failing) as child:
        with pytest.raises(InvalidInputError, match="bad target: relabel it") as raised:
            drain(child.relay())
    cause = str(raised.value.__cause__)
    assert "child_training.py" in cause and "raise error" in cause, "the child's traceback is the cause"
    assert not child.process.is_alive()
    assert_no_version(tiny)


def test_a_child_killed_mid_training_is_an_error_and_saves_nothing(tiny, samples):
    with TrainingProcess(tiny, samples, LONG, body=child_training.body(child_training.slow, seconds=0.1)) as child:
        steps = child.relay()
        next(steps), next(steps)
        child.process.kill()
        with pytest.raises(TrainingProcessError, match="killed by signal 9.*nothing was saved"):
            drain(steps)
    assert_no_version(tiny)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_child_stopped_or_killed_mid_save_leaves_no_partial_version(how, tiny, samples, tmp_path):
    marker = tmp_path / "saving"
    body = child_training.body(child_training.stalled_save, marker=str(marker))
    with TrainingProcess(tiny, samples, {**OPTIONS, "steps": 1}, body=body) as child:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        staging = Path(marker.read_text())
        assert staging.is_dir() and staging.name.startswith(".tiny-v2.saving-"), "stopped with a version half-saved"
        if how == "stop":
            started = time.perf_counter()
            child.stop(grace_s=0)
            assert time.perf_counter() - started < 5
        else:
            os.kill(child.process.pid, signal.SIGKILL)
            child.process.join(5)
    assert not child.process.is_alive()
    assert [info.name for info in list_models() if info.source == "library"] == ["tiny"], "no visible version"
    if how == "stop":  # SIGTERM unwinds the save, which removes its staging folder; SIGKILL cannot
        assert_no_version(tiny)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_child_runs_no_main_script_and_ends_when_its_parent_dies(tmp_path):
    """A napari script's module-level code (a viewer opened without a ``__main__`` guard) is not run again in
    the child, and a viewer killed mid-run (no atexit, no Qt close) leaves no orphan training process."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        with open(sys.argv[2], "a") as log:  # module level, as a script opening a viewer would
            log.write(f"main ran in {os.getpid()}\\n")
        if __name__ == "__main__":
            sys.path.insert(0, sys.argv[1])
            import child_training
            from napari_unet.core.models import Model, ModelConfig, save_model
            from napari_unet.core.training_data import Sample
            from napari_unet.core.training_process import TrainingProcess
            from napari_unet.core.unet import UNetConfig
            from napari_unet.synthetic import generate_nuclei

            network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_features=4,
                                 padding="same")
            tiny = save_model(Model.from_config(ModelConfig(network, axes="YX"), seed=0), "tiny")
            image, labels = generate_nuclei((64, 64), seed=1)
            child = TrainingProcess(tiny, [Sample(image, labels, axes="YX")], {"steps": 500, "time_budget_s": None,
                                    "batch_size": 2}, body=child_training.body(child_training.slow, seconds=0.1))
            next(child.relay())
            print(child.process.pid, flush=True)
            input()
    """))
    log = tmp_path / "main.log"
    env = {**os.environ, "NAPARI_UNET_HOME": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, str(script), str(Path(child_training.__file__).parent), str(log)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
    finally:
        parent.kill()
        parent.wait(10)
    assert log.read_text() == f"main ran in {parent.pid}\n", "the script ran once, in the parent only"
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the child is gone within seconds of its parent"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stop_that_comes_after_the_work_ends_the_child_quietly(tmp_path):
    # a SIGTERM from the parent can arrive while the child already runs its exit handlers; raising there printed
    # "Exception ignored in atexit callback" with a traceback
    script = textwrap.dedent("""
        import multiprocessing, signal, sys
        from pathlib import Path
        from napari_unet.core import training_process
        send, receive = multiprocessing.Pipe()
        inputs, feed = multiprocessing.Pipe()
        feed.send([])
        body = lambda model_path, samples, cancelled, options: iter(())
        training_process._child_main(send, inputs, multiprocessing.Event(), Path(sys.argv[1]), body, Path("m"), {})
        print(receive.recv()[0], signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split() == ["done", "True"], result.stdout + result.stderr


@pytest.mark.parametrize("before, after, improved, worse", [
    ({"val_f1": 0.5}, {"val_f1": 0.6}, True, False),
    ({"val_f1": 0.6}, {"val_f1": 0.5}, True, True),  # held-out loss fell, but fewer objects are right
    ({"val_f1": 0.5}, {"val_f1": 0.5}, False, True),  # the kept weights are the start's
    ({}, {"val_f1": 0.5}, None, False),  # from random weights: the parent was not scored
    ({}, {}, None, False),  # too few annotations to hold some out
    ({"val_dice": 0.7}, {"val_dice": 0.6}, True, True),  # semantic models: foreground Dice
])
def test_a_version_is_worse_when_its_held_out_score_falls_or_it_never_beat_its_parent(before, after, improved,
                                                                                       worse):
    version = TunedVersion(Path("tiny-v2"), Path("tiny"), before, after, improved)
    assert version.worse is worse
