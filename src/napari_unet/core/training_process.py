"""Fine-tuning in a child process, so that training never holds the viewer's interpreter lock.

A training step is mostly torch, which releases the interpreter lock, but the Python between the operations
(batch sampling, augmentation, the optimizer's bookkeeping) holds it in bursts long enough to make a viewer in
the same process stutter. The Fine-tune dock therefore trains in a child started with the *spawn* method (a
fresh interpreter: forking a process that runs Qt, OpenGL and torch threads is unsafe), and its worker thread
only relays what the child sends over a pipe (the samples go to it over another; the parent's main script is
not run again in it, see :func:`_main_hidden`):

* ``("progress", TrainProgress)`` after every step, as :func:`~napari_unet.core.training.finetune_steps` yields
  it; ``("warning", text, category)`` for each warning the training raises;
* then exactly one of ``("done", TunedVersion | None)``, ``("cancelled",)`` or ``("failed", error, traceback)``.

The child runs :func:`train_and_save`: the same training generator and the same saving of a new version as
in-process, so its behaviour does not depend on where it runs. A child started with ``feed=True`` (live
training, :mod:`napari_unet.core.live_training`) keeps the samples' pipe open: the parent sends newer samples
as the user paints (``relay``'s ``outbox``), and its body reads the newest from a :class:`Snapshots`. Saving is atomic (a staging folder renamed into
place); the child turns SIGTERM into ``SystemExit``, so a terminated save removes its staging folder, and a
child whose parent has died (a viewer killed or crashed) terminates itself: no orphan keeps training. The
Python API (:func:`~napari_unet.core.training.finetune`) stays in-process.

This module does not import torch; the child does, and so does unpickling its progress in the parent.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import traceback
import types
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_unet.core.cancel import CancelLike, is_cancelled
from napari_unet.core.errors import Cancelled

POLL_S = 0.05  # how often the relay looks at the cancel token while the child is quiet
STOP_GRACE_S = 10.0  # after a cancel, how long the child may take to finish its step and save
TERMINATE_GRACE_S = 5.0  # after SIGTERM, how long it may take to clean up before it is killed

Body = Callable[[Path, list, Callable[[], bool], dict], Generator[Any, None, Any]]


class RemoteTraceback(Exception):
    """The child's traceback, attached as the ``__cause__`` of the error it raised (as multiprocessing.pool
    does), so that a notification's 'View Traceback' shows where training failed."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


class TrainingProcessError(RuntimeError):
    """The training process ended without saying how (killed, out of memory, or it could not start)."""


@dataclass(frozen=True)
class TunedVersion:
    """A fine-tuned version as saved, with the scores on the held-out part of the annotations (the validation
    block of :mod:`napari_unet.core.holdout`) of the model it started from (``before``: empty for training
    from random weights) and of the kept weights (``after``). Both are empty without a validation block."""

    path: Path
    parent: Path
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    improved: bool | None = None  # False: training never beat the start, the kept weights are the start's

    @property
    def score_name(self) -> str | None:
        """The score shown: object F1 at IoU 0.5 for instance models, foreground Dice for semantic ones."""
        return next((name for name in ("val_f1", "val_dice") if name in self.after), None)

    @property
    def worse(self) -> bool:
        """Whether the version should not replace its parent: it holds the parent's weights (training never
        beat it on held-out loss) or it scores lower than the parent on the held-out annotations."""
        name = self.score_name
        fell = name is not None and name in self.before and self.after[name] < self.before[name]
        return self.improved is False or fell


def train_and_save(model_path: Path, samples: list, cancel: CancelLike, options: dict[str, Any],
                   ) -> Generator[Any, None, TunedVersion | None]:
    """Load the model, train a copy (yielding each step's progress) and save it as the model's next version.

    Returns None when stopped before the first step (there is nothing new to save). A cancel keeps the best
    weights so far, which are saved like a finished run's.
    """
    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.models import load_model
    from napari_unet.core.training import finetune_steps
    from napari_unet.core.versions import save_version

    configure_cpu_threads(interactive=True)  # all cores but one: the viewer keeps one to stay responsive
    model = load_model(model_path)
    tuned = yield from finetune_steps(model, samples, cancel=cancel, on_cancel="best", **options)
    if not any(record.get("loss") is not None for record in tuned.history):
        return None
    path = save_version(tuned)
    return TunedVersion(path, Path(model_path), *held_out_scores(tuned))


