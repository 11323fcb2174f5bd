"""Fine-tuning: train a model on a user's corrected labels, as a generator that yields progress per step.

:func:`finetune_steps` is what a napari generator worker runs: it prepares the data, then yields a
:class:`TrainProgress` after every optimisation step and *returns* the tuned model (a new :class:`Model`; the
model passed in is never modified). :func:`finetune` runs the same generator to the end for scripts and the
command line. Training from scratch is the same call with ``Model.from_config(config, seed=...)``.

The recipe is built for a few annotated images and a minute of CPU:

* patches of a size the network accepts, each placed so that an annotated training pixel falls in its output,
  augmented (flips, rotations, elastic deformation, intensity) - see :mod:`napari_unet.core.training_data`;
* targets and the U-Net weight map from :mod:`napari_unet.core.targets`, loss = weighted cross-entropy + soft
  Dice over annotated pixels (:mod:`napari_unet.core.losses`);
* AdamW with a linear warm-up then a cosine decay over the run (measured in steps or in time, whichever limit
  is nearer); batch-norm statistics frozen when the batch is too small to estimate them; bf16 autocast on CPUs
  with native bf16, automatic mixed precision on CUDA;
* a validation block held out of the annotated area when there is enough of it: validation loss, foreground
  Dice and object F1 about 20 times per run; the best state is kept and training stops early on a plateau;
* corrections count: where a sample carries the model's ``prediction`` the user corrected, the pixels they
  changed weigh ``correction_weight`` times more (:data:`CORRECTION_WEIGHT`) and a share of the patches is
  centred on them, so that a few strokes are learned rather than averaged away.

With ``steps`` given and ``time_budget_s=None`` a seed makes a run repeatable; a time budget makes the
number of steps (and so the learning-rate schedule) depend on the machine's speed.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from napari_unet.core.augment import NO_AUGMENTATION, Augmentation
from napari_unet.core.cancel import CancelLike, is_cancelled
from napari_unet.core.devices import resolve_device
from napari_unet.core.errors import Cancelled, InvalidInputError
from napari_unet.core.holdout import validate
from napari_unet.core.llvm_guard import keep_triton_out
from napari_unet.core.losses import segmentation_loss
from napari_unet.core.models import Model
from napari_unet.core.runner import cpu_has_native_bfloat16
from napari_unet.core.training_data import Sample, TrainingData, prepare_data, sample_batch
from napari_unet.core.unet import UNetConfig
from napari_unet.core.versions import annotation_snapshot, package_versions

__all__ = ["Sample", "TrainProgress", "finetune", "finetune_steps"]

Progress = Callable[[int, int, str], Any]
LOSS_WINDOW = 10  # steps averaged for the reported training loss
# The peak learning rate. Adapting to images like the ones a model knows needs small steps; a new kind of
# image, or random weights, needs the network to move further in the same minute (on three histology images,
# 250 steps: AP@0.5 0.18 at 1e-3, 0.38 at 3e-3).
LEARNING_RATE = 1e-3
NEW_KIND_LEARNING_RATE = 3e-3
# Below this validation score (object F1, or foreground Dice for semantic models) before any training, the
# starting model is taken to meet a new kind of image.
NEW_KIND_SCORE = 0.5
# Early validations move too much (and fine-tuning first unsettles a pretrained model) to call a plateau.
MIN_FRACTION_BEFORE_EARLY_STOP = 0.5
# How much more a pixel the user corrected weighs than one they left as the model predicted it (samples with a
# prediction). Measured in tests/core/test_corrections.py: see README, "Corrections weigh more".
CORRECTION_WEIGHT = 5.0


@dataclass
class TrainProgress:
    """What one training step reports. ``val_*`` are set only on steps that ran a validation (and on the
    step-0 record, which validates the starting model); ``loss`` is None on that step-0 record."""

    step: int
    total_steps: int | None  # None when the run is limited by time only
    elapsed_s: float
    time_left_s: float | None
    loss: float | None
    learning_rate: float = 0.0
    val_loss: float | None = None
    val_dice: float | None = None
    val_f1: float | None = None
    val_net: float | None = None  # held_out="corrections": corrected objects right less untouched ones changed
    best: bool = False  # this validation is the best so far: its weights are the ones kept
    message: str = ""

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "message"}


def finetune(
    model: Model, samples: Sequence[Sample], time_budget_s: float | None = 60.0, steps: int | None = None,
    device: str | torch.device = "auto", progress: Progress | None = None, cancel: CancelLike = None, seed: int = 0,
    *, learning_rate: float | None = None, new_kind: bool | None = None, from_scratch: bool = False,
    batch_size: int = 4, patch_shape: int | Sequence[int] | None = None,
    validation_fraction: float = 0.2, augment: bool | Augmentation = True,
    on_cancel: Literal["best", "none"] = "best", weight_decay: float = 1e-4, warmup_fraction: float = 0.05,
    validations: int = 20, patience: int = 5, w0: float = 10.0, sigma: float = 5.0,
    freeze_batchnorm: bool | None = None, mixed_precision: bool | None = None, match_polarity: bool = True,
    correction_weight: float = CORRECTION_WEIGHT, held_out: Literal["annotations", "corrections"] = "annotations",
) -> Model:
    """Fine-tune ``model`` on ``samples`` and return the tuned copy; the options are :func:`finetune_steps`'s."""
    steps_iter = finetune_steps(
        model, samples, time_budget_s, steps, device, progress, cancel, seed, learning_rate=learning_rate,
        new_kind=new_kind, from_scratch=from_scratch, batch_size=batch_size, patch_shape=patch_shape,
        validation_fraction=validation_fraction, augment=augment, on_cancel=on_cancel, weight_decay=weight_decay,
        warmup_fraction=warmup_fraction, validations=validations, patience=patience, w0=w0, sigma=sigma,
        freeze_batchnorm=freeze_batchnorm, mixed_precision=mixed_precision, match_polarity=match_polarity,
        correction_weight=correction_weight, held_out=held_out)
    while True:
        try:
            next(steps_iter)
        except StopIteration as stop:
            return stop.value


