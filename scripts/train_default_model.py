"""Train the bundled default model ``nuclei`` on real and generated images, and write its model card.

Run from the repository root::

    python scripts/train_default_model.py --data ../shared/data/dsb2018 [--minutes N] [--steps N] [--images N]
                                          [--base-features N] [--output FOLDER]

Training data. With ``--data FOLDER`` (the 2018 Data Science Bowl nuclei, read by ``bench/dsb2018.py``): the
images of its *train* split - fluorescence, grey brightfield, and colour histology converted to one channel
as :func:`napari_unet.segment` converts colour images (``napari_unet.core.colour``: optical density for a
stained section in transmitted light) - each
once as recorded and once resampled, image and labels together, at a random scale (log-uniform in
``scale_range``, limited so that the image's median nucleus stays within ``diameter_range`` px across). The
validation split is never trained on nor tuned on: the script reports on it. Beside them, generated images
from :func:`napari_unet.synthetic.generate_nuclei`, each in its own style drawn by
:func:`napari_unet.synthetic.random_style` (domain randomisation: nucleus radius 3.5-22 px, signal over a
factor of fifteen, 8/12/16 bit, blur, noise, background, illumination, density and clustering all drawn
widely), which keep the model's range beyond the real set's looks. The named styles of ``synthetic.STYLES``
and the benchmark's harder variants are never used for training: they are a held-out test set. Without
``--data`` the model is trained on generated images alone (the earlier default).

Training. ``napari_unet.finetune`` on a freshly initialised network (training from scratch is fine-tuning a
random model): instance targets (background / interior / boundary) with the U-Net paper's weight map,
augmentation, AdamW with warm-up and cosine decay, the best state on a block held out of the *training*
images kept. The run is planned in steps, so on a given machine a rerun repeats the shipped model;
``--minutes`` only caps a slow machine (the card says which limit ended the run).

Post-processing. The object filter - the probability thresholds of foreground and seeds, then the smallest
object kept, absolute and relative to the image's median - is chosen on a fixed subset of the train split's
fluorescence images (every third) and on generated images of the training distribution (fresh seeds), from
small grids, by pooled AP@0.5; it changes labelling only. The training object size recorded as the config's
``object_diameter`` (``segment(..., diameter=D)`` resamples by it) is the median equivalent diameter of all
training objects or of the real ones as recorded, whichever scores better on the same train images segmented
with their true nucleus size as the diameter.

Evaluation. The finished model and the classical baseline are scored on the held-out generated styles with
the code of ``bench/default_model.py`` and on the validation split of the real data with the code of
``bench/real_data.py``, and the speed on a 512x512 image is measured; settings, the split rule, the data
(name, licence, citation), data seeds, training time, metrics, the training object size and package versions
go into the model's ``config.json`` (``card`` for people, ``provenance`` for tools). The model is written with
``save_model(..., overwrite=True)`` to ``src/napari_unet/models/nuclei`` unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's held-out test sets and scoring, shared on purpose

import dsb2018
import real_data
from baseline import classical_segmentation
from default_model import HELD_OUT, TEST_SEED, evaluate, format_table, model_segmenter, segment_seconds

from napari_unet.synthetic import NucleiStyle, generate_nuclei, random_style

DEFAULTS: dict[str, Any] = {
    "images": 800,
    "image_size": 256,
    "data_seed": 20_000,  # images use seeds data_seed + i, far from the test seeds (1000...)
    "init_seed": 0,
    "train_seed": 0,
    "steps": 12_000,
    "minutes": 120.0,
    "batch_size": 4,
    "patch": 128,
    "learning_rate": 3e-3,
    "init_learning_rate": 1e-3,  # when starting from trained weights (--init)
    "validations": 24,
    "eval_size": 512,
    "eval_seeds": 3,
    # real images (--data): each once as recorded and once at a random scale
    "scale_seed": 7,
    "scale_range": [0.5, 1.6],
    "diameter_range": [8.0, 40.0],
    "tune_every": 3,  # post-processing is chosen on every 3rd fluorescence image of the train split ...
    "tune_generated": 40,  # ... and on these many generated images of the training distribution
    "tune_seed": 40_000,
    "empty_images": 120,  # generated images with no nucleus (noise and background only)
    "empty_seed": 120_000,
}

FILTER_GRID = {"min_size": [8, 16, 24, 32, 48], "min_fraction": [0.1, 0.2, 0.3, 0.4]}
THRESHOLD_GRID = {"foreground": [None, 0.2, 0.3, 0.4, 0.5], "seed": [None, 0.4, 0.5, 0.6]}

ARCHITECTURE: dict[str, Any] = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "depth": 3, "base_features": 24,
    "padding": "same", "norm": "batch", "upsampling": "bilinear",
}

DESCRIPTION = ("Nuclei in 2D fluorescence images (DAPI, Hoechst and similar stains), and in brightfield and "
               "colour histology images (converted to their optical density): one label per nucleus, touching nuclei separated. "
               "Trained on the 2018 Data Science Bowl images and on generated ones.")
DESCRIPTION_GENERATED = ("Nuclei in 2D fluorescence images (DAPI, Hoechst and similar stains): one label per "
                         "nucleus, touching nuclei separated. Trained on generated images only.")

INTENDED = ("single-channel 2D fluorescence images of stained nuclei (Z stacks as 3D objects from its YX, ZX and "
            "ZY planes; time-lapses frame by frame), 8, 12 or 16 bit, widefield or confocal, nuclei about 7-45 px "
            "across; also grey brightfield and colour histology (RGB, converted to one channel, its optical density), less well")

LIMITS = ("cytoplasmic or membrane stains, phase contrast, and multi-channel images (other than RGB) are outside "
          "its experience; colour histology is segmented from one channel, its optical density; weakest on crowded, very noisy "
          "images (touching nuclei merged or missed) and on large, blurred touching nuclei, see the metrics; "
          "rescale images whose nuclei are much smaller than 7 px or larger than 45 px across; a 2D model: a "
          "z-stack's 3D objects come from its three orthogonal planes, weakest on crowded stacks with coarse Z "
          "steps (see README, Z-stacks). Fine-tune it on a few corrected images of your own for the best results")

LIMITS_GENERATED = ("learned from generated images only: debris, dead or fragmented cells, saturated artefacts, "
          "cytoplasmic or membrane stains, brightfield or phase contrast and multi-channel images are outside "
          "its experience; weakest on crowded, very noisy images (touching nuclei merged or missed) and on large, "
          "blurred touching nuclei (merged), see the metrics; rescale images whose nuclei "
          "are much smaller than 7 px or larger than 45 px across; a 2D model, so stacks are segmented plane by "
          "plane. Fine-tune it on a few corrected images of your own for the best results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                        help="wall-time cap of the training loop (default %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                        help="optimisation steps; the run is planned in steps (default %(default)s)")
    parser.add_argument("--images", type=int, default=DEFAULTS["images"],
                        help="generated training images (default %(default)s)")
    parser.add_argument("--base-features", type=int, default=ARCHITECTURE["base_features"],
                        help="features of the first U-Net level, doubled at each level (default %(default)s)")
    parser.add_argument("--eval-seeds", type=int, default=DEFAULTS["eval_seeds"],
                        help="held-out test images per style (default %(default)s)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the DSB 2018 folder (bench/dsb2018.py); its train split joins the training data")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this model folder's weights (e.g. the previous nuclei, written out "
                             "with git show) instead of a random initialisation; its weights' SHA-256 is recorded")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help=f"peak learning rate (default {DEFAULTS['learning_rate']:g} from scratch, "
                             f"{DEFAULTS['init_learning_rate']:g} with --init)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training: choose the object filter, evaluate and write the card of the model "
                             "already in --output (trained by this script)")
    parser.add_argument("--output", type=Path, default=ROOT / "src" / "napari_unet" / "models" / "nuclei",
                        help="model folder to write, replaced if it exists (default: the bundled 'nuclei')")
    return parser.parse_args(argv)


def training_samples(count: int, size: int, data_seed: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """``count`` generated images, each in its own random style, as fully annotated training samples.

    Every sample carries an all-true mask: every pixel of a generated image is known, so an image that
    happens to hold no nucleus is a valid lesson in background rather than "nothing annotated".
    Returns the samples and a short summary of each image's style for the provenance.
    """
    from napari_unet.core.training import Sample

    rng = np.random.default_rng(data_seed)
    samples, styles = [], []
    for i in range(count):
        style = random_style(rng)
        image, labels = generate_nuclei((size, size), style, seed=data_seed + i)
        samples.append(Sample(image, labels, mask=np.ones(labels.shape, bool), axes="YX"))
        styles.append({"radius": round(style.radius, 2), "signal": round(style.signal, 4),
                       "bit_depth": style.bit_depth, "objects": int(labels.max())})
    return samples, styles


def real_samples(folder: Path, entries: list[Any], settings: dict[str, Any]
                 ) -> tuple[list[Any], dict[str, Any], list[np.ndarray]]:
    """The train split's images as fully annotated samples: each as recorded and once at a random scale.

    Colour images are converted to grey with :func:`napari_unet.core.colour.to_grey`, the conversion
    ``segment`` applies. The random scale of an image is drawn from a generator seeded by ``scale_seed`` and
    the image's id, so it does not depend on the order or number of images. Returns the samples, a summary
    for the provenance, and the equivalent diameters of every training object (for the object size).
    """
    from skimage.transform import resize

    from napari_unet.core.colour import to_grey
    from napari_unet.core.training import Sample

    low, high = np.log(settings["scale_range"])
    dmin, dmax = settings["diameter_range"]
    samples, diameters, scales = [], [], []
    per_modality: dict[str, int] = {}
    for entry in entries:
        image, labels = dsb2018.load(folder, entry)
        grey = to_grey(image) if image.ndim == 3 else image
        sizes = dsb2018.equivalent_diameters(labels)
        median = float(np.median(sizes)) if sizes.size else 20.0
        key = int(dsb2018._key(entry.id)[:12], 16)
        rng = np.random.default_rng([settings["scale_seed"], key])
        scale = float(np.clip(np.exp(rng.uniform(low, high)), dmin / median, dmax / median))
        shape = tuple(max(16, round(n * scale)) for n in labels.shape)
        scaled = resize(grey.astype(np.float32), shape, order=1, preserve_range=True,
                        anti_aliasing=scale < 1).astype(np.float32)
        scaled_labels = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        for img, lab in ((grey, labels), (scaled, scaled_labels)):
            samples.append(Sample(img, lab, mask=np.ones(lab.shape, bool), axes="YX"))
            diameters.append(dsb2018.equivalent_diameters(lab))
        scales.append(scale)
        per_modality[entry.modality] = per_modality.get(entry.modality, 0) + 1
    summary = {
        "images": per_modality,
        "objects": int(sum(e.objects for e in entries)),
        "pixels": int(sum(s.labels.size for s in samples)),
        "scales": {"min": round(min(scales), 3), "median": round(float(np.median(scales)), 3),
                   "max": round(max(scales), 3)},
    }
    return samples, summary, diameters


def _median_diameter(labels: np.ndarray) -> float | None:
    sizes = dsb2018.equivalent_diameters(labels)
    return float(np.median(sizes)) if sizes.size else None


def tuning_images(folder: Path, entries: list[Any], settings: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """What post-processing is chosen on: train-split images (``entries``) and generated images of the
    training distribution (random styles, seeds ``tune_seed + i``; none of them a held-out test style)."""
    pairs = [dsb2018.load(folder, entry) for entry in entries]
    rng = np.random.default_rng(settings["tune_seed"])
    for i in range(settings["tune_generated"]):
        pairs.append(generate_nuclei((settings["image_size"],) * 2, random_style(rng), seed=settings["tune_seed"] + i))
    return pairs


def tune_object_filter(model: Any, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """The post-processing (``ObjectFilter``) with the best AP@0.5 pooled over ``pairs`` (training data).

    First the foreground and seed thresholds of :data:`THRESHOLD_GRID` (with the default size bounds), then the
    size bounds of :data:`FILTER_GRID` with the chosen thresholds. Probabilities are computed once per image;
    each setting only relabels them. Ties (within 0.002) go to the most probable class (no thresholds) and to
    the bounds nearest the previous default, 8 px / 0.2.
    """
    import warnings

    from napari_unet.core.inference import segment
    from napari_unet.core.postprocess import ObjectFilter, instance_labels

    probabilities = []
    for image, truth in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probabilities.append((segment(image, model, device="cpu").probabilities, truth))

    def score(chosen: ObjectFilter) -> float:
        return real_data.ap_f1(real_data.counts((instance_labels(p, chosen), t) for p, t in probabilities))[0]

    def best(results: dict[tuple, float], distance: Any) -> tuple:
        top = max(results.values())
        return min((k for k, v in results.items() if v >= top - 0.002), key=distance)

    thresholds = {(fg, seed): score(ObjectFilter(foreground=fg, seed=seed))
                  for fg in THRESHOLD_GRID["foreground"] for seed in THRESHOLD_GRID["seed"]}
    fg, seed = best(thresholds, lambda k: ((k[0] is not None) + (k[1] is not None), k[0] or 0, k[1] or 0))
    sizes = {(min_size, min_fraction): score(ObjectFilter(min_size, min_fraction, fg, seed))
             for min_size in FILTER_GRID["min_size"] for min_fraction in FILTER_GRID["min_fraction"]}
    min_size, min_fraction = best(sizes, lambda k: (abs(k[0] - 8), abs(k[1] - 0.2)))
    chosen = ObjectFilter(min_size, min_fraction, fg, seed)
    report = {"images": len(pairs),
              "thresholds": {"grid": THRESHOLD_GRID,
                             "ap@0.5 (foreground/seed, None = most probable class)":
                                 {f"{k[0]}/{k[1]}": round(v, 4) for k, v in thresholds.items()}},
              "grid": FILTER_GRID,
              "ap@0.5": {f"{k[0]}/{k[1]}": round(v, 4) for k, v in sizes.items()},
              "chosen": chosen.to_dict()}
    return chosen, report


def empty_samples(count: int, size: int, seed: int) -> list[Any]:
    """``count`` generated images without a nucleus: background, illumination, read and shot noise only.

    They teach the model that a field of noise holds no object however far normalisation stretches it (a
    blank or pure-noise image must give no objects). Styles as :func:`training_samples` draws them, with
    the density set to 0; image seeds ``seed + i``.
    """
    from dataclasses import replace

    from napari_unet.core.training import Sample

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        image, labels = generate_nuclei((size, size), replace(random_style(rng), density=0.0), seed=seed + i)
        samples.append(Sample(image, labels, mask=np.ones(labels.shape, bool), axes="YX"))
    return samples


def print_progress(every_s: float = 60.0):
    """A progress callback that prints validations and, between them, a line every ``every_s`` seconds."""
    last = [-every_s]

    def report(done: int, total: int, message: str) -> None:
        now = time.perf_counter()
        if "val" in message or now - last[0] >= every_s:
            last[0] = now
            print(f"  {message}", flush=True)

    return report


def style_changes(style: NucleiStyle) -> dict[str, Any]:
    """The knobs of ``style`` that differ from ``NucleiStyle()``: a test style in a few readable numbers."""
    default = NucleiStyle()
    return {f.name: getattr(style, f.name) for f in fields(style)
            if getattr(style, f.name) != getattr(default, f.name)}


def metrics_line(table: dict[str, dict[str, dict]]) -> str:
    """The card's one-line summary of the evaluation: model F1 per style, means, and the baseline's means."""
    def mean(who: str, key: str) -> float:
        return float(np.mean([row[who][key] for row in table.values()]))

    styles = ", ".join(f"{name} {row['model']['f1@0.5']:.2f}/{row['model']['f1@0.75']:.2f}"
                       for name, row in table.items())
    return (f"object F1 at IoU 0.5/0.75 on held-out generated styles: {styles}; mean "
            f"{mean('model', 'f1@0.5'):.2f}/{mean('model', 'f1@0.75'):.2f} (classical Otsu + watershed "
            f"baseline: {mean('baseline', 'f1@0.5'):.2f}/{mean('baseline', 'f1@0.75'):.2f})")


def make_readable(folder: Path) -> None:
    """Let every user read the model: it ships in the package, which a system-wide install shares, while
    save_model's private temporary folder leaves it readable by its owner only."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from napari_unet.core.devices import configure_cpu_threads

    threads = configure_cpu_threads(interactive=False)
    if args.evaluate_only:
        from napari_unet.core.models import load_model, save_model

        model = load_model(args.output)
        record = model.config.provenance
        if "script_settings" in record:
            facts = {key: record[key] for key in ("script_settings", "architecture", "initial_weights",
                                                  "object_size", "generator") if key in record}
            if "real_data" in record:
                facts["real_train"] = record["real_data"]["train"]
            elif "real_train" in record:
                facts["real_train"] = record["real_train"]
            # the choice of post-processing is the current script's
            facts["script_settings"] = {**facts["script_settings"],
                                        **{k: DEFAULTS[k] for k in ("tune_every", "tune_generated", "tune_seed")}}
        else:  # a model saved straight after training: the facts about its data are made again
            settings = settings_of(args)
            _, facts = prepare(args, settings)
            facts = {"script_settings": settings, "architecture": model.config.network.to_dict(),
                     "initial_weights": initial_facts(args, settings)[1], **facts}
            model.config.provenance = {**record, **facts}
            save_model(model, args.output, overwrite=True)  # a second --evaluate-only need not make them again
    else:
        facts = train(args, threads)
    finish(args, facts, threads)
    return 0


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the defaults with the command line's choices."""
    settings = {**DEFAULTS, "images": args.images, "steps": args.steps, "minutes": args.minutes,
                "eval_seeds": args.eval_seeds}
    settings["learning_rate"] = args.learning_rate or (settings["init_learning_rate"] if args.init
                                                       else settings["learning_rate"])
    return settings


