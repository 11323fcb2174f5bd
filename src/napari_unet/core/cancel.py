"""A cooperative cancel token shared by every long-running function.

Cancellation is cooperative because a torch forward pass or a training step cannot be interrupted safely from
another thread: long loops call :func:`raise_if_cancelled` between tiles or steps, so a cancel takes effect
within one tile batch or one step and leaves no half-finished state behind.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Union

from napari_unet.core.errors import Cancelled, InvalidInputError


class CancelToken:
    """Set once, from any thread, to ask a running call to stop at its next checkpoint."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled})"


CancelLike = Union[CancelToken, threading.Event, Callable[[], bool], None]
"""What the API's ``cancel=`` takes: a :class:`CancelToken`, a ``threading.Event``, a callable, or None."""


def is_cancelled(token: CancelLike) -> bool:
    """True if ``token`` asks to stop. Accepts None, a CancelToken, a threading.Event or a callable."""
    if token is None:
        return False
    if isinstance(token, CancelToken):
        return token.cancelled
    if isinstance(token, threading.Event):
        return token.is_set()
    if callable(token):
        return bool(token())
    raise InvalidInputError(f"cancel must be a CancelToken, threading.Event or callable, not "
                            f"{type(token).__name__}")


def raise_if_cancelled(token: CancelLike) -> None:
    """Raise :class:`Cancelled` if ``token`` is set; call this between tiles or steps."""
    if is_cancelled(token):
        raise Cancelled("cancelled by the user")