def held_out_scores(tuned: Any) -> tuple[dict[str, float], dict[str, float], bool | None]:
    """(before, after, improved) of a freshly tuned model, as :class:`TunedVersion` holds them: the held-out
    scores of the model it started from (empty when trained from random weights) and of the kept weights."""
    scores = [{k: v for k, v in record.items() if k.startswith("val_")} for record in tuned.history
              if record.get("best")]  # the start's validation first, the kept weights' last
    from_scratch = tuned.config.provenance["settings"]["from_scratch"]
    return ({} if from_scratch or not scores else scores[0], scores[-1] if scores else {},
            tuned.config.history[-1].get("improved"))


class TrainingProcess:
    """Run ``body`` (default :func:`train_and_save`) in a spawned child; :meth:`relay` yields its progress.

    Use it as a context manager: leaving the block stops the child (see :meth:`stop`) however the relay
    ended, so no child outlives the run that started it. With ``feed`` the child's body gets a
    :class:`Snapshots` instead of the list of samples, and later samples reach it through :meth:`send`.
    """

    def __init__(self, model_path: Path, samples: list, options: dict[str, Any], body: Body | None = None,
                 feed: bool = False) -> None:
        from napari_unet.core.library import home_dir

        context = multiprocessing.get_context("spawn")
        self._cancel = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        inputs, send_inputs = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_child_main, name="napari-unet fine-tuning", daemon=True,  # daemon: ended when Python exits
            args=(send, inputs, self._cancel, home_dir(), body or train_and_save, Path(model_path), options, feed))
        self._inputs = send_inputs if feed else None
        try:
            with _main_hidden():
                self.process.start()
        finally:
            send.close()  # the child holds the sending end: the pipe reads EOF once the child is gone
            inputs.close()
        try:  # the images go through a pipe, not the start's arguments: main is hidden only for a moment
            self.send(samples, inputs=send_inputs)
        finally:
            if not feed:
                send_inputs.close()

    def __enter__(self) -> TrainingProcess:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.stop(grace_s=STOP_GRACE_S if kind is None else 0.0)

    def cancel(self) -> None:
        """Ask the child to stop after its current step (it then saves the best weights so far)."""
        self._cancel.set()

    def send(self, samples: list, inputs: Any = None) -> None:
        """Send samples to the child (to a ``feed`` child: a newer snapshot). Its reader takes them at once, so
        this blocks only while they are copied through the pipe."""
        try:
            (inputs or self._inputs).send(samples)
        except (BrokenPipeError, EOFError, OSError):
            raise self._died() from None

    def relay(self, cancel: CancelLike = None, outbox: queue.Queue | None = None) -> Generator[Any, None, Any]:
        """Yield the child's progress records and return its result; raise its error, or :class:`Cancelled`.
        ``cancel`` (the caller's token) is passed on to the child as it is set. Lists of samples put in
        ``outbox`` (from any thread) go to a ``feed`` child from this thread, only the newest when several
        wait: pickling images is work the viewer's thread should not do."""
        while True:
            if is_cancelled(cancel) and not self._cancel.is_set():
                self._cancel.set()
            if outbox is not None:
                self._forward(outbox)
            if not self._receive.poll(POLL_S):
                if not self.process.is_alive() and not self._receive.poll():
                    raise self._died()
                continue
            try:
                kind, *payload = self._receive.recv()
            except EOFError:
                raise self._died() from None
            if kind == "progress":
                yield payload[0]
            elif kind == "warning":
                text, category = payload
                warnings.warn(text, category, stacklevel=1)  # the napari worker shows it as a notification
            elif kind == "done":
                return payload[0]
            elif kind == "cancelled":
                raise Cancelled("fine-tuning was cancelled; the starting model is unchanged")
            else:  # "failed"
                error, details = payload
                raise error from RemoteTraceback(details)

    def _forward(self, outbox: queue.Queue) -> None:
        newest = None
        while True:
            try:
                newest = outbox.get_nowait()
            except queue.Empty:
                break
        if newest is not None:
            self.send(newest)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the child: a cancel and ``grace_s`` to end by itself, then SIGTERM (it removes a half-written
        version), then SIGKILL. Returns once it has exited."""
        self._cancel.set()
        self.process.join(grace_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(TERMINATE_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._receive.close()
        if self._inputs is not None:
            self._inputs.close()

    def _died(self) -> TrainingProcessError:
        self.process.join(1.0)
        code = self.process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        return TrainingProcessError(
            f"the training process {how} without a result; nothing was saved. The system may have stopped it "
            "for lack of memory: lower the batch size under Advanced, or train on fewer or smaller images")


_START_LOCK = threading.Lock()  # one start at a time while the main module is swapped


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start a child without the parent's main script. *spawn* runs the parent's ``__main__`` file again in
    the child (as ``__mp_main__``) unless it is hidden, and a napari script that opens a viewer at module level
    (without an ``if __name__ == "__main__"`` guard) would open a second one there, or never return. The child
    needs nothing from it: what it runs lives in importable modules."""
    with _START_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to run again
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


