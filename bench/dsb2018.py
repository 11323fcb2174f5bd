"""The 2018 Data Science Bowl nuclei (BBBC038) as the project keeps them: loader and a fixed train/validation split.

The data live outside the repository (default ``../shared/data/dsb2018`` from the repository root; every
script and benchmark takes the folder as an argument). The folder holds ``images/<id>.tif`` (grey images as
2D uint8, colour histology as YXC uint8 RGB), ``labels/<id>.tif`` (uint16 instance labels) and ``index.tsv``
(id, modality, shape, objects). Licence CC0; cite Caicedo et al., "Nucleus segmentation across imaging
experiments: the 2018 Data Science Bowl", Nature Methods 16, 1247-1253 (2019).

The split (:func:`split`) is decided by the ids alone, so it is the same on every machine and for every script:
within each modality (``fluo``, ``color``, ``bright_gray``) the images are ordered by the SHA-256 of their id,
and the first ``round(20 %)`` of that order are *validation*, the rest *train*. Stratifying by modality keeps
the rare modalities (12 grey brightfield images) in both parts. Anything that is tuned (weights, checkpoint,
thresholds, post-processing settings) is tuned on the train split; figures are reported on the validation
split. Some images of the original set are not in the folder at all: they are held back elsewhere for an
independent evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "dsb2018"
MODALITIES = ("fluo", "color", "bright_gray")
VALIDATION_FRACTION = 0.2
SPLIT_RULE = ("per modality, images ordered by sha256(id) (hex); the first round(20 %) are validation, the "
              "rest train (bench/dsb2018.py)")
NAME = "2018 Data Science Bowl, stage 1 training set (BBBC038), with the community fixes of its masks"
LICENCE = "CC0 1.0 (public domain)"
CITATION = ('Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl", '
            "Nature Methods 16, 1247-1253 (2019)")


@dataclass(frozen=True)
class Entry:
    """One image of the index."""

    id: str
    modality: str
    shape: tuple[int, ...]
    objects: int


def read_index(folder: Path | str = DEFAULT_FOLDER) -> list[Entry]:
    """Every image listed in ``folder/index.tsv``, in the file's order."""
    path = Path(folder) / "index.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass the folder of the DSB 2018 data (images/, labels/, "
                                "index.tsv)")
    entries = []
    for line in path.read_text().splitlines()[1:]:
        if not line.strip():
            continue
        image_id, modality, shape, objects = line.split("\t")
        entries.append(Entry(image_id, modality, tuple(int(n) for n in shape.split("x")), int(objects)))
    return entries


def _key(image_id: str) -> str:
    return hashlib.sha256(image_id.encode()).hexdigest()


def split(entries: list[Entry], fraction: float = VALIDATION_FRACTION) -> dict[str, list[Entry]]:
    """``{"train": [...], "validation": [...]}``, stratified by modality, decided by the ids (module docstring)."""
    parts: dict[str, list[Entry]] = {"train": [], "validation": []}
    for modality in sorted({e.modality for e in entries}):
        ordered = sorted((e for e in entries if e.modality == modality), key=lambda e: _key(e.id))
        held = round(fraction * len(ordered))
        parts["validation"] += ordered[:held]
        parts["train"] += ordered[held:]
    for part in parts.values():
        part.sort(key=lambda e: (MODALITIES.index(e.modality) if e.modality in MODALITIES else 99, _key(e.id)))
    return parts


def load(folder: Path | str, entry: Entry) -> tuple[np.ndarray, np.ndarray]:
    """The image (uint8, YX or YXC) and its instance labels (int32, YX) of one entry."""
    import tifffile

    folder = Path(folder)
    image = tifffile.imread(folder / "images" / f"{entry.id}.tif")
    labels = tifffile.imread(folder / "labels" / f"{entry.id}.tif").astype(np.int32)
    return image, labels


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter in pixels of the disc with each object's area: the object size a model's config records."""
    areas = np.bincount(labels.ravel())[1:]
    return 2.0 * np.sqrt(areas[areas > 0] / np.pi)


def summary(folder: Path | str = DEFAULT_FOLDER) -> str:
    """Images and objects per modality and part, as a short text table."""
    parts = split(read_index(folder))
    lines = [f"{'modality':<12}{'train':>8}{'objects':>9}{'validation':>12}{'objects':>9}"]
    for modality in MODALITIES:
        cells = []
        for name in ("train", "validation"):
            chosen = [e for e in parts[name] if e.modality == modality]
            cells.append(f"{len(chosen):>{8 if name == 'train' else 12}}{sum(e.objects for e in chosen):>9}")
        lines.append(f"{modality:<12}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summary(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_FOLDER))
