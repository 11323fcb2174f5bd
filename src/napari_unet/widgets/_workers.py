"""Running a core generator in a napari thread worker without ever losing an error or a result.

napari's generator workers have a trap: an exception raised inside the generator (a RuntimeError such as a CUDA
out-of-memory error in particular) is turned into a warning and the worker never signals that it finished, so
a widget that waits for ``finished`` or ``returned`` waits for ever. :func:`guarded` therefore wraps the core
generator, catches everything, and ends every run with exactly one :class:`Outcome` that the widget handles on
the main thread like any other yielded value.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class Outcome:
    """How a run ended: ``done`` (with the generator's return value), ``cancelled`` or ``failed``."""

    status: Literal["done", "cancelled", "failed"]
    value: Any = None
    error: BaseException | None = None
    details: str = ""  # the traceback of a failure, for the console and bug reports


def guarded(steps: Callable[[], Generator[Any, None, Any]]) -> Generator[Any, None, None]:
    """Yield what ``steps()`` yields, then one :class:`Outcome`; never raise.

    ``steps`` is called inside the worker thread, so loading a model or importing torch happens there too.
    """
    from napari_unet.core.errors import Cancelled

    try:
        value = yield from steps()
    except Cancelled:
        yield Outcome("cancelled")
    except BaseException as exc:  # noqa: BLE001 - the point of this function is to catch everything
        yield Outcome("failed", error=exc, details=traceback.format_exc())
    else:
        yield Outcome("done", value=value)


def start_worker(steps: Callable[[], Generator[Any, None, Any]], on_yield: Callable[[Any], None],
                 owner: Any, cancel: Any) -> Any:
    """Start ``guarded(steps)`` in a napari generator worker; ``on_yield`` runs on the main thread.

    If ``owner`` (the dock widget) is destroyed first, as when napari closes mid-run, the run is cancelled and
    its remaining events are dropped instead of reaching a deleted widget.
    """
    from napari.qt.threading import create_worker
    from qtpy.compat import isalive

    def deliver(event: Any) -> None:
        if isalive(owner):
            on_yield(event)

    worker = create_worker(guarded, steps, _start_thread=False)
    worker.yielded.connect(deliver)
    owner.destroyed.connect(cancel.cancel)
    worker.start()
    return worker


def explain(error: BaseException, action: str) -> str:
    """A notification text for an error: what failed, why, and what the user can do about it."""
    text = str(error).strip() or type(error).__name__
    lowered = text.lower()
    if isinstance(error, MemoryError) or "out of memory" in lowered or "can't allocate memory" in lowered:
        return (f"{action} ran out of memory ({_short(text)}). Choose a smaller tile size or batch size under "
                "Advanced, the 'current slice' or 'region in view' scope, or the CPU device.")
    if isinstance(error, ValueError):  # user-fixable: core messages already say what to do
        return f"{action} failed: {text}"
    return (f"{action} failed with an unexpected {type(error).__name__}: {_short(text)}. The full traceback is "
            "in the console; please report it with the image's shape and the model's name.")


def _short(text: str, limit: int = 300) -> str:
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."