# --------------------------------------------------------------------------------------------------------------
# The child
# --------------------------------------------------------------------------------------------------------------


def _child_main(send: Any, inputs: Any, cancel: Any, home: Path, body: Body, model_path: Path,
                options: dict, feed: bool = False) -> None:
    """The child's entry point: read the samples, run ``body`` and send its progress, warnings and outcome to
    the parent. ``home`` is the parent's user data folder, so that the new version goes into the library it
    shows. With ``feed`` the body gets a :class:`Snapshots` of the samples sent so far."""
    os.environ["NAPARI_UNET_HOME"] = str(home)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    _end_with_parent()
    warnings.showwarning = lambda message, category, *args, **kwargs: send.send(("warning", str(message), category))
    try:
        samples = inputs.recv()
        if feed:
            samples = Snapshots(samples, inputs)
        else:
            inputs.close()
        steps = body(model_path, samples, cancel.is_set, options)
        while True:
            try:
                record = next(steps)
            except StopIteration as stop:
                send.send(("done", stop.value))
                return
            send.send(("progress", record))
    except Cancelled:
        send.send(("cancelled",))
    except (KeyboardInterrupt, SystemExit, BrokenPipeError):
        raise  # stopped, or the parent is gone: nobody to tell
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which shows it
        send.send(("failed", _picklable(exc), traceback.format_exc()))
    finally:
        send.close()
        # the work is over: a stop from now on (the parent closing) just ends the process; raising SystemExit
        # inside the interpreter's exit handlers would only print a traceback
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Snapshots:
    """In a ``feed`` child: the newest list of samples the parent sent, numbered from 1 (the one sent at the
    start). A thread reads the pipe as snapshots come, so the parent never waits for the body to ask."""

    def __init__(self, first: list, inputs: Any) -> None:
        self._changed = threading.Condition()
        self._newest = (1, first)
        threading.Thread(target=self._read, args=(inputs,), name="read snapshots", daemon=True).start()

    def _read(self, inputs: Any) -> None:
        while True:
            try:
                samples = inputs.recv()
            except (EOFError, OSError):  # the parent closed its end: no more snapshots
                return
            with self._changed:
                self._newest = (self._newest[0] + 1, samples)
                self._changed.notify_all()

    def latest(self) -> tuple[int, list]:
        """(number, samples) of the newest snapshot."""
        with self._changed:
            return self._newest

    def wait_newer(self, number: int, cancel: Callable[[], bool]) -> None:
        """Return once a snapshot newer than ``number`` has arrived, or ``cancel()`` holds."""
        with self._changed:
            while self._newest[0] <= number and not cancel():
                self._changed.wait(POLL_S)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: a save in progress removes its staging folder


def _end_with_parent() -> None:
    """Terminate this process (cleanly, by SIGTERM) when the parent dies: a killed viewer leaves no orphan."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch the parent", daemon=True).start()


def _picklable(error: BaseException) -> BaseException:
    """``error`` if it survives the pipe, else a RuntimeError with its type and text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")
