"""The Export model widget: a real export through its button, never overwriting a file without consent, and
failures that show an error and leave nothing behind."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMessageBox

from napari_unet.core.models import Model, load_model, save_model
from napari_unet.widgets import export_widget as export_module
from napari_unet.widgets.export_widget import ExportWidget
from tiny_models import tiny_unet

pytest.importorskip("bioimageio.core")


@pytest.fixture
def tiny_saved() -> Model:
    model = tiny_unet()
    save_model(model, "tiny")
    return model


@pytest.fixture
def notes(notes_of) -> list[tuple[str, str]]:
    """The notifications the widget shows, as (severity, text); failures arrive as napari ErrorNotifications."""
    return notes_of(export_module, ("info", "error"))


@pytest.fixture
def export_widget(viewer, tiny_saved) -> ExportWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Export model")
    assert isinstance(widget, ExportWidget)
    assert widget.select_model("tiny")
    return widget


class Answers(list):
    """The overwrite question's answers, in order ("yes"/"no"); each question asked removes one."""

    asked: list[str]


@pytest.fixture
def answers(monkeypatch) -> Answers:
    queue = Answers()
    asked: list[str] = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(text)
        assert queue, f"an unexpected question: {text}"
        return QMessageBox.StandardButton.Yes if queue.pop(0) == "yes" else QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", question)
    queue.asked = asked
    return queue


def _run(qtbot, widget: ExportWidget, timeout: int = 120_000) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=timeout) as blocker:
        qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
        assert widget.running and not widget.run_button.isEnabled()
    return blocker.args[0]


def _assert_same_weights(a: Model, b: Model) -> None:
    sa, sb = a.network.state_dict(), b.network.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].cpu(), sb[key].cpu()), key


def test_default_target_is_the_model_name_in_home_and_follows_the_model(export_widget, make_tiny_model):
    assert Path(export_widget.path_edit.text()) == Path.home() / "tiny.zip"
    make_tiny_model("other")
    assert export_widget.select_model("other")
    assert Path(export_widget.path_edit.text()) == Path.home() / "other.zip"
    export_widget.path_edit.setText("/somewhere/mine.zip")  # the user's own name is kept
    export_widget.select_model("tiny")
    assert export_widget.path_edit.text() == "/somewhere/mine.zip"


