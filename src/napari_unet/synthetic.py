"""Synthetic fluorescence-nuclei images with exact instance labels.

The project needs images whose ground truth is known exactly: for its tests, for the plugin's sample data,
for training the bundled default model and for benchmarks. Real annotated data would be better but cannot
ship with a package or be generated at any shape and seed, so this module imitates the look of a nuclear
stain (DAPI, Hoechst) as a widefield or confocal microscope records it:

1. *Objects.* Nuclei are ellipses (ellipsoids in 3D) with a random orientation, a mild elongation and a
   slightly irregular outline (a low-frequency radial perturbation). They are placed at random or, with the
   style's ``clustering`` probability, against an existing nucleus, so that clusters of touching nuclei
   occur. Objects may touch but never overlap: a later nucleus only takes pixels that are still free, so
   touching nuclei meet along a flattened contact line, as real ones do.
2. *Stain.* Each nucleus has its own brightness (log-normal spread), a few percent are small, bright,
   elongated mitotic nuclei, the stain is brighter in the thicker middle than at the rim, the interior has a
   smooth chromatin texture, and dimmer nucleoli.
3. *Optics and camera.* A gaussian PSF blurs the stain (three times wider along Z than in the plane, in
   physical units, for stacks), a smooth illumination field dims part of the field of view, a background
   offset is added, then Poisson shot noise, gaussian read noise and quantisation to the bit depth.

All intensity knobs are fractions of the detector's full scale, so one style gives the same look at any bit
depth. All lengths are in pixels at ``scale=1``; ``scale`` resamples the whole scene, as a different
objective or camera binning would. Labels are drawn before any intensity is rendered and every intensity is
rendered from the labels, so a nucleus is labelled if and only if it is in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["NucleiStyle", "STYLES", "generate_nuclei", "random_style"]

_MAX_OVERLAP = 0.25
"""A candidate nucleus whose ellipse would cover more than this fraction of already labelled pixels is
rejected: it would be left as a thin crescent, which nuclei in a monolayer do not look like."""

_MIN_VISIBLE = 0.25
"""A nucleus cut by the image border or by its neighbours keeps at least this fraction of its full area;
smaller slivers are dropped, since neither a person nor a network could tell what they are."""

_MIN_PIXELS = 6
"""Absolute floor on the size of a labelled object, in pixels (voxels in 3D)."""


@dataclass(frozen=True)
class NucleiStyle:
    """Every knob of a synthetic nuclei image.

    The defaults give a typical 8-bit widefield image of a cell monolayer at 20-40x. Lengths are in pixels
    (times ``scale``); intensities are fractions of the detector's full scale.
    """

    radius: float = 9.0
    """Mean nucleus radius in pixels at ``scale=1`` (the radius of a circle of the same area)."""
    radius_cv: float = 0.2
    """Spread of radii, as a coefficient of variation."""
    elongation: tuple[float, float] = (1.0, 1.5)
    """Range of the ratio of the long to the short in-plane axis, sampled uniformly."""
    irregularity: float = 0.06
    """Amplitude of the low-frequency radial perturbation of the outline (0 = perfect ellipses)."""
    density: float = 0.22
    """Target fraction of the image area (volume in 3D) covered by nuclei."""
    clustering: float = 0.3
    """Probability that a nucleus is placed against an existing one rather than anywhere."""
    signal: float = 0.35
    """Mean brightness of an interphase nucleus above background."""
    brightness_cv: float = 0.25
    """Spread of brightness between nuclei (log-normal), the heterogeneity of DNA content and staining."""
    mitotic_fraction: float = 0.04
    """Fraction of nuclei that are mitotic: smaller, more elongated, brighter."""
    mitotic_gain: float = 2.5
    """Brightness of a mitotic nucleus relative to an average interphase one."""
    dome: float = 0.3
    """How much dimmer the rim of a nucleus is than its middle (0 = flat, 1 = dark rim)."""
    texture: float = 0.2
    """Strength of the interior chromatin texture (relative standard deviation of the stain)."""
    texture_scale: float = 1.5
    """Correlation length of the texture, in pixels."""
    nucleoli: float = 1.5
    """Mean number of nucleoli per nucleus."""
    nucleolus_depth: float = 0.35
    """How much of the stain a nucleolus removes at its centre."""
    blur: float = 1.0
    """Lateral sigma of the gaussian PSF, in pixels."""
    illumination: float = 0.2
    """Depth of the uneven illumination: the darkest part of the field receives ``1 - illumination``."""
    background: float = 0.06
    """Background level (camera offset plus out-of-focus and autofluorescence light)."""
    photon_scale: float = 800.0
    """Expected photons at full scale: the larger, the less shot noise."""
    read_noise: float = 0.006
    """Standard deviation of the camera's gaussian read noise."""
    bit_depth: int = 8
    """8 (uint8), 12 (uint16 with maximum 4095) or 16 (uint16)."""
    scale: float = 1.0
    """Resampling factor of the whole scene: multiplies radii, texture, nucleolus size and blur."""
    z_anisotropy: float = 2.0
    """3D only: Z step divided by the lateral pixel size."""
    flatness: float = 0.7
    """3D only: height of a nucleus relative to its in-plane radius (adherent nuclei are flat)."""
    axial_blur: float = 3.0
    """3D only: axial PSF sigma relative to the lateral one, in physical units."""
    depth_attenuation: float = 0.0
    """3D only: fraction of the signal lost from the first plane to the last (light absorbed and scattered deeper
    in the sample), falling linearly with depth."""

    def __post_init__(self) -> None:
        """Reject values that would silently produce a meaningless image."""
        if self.bit_depth not in (8, 12, 16):
            raise ValueError(f"bit_depth must be 8, 12 or 16, not {self.bit_depth!r}")
        positive = ("radius", "photon_scale", "scale", "z_anisotropy", "flatness", "texture_scale",
                    "mitotic_gain", "axial_blur")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"NucleiStyle.{name} must be positive, not {getattr(self, name)!r}")
        fractions = ("density", "clustering", "mitotic_fraction", "dome", "nucleolus_depth", "illumination",
                     "depth_attenuation")
        for name in fractions:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"NucleiStyle.{name} must lie in [0, 1], not {getattr(self, name)!r}")
        non_negative = ("radius_cv", "irregularity", "signal", "brightness_cv", "texture", "nucleoli",
                        "blur", "background", "read_noise")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"NucleiStyle.{name} must not be negative, not {getattr(self, name)!r}")
        low, high = self.elongation
        if not 1 <= low <= high:
            raise ValueError(f"NucleiStyle.elongation must be a range (low, high) with 1 <= low <= high, "
                             f"not {self.elongation!r}")