def prepare(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The training samples, and the facts about them the card records (generator, real data, object size)."""
    print(f"generating {settings['images']} training images of {settings['image_size']} px ...", flush=True)
    start = time.perf_counter()
    samples, styles = training_samples(settings["images"], settings["image_size"], settings["data_seed"])
    generation_s = time.perf_counter() - start
    diameters = [dsb2018.equivalent_diameters(np.asarray(s.labels)) for s in samples]
    samples += empty_samples(settings["empty_images"], settings["image_size"], settings["empty_seed"])
    print(f"  {generation_s:.0f} s, {sum(s['objects'] for s in styles)} nuclei", flush=True)
    facts: dict[str, Any] = {}
    if args.data is not None:
        parts = dsb2018.split(dsb2018.read_index(args.data))
        print(f"reading {len(parts['train'])} real training images from {args.data} ...", flush=True)
        start = time.perf_counter()
        real_list, real, real_diameters = real_samples(args.data, parts["train"], settings)
        real["reading_s"] = round(time.perf_counter() - start, 1)
        print(f"  {real['reading_s']:.0f} s, {real['objects']} nuclei, {real['pixels'] / 1e6:.0f} Mpx with the "
              f"rescaled copies; generated {sum(s.labels.size for s in samples) / 1e6:.0f} Mpx", flush=True)
        samples = real_list + samples
        diameters = real_diameters + diameters
        facts["real_train"] = real
        recorded = np.concatenate(real_diameters[0::2])  # the real images as recorded, not their rescaled copies
    all_diameters = np.concatenate(diameters)
    facts["object_size"] = {
        "median_diameter_px": round(float(np.median(all_diameters)), 1),
        **({"real_median_diameter_px": round(float(np.median(recorded)), 1)} if args.data is not None else {}),
        "quartiles_px": [round(float(q), 1) for q in np.percentile(all_diameters, [25, 75])],
        "objects": int(all_diameters.size),
        "measure": "equivalent diameter (diameter of the disc of the object's area) of every training object, "
                   "real images at their training scales and generated ones"}
    facts["generator"] = {
        "function": "napari_unet.synthetic.generate_nuclei",
        "style": "napari_unet.synthetic.random_style(numpy.random.default_rng(data_seed)), one draw per image",
        "image_seeds": f"data_seed + i for i in range({settings['images']})",
        "empty_images": (f"{settings['empty_images']} images without nuclei: random_style(default_rng("
                         "empty_seed)) with density 0, seeds empty_seed + i"),
        "generation_s": round(generation_s, 1),
        "objects": sum(s["objects"] for s in styles),
        "radius_range": [min(s["radius"] for s in styles), max(s["radius"] for s in styles)],
        "bit_depths": sorted({s["bit_depth"] for s in styles}),
    }
    return samples, facts


def initial_facts(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[Any, dict[str, Any] | str]:
    """The starting model (a copy of --init's, or a random one) and what the card says about it."""
    from napari_unet.core.models import Model, ModelConfig, load_model
    from napari_unet.core.unet import UNetConfig

    if args.init is None:
        # no name: a model trained from scratch has no parent (save_model names it after its folder)
        architecture = {**ARCHITECTURE, "base_features": args.base_features}
        config = ModelConfig(UNetConfig(**architecture), task="instance", description=DESCRIPTION)
        return Model.from_config(config, seed=settings["init_seed"]), \
            f"random, torch seed init_seed={settings['init_seed']}"
    start_model = load_model(args.init)
    start_model.config.name = ""  # the new model is the default's next generation, not a user's version
    weights = (Path(args.init) / "weights.safetensors").read_bytes()
    initial = {"folder": str(args.init), "weights_sha256": hashlib.sha256(weights).hexdigest(),
               "description": start_model.config.description, "history": start_model.config.history}
    start_model.config.history = []
    return start_model, initial


def train(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Make the training data, train, save the trained model to ``args.output``; return what the card needs."""
    import torch

    from napari_unet.core.models import save_model

    settings = settings_of(args)
    samples, facts = prepare(args, settings)
    start_model, initial = initial_facts(args, settings)
    architecture = start_model.config.network.to_dict()
    # channels-last convolutions train about a fifth faster on CPUs; saving stores the usual layout
    start_model.network.to(memory_format=torch.channels_last)
    trained = planned_run(start_model, samples, settings, threads)
    del samples
    facts = {"script_settings": settings, "architecture": architecture, "initial_weights": initial, **facts}
    trained.config.provenance = {**trained.config.provenance, **facts}
    save_model(trained, args.output, overwrite=True)
    return facts


def planned_run(model: Any, samples: list[Any], settings: dict[str, Any], threads: int) -> Any:
    """Train ``model`` for the run the settings plan (steps, with a time cap), on the CPU, and return the trained
    model without its training labels (they are made again from the seeds and the data; they need not ship)."""
    from napari_unet.core.training import finetune

    print(f"training {settings['steps']} steps (cap {settings['minutes']:g} min) on {threads} CPU thread(s) ...",
          flush=True)
    trained = finetune(
        model, samples, time_budget_s=settings["minutes"] * 60, steps=settings["steps"], device="cpu",
        progress=print_progress(), seed=settings["train_seed"], learning_rate=settings["learning_rate"],
        batch_size=settings["batch_size"], patch_shape=settings["patch"], validations=settings["validations"],
        patience=settings["validations"] + 1,  # the schedule is planned for the whole run: never stop early
    )
    trained.attachments.clear()
    run = trained.config.history[-1]
    print(f"  stopped by {run['stopped']} after {run['steps']} steps, {run['time_s'] / 60:.1f} min", flush=True)
    return trained


def finish(args: argparse.Namespace, facts: dict[str, Any], threads: int) -> None:
    """Choose the object filter (train split), evaluate (held-out styles, validation split, speed), write the
    card and provenance, and save the model in ``args.output`` again."""
    from napari_unet.core.models import load_model, save_model
    from napari_unet.core.runner import cpu_has_native_bfloat16

    settings = facts["script_settings"]
    real = facts.get("real_train")
    model = load_model(args.output)  # evaluate exactly what ships
    run = model.config.history[-1]
    parts = dsb2018.split(dsb2018.read_index(args.data)) if args.data is not None else None
    tuning = None
    if parts is not None:
        # chosen for the model's intended images, fluorescence: pooled over all modalities, the many small
        # false objects on colour histology pushed the smallest object size up, at the cost of small nuclei
        subset = [e for e in parts["train"] if e.modality == "fluo"][::settings["tune_every"]]
        pairs = tuning_images(args.data, subset, settings)
        print(f"choosing the object filter on {len(subset)} train images and {settings['tune_generated']} "
              "generated ones ...", flush=True)
        model.config.object_diameter = None  # chosen below; the filter is chosen at the images' own scale
        model.config.object_filter, tuning = tune_object_filter(model, pairs)
        print(f"  {tuning['chosen']} (AP@0.5 on them: {tuning['ap@0.5']})", flush=True)
        # The object size is recorded for segment(..., diameter=D), which resamples an image by
        # object_diameter / D; without a diameter segment works at the image's own scale and only reports the
        # size it found, so the choice leaves every figure below unchanged. Candidates: the median of all
        # training objects (generated ones, many and small, dominate it) and of the real ones as recorded;
        # chosen on the same train images, each segmented with its true median nucleus size as the diameter.
        subset_pairs = pairs[:len(subset)]
        model.config.object_diameter = None
        own = real_data.counts((real_data.model_segmenter(model)(image), truth) for image, truth in subset_pairs)
        choice = {"train images": len(subset_pairs), "ap@0.5 at their own scale": round(real_data.ap_f1(own)[0], 4)}
        scores = {}
        for key in ("median_diameter_px", "real_median_diameter_px"):
            if key not in facts["object_size"]:
                continue
            model.config.object_diameter = facts["object_size"][key]
            given = real_data.counts((real_data.model_segmenter(model, diameter=_median_diameter(truth))(image), truth)
                                     for image, truth in subset_pairs)
            scores[facts["object_size"][key]] = round(real_data.ap_f1(given)[0], 4)
        model.config.object_diameter = max(scores, key=scores.get)
        choice["ap@0.5 with diameter= their true median size, by object_diameter"] = {str(k): v for k, v in scores.items()}
        choice["chosen"] = model.config.object_diameter
        tuning["object_diameter"] = choice
        print(f"  object_diameter: {choice}", flush=True)
    print(f"evaluating on {len(HELD_OUT)} held-out styles ...", flush=True)
    segmenters = {"model": model_segmenter(model), "baseline": classical_segmentation}
    table = evaluate(segmenters, settings["eval_size"], settings["eval_seeds"])
    print(format_table(table, ["model", "baseline"]), flush=True)
    real_table = None
    if parts is not None:
        print(f"evaluating on the {len(parts['validation'])} validation images ...", flush=True)
        real_table = real_data.evaluate({"model": real_data.model_segmenter(model),
                                         "baseline": real_data.baseline_segmenter}, args.data, parts["validation"])
        print(real_data.format_table(real_table, ["model", "baseline"]), flush=True)
    seconds = segment_seconds(model, settings["eval_size"])
    print(f"segment() on one {settings['eval_size']} px image: {seconds:.3f} s", flush=True)

    arithmetic = "bfloat16 (a CPU with native bfloat16)" if cpu_has_native_bfloat16() else "float32"
    generated = (f"{settings['images']} generated {settings['image_size']}x{settings['image_size']} "
                 "images (napari_unet.synthetic.generate_nuclei), each in its own random style "
                 "(synthetic.random_style: nucleus radius 3.5-22 px, 8/12/16 bit, wide ranges of signal, "
                 "blur, noise, background, illumination and density), and "
                 f"{settings['empty_images']} generated images of background and noise without nuclei")
    size = model.config.object_diameter or facts["object_size"]["median_diameter_px"]
    if real is not None:
        counts = ", ".join(f"{n} {m}" for m, n in real["images"].items())
        training_data = (f"the train split ({counts} images; {dsb2018.SPLIT_RULE}) of the {dsb2018.NAME}, "
                         f"licence {dsb2018.LICENCE}, {dsb2018.CITATION}; colour images converted to one "
                         "channel as segment converts them (optical density); each image as recorded and once resampled at a random scale "
                         f"({settings['scale_range'][0]}-{settings['scale_range'][1]}x, median nucleus kept within "
                         f"{settings['diameter_range'][0]:g}-{settings['diameter_range'][1]:g} px); and {generated}")
    else:
        training_data = generated + "; no third-party images"
    start = "fine-tuned from the previous default" if isinstance(facts["initial_weights"], dict) else \
        "from a random initialisation"
    model.config.description = DESCRIPTION if real is not None else DESCRIPTION_GENERATED
    model.config.card = {
        "intended images": INTENDED,
        "training data": training_data,
        "training object size": (f"{size} px, median equivalent diameter of the training objects "
                                 "(provenance.object_size; chosen on the train split), recorded as object_diameter: "
                                 "segment(..., diameter=D) resamples an image by it / D"),
        "metrics": metrics_line(table) + (f"; {real_line(real_table)}" if real_table else ""),
        "speed": f"{seconds:.2f} s for a {settings['eval_size']}x{settings['eval_size']} image on {threads} CPU "
                 f"thread(s) in {arithmetic}, post-processing included",
        "training": (f"{run['steps']} steps in {run['time_s'] / 60:.1f} min on {threads} CPU thread(s), {start} "
                     f"(stopped by {run['stopped']}); rerun with python scripts/train_default_model.py"
                     + (" --data FOLDER" if real is not None else "")
                     + (" --init PREVIOUS" if isinstance(facts["initial_weights"], dict) else "")),
        "limits": LIMITS if real is not None else LIMITS_GENERATED,
    }
    model.config.provenance = {
        **model.config.provenance,
        "script": "scripts/train_default_model.py",
        **{k: v for k, v in facts.items() if k != "real_train"},
        "evaluation": {
            "styles": {name: style_changes(style) for name, style in HELD_OUT.items()},
            "image_size": settings["eval_size"],
            "images_per_style": settings["eval_seeds"],
            "first_seed": TEST_SEED,
            "scores": table,
            "segment_s_512": round(seconds, 4),
            "threads": threads,
        },
    }
    model.config.provenance.pop("real_train", None)
    if real is not None:
        model.config.provenance["real_data"] = {
            "name": dsb2018.NAME, "licence": dsb2018.LICENCE, "citation": dsb2018.CITATION,
            "split": dsb2018.SPLIT_RULE, "train": real,
            "validation_images": {m: sum(e.modality == m for e in parts["validation"]) for m in dsb2018.MODALITIES},
            "object_filter_tuning": tuning,
            "validation_scores": real_table,
            "measure": "objects matched one to one at IoU > 0.5, counts pooled per modality; "
                       "AP@0.5 = TP/(TP+FP+FN), F1@0.5 = 2TP/(2TP+FP+FN) (bench/real_data.py)",
        }
    folder = save_model(model, args.output, overwrite=True)
    make_readable(folder)
    size_mb = (folder / "weights.safetensors").stat().st_size / 2**20
    print(f"saved {folder} ({size_mb:.2f} MB of weights)")


def real_line(table: dict[str, dict]) -> str:
    """The card's summary of the real validation split: AP@0.5 and F1@0.5 per modality, and the baseline's."""
    rows = ", ".join(f"{m} {row['model']['ap@0.5']:.3f}/{row['model']['f1@0.5']:.3f} (baseline "
                     f"{row['baseline']['ap@0.5']:.3f}/{row['baseline']['f1@0.5']:.3f}, {row['images']} images)"
                     for m, row in table.items())
    return f"AP@0.5/F1@0.5 on the validation split of the DSB 2018 data (real images): {rows}"


if __name__ == "__main__":
    sys.exit(main())
