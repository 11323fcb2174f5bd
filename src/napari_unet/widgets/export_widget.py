"""The "Export model" dock widget: write any model as a bioimage.io package (.zip) that other tools run.

The widget gathers the model, the target file and the authors, checks on the main thread what it can check
cheaply (the optional bioimage.io packages are installed, the folder exists and is writable, an existing file is
replaced only after the user agreed), then runs :func:`napari_unet.bioimageio.export_bioimageio` in a napari
generator worker. The worker yields :class:`ExportStep` events and returns what it wrote; it never touches a
widget. torch and the bioimage.io libraries are imported in the worker, when Export is pressed.

The exporter writes the package under a temporary name and renames it when complete, so a failed export leaves
no partial file. With "Check with bioimageio.core" the finished package is also run through ``test_model``
(which reruns the test input through every weight format: seconds to a minute), so it is opt-in.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QWidget,
)

from napari_unet.widgets._models import ModelPicker
from napari_unet.widgets._progress import ProgressLine
from napari_unet.widgets._scroll import scrollable_layout
from napari_unet.widgets._workers import Outcome, report_failure, set_up_once, start_worker

INSTALL_HINT = "pip install 'napari-unet[bioimageio]'"  # as napari_unet.bioimageio says, without importing it


@dataclass
class ExportStep:
    """A stage of an export run, yielded by the worker: ``done`` of ``total`` stages, and what runs now."""

    done: int
    total: int
    message: str


@dataclass
class ExportResult:
    """What an export run wrote: the package, its size, and the bioimageio.core check (None: not run)."""

    path: Path
    size_bytes: int
    check_passed: bool | None = None
    check_summary: str = ""


def export_in_worker(model_path: Path, target: Path, authors: list[str] | None, check: bool, overwrite: bool,
                     cancel: Any) -> Any:
    """The Export worker: load the model, write the package, optionally test it; yields :class:`ExportStep`.

    A cancel (the dock closed) takes effect between stages; the package is then either complete or absent.
    """
    total = 3 if check else 2
    yield ExportStep(0, total, "loading the model...")  # first: importing torch takes seconds
    from napari_unet.core.cancel import raise_if_cancelled
    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.llvm_guard import keep_triton_out

    configure_cpu_threads(interactive=True)  # all cores but one: the viewer keeps one to stay responsive
    keep_triton_out()  # bioimageio.core's test imports torch._dynamo, and with it Triton: it crashes beside OpenGL
    from napari_unet.bioimageio import export_bioimageio, test_package
    from napari_unet.core.models import load_model

    model = load_model(model_path)
    raise_if_cancelled(cancel)
    yield ExportStep(1, total, "writing the package...")
    path = export_bioimageio(model, target, authors=authors, overwrite=overwrite)
    result = ExportResult(path, path.stat().st_size)
    if check:
        raise_if_cancelled(cancel)
        yield ExportStep(2, total, "checking with bioimageio.core...")
        summary = test_package(path)
        result.check_passed = summary.status == "passed"
        result.check_summary = "" if result.check_passed else summary.format()
    yield ExportStep(total, total, "done")
    return result


def parse_authors(text: str) -> list[str] | None:
    """Comma-separated names; None (the exporter's default authors) when there are none."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


def bioimageio_missing() -> str:
    """The optional packages export needs that are not installed, as one string ('' when all are there).

    Looks for the packages without importing them (importing bioimageio.core imports torch).
    """
    from importlib.util import find_spec

    missing = []
    for name in ("bioimageio.spec", "bioimageio.core"):
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return " and ".join(missing)


class ExportWidget(QWidget):
    """Export a bundled, library or fine-tuned model as a bioimage.io package (.zip)."""

    run_finished = Signal(str)  # "done", "cancelled" or "failed", once the outcome is shown

    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._run: dict[str, Any] | None = None
        self.last_result: ExportResult | None = None

        self.model_picker = ModelPicker()
        self.path_edit = QLineEdit()
        self.path_edit.setToolTip("The package to write, a .zip file. An existing file is replaced only after "
                                  "you agree.")
        self.browse_button = QPushButton("...")
        self.browse_button.setToolTip("Choose where to save the package.")
        self.browse_button.setMaximumWidth(40)
        self.browse_button.clicked.connect(self.choose_path)
        self.authors_edit = QLineEdit()
        self.authors_edit.setPlaceholderText("napari-unet contributors")
        self.authors_edit.setToolTip("The model's authors, separated by commas. Empty: 'napari-unet "
                                     "contributors'.")
        self.check_box = QCheckBox("Check with bioimageio.core")
        self.check_box.setToolTip("After writing, run bioimageio.core's test_model on the package: it reruns the "
                                  "test image through every weight format (seconds to a minute).")
        self.run_button = QPushButton("Export")
        self.run_button.clicked.connect(self.export)
        self.progress_bar = ProgressLine()
        self.status = QLabel("A bioimage.io package runs in Fiji (deepImageJ), QuPath, ilastik and BiaPy.")
        self.status.setWordWrap(True)

        path_row = QHBoxLayout()
        path_row.setContentsMargins(0, 0, 0, 0)
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Model", self.model_picker)
        form.addRow("Save as", path_row)
        form.addRow("Authors", self.authors_edit)
        form.addRow(self.check_box)
        layout = scrollable_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._named_after = ""  # the model the file name was made from, to follow a new choice of model
        self.model_picker.currentIndexChanged.connect(self._follow_model)
        self._follow_model()

    # ----------------------------------------------------------------------------------------------------------
    # Public
    # ----------------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def target(self) -> Path | None:
        """The package file to write, as typed (``~`` expanded, ``.zip`` added); None when empty."""
        text = self.path_edit.text().strip()
        if not text:
            return None
        path = Path(text).expanduser()
        return path if path.suffix.lower() == ".zip" else path.with_name(path.name + ".zip")

    def select_model(self, name_or_path: str | Path) -> bool:
        """Choose a model by name or folder; returns False if there is no such model."""
        return self.model_picker.select(name_or_path)

    def choose_path(self) -> None:
        """Ask for the target file with a save dialog (replacing a file is confirmed when Export runs)."""
        start = str(self.target or Path.home() / f"{self.model_picker.model_name or 'model'}.zip")
        chosen, _ = QFileDialog.getSaveFileName(self, "Export the model as a bioimage.io package", start,
                                                "bioimage.io package (*.zip)",
                                                options=QFileDialog.Option.DontConfirmOverwrite)
        if chosen:
            self.path_edit.setText(chosen)

    def export(self) -> None:
        """Check the choices and start the export (what the Export button does)."""
        if self._run is None:
            set_up_once(self.run_button, self._start_run)
            self.run_button.setEnabled(self._run is None)  # one export at a time: enabled again when it ends

    # ----------------------------------------------------------------------------------------------------------
    # Running
    # ----------------------------------------------------------------------------------------------------------

    def _follow_model(self, *args: Any) -> None:
        """Name the file after the model: ``~/<model>.zip`` at first, the same folder after another choice."""
        name = self.model_picker.model_name
        if not name:
            return
        current = self.target
        if current is None:
            self.path_edit.setText(str(Path.home() / f"{name}.zip"))
        elif current.stem == self._named_after:
            self.path_edit.setText(str(current.with_name(f"{name}.zip")))
        self._named_after = name

    def _start_run(self) -> None:
        from napari_unet.core.cancel import CancelToken

        model_path = self.model_picker.model_path
        target = self.target
        if model_path is None:
            return self._refuse("There is no model to export: choose 'Browse...' to pick a model folder.")
        if target is None:
            return self._refuse("Choose where to save the package (a .zip file).")
        missing = bioimageio_missing()
        if missing:
            return self._refuse(f"Export needs {missing}, which are not installed. Install them with "
                                f"{INSTALL_HINT} and restart napari.")
        problem = _folder_problem(target)
        if problem:
            return self._refuse(problem)
        overwrite = target.exists()
        if overwrite and not self._confirm_overwrite(target):
            self.status.setText(f"Not exported: {target.name} exists and was kept. Choose another file name.")
            show_info(f"Not exported: {target} was kept as it is.")
            return
        self.path_edit.setText(str(target))
        authors = parse_authors(self.authors_edit.text())
        check = self.check_box.isChecked()
        token = CancelToken()
        run = {"cancel": token, "target": target, "model": model_path.name, "check": check}
        self._run = run
        run["worker"] = start_worker(
            lambda: export_in_worker(model_path, target, authors, check, overwrite, token),
            lambda event: self._on_event(run, event), self, token, "Export")
        self.run_button.setText("Exporting...")
        self.progress_bar.set_progress(0, 0, "starting...")
        self.status.setText(f"Exporting {model_path.name} to {target}...")

    def _confirm_overwrite(self, target: Path) -> bool:
        answer = QMessageBox.question(
            self, "Replace the file?", f"{target} exists. Replace it with the package of "
            f"{self.model_picker.model_name}?", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _refuse(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def _on_event(self, run: dict[str, Any], event: Any) -> None:
        if isinstance(event, Outcome):
            self._finish(run, event)
            return
        if run.get("ended"):
            return
        self.progress_bar.set_progress(event.done, event.total, event.message)

    def _finish(self, run: dict[str, Any], outcome: Outcome) -> None:
        run["ended"] = True
        self._run = None
        self.run_button.setText("Export")
        self.run_button.setEnabled(True)
        status = outcome.status
        target = run["target"]
        if status == "failed":
            message = _report(outcome, target)
            self.progress_bar.set_progress(0, 1, "failed")
        elif status == "cancelled":
            message = "Export stopped." + (f" {target} was written." if target.exists() else "")
            show_info(message)
            self.progress_bar.set_progress(0, 1, "stopped")
        else:
            result: ExportResult = outcome.value
            self.last_result = result
            size = f"{result.size_bytes / 2**20:.1f} MB"
            message = f"Exported {run['model']} to {result.path} ({size})"
            if result.check_passed is None:
                show_info(message + ".")
                message += "."
            elif result.check_passed:
                message += "; bioimageio.core's test passed."
                show_info(message)
            else:
                status = "failed"
                message += (", but bioimageio.core's test failed: other tools may not run it. Please report this "
                            "as a napari-unet bug, with the test's summary (in this notification and the console).")
                print(result.check_summary, file=sys.stderr)
                show_error(message + "\n" + result.check_summary[:1500])
            self.progress_bar.set_progress(1, 1, "done" if status == "done" else "check failed")
        self.status.setText(message)
        self.run_finished.emit(status)


def _folder_problem(target: Path) -> str:
    """Why the package cannot be written at ``target`` ('' if nothing stands in the way)."""
    folder = target.parent
    if target.is_dir():
        return f"{target} is a folder; choose a file name ending in .zip."
    if not folder.is_dir():
        return f"The folder {folder} does not exist; choose another place to save the package."
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"The folder {folder} is not writable; choose another place to save the package."
    return ""


def _report(outcome: Outcome, target: Path) -> str:
    """Show a failed export as an error notification (with its traceback); returns the text shown."""
    error = outcome.error
    message = None
    if isinstance(error, ImportError):
        message = f"Export needs the optional bioimage.io packages ({error}). Install them with {INSTALL_HINT}."
    elif isinstance(error, OSError) and not isinstance(error, ValueError):
        reason = error.strerror or str(error)
        message = (f"Export failed: could not write {target} ({reason}). Nothing was written; choose another "
                   "folder, or free some disk space.")
    return report_failure(outcome, "Export", message)
