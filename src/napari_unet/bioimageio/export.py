"""Writing a package: :func:`export_bioimageio` checks its arguments, validates the description with
``bioimageio.spec`` and writes the zip so that it appears complete or not at all; :func:`test_package` runs
``bioimageio.core``'s own test on it. Both libraries are imported only when called."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.bioimageio.package import _write_package_files
from napari_unet.core.errors import InvalidInputError

DEFAULT_AUTHOR = "napari-unet contributors"
DEFAULT_LICENSE = "BSD-3-Clause"
INSTALL_HINT = "install the optional extra: pip install 'napari-unet[bioimageio]'"


def export_bioimageio(model: Any, path: str | os.PathLike, *, sample: np.ndarray | None = None,
                      authors: Sequence[str] | None = None, license: str = DEFAULT_LICENSE,
                      check: bool = False, overwrite: bool = False) -> Path:
    """Write ``model`` (a :class:`~napari_unet.Model`, or a name or folder for ``load_model``) as a
    bioimage.io package (format 0.5) to ``path`` (a ``.zip``); return the path.

    ``sample`` is the test image, with the model's spatial axes and, for several channels, the channel axis
    first; by default a generated nuclei image (the same in every channel; inverted for an inverted model).
    ``authors`` are names (default: the napari-unet contributors); ``license`` is an SPDX id. With ``check``
    the finished package is run through ``bioimageio.core``'s ``test_model`` and a failure raises. An existing
    file is only replaced with ``overwrite``; the package appears complete or not at all.
    """
    spec = _import_spec()
    from napari_unet.core.models import Model, load_model
    from napari_unet.core.unet import UNetConfig

    if not isinstance(model, Model):
        model = load_model(model)
    if not isinstance(model.config.network, UNetConfig):
        raise InvalidInputError("this model came from another tool's bioimage.io package; napari-unet exports only "
                                "its own U-Nets (the package itself is already the export)")
    _check_license(license)
    if authors is not None and (isinstance(authors, str) or not authors
                                or not all(isinstance(a, str) and a.strip() for a in authors)):
        raise InvalidInputError(f"authors must be a list of one or more names, not {authors!r}")
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise InvalidInputError(f"a bioimage.io package is a .zip file; got {path}")
    if not path.parent.is_dir():
        raise InvalidInputError(f"the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")

    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        folder = Path(tmp)
        rdf = _write_package_files(model, folder, sample, list(authors or [DEFAULT_AUTHOR]), license)
        from bioimageio.spec import ValidationContext, build_description

        with ValidationContext(root=folder, perform_io_checks=True):
            descr = build_description(rdf)
        if not isinstance(descr, spec.model.v0_5.ModelDescr):
            raise RuntimeError("the generated bioimage.io description is invalid:\n"
                               + descr.validation_summary.format())
        staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            spec.save_bioimageio_package(descr, output_path=staging)
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)
    if check:
        summary = test_package(path)
        if summary.status != "passed":
            raise RuntimeError(f"bioimageio.core's test of {path} failed (the package is written; please report "
                               f"this as a napari-unet bug):\n{summary.format()}")
    return path


def test_package(path: str | os.PathLike) -> Any:
    """Run ``bioimageio.core.test_model`` on a package; returns its validation summary (``.status``)."""
    _import_spec()
    import gc

    from bioimageio.core import test_model

    gc.freeze()  # test_model collects garbage after every model it loads; over a heap with torch that takes
    try:         # most of its time, and the objects that exist before the test are not its garbage
        return test_model(str(path))
    finally:
        gc.unfreeze()


test_package.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _check_license(license: str) -> None:
    """Refuse a licence that bioimage.io does not accept, naming the nearest SPDX ids."""
    import difflib
    from typing import get_args

    try:
        from bioimageio.spec._internal.license_id import LicenseIdLiteral
    except ImportError:  # a future layout of the library: its own validation still catches it
        return
    known = get_args(LicenseIdLiteral)
    if license not in known:
        close = (sorted((k for k in known if k.lower().startswith(str(license).lower())), key=len)[:3]
                 or difflib.get_close_matches(str(license), known, n=3, cutoff=0.6))
        raise InvalidInputError(f"{license!r} is not an SPDX licence id that bioimage.io accepts"
                                + (f"; did you mean {', '.join(close)}?" if close else "")
                                + " Common choices: CC-BY-4.0, BSD-3-Clause, MIT")


def _import_spec() -> Any:
    try:
        import bioimageio.core  # noqa: F401  (test_model and the weight formats' backends)
        import bioimageio.spec
    except ImportError as exc:
        raise ImportError(f"bioimage.io export needs bioimageio.core and bioimageio.spec ({exc}); "
                          f"{INSTALL_HINT}") from None
    return bioimageio.spec
