"""What runs in the worker threads, and how it reports back without ever losing an error or a result.

napari's generator workers have a trap: an exception raised inside the generator (a RuntimeError such as a CUDA
out-of-memory error in particular) is turned into a warning and the worker never signals that it finished, so
a widget that waits for ``finished`` or ``returned`` waits for ever. :func:`guarded` therefore wraps the core
generator, catches everything, and ends every run with exactly one :class:`Outcome` that the widget handles on
the main thread like any other yielded value.

Warnings raised in a worker (NaN pixels treated as background, say) are caught by the worker too and would be
lost; :func:`start_worker` shows each distinct one once as a napari notification.
"""
from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class Outcome:
    """How a run ended: ``done`` (with the generator's return value), ``cancelled`` or ``failed``."""

    status: Literal["done", "cancelled", "failed"]
    value: Any = None
    error: BaseException | None = None
    details: str = ""  # the traceback of a failure, for the console and bug reports


def guarded(steps: Callable[[], Generator[Any, None, Any]]) -> Generator[Any, None, None]:
    """Yield what ``steps()`` yields, then one :class:`Outcome`; never raise, except to let the generator be
    closed (``GeneratorExit``) or the program be interrupted or exit.

    ``steps`` is called inside the worker thread, so loading a model or importing torch happens there too.
    """
    from napari_unet.core.errors import Cancelled

    try:
        value = yield from steps()
    except Cancelled:
        yield Outcome("cancelled")
    except (GeneratorExit, KeyboardInterrupt, SystemExit):
        raise  # the worker is closing this generator (it may not yield now) or the program is ending
    except BaseException as exc:  # noqa: BLE001 - any other failure becomes an Outcome the widget shows
        yield Outcome("failed", error=exc, details=traceback.format_exc())
    else:
        yield Outcome("done", value=value)


def set_up_once(button: Any, set_up: Callable[[], None]) -> None:
    """Run ``set_up`` (starting a run) with ``button`` disabled: napari's activity panel processes events while
    a run is being set up, and a second click then must not start a second run."""
    button.setEnabled(False)
    try:
        set_up()
    finally:
        button.setEnabled(True)


QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning, ResourceWarning)
"""Warnings meant for developers, not for the person segmenting: never shown as notifications."""


def start_worker(steps: Callable[[], Generator[Any, None, Any]], on_yield: Callable[[Any], None],
                 owner: Any, cancel: Any, action: str) -> Any:
    """Start ``guarded(steps)`` in a napari generator worker; ``on_yield`` runs on the main thread.

    If ``owner`` (the dock widget) is destroyed first, as when napari closes mid-run, the run is cancelled and
    its remaining events are dropped instead of reaching a deleted widget. Warnings from the run are shown as
    notifications headed by ``action`` ("Segment"), each distinct text once per run.
    """
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_warning
    from qtpy.compat import isalive

    def deliver(event: Any) -> None:
        if isalive(owner):
            on_yield(event)

    shown: set[str] = set()

    def warn(args: tuple) -> None:  # ``args`` as for warnings.showwarning: (message, category, ...)
        message, category = args[0], args[1]
        text = str(message)
        if issubclass(category, QUIET_WARNINGS) or text in shown or not isalive(owner):
            return
        shown.add(text)
        show_warning(f"{action}: {text}")

    worker = create_worker(guarded, steps, _start_thread=False)
    worker.yielded.connect(deliver)
    worker.warned.connect(warn)
    owner.destroyed.connect(cancel.cancel)
    worker.start()
    return worker


_MODEL_CACHE: dict[str, tuple[int, Any]] = {}
_CACHE_LOCK = threading.Lock()


def load_cached(path: Path) -> Any:
    """Load a model, reusing the last one while its weights file is unchanged (in the worker thread).

    Sharing is safe: segmenting runs an inference copy of the network.
    """
    from napari_unet.core.models import load_model

    stamp = (path / "weights.safetensors").stat().st_mtime_ns
    with _CACHE_LOCK:
        cached = _MODEL_CACHE.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        model = load_model(path)
        _MODEL_CACHE.clear()  # one model at a time: a U-Net can be large
        _MODEL_CACHE[str(path)] = (stamp, model)
        return model


def segment_in_worker(image: Any, model_path: Path, cancel: Any, options: dict[str, Any]) -> Any:
    """The Segment worker: load the model and run the tiled segmentation, yielding its progress events."""
    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.inference import segment_steps

    configure_cpu_threads(interactive=True)  # all cores but one: the viewer keeps one to stay responsive
    model = load_cached(model_path)
    return (yield from segment_steps(image, model, cancel=cancel, **options))


def finetune_in_child(model_path: Path, samples: list[Any], cancel: Any, options: dict[str, Any]) -> Any:
    """The Fine-tune worker: train and save in a child process (:mod:`napari_unet.core.training_process`),
    yielding its progress as it arrives; returns its :class:`~napari_unet.core.training_process.TunedVersion`,
    or None when stopped before the first step. The child is stopped however this generator ends."""
    from napari_unet.core.training_process import TrainingProcess

    with TrainingProcess(model_path, samples, options) as child:
        return (yield from child.relay(cancel))


def report_failure(outcome: Outcome, action: str, message: str | None = None) -> str:
    """Show a failed run as napari's error notification, which carries the exception: its 'View Traceback'
    button shows where it failed (users of napari's installer have no console to read a traceback in). The
    traceback also goes to stderr, for a napari started from a terminal. ``message`` replaces the generic
    explanation where the caller knows better. Returns the text shown."""
    import sys

    from napari.utils.notifications import ErrorNotification, notification_manager

    error = outcome.error if outcome.error is not None else RuntimeError("unknown error")
    message = message or explain(error, action, details="under 'View Traceback' in this notification")
    if outcome.details:
        print(outcome.details, file=sys.stderr)
    notification = ErrorNotification(error)
    notification.message = message
    notification_manager.dispatch(notification)
    return message


def explain(error: BaseException, action: str, details: str = "in the console") -> str:
    """A notification text for an error: what failed, why, and what the user can do about it; an unexpected
    error's traceback is ``details`` (where the user finds it)."""
    text = str(error).strip() or type(error).__name__
    lowered = text.lower()
    if isinstance(error, MemoryError) or "out of memory" in lowered or "can't allocate memory" in lowered:
        return (f"{action} ran out of memory ({_short(text)}). Choose a smaller tile size or batch size under "
                "Advanced, the 'current slice' or 'region in view' scope, or the CPU device.")
    if isinstance(error, ValueError):  # user-fixable: core messages already say what to do
        return f"{action} failed: {text}"
    return (f"{action} failed with an unexpected {type(error).__name__}: {_short(text)}. The full traceback is "
            f"{details}; please report it with the image's shape and the model's name.")


def _short(text: str, limit: int = 300) -> str:
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."
