"""``napari-unet demo``: napari with the sample image, the default model selected and both widgets docked.

With ``--screenshot PATH`` the demo presses Segment itself, waits for the labels, saves a PNG of the whole
window and exits (it works under a virtual display such as ``xvfb-run``), which is how the README's pictures
are made and how a machine without a screen can check that the plugin works end to end. ``--finetune
SECONDS`` also fine-tunes on the sample's ground truth and segments again before the picture is taken. A
screenshot run keeps its models and autosaves in a temporary folder, so it leaves the user's library as it was.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

DEFAULT_MODEL = "nuclei"
LAYOUT_MS = 200  # from the run's end to the picture: the window lays out the status the run ended with


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="open napari with sample data, the default model and the plugin's widgets",
        description="Open napari with a generated nuclei image, the default model selected and the Segment and "
        "Fine-tune widgets docked. With --screenshot, segment, save the window as a PNG and exit.")
    parser.add_argument("--screenshot", metavar="PATH", help="segment, save a PNG of the window to PATH and exit")
    parser.add_argument("--model", help=f"model name or folder to select (default: {DEFAULT_MODEL!r} when "
                        "installed, else the first model of the library)")
    parser.add_argument("--sample", choices=("2d", "3d"), default="2d", help="the sample image (default: 2d)")
    parser.add_argument("--finetune", type=float, metavar="SECONDS", default=0.0,
                        help="with --screenshot: after segmenting, fine-tune for SECONDS on the sample's ground "
                        "truth and segment again")
    parser.add_argument("--size", default="1400x900", metavar="WxH", help="window size (default: 1400x900)")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="with --screenshot: give up (exit status 1) after this long (default: 900)")
    parser.set_defaults(run=run)


def choose_model(requested: str | None) -> tuple[str, str]:
    """(model name or path, a sentence saying which model the demo uses and why)."""
    from napari_unet.core.errors import ModelFileError
    from napari_unet.core.library import list_models, resolve_model_folder

    if requested:
        folder = resolve_model_folder(requested)
        return str(folder), f"using the model '{folder.name}' ({folder})"
    models = list_models()
    for info in models:
        if info.name == DEFAULT_MODEL:
            return str(info.path), f"using the {info.source} model '{DEFAULT_MODEL}'"
    if not models:
        raise ModelFileError(f"there is no model to demonstrate: the bundled '{DEFAULT_MODEL}' model is not "
                             "installed and the library is empty. Reinstall napari-unet, or pass --model PATH")
    info = models[0]
    return str(info.path), (f"the bundled '{DEFAULT_MODEL}' model is not installed; using the {info.source} "
                            f"model '{info.name}' instead")


def check_display(environ: dict[str, str] | None = None, platform: str | None = None) -> None:
    """Refuse, with the fix, to open napari on a Linux machine without a screen: Qt would abort the process
    with a message about its xcb plugin that says nothing of the cure."""
    from napari_unet.core.errors import InvalidInputError

    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if not platform.startswith("linux") or environ.get("QT_QPA_PLATFORM"):
        return
    if not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        raise InvalidInputError(
            "napari needs a display, and this machine has none (DISPLAY is not set). On a headless machine run "
            "the demo on a virtual display: xvfb-run -a napari-unet demo --screenshot demo.png (Debian/Ubuntu: "
            "Xvfb and the libraries the README lists under Install and run), or connect with ssh -X")


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.errors import InvalidInputError

    try:
        import napari  # noqa: F401 - only to say how to get it where it is missing
    except ImportError:
        raise InvalidInputError("the demo opens napari, and napari is not installed. Install it with the "
                                "plugin: pip install \"napari[all]\" (or, in a clone of napari-unet, "
                                "pip install -e \".[all]\")") from None
    if args.screenshot:  # checked now: a picture that cannot be saved would leave the window open
        folder = Path(args.screenshot).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise InvalidInputError(f"--screenshot: the folder {folder} does not exist or cannot be written to")
    check_display()
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"--size takes WIDTHxHEIGHT in pixels, such as 1400x900, not {args.size!r}") from None
    model, note = choose_model(args.model)
    print(f"napari-unet demo: {note}", file=sys.stderr)
    with _throwaway_home() if args.screenshot else nullcontext():
        return _open(args, model, note, width, height)


def _open(args: argparse.Namespace, model: str, note: str, width: int, height: int) -> int:
    """The demo window; with ``--screenshot``, the scripted run that ends in the picture."""
    import napari

    viewer = napari.Viewer(title="napari-unet demo")
    viewer.window.resize(width, height)
    viewer.open_sample("napari-unet", f"nuclei_{args.sample}")
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    # once the window is laid out: the Segment dock as tall as its contents, the rest for Fine-tune's plot
    from qtpy.QtCore import Qt, QTimer

    segment_height = segment.sizeHint().height() + 60  # room for a status line that wraps
    QTimer.singleShot(0, lambda: segment_dock.parent().resizeDocks(
        [segment_dock, finetune_dock], [segment_height, height - segment_height], Qt.Orientation.Vertical))
    image = viewer.layers[0]
    segment.image_picker.set_layer(image)
    segment.select_model(model)
    finetune.model_picker.select(model)
    segment.status.setText(f"Demo: {note}. Press Segment.")
    if not args.screenshot:
        napari.run()
        return 0
    return _screenshot(napari, viewer, segment, finetune, image, args)


@contextmanager
def _throwaway_home() -> Iterator[None]:
    """A temporary user data folder for a screenshot run: the version ``--finetune`` saves and the autosaved
    labels are for the picture, not for the user's library."""
    with tempfile.TemporaryDirectory(prefix="napari-unet-demo-", ignore_cleanup_errors=True) as folder, \
            mock.patch.dict(os.environ, {"NAPARI_UNET_HOME": folder}):
        yield


