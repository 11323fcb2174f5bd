"""``napari-unet finetune``: fine-tune a model on image/label files and save it as a new version.

    napari-unet finetune --model nuclei --image a.tif --labels a_labels.tif [--mask a_mask.tif] \\
        [--prediction a_predicted.tif] [--image b.tif --labels b_labels.tif ...] --time 60 [--steps N] \\
        [--correction-weight 5] [--output NAME]

Images, labels and masks are TIFF (``.tif``/``.tiff``), NumPy (``.npy``) or zarr (a zarr array or an OME-Zarr
image) files, paired in the order given and opened by :mod:`napari_unet.core.io`: images stay lazy, so only the
annotated planes of a large stack are read. ``--prediction`` names the model's output each labels file was
corrected from: the pixels the user changed then weigh ``--correction-weight`` times more in the loss.
The result is saved into the user's library as the next version of the model (``nuclei-v2``...), or under
``--output``; the starting model is left as it was.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a model on annotated images and save it as a new version",
        description="Fine-tune a model on images and their corrected labels. Give --image and --labels once "
        "per training pair (and --mask for each pair, or for none, to mark the annotated pixels). The tuned "
        "model is saved as the next version of the model in your library, or under --output.")
    parser.add_argument("--model", required=True, help="starting model: a bundled or library name, or a folder")
    parser.add_argument("--image", action="append", required=True, type=Path, help="image file (repeatable)")
    parser.add_argument("--labels", action="append", required=True, type=Path,
                        help="labels file for the image at the same position (repeatable)")
    parser.add_argument("--mask", action="append", type=Path, default=[],
                        help="annotated-area file (non-zero = annotated) for the pair at the same position")
    parser.add_argument("--prediction", action="append", type=Path, default=[],
                        help="the model's output labels that the labels file at the same position were corrected "
                        "from (give one per pair, or none); the pixels you changed weigh more")
    parser.add_argument("--correction-weight", type=float, default=None, metavar="FACTOR",
                        help="how many times more a corrected pixel weighs than one left as predicted, with "
                        "--prediction (default 5; 1 = no extra weight)")
    parser.add_argument("--axes", default=None,
                        help="image axes from T, Z, C, Y, X (e.g. YX, YXC, ZYX); default: guessed from the "
                        "shapes and the model")
    parser.add_argument("--time", type=float, default=None, metavar="SECONDS",
                        help="time budget in seconds (default 60, or none when --steps is given)")
    parser.add_argument("--steps", type=int, default=None, help="number of training steps")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate (default: 1e-3, or 3e-3 for a new kind of image)")
    parser.add_argument("--new-kind", choices=("auto", "yes", "no"), default="auto",
                        help="whether the images are a kind the model was not made for, which picks a faster "
                        "schedule (default auto: decided from the data and the model's first validation)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="start from random weights of the model's architecture instead of its weights")
    parser.add_argument("--batch-size", type=int, default=4, help="patches per step (default 4)")
    parser.add_argument("--patch", type=int, nargs="+", default=None, metavar="N",
                        help="patch size, one number or one per spatial axis (default: chosen for the model)")
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="share of the annotated area held out for validation (default 0.2; 0 = none)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--output", default=None,
                        help="name for the tuned model in your library, or a folder (a path with a / or \\, "
                        "starting with ~ or .); default: the next version name")
    parser.set_defaults(run=run)


def _read_pair(image_path: Path, labels_path: Path, mask_path: Path | None) -> tuple[Any, Any, Any]:
    """An image (lazy), its labels and its annotated area (read whole: training copies them anyway)."""
    import numpy as np

    from napari_unet.core.io import read_image

    image, labels = read_image(image_path).data, read_image(labels_path).data
    mask = None if mask_path is None else np.asarray(read_image(mask_path).data) != 0
    return image, labels, mask


def _read_prediction(path: Path | None) -> Any:
    """The model output a labels file was corrected from, read as the labels are (None: not given)."""
    from napari_unet.core.io import read_image

    return None if path is None else read_image(path).data


def guess_axes(image_shape: tuple[int, ...], labels_shape: tuple[int, ...], model_axes: str,
               channels: int) -> str:
    """Axes for a file pair: the labels' axes are spatial (with a leading Z or T), an extra image axis is C."""
    from napari_unet.core.errors import InvalidInputError

    label_axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(len(labels_shape))
    if label_axes is None or len(image_shape) not in (len(labels_shape), len(labels_shape) + 1):
        raise InvalidInputError(f"cannot guess the axes of an image {image_shape} with labels {labels_shape}; "
                                "pass --axes")
    if len(model_axes) == 3 and len(labels_shape) == 4:
        label_axes = "TZYX"
    if len(image_shape) == len(labels_shape):
        return label_axes
    if image_shape[:-1] == labels_shape and (image_shape[-1] == channels or image_shape[-1] in (3, 4)):
        return label_axes + "C"  # the model's channels last, or a colour image (converted to one channel if need be)
    return label_axes[:-2] + "C" + label_axes[-2:]


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.errors import InvalidInputError
    from napari_unet.core.models import load_model, save_model
    from napari_unet.core.training import Sample, finetune
    from napari_unet.core.versions import save_version

    if len(args.image) != len(args.labels):
        raise InvalidInputError(f"got {len(args.image)} --image and {len(args.labels)} --labels; give one "
                                "labels file per image")
    if args.mask and len(args.mask) != len(args.image):
        raise InvalidInputError(f"got {len(args.mask)} --mask for {len(args.image)} images; give a mask for "
                                "every pair or for none")
    if args.prediction and len(args.prediction) != len(args.image):
        raise InvalidInputError(f"got {len(args.prediction)} --prediction for {len(args.image)} images; give the "
                                "prediction of every pair or of none")
    if args.correction_weight is not None and not args.correction_weight >= 1:
        raise InvalidInputError(f"--correction-weight must be at least 1 (1 = no extra weight for corrections), "
                                f"not {args.correction_weight}")
    if args.time is not None and not args.time > 0:
        raise InvalidInputError(f"--time must be a positive number of seconds, not {args.time}")
    if args.steps is not None and args.steps < 1:
        raise InvalidInputError(f"--steps must be at least 1, not {args.steps}")
    output = _output(args.output)
    configure_cpu_threads(interactive=False)
    model = load_model(args.model)
    samples = []
    for index, (image_path, labels_path) in enumerate(zip(args.image, args.labels)):
        image, labels, mask = _read_pair(image_path, labels_path, args.mask[index] if args.mask else None)
        axes = args.axes or guess_axes(image.shape, labels.shape, model.config.axes, model.config.in_channels)
        prediction = _read_prediction(args.prediction[index] if args.prediction else None)
        samples.append(Sample(image, labels, mask, axes, prediction=prediction))
        print(f"pair {index + 1}: {image_path.name} {tuple(image.shape)} axes {axes}, labels {labels_path.name}"
              + (f", corrected from {args.prediction[index].name}" if args.prediction else ""))
    budget = args.time if args.time is not None else (None if args.steps else 60.0)
    last = [0.0]

    def report(done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or "val" in message:
            print(message, flush=True)
            last[0] = now

    patch = None if args.patch is None else (args.patch[0] if len(args.patch) == 1 else args.patch)
    extra = {} if args.correction_weight is None else {"correction_weight": args.correction_weight}
    tuned = finetune(model, samples, time_budget_s=budget, steps=args.steps, device=args.device,
                     progress=report, seed=args.seed, learning_rate=args.learning_rate, batch_size=args.batch_size,
                     patch_shape=patch, validation_fraction=args.validation_fraction, augment=not args.no_augment,
                     new_kind={"auto": None, "yes": True, "no": False}[args.new_kind], from_scratch=args.from_scratch,
                     **extra)
    provenance = tuned.config.provenance
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in provenance.get("metrics", {}).items())
    settings = provenance["settings"]
    print(f"trained {provenance['steps']} steps in {provenance['time_s']:.0f} s (stopped: {provenance['stopped']}), "
          f"peak learning rate {settings['learning_rate']:g}" + (" for a new kind of image" if settings["new_kind"]
                                                                  else "") + (f"; {metrics}" if metrics else ""))
    if args.prediction:
        print(f"{settings['corrected_pixels']} corrected pixels, weighted {settings['correction_weight']:g}x")
    if settings["inverted_input"]:
        print("the annotated objects are darker than their background: the new model inverts its input")
    if provenance.get("improved") is False:
        print(f"warning: training did not beat {model.name or 'the starting model'} on the validation area; the "
              "new version keeps its weights")
    if not provenance["steps"]:
        raise InvalidInputError("no training step was completed, so nothing was saved; give more --time or "
                                "--steps")
    folder = save_model(tuned, output) if output is not None else save_version(tuned)
    print(f"saved {folder.name} at {folder}")
    return 0


def _output(text: str | None) -> str | Path | None:
    """``--output`` as save_model takes it: a library name stays a str, anything path-like becomes a Path.
    A name is checked before training, and so is whether a model is there already (models are never replaced),
    so that neither a typo nor a taken name costs a whole run."""
    from napari_unet.core.errors import ModelExistsError
    from napari_unet.core.library import check_new_name, library_dir, unique_name

    if text is None:
        return None
    if any(sep in text for sep in "/\\") or text.startswith(("~", ".")):
        folder = Path(text).expanduser()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ModelExistsError(f"{folder} already exists and is not empty; models are never replaced: give "
                                   "--output a new folder")
        return folder
    name = check_new_name(text)
    if (library_dir() / name).exists():
        raise ModelExistsError(f"a model named '{name}' is already in the library; models are never replaced: "
                               f"give --output another name, such as '{unique_name(name)}'")
    return name