def finetune_steps(
    model: Model, samples: Sequence[Sample], time_budget_s: float | None = 60.0, steps: int | None = None,
    device: str | torch.device = "auto", progress: Progress | None = None, cancel: CancelLike = None, seed: int = 0,
    *, learning_rate: float | None = None, new_kind: bool | None = None, from_scratch: bool = False,
    batch_size: int = 4, patch_shape: int | Sequence[int] | None = None,
    validation_fraction: float = 0.2, augment: bool | Augmentation = True,
    on_cancel: Literal["best", "none"] = "best", weight_decay: float = 1e-4, warmup_fraction: float = 0.05,
    validations: int = 20, patience: int = 5, w0: float = 10.0, sigma: float = 5.0,
    freeze_batchnorm: bool | None = None, mixed_precision: bool | None = None, match_polarity: bool = True,
    correction_weight: float = CORRECTION_WEIGHT, held_out: Literal["annotations", "corrections"] = "annotations",
) -> Generator[TrainProgress, None, Model]:
    """Train a copy of ``model`` on ``samples``, yielding a :class:`TrainProgress` per step; return the copy.

    ``time_budget_s`` and ``steps`` both limit the run (None lifts a limit; at least one is needed).
    ``learning_rate`` is the peak rate of the schedule; None picks it: :data:`LEARNING_RATE`, or
    :data:`NEW_KIND_LEARNING_RATE` for a ``new_kind`` of image. ``new_kind=None`` decides that from the data:
    objects darker than their background (flipped, see ``match_polarity``), a starting model that scores below
    :data:`NEW_KIND_SCORE` on the validation block before training, or ``from_scratch``, which starts from
    random weights of the same architecture instead of the model's.
    ``progress(done, total, message)`` is also called per step (``done``/``total`` in steps, or in seconds of
    the time budget). When ``cancel`` is set the run stops before its next step: ``on_cancel="best"``
    returns the best model so far (the validated best, else the latest weights), ``"none"`` raises
    :class:`Cancelled`. ``freeze_batchnorm`` (default: when ``batch_size`` < 4 and the network has
    statistics from earlier training) keeps batch-norm statistics as they are; ``mixed_precision``
    (default: on CUDA, and on CPUs with native bf16) trains in reduced precision. ``w0`` and ``sigma`` are
    the weight map's separation term (instance models); ``match_polarity`` flips images whose annotated objects
    are darker than their background, and the tuned model inverts its input from then on (dark nuclei of
    histology or brightfield become the bright ones a fluorescence model knows); ``validations`` how many
    times a run validates;
    ``patience`` how many validations without improvement end it early (not before half of the run).
    ``correction_weight`` (at least 1) multiplies the loss weight of the pixels a user changed, in samples
    given with the ``prediction`` they corrected, and of a margin of 2 px around them; 1 turns correction
    weighting off (the predictions are then ignored). The count of corrected pixels and the weight are recorded
    in the tuned model's history and settings. ``held_out="corrections"`` (Live mode) judges the run only on
    what the user vouched for where labels are a corrected prediction without a reviewed-area mask: the
    held-out block goes where the corrections are and scores only the objects the user changed (none held
    out: no held-out score); see :mod:`napari_unet.core.holdout`.
    """
    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(model, Model) and not isinstance(model.config.network, UNetConfig):
        raise InvalidInputError("only napari-unet's own U-Nets can be fine-tuned; this model is not one (for example "
                                "a network from another tool's bioimage.io package)")
    _check_options(time_budget_s, steps, batch_size, LEARNING_RATE if learning_rate is None else learning_rate,
                   validation_fraction, validations, on_cancel)
    _check_correction_weight(correction_weight)
    if held_out not in ("annotations", "corrections"):
        raise InvalidInputError(f"held_out must be 'annotations' or 'corrections', not {held_out!r}")
    augmentation = augment if isinstance(augment, Augmentation) else (Augmentation() if augment else NO_AUGMENTATION)
    rng = np.random.default_rng(seed)
    data = prepare_data(model, samples, patch_shape, validation_fraction, w0, sigma, match_polarity,
                        correction_weight, held_out)
    target = resolve_device(device)
    tuned = model.copy()
    tuned.path, tuned.history = None, []
    if from_scratch:
        tuned.network = Model.from_config(model.config, seed=seed).network
    if data.inverted:
        normalization = tuned.config.normalization
        tuned.config.normalization = dataclasses.replace(normalization, invert=not normalization.invert)
    network = tuned.network.to(target)
    keep_triton_out()  # the optimizer imports torch._dynamo, and with it Triton, which can crash beside OpenGL
    # the rate is set before every step (the schedule); a new kind of image is known only after validating
    optimizer = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=weight_decay)
    freeze = _freeze_batchnorm(network, batch_size) if freeze_batchnorm is None else freeze_batchnorm
    precision = _precision(target, mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)

    # The time budget is for training: preparing the data and validating the start do not use it up (on a busy
    # machine they could take all of a short budget, and not one step would be made).
    budget_started = [time.perf_counter()]

    def elapsed() -> float:
        return time.perf_counter() - budget_started[0]

    def fraction_done(step: int) -> float:
        done = step / steps if steps else 0.0
        return max(done, elapsed() / time_budget_s) if time_budget_s else done

    def report(record: TrainProgress) -> TrainProgress:
        tuned.history.append(record.as_record())
        if progress is not None:
            if steps and not time_budget_s:
                progress(record.step, steps, record.message)
            else:
                total = math.ceil(time_budget_s)
                progress(min(int(record.elapsed_s), total), total, record.message)
        return record

    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {}
    best_loss, best_step, since_best, next_check = math.inf, 0, 0, 1.0 / validations
    step, losses, reason = 0, [], "steps"
    start_metrics: dict[str, float] = {}
    if data.validation is not None:
        start_metrics = validate(network, data.validation, target)
        best_state, best_loss, best_metrics = _state(network), start_metrics["val_loss"], start_metrics
        yield report(_record(0, steps, elapsed(), time_budget_s, [], 0.0, start_metrics, True))
    if new_kind is None:
        new_kind = from_scratch or data.inverted or _struggles(start_metrics, model.config.task)
    if learning_rate is None:
        learning_rate = NEW_KIND_LEARNING_RATE if new_kind else LEARNING_RATE
    prepare_s = time.perf_counter() - started
    budget_started[0] = time.perf_counter()
    while True:
        done = fraction_done(step)
        if done >= 1.0:
            reason = "time" if not steps or step < steps else "steps"
            break
        if is_cancelled(cancel):
            if on_cancel == "none":
                raise Cancelled("fine-tuning was cancelled; the starting model is unchanged")
            reason = "cancelled"
            break
        lr = learning_rate * _schedule(done, warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(data, batch_size, rng, augmentation, target)
        loss = _train_step(network, optimizer, scaler, batch, freeze, precision)
        if not math.isfinite(loss):
            raise InvalidInputError(f"training diverged at step {step + 1} (loss {loss}); lower the learning "
                                    f"rate (now {learning_rate:g})")
        step += 1
        losses.append(loss)
        metrics, is_best = {}, False
        done = fraction_done(step)
        if data.validation is not None and (done >= next_check or done >= 1.0):
            next_check = (math.floor(done * validations) + 1) / validations
            metrics = validate(network, data.validation, target)
            if metrics["val_loss"] < best_loss * (1 - 1e-3):
                best_state, best_loss, best_metrics, since_best, is_best = _state(network), metrics["val_loss"], \
                    metrics, 0, True
                best_step = step
            else:
                since_best += 1
        yield report(_record(step, steps, elapsed(), time_budget_s, losses, lr, metrics, is_best))
        if since_best >= patience and done >= MIN_FRACTION_BEFORE_EARLY_STOP:
            reason = "plateau"
            break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.to("cpu").eval()
    settings = {"learning_rate": learning_rate, "new_kind": new_kind, "from_scratch": from_scratch,
                "batch_size": batch_size, "patch_shape": list(data.input_shape),
                "validation_fraction": validation_fraction, "augment": augmentation != NO_AUGMENTATION, "w0": w0,
                "sigma": sigma, "freeze_batchnorm": freeze, "inverted_input": data.inverted,
                "annotated_object_diameters": data.object_sizes,
                "mixed_precision": str(precision).replace("torch.", "") if precision else None, "device": str(target),
                "prepare_s": round(prepare_s, 2), "correction_weight": float(correction_weight),
                "corrected_pixels": data.corrected_pixels, "held_out": held_out}
    # with a validation block, the kept state is the start itself unless training beat it there
    improved = best_step > 0 if data.validation is not None and not from_scratch else None
    _record_provenance(tuned, model, data, seed, step, elapsed(), reason, started_at, losses, best_metrics, settings,
                       improved)
    tuned.attachments["annotations.npz"] = annotation_snapshot(data.annotations)
    return tuned


# --------------------------------------------------------------------------------------------------------------
# Options, schedule, precision
# --------------------------------------------------------------------------------------------------------------


def _check_options(time_budget_s: float | None, steps: int | None, batch_size: int, learning_rate: float,
                   validation_fraction: float, validations: int, on_cancel: str) -> None:
    if time_budget_s is None and steps is None:
        raise InvalidInputError("give a time budget (time_budget_s) or a number of steps, or both")
    if time_budget_s is not None and not 0 < time_budget_s < math.inf:
        raise InvalidInputError(f"time_budget_s must be positive, finite seconds (None for no limit), not "
                                f"{time_budget_s!r}")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise InvalidInputError(f"steps must be a positive whole number, not {steps!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive whole number, not {batch_size!r}")
    if not learning_rate > 0:
        raise InvalidInputError(f"learning_rate must be positive, not {learning_rate!r}")
    if not 0 <= validation_fraction <= 0.5:
        raise InvalidInputError(f"validation_fraction must be between 0 (no validation) and 0.5, not "
                                f"{validation_fraction!r}")
    if not isinstance(validations, (int, np.integer)) or validations < 1:
        raise InvalidInputError(f"validations (how often a run validates) must be at least 1, not {validations!r}; "
                                "use validation_fraction=0 for no validation")
    if on_cancel not in ("best", "none"):
        raise InvalidInputError(f"on_cancel must be 'best' (return the best model so far) or 'none' (raise "
                                f"Cancelled), not {on_cancel!r}")


def _check_correction_weight(weight: float) -> None:
    if not (isinstance(weight, (int, float, np.integer, np.floating)) and math.isfinite(weight) and weight >= 1):
        raise InvalidInputError(f"correction_weight must be a number of at least 1 (1 = corrections weigh as much "
                                f"as the rest), not {weight!r}")


def _struggles(metrics: dict[str, float], task: str) -> bool:
    """Whether the starting model's validation score says it meets a new kind of image."""
    score = metrics.get("val_f1" if task == "instance" else "val_dice")
    return score is not None and score < NEW_KIND_SCORE


def _schedule(done: float, warmup: float) -> float:
    """Learning-rate factor: linear warm-up from 10 % over the first ``warmup`` of the run, then cosine."""
    if done < warmup:
        return 0.1 + 0.9 * done / warmup
    decay = (done - warmup) / max(1.0 - warmup, 1e-9)
    return max(0.01, 0.5 * (1.0 + math.cos(math.pi * min(decay, 1.0))))


def _precision(device: torch.device, requested: bool | None) -> torch.dtype | None:
    """The autocast dtype, or None for float32 training."""
    if device.type == "cuda":
        if requested is False:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if requested is None:
            requested = cpu_has_native_bfloat16()
        return torch.bfloat16 if requested else None
    return None  # MPS and others: float32


def _train_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                batch: tuple[torch.Tensor, ...], freeze: bool, precision: torch.dtype | None) -> float:
    """One optimisation step on a batch; returns the loss (not finite: nothing was updated)."""
    images, classes, weights, annotated = batch
    network.train()
    if freeze:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    device = images.device.type
    with torch.autocast(device, dtype=precision or torch.float32, enabled=precision is not None):
        logits = network(images)
    loss = segmentation_loss(logits, classes, weights, annotated)
    if not torch.isfinite(loss):
        return float(loss.item())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.item())