STYLES: dict[str, NucleiStyle] = {
    # The training look: 8-bit widefield, medium nuclei, some clusters.
    "default": NucleiStyle(),
    # A confluent culture: nuclei crowd and touch, the case the U-Net's boundary class exists for.
    "dense": NucleiStyle(radius=8.0, density=0.5, clustering=0.85, irregularity=0.08, elongation=(1.0, 1.7)),
    # Low signal-to-noise: a weak stain or short exposure, recorded at 12 bit.
    "sparse_dim": NucleiStyle(density=0.07, clustering=0.1, signal=0.04, background=0.04, photon_scale=300.0,
                              read_noise=0.008, texture=0.15, bit_depth=12),
    # A high-magnification objective slightly out of focus, with strong vignetting.
    "large_blurry": NucleiStyle(radius=9.0, scale=2.0, density=0.3, blur=1.6, illumination=0.5,
                                background=0.1, texture=0.25),
    # A low magnification on a 16-bit sCMOS: small nuclei, a few thousand counts, bright mitoses.
    "small_bright": NucleiStyle(radius=4.5, radius_cv=0.25, density=0.18, signal=0.06, brightness_cv=0.5,
                                mitotic_fraction=0.12, mitotic_gain=4.0, blur=0.8, background=0.004,
                                photon_scale=20000.0, read_noise=0.0005, texture=0.15, nucleoli=0.5,
                                bit_depth=16),
}


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A scale-like quantity (size, signal, photons), equally likely in every octave of its range."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def random_style(rng: np.random.Generator) -> NucleiStyle:
    """Sample a style from broad ranges, for training with domain randomisation.

    A model trained on one look learns that look's intensities and sizes; sampling the knobs widely (sizes
    over a factor of six, signal over a factor of fifteen, every bit depth, weak to strong blur and noise)
    forces it to learn what a nucleus is instead. The blur is drawn relative to the radius, as a microscope's
    PSF and its nuclei scale together with magnification, so that small nuclei are never blurred away. The
    photon scale is kept high enough that a typical nucleus collects ten photons or more: as dim and noisy as
    real low-light images get, yet never pure noise.
    """
    signal = _log_uniform(rng, 0.04, 0.6)
    radius = _log_uniform(rng, 3.5, 22.0)
    long_axis = rng.uniform(1.1, 2.0)
    return NucleiStyle(
        radius=radius,
        radius_cv=rng.uniform(0.1, 0.35),
        elongation=(1.0, long_axis),
        irregularity=rng.uniform(0.0, 0.12),
        density=rng.uniform(0.05, 0.5),
        clustering=rng.uniform(0.0, 0.9),
        signal=signal,
        brightness_cv=rng.uniform(0.1, 0.6),
        mitotic_fraction=rng.uniform(0.0, 0.12),
        mitotic_gain=rng.uniform(1.5, 4.0),
        dome=rng.uniform(0.0, 0.6),
        texture=rng.uniform(0.0, 0.4),
        texture_scale=rng.uniform(1.0, 3.0),
        nucleoli=rng.uniform(0.0, 3.0),
        nucleolus_depth=rng.uniform(0.0, 0.5),
        blur=max(0.5, radius * rng.uniform(0.05, 0.2)),  # the PSF in pixels grows with magnification
        illumination=rng.uniform(0.0, 0.6),
        background=_log_uniform(rng, 0.003, 0.15),
        photon_scale=max(_log_uniform(rng, 150.0, 30000.0), 10.0 / signal),
        read_noise=_log_uniform(rng, 0.0005, 0.02),
        bit_depth=int(rng.choice([8, 12, 16])),
        z_anisotropy=rng.uniform(1.0, 4.0),
        flatness=rng.uniform(0.5, 1.0),
    )


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape as a tuple of ints, or a ValueError that says what a valid shape is."""
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a tuple (Y, X) or (Z, Y, X) of positive integers, not {shape!r}") from None
    if len(dims) not in (2, 3) or any(n <= 0 for n in dims) or dims != tuple(shape):
        raise ValueError(f"shape must be (Y, X) for a 2D image or (Z, Y, X) for a 3D stack, with positive "
                         f"integer sizes; got {shape!r}")
    return dims


def _resolve_style(style: NucleiStyle | str) -> NucleiStyle:
    if isinstance(style, NucleiStyle):
        return style
    if style in STYLES:
        return STYLES[style]
    raise ValueError(f"unknown style {style!r}; use one of {sorted(STYLES)} or a NucleiStyle")


@dataclass(frozen=True)
class _Nucleus:
    """One sampled nucleus in physical units (lateral pixels), before it meets the pixel grid."""

    centre: np.ndarray  # physical coordinates, (z, y, x) or (y, x)
    rotation: np.ndarray  # columns are the object's axes in image coordinates
    semi_axes: np.ndarray  # along the rotation's columns
    directions: np.ndarray  # (terms, ndim) unit vectors of the outline perturbation, object frame
    amplitudes: np.ndarray  # (terms,) |perturbation| <= sum(|amplitudes|)
    coefficients: np.ndarray  # (terms, 5) power series of amplitude * T_k, lowest degree first
    brightness: float


_CHEBYSHEV = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [-1, 0, 2, 0, 0], [0, -3, 0, 4, 0], [1, 0, -8, 0, 8]],
                      dtype=float)
"""Power-series coefficients of the Chebyshev polynomials T_0..T_4. The outline perturbation is
sum_i a_i T_k(cos angle to v_i): in 2D, T_k(cos t) = cos(k t) is the k-th angular harmonic, and the same
formula gives smooth zonal harmonics in 3D."""


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A random in-plane rotation; in 3D with a small tilt out of the plane, as for nuclei lying on glass."""
    angle = rng.uniform(0.0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    if ndim == 2:
        return np.array([[c, -s], [s, c]])
    in_plane = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    tilt_a, tilt_b = rng.normal(0.0, 0.25, size=2)
    about_y = np.array([[math.cos(tilt_a), 0, -math.sin(tilt_a)], [0, 1, 0],
                        [math.sin(tilt_a), 0, math.cos(tilt_a)]])
    about_x = np.array([[math.cos(tilt_b), -math.sin(tilt_b), 0], [math.sin(tilt_b), math.cos(tilt_b), 0],
                        [0, 0, 1]])
    return in_plane @ about_y @ about_x


@dataclass(frozen=True)
class _Size:
    """The cheap first draw of a nucleus: enough to place it, before its shape is worth sampling."""

    radius: float
    elongation: float
    brightness: float


def _sample_size(rng: np.random.Generator, style: NucleiStyle) -> _Size:
    """Radius, elongation and brightness; mitotic nuclei are smaller, more elongated and brighter."""
    radius = style.radius * style.scale * max(0.3, 1.0 + style.radius_cv * rng.standard_normal())
    elongation = rng.uniform(*style.elongation)
    spread = style.brightness_cv
    brightness = style.signal * min(max(rng.lognormal(-0.5 * spread**2, spread), 0.35), 3.0)
    if rng.random() < style.mitotic_fraction:
        radius *= 0.6
        elongation = max(elongation, rng.uniform(1.5, 2.2))
        brightness *= style.mitotic_gain
    return _Size(radius, elongation, brightness)


def _sample_centre(rng: np.random.Generator, style: NucleiStyle, radius: float, extent: np.ndarray,
                   placed: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """A position anywhere (slightly beyond the border, so that nuclei are cut by it) or against a neighbour.

    ``extent`` is the physical size of the image; ``placed`` holds (centre, radius) of accepted nuclei, the
    anchors for clustering. A clustered nucleus is put at 75-100% of the sum of the radii from its anchor,
    so it touches it along a flattened contact.
    """
    ndim = extent.size
    if placed and rng.random() < style.clustering:
        anchor, anchor_radius = placed[rng.integers(len(placed))]
        offset = rng.standard_normal(ndim)
        if ndim == 3:
            offset[0] *= style.flatness
        offset *= (anchor_radius + radius) * rng.uniform(0.75, 1.0) / math.sqrt(offset @ offset)
        return anchor + offset
    margin = 0.3 * radius
    return rng.uniform(-margin, extent + margin)


def _sample_shape(rng: np.random.Generator, style: NucleiStyle, size: _Size, centre: np.ndarray) -> _Nucleus:
    """Orientation, semi-axes and outline perturbation of a nucleus whose size and place are drawn."""
    ndim = centre.size
    in_plane = size.radius * np.array([math.sqrt(size.elongation), 1.0 / math.sqrt(size.elongation)])
    semi_axes = in_plane if ndim == 2 else np.concatenate([[size.radius * style.flatness], in_plane])
    orders = np.repeat(np.arange(2, 5), 1 if ndim == 2 else 2)
    directions = rng.standard_normal((orders.size, ndim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    amplitudes = rng.normal(0.0, style.irregularity / (orders - 1))
    total = np.abs(amplitudes).sum()
    if total > 0.5:  # keep the outline star-shaped and the object one piece
        amplitudes *= 0.5 / total
    coefficients = amplitudes[:, None] * _CHEBYSHEV[orders]
    return _Nucleus(centre, _rotation(rng, ndim), semi_axes, directions, amplitudes, coefficients,
                    size.brightness)


def _horner(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evaluate one polynomial per term (row of ``coefficients``) on that term's slice of ``x``."""
    expand = (slice(None),) + (None,) * (x.ndim - 1)
    result = np.broadcast_to(coefficients[:, -1][expand], x.shape).copy()
    for column in coefficients.T[-2::-1]:
        result *= x
        result += column[expand]
    return result


def _rasterise(nucleus: _Nucleus, shape: tuple[int, ...], spacing: np.ndarray
               ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """The nucleus's mask and radial stain profile on its bounding box, clipped to the image.

    Returns ``None`` when the box misses the image. Only the box is computed, so the cost of an object
    does not depend on the size of the image.
    """
    reach = nucleus.semi_axes.max() * (1.0 + np.abs(nucleus.amplitudes).sum()) + 1.0
    centre_px = nucleus.centre / spacing
    lo = np.maximum(np.floor(centre_px - reach / spacing), 0).astype(int)
    hi = np.minimum(np.ceil(centre_px + reach / spacing) + 1, shape).astype(int)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grids = [(g - c) * d for g, c, d in zip(np.ogrid[box], centre_px, spacing)]
    # object-frame coordinates scaled by the semi-axes: the nucleus is the unit ball, up to perturbation
    unit = [sum(nucleus.rotation[i, j] * grids[i] for i in range(len(grids))) / nucleus.semi_axes[j]
            for j in range(len(grids))]
    rho = np.sqrt(sum(u * u for u in unit))
    safe = np.maximum(rho, 1e-9)
    cosines = np.stack([sum(v[j] * unit[j] for j in range(len(unit))) / safe for v in nucleus.directions])
    outline = _horner(nucleus.coefficients, cosines).sum(axis=0) + 1.0
    relative = rho / outline
    return box, relative <= 1.0, relative


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep one connected piece (face connectivity), so that every label is one object."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def _centre_taken(labels: np.ndarray, centre_px: np.ndarray) -> bool:
    """Whether a candidate's centre lies in an existing nucleus: a cheap rejection before rasterising."""
    index = tuple(np.rint(centre_px).astype(int))
    inside = all(0 <= i < n for i, n in zip(index, labels.shape))
    return inside and bool(labels[index])


def _place_nuclei(rng: np.random.Generator, style: NucleiStyle, shape: tuple[int, ...],
                  spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw nuclei until the target density is reached; return labels and the clean, untextured stain."""
    labels = np.zeros(shape, np.int32)
    stain = np.zeros(shape, np.float32)
    extent = np.asarray(shape) * spacing
    voxel_volume = float(np.prod(spacing))
    unit_ball = math.pi if len(shape) == 2 else 4.0 * math.pi / 3.0
    radius = style.radius * style.scale
    mean_volume = unit_ball * radius**2 * (radius * style.flatness if len(shape) == 3 else 1.0)
    target = style.density * labels.size
    # enough tries for the densest styles, bounded so that an unreachable density cannot loop for ever
    max_attempts = 100 + int(20 * target * voxel_volume / mean_volume)
    placed: list[tuple[np.ndarray, float]] = []
    covered = 0
    for _ in range(max_attempts):
        if covered >= target:
            break
        size = _sample_size(rng, style)
        centre = _sample_centre(rng, style, size.radius, extent, placed)
        if _centre_taken(labels, centre / spacing):
            continue
        nucleus = _sample_shape(rng, style, size, centre)
        drawn = _rasterise(nucleus, shape, spacing)
        if drawn is None:
            continue
        box, mask, relative = drawn
        free = labels[box] == 0
        own = mask & free
        area = int(own.sum())
        if area == 0 or area < (1.0 - _MAX_OVERLAP) * mask.sum():
            continue
        own = _largest_component(own)
        full = unit_ball * float(np.prod(nucleus.semi_axes)) / voxel_volume
        area = int(own.sum())
        if area < max(_MIN_PIXELS, _MIN_VISIBLE * full):
            continue
        placed.append((nucleus.centre, float(nucleus.semi_axes[-2:].mean())))
        labels[box][own] = len(placed)
        stain[box][own] = nucleus.brightness * (1.0 - style.dome * relative[own] ** 2)
        covered += area
    return labels, stain


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation (for a large enough image)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _texture(rng: np.random.Generator, style: NucleiStyle, labels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Multiplicative chromatin texture and nucleoli; only its values inside nuclei matter."""
    factor = np.clip(1.0 + style.texture * _smooth_noise(rng, labels.shape, style.texture_scale * style.scale
                                                         / spacing), 0.3, None)
    count = rng.poisson(style.nucleoli * labels.max())
    if count and style.nucleolus_depth > 0:
        inside = np.flatnonzero(labels)
        spots = np.zeros(labels.shape, np.float32)
        spots.flat[rng.choice(inside, size=count)] = 1.0
        sigma = 0.15 * style.radius * style.scale / spacing
        peak = float(np.prod(1.0 / (np.sqrt(2 * np.pi) * np.maximum(sigma, 0.5))))
        spots = np.minimum(ndimage.gaussian_filter(spots, sigma) / peak, 1.0)
        factor *= 1.0 - style.nucleolus_depth * spots
    return factor


def _illumination(rng: np.random.Generator, strength: float, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth field in [1 - strength, 1]: an off-centre vignette plus a gradient, the same in every plane."""
    plane = shape[-2:]
    uy, ux = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in plane)
    uy, ux = uy[:, None], ux[None, :]
    cy, cx = rng.uniform(-0.5, 0.5, size=2)
    gy, gx = rng.normal(0.0, 0.5, size=2)
    field = (uy - cy) ** 2 + (ux - cx) ** 2 + gy * uy + gx * ux
    field = field - field.min()
    span = float(field.max())
    if span > 0:
        field /= span
    return (1.0 - strength * field).astype(np.float32)


def _acquire(rng: np.random.Generator, style: NucleiStyle, stain: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Blur, illuminate, add background and noise, and quantise: what the camera records."""
    sigma = style.blur * style.scale / spacing
    if stain.ndim == 3:
        sigma[0] *= style.axial_blur
    light = ndimage.gaussian_filter(stain, sigma) if style.blur > 0 else stain
    if stain.ndim == 3 and style.depth_attenuation > 0 and stain.shape[0] > 1:
        depth = np.linspace(0.0, 1.0, stain.shape[0], dtype=np.float32)[:, None, None]
        light *= 1.0 - style.depth_attenuation * depth
    light += style.background
    light *= _illumination(rng, style.illumination, stain.shape)
    counts = rng.poisson(light * style.photon_scale).astype(np.float32)
    counts /= style.photon_scale
    counts += style.read_noise * rng.standard_normal(stain.shape, dtype=np.float32)
    full_scale = 2**style.bit_depth - 1
    image = np.clip(np.rint(counts * full_scale), 0, full_scale)
    return image.astype(np.uint8 if style.bit_depth == 8 else np.uint16)


def generate_nuclei(shape: tuple[int, ...], style: NucleiStyle | str = "default",
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render a synthetic nuclei image and its exact instance labels.

    Parameters
    ----------
    shape:
        ``(Y, X)`` for a 2D image or ``(Z, Y, X)`` for a stack (Z sampled ``style.z_anisotropy`` times
        coarser than Y and X).
    style:
        A :class:`NucleiStyle` or the name of one in :data:`STYLES`.
    seed:
        Everything random derives from it: the same seed and style give identical arrays.

    Returns
    -------
    image, labels:
        ``image`` is uint8 for 8-bit styles and uint16 otherwise (12-bit values never exceed 4095);
        ``labels`` is int32 with 0 for background and ids 1..N, each one connected object (face
        connectivity) whose stain is in the image.
    """
    dims = _check_shape(shape)
    style = _resolve_style(style)
    rng = np.random.default_rng(seed)
    spacing = np.ones(len(dims)) if len(dims) == 2 else np.array([style.z_anisotropy, 1.0, 1.0])
    labels, stain = _place_nuclei(rng, style, dims, spacing)
    stain *= _texture(rng, style, labels, spacing)
    return _acquire(rng, style, stain, spacing), labels

