"""Exceptions a user can cause or ask for.

Every error that bad input can trigger is a ``ValueError`` subclass whose message says what to do, so that
scripts can catch one type and widgets can show the message as it is.
"""
from __future__ import annotations


class InvalidInputError(ValueError):
    """An image, labels array, axes string or option that cannot be used as given."""


class ModelFileError(ValueError):
    """A model file or folder that is missing, damaged or does not match its configuration."""


class UntrustedCodeError(InvalidInputError):
    """Loading a model would run code from its file (a bioimage.io package's architecture source or TorchScript
    program) and the caller did not say they trust it (``trust=True``, ``--trust``)."""


class ModelExistsError(ModelFileError, FileExistsError):
    """Saving would replace an existing model; models are never overwritten silently."""


class Cancelled(Exception):
    """A long-running call stopped because its cancel token was set. Nothing was changed."""