def _freeze_batchnorm(network: torch.nn.Module, batch_size: int) -> bool:
    """Freeze batch-norm statistics when a batch is too small to estimate them (fewer than 4 patches) and
    the network already has statistics from earlier training; a fresh network must estimate its own."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return batch_size < 4 and bool(norms) and all(int(m.num_batches_tracked) > 0 for m in norms)


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _record(step: int, steps: int | None, elapsed: float, budget: float | None, losses: list[float], lr: float,
            metrics: dict[str, float], best: bool) -> TrainProgress:
    """The step's report; its message shows the loss averaged over the last few steps, which is less noisy."""
    left = [budget - elapsed] if budget else []
    if steps and step:
        left.append((steps - step) * elapsed / step)
    parts = [f"step {step}" + (f"/{steps}" if steps else "")]
    if left:
        parts.append(f"{max(0.0, min(left)):.0f} s left")
    if losses:
        parts.append(f"loss {np.mean(losses[-LOSS_WINDOW:]):.4f}")
    parts += [f"{name.replace('_', ' ')} {value:.3f}" for name, value in metrics.items()]
    return TrainProgress(step=step, total_steps=steps, elapsed_s=elapsed,
                         time_left_s=max(0.0, min(left)) if left else None,
                         loss=losses[-1] if losses else None, learning_rate=lr,
                         val_loss=metrics.get("val_loss"), val_dice=metrics.get("val_dice"),
                         val_f1=metrics.get("val_f1"), val_net=metrics.get("val_net"), best=best,
                         message=", ".join(parts))