def test_export_writes_a_package_that_loads_back_with_the_same_weights(qtbot, export_widget, tiny_saved, notes,
                                                                        tmp_path):
    target = tmp_path / "tiny.zip"
    export_widget.path_edit.setText(str(tmp_path / "tiny"))  # .zip is added
    export_widget.authors_edit.setText(" Ada Lovelace,  Alan Turing ,")
    assert _run(qtbot, export_widget) == "done"

    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.zip"], "no temporary file is left"
    loaded = load_model(target)
    _assert_same_weights(loaded, tiny_saved)
    _assert_same_weights(loaded, load_model("tiny"))
    with zipfile.ZipFile(target) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert [author["name"] for author in rdf["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert ("info", f"Exported tiny to {target} ({target.stat().st_size / 2**20:.1f} MB).") in notes
    assert str(target) in export_widget.status.text()
    assert export_widget.run_button.text() == "Export" and export_widget.run_button.isEnabled()


def test_empty_authors_use_the_exporters_default(qtbot, export_widget, tmp_path):
    from napari_unet.bioimageio import DEFAULT_AUTHOR

    export_widget.path_edit.setText(str(tmp_path / "tiny.zip"))
    assert _run(qtbot, export_widget) == "done"
    with zipfile.ZipFile(tmp_path / "tiny.zip") as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert [author["name"] for author in rdf["authors"]] == [DEFAULT_AUTHOR]


def test_an_existing_file_is_replaced_only_after_consent(qtbot, export_widget, tiny_saved, answers, notes,
                                                         tmp_path):
    target = tmp_path / "tiny.zip"
    target.write_bytes(b"the user's own file")
    export_widget.path_edit.setText(str(target))

    answers.append("no")
    qtbot.mouseClick(export_widget.run_button, Qt.MouseButton.LeftButton)
    assert len(answers.asked) == 1 and str(target) in answers.asked[0]
    assert not export_widget.running
    assert target.read_bytes() == b"the user's own file"
    assert "kept" in export_widget.status.text()

    answers.append("yes")
    assert _run(qtbot, export_widget) == "done"
    assert len(answers.asked) == 2
    _assert_same_weights(load_model(target), tiny_saved)


def test_a_failed_export_shows_an_error_and_leaves_no_partial_file(qtbot, export_widget, answers, notes, tmp_path,
                                                                   monkeypatch):
    import bioimageio.spec

    def disk_full(descr, output_path, **kwargs):
        Path(output_path).write_bytes(b"PK\x03\x04 half a package")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", disk_full)
    target = tmp_path / "tiny.zip"
    export_widget.path_edit.setText(str(target))
    assert _run(qtbot, export_widget) == "failed"
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"
    errors = [text for severity, text in notes if severity == "error"]
    assert len(errors) == 1 and "could not write" in errors[0] and "No space left on device" in errors[0]
    assert errors[0] == export_widget.status.text()

    target.write_bytes(b"the user's own file")  # a failed replacement keeps the old file
    answers.append("yes")
    assert _run(qtbot, export_widget) == "failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.zip"]
    assert target.read_bytes() == b"the user's own file"
    assert export_widget.run_button.isEnabled()


def test_missing_bioimageio_packages_are_refused_with_the_install_command(qtbot, export_widget, notes, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # as if not installed
    export_widget.path_edit.setText(str(tmp_path / "tiny.zip"))
    qtbot.mouseClick(export_widget.run_button, Qt.MouseButton.LeftButton)
    assert not export_widget.running
    (severity, text), = notes
    assert severity == "error" and "bioimageio.core" in text and "pip install 'napari-unet[bioimageio]'" in text
    assert list(tmp_path.iterdir()) == []


def test_a_missing_folder_is_refused(qtbot, export_widget, notes, tmp_path):
    export_widget.path_edit.setText(str(tmp_path / "no such folder" / "tiny.zip"))
    qtbot.mouseClick(export_widget.run_button, Qt.MouseButton.LeftButton)
    assert not export_widget.running
    (severity, text), = notes
    assert severity == "error" and "does not exist" in text
    assert list(tmp_path.iterdir()) == []


def test_check_with_bioimageio_core_reports_the_test(qtbot, export_widget, notes, tmp_path):
    target = tmp_path / "tiny.zip"
    export_widget.path_edit.setText(str(target))
    export_widget.check_box.setChecked(True)
    assert _run(qtbot, export_widget, timeout=300_000) == "done"
    assert export_widget.last_result is not None and export_widget.last_result.check_passed is True
    (severity, text), = notes
    assert severity == "info" and str(target) in text and "bioimageio.core's test passed" in text


def test_a_failed_check_is_an_error_that_keeps_the_written_package(qtbot, export_widget, notes, tmp_path,
                                                                   monkeypatch):
    import napari_unet.bioimageio as bioimageio_module

    class Failed:
        status = "failed"

        def format(self):
            return "Reproduce test outputs from test inputs (torchscript): output differs"

    monkeypatch.setattr(bioimageio_module, "test_package", lambda path: Failed())
    target = tmp_path / "tiny.zip"
    export_widget.path_edit.setText(str(target))
    export_widget.check_box.setChecked(True)
    assert _run(qtbot, export_widget) == "failed"
    assert export_widget.last_result.check_passed is False
    (severity, text), = notes
    assert severity == "error" and str(target) in text and "test failed" in text and "output differs" in text
    assert target.is_file(), "the package is written: the user may still want it"


def test_creating_the_widget_does_not_import_torch():
    code = (
        "import sys\n"
        "from qtpy.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from napari_unet.widgets.export_widget import ExportWidget\n"
        "widget = ExportWidget(None)\n"
        "assert widget.model_picker.count() > 1, 'the bundled model is listed'\n"
        "print('torch' in sys.modules, 'bioimageio.core' in sys.modules)\n"
    )
    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