def _screenshot(napari: Any, viewer: Any, segment: Any, finetune: Any, image: Any, args: argparse.Namespace) -> int:
    """Segment (and fine-tune and segment again), save the window, close; the exit status says if all went well."""
    from qtpy.QtCore import QTimer

    outcome = {"status": "timed out"}
    steps = ["segment"] + (["finetune", "segment"] if args.finetune else [])

    def next_step(status: str = "done") -> None:
        if status != "done":
            return finish(status)
        if not steps:
            return finish("done")
        step = steps.pop(0)
        if step == "segment":
            segment.segment()
            started = segment.running
        else:
            finetune.add_pair(image, viewer.layers[f"{image.name} ground truth"])
            finetune.budget_spin.setValue(max(5, int(args.finetune)))
            finetune.start()
            started = finetune.running
        if not started:  # refused; the widget's status line says why
            finish("failed")

    def finish(status: str) -> None:
        if outcome.get("finished"):
            return
        outcome.update(status=status, finished=True)
        segment.cancel("the demo timed out")  # no-ops unless a run is still going
        finetune.stop()
        QTimer.singleShot(LAYOUT_MS, lambda: save_and_close(status))  # the last status laid out, as a user sees it

    def save_and_close(status: str) -> None:
        try:
            viewer.screenshot(args.screenshot, canvas_only=False, flash=False)
            print(f"napari-unet demo: {status}; saved {args.screenshot}", file=sys.stderr)
        except (OSError, ValueError) as exc:  # the window closes all the same, so the command ends
            outcome["status"] = "failed"
            print(f"napari-unet demo: {status}, but the picture was not saved: {exc}", file=sys.stderr)
        finally:
            viewer.close()

    segment.run_finished.connect(next_step)
    finetune.run_finished.connect(next_step)
    QTimer.singleShot(300, next_step)
    QTimer.singleShot(int(args.timeout * 1000), lambda: finish("timed out"))
    napari.run()
    return 0 if outcome["status"] == "done" else 1