# --------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------


def _record_provenance(tuned: Model, parent: Model, data: TrainingData, seed: int, steps: int, seconds: float,
                       reason: str, started_at: _dt.datetime, losses: list[float], best: dict[str, float],
                       settings: dict[str, Any], improved: bool | None) -> None:
    """One history entry and the provenance of the tuned model (what it came from and what it learned on).
    ``improved`` is False when training never beat the starting model on the validation block, so that the
    kept weights are the starting model's: the version says so, and the widget does not select it."""
    metrics = {"train_loss": round(float(np.mean(losses[-LOSS_WINDOW:])), 5)} if losses else {}
    metrics.update({k: round(float(v), 5) for k, v in best.items()})
    summary = {
        "date": started_at.isoformat(timespec="seconds"),
        "parent": parent.name or None,
        "steps": steps,
        "time_s": round(seconds, 2),
        "stopped": reason,
        "samples": len({item.sample_index for item in data.items}),
        "annotated_pixels": data.annotated_pixels,
        "corrected_pixels": data.corrected_pixels,
        "metrics": metrics,
        "seed": seed,
        "data_fingerprint": data.fingerprint,
    }
    if data.corrected_pixels:  # the user's corrections of a prediction, and what they weighed
        summary["correction_weight"] = settings["correction_weight"]
    if improved is not None:
        summary["improved"] = improved
    tuned.config.history = [*parent.config.history, summary]
    tuned.config.provenance = {
        **summary,
        "parent_path": str(parent.path) if parent.path else None,
        "versions": package_versions(),
        "settings": settings,
    }
