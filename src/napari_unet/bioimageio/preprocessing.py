"""A foreign package's input preprocessing as napari-unet's normalisation: statistics once per image, the same
numbers for every tile.

Every operation of the spec that napari-unet runs is, once its statistics are known, one of four per-channel
maps: affine (``scale_range``, ``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``,
``scale_linear``), ``clip``, ``binarize`` and ``sigmoid``. :meth:`PackageNormalization.statistics` computes
each step's numbers from a sample of the image, passed through the steps before it (so a chain such as
``scale_range`` then ``clip`` sees what the spec says it sees), and :meth:`PackageNormalization.apply` maps a
tile with them. ``ensure_dtype`` to a float type changes nothing (the network gets float32).

Not expressible, and refused with the reason: statistics over only some of the spatial axes (per row or per
plane), ``scale_mean_variance`` (it needs another tensor), operations along a spatial axis, ``ensure_dtype``
to an integer type, and operations napari-unet does not know. Statistics are the image's (all its planes), as
for napari-unet's own models, where ``bioimageio.core`` computes them per sample; percentiles of images with
more than a few million pixels come from a subsample (:func:`~napari_unet.core.normalization.sample_pixels`).
NaN and infinite pixels become 0, as for napari-unet's own models.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from napari_unet.core.errors import InvalidInputError
from napari_unet.core.normalization import sample_pixels

FIXED_EPS = 1e-6
"""Added to the deviation of ``fixed_zero_mean_unit_variance``, whose kwargs have no eps of their own in the spec
(0.5); bioimageio.core adds the same."""


@dataclass(frozen=True)
class Step:
    """One preprocessing operation: ``kind`` is the map (affine, clip, binarize, sigmoid) and ``numbers``
    gives its (C, 2) parameters from a (C, P) sample of what reaches it."""

    name: str  # the spec's op id, for messages and the config
    kind: str
    numbers: Callable[[np.ndarray], np.ndarray]


class PackageNormalization:
    """The preprocessing of a package's input, with :class:`~napari_unet.core.normalization.Normalization`'s
    interface (``statistics`` once per image, ``apply`` per tile)."""

    method = "bioimageio"

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    def statistics(self, image: Any) -> list[np.ndarray]:
        """Each step's (C, 2) numbers for a channel-first array-like ``image``."""
        sample = np.stack([sample_pixels(image[c]) for c in range(image.shape[0])]).astype(np.float64)
        sample = np.where(np.isfinite(sample), sample, np.nan)
        found = []
        for step in self.steps:
            numbers = step.numbers(sample)
            found.append(numbers)
            sample = _map(step.kind, sample, numbers)
        return found

    def apply(self, x: np.ndarray, stats: list[np.ndarray]) -> np.ndarray:
        """Preprocess a channel-first block with numbers from :meth:`statistics`; NaN/Inf become 0."""
        out = np.asarray(x, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            for step, numbers in zip(self.steps, stats):
                out = _map(step.kind, out, numbers.astype(np.float32)).astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps": [step.name for step in self.steps]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackageNormalization) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    def __repr__(self) -> str:
        return f"PackageNormalization({', '.join(step.name for step in self.steps)})"


def _map(kind: str, x: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (x.ndim - 1)
    a, b = numbers[:, 0].reshape(shape), numbers[:, 1].reshape(shape)
    if kind == "affine":
        return x * a + b
    if kind == "clip":
        return np.clip(x, a, b)
    if kind == "binarize":
        return (x > a).astype(x.dtype)
    return 1.0 / (1.0 + np.exp(-x))  # sigmoid


def preprocessing_steps(ops: Sequence[Any], channels: int, spatial: Sequence[str]) -> list[Step]:
    """The steps for a package input's ``preprocessing`` (bioimageio.spec 0.5 descriptions); refuses what
    cannot be expressed, naming it."""
    steps = []
    for op in ops:
        name = str(op.id)
        kwargs = getattr(op, "kwargs", None)
        if name == "ensure_dtype":
            if not str(kwargs.dtype).startswith("float"):
                raise InvalidInputError(f"preprocessing ensure_dtype to {kwargs.dtype} cannot be expressed: "
                                        "napari-unet feeds the network float32")
            continue
        if name == "scale_range":
            joint = _joint(name, kwargs.axes, spatial)
            low, high, eps = kwargs.min_percentile, kwargs.max_percentile, kwargs.eps
            steps.append(Step(name, "affine", lambda s, j=joint, lo=low, hi=high, e=eps: _scale_range(s, j, lo, hi, e)))
        elif name == "zero_mean_unit_variance":
            joint = _joint(name, kwargs.axes, spatial)
            steps.append(Step(name, "affine", lambda s, j=joint, e=kwargs.eps: _standardise(s, j, e)))
        elif name == "fixed_zero_mean_unit_variance":
            mean = _per_channel(name, kwargs, "mean", channels)
            std = _per_channel(name, kwargs, "std", channels)
            gain = 1.0 / (std + getattr(kwargs, "eps", FIXED_EPS))
            steps.append(_constant(name, "affine", gain, -mean * gain))
        elif name == "scale_linear":
            steps.append(_constant(name, "affine", _per_channel(name, kwargs, "gain", channels),
                                   _per_channel(name, kwargs, "offset", channels)))
        elif name == "clip":
            steps.append(_clip(kwargs, channels, spatial))
        elif name == "binarize":
            threshold = _per_channel(name, kwargs, "threshold", channels)
            steps.append(_constant(name, "binarize", threshold, np.zeros(channels)))
        elif name == "sigmoid":
            steps.append(Step(name, "sigmoid", lambda s: np.zeros((s.shape[0], 2))))
        elif name == "scale_mean_variance":
            raise InvalidInputError("preprocessing scale_mean_variance cannot be expressed: it matches the input "
                                    "to another tensor's statistics, and napari-unet gives the network one image")
        else:
            raise InvalidInputError(f"preprocessing {name!r} is not supported by napari-unet (it runs "
                                    "scale_range, zero_mean_unit_variance, fixed_zero_mean_unit_variance, "
                                    "scale_linear, clip, binarize, sigmoid and ensure_dtype); run this package "
                                    "with bioimageio.core")
    return steps


def _joint(name: str, axes: Any, spatial: Sequence[str]) -> bool:
    """Whether statistics are over all channels together (else per channel); refuses partial reductions."""
    if axes is None:
        return True  # the spec's default: all axes jointly
    ids = {str(a) for a in axes} - {"batch"}
    if ids == set(spatial):
        return False
    if ids == set(spatial) | {"channel"}:
        return True
    raise InvalidInputError(f"preprocessing {name} over the axes {sorted(ids)} cannot be expressed: napari-unet "
                            f"computes statistics over all spatial axes ({', '.join(spatial)}) of the image, per "
                            "channel or over all channels")


def _reduce(sample: np.ndarray, joint: bool, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``function`` of the finite values per channel, or of all of them repeated for every channel."""
    if joint:
        values = sample[np.isfinite(sample)]
        return np.full(sample.shape[0], function(values) if values.size else 0.0)
    return np.array([function(row[np.isfinite(row)]) if np.isfinite(row).any() else 0.0 for row in sample])


def _scale_range(sample: np.ndarray, joint: bool, low: float, high: float, eps: float) -> np.ndarray:
    lower = _reduce(sample, joint, lambda v: np.percentile(v, low))
    upper = _reduce(sample, joint, lambda v: np.percentile(v, high))
    gain = 1.0 / (upper - lower + eps)
    return np.stack([gain, -lower * gain], axis=1)


def _standardise(sample: np.ndarray, joint: bool, eps: float) -> np.ndarray:
    mean = _reduce(sample, joint, np.mean)
    std = _reduce(sample, joint, np.std)  # the spec's: the population standard deviation
    gain = 1.0 / (std + eps)
    return np.stack([gain, -mean * gain], axis=1)


def _clip(kwargs: Any, channels: int, spatial: Sequence[str]) -> Step:
    lo, hi = getattr(kwargs, "min", None), getattr(kwargs, "max", None)
    low_p, high_p = getattr(kwargs, "min_percentile", None), getattr(kwargs, "max_percentile", None)
    if low_p is None and high_p is None:
        return _constant("clip", "clip", np.full(channels, -np.inf if lo is None else lo),
                         np.full(channels, np.inf if hi is None else hi))
    joint = _joint("clip", kwargs.axes, spatial)

    def numbers(sample: np.ndarray) -> np.ndarray:
        lower = (_reduce(sample, joint, lambda v: np.percentile(v, low_p)) if low_p is not None
                 else np.full(channels, -np.inf if lo is None else lo))
        upper = (_reduce(sample, joint, lambda v: np.percentile(v, high_p)) if high_p is not None
                 else np.full(channels, np.inf if hi is None else hi))
        return np.stack([lower, upper], axis=1)

    return Step("clip", "clip", numbers)


def _per_channel(name: str, kwargs: Any, key: str, channels: int) -> np.ndarray:
    """A scalar parameter for every channel, or one value per channel given along the channel axis."""
    value = getattr(kwargs, key)
    axis = getattr(kwargs, "axis", None)
    if axis is None:
        return np.full(channels, float(value))
    if str(axis) != "channel" or len(value) != channels:
        raise InvalidInputError(f"preprocessing {name} along the axis {axis!r} cannot be expressed: napari-unet "
                                f"takes parameters per channel ({channels} values along 'channel')")
    return np.asarray(value, dtype=np.float64)


def _constant(name: str, kind: str, first: np.ndarray, second: np.ndarray) -> Step:
    numbers = np.stack([first, second], axis=1)
    return Step(name, kind, lambda sample: numbers)
