"""The words of a package: the description's format version, name and tags, and the README.md that is the
model card (network, tiling, preprocessing, how to label instances, validation, training history, citations)."""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from napari_unet import __version__


def _format_version() -> str:
    from bioimageio.spec.model.v0_5 import ModelDescr

    return ModelDescr.implemented_format_version


def _rdf_name(name: str) -> str:
    """The spec allows letters, digits, spaces and a few signs in a name, at least 5 characters."""
    clean = re.sub(r"[^A-Za-z0-9 _\-()]", " ", name).strip() or "napari-unet model"
    return clean if len(clean) >= 5 else f"{clean} (napari-unet)"


def _tags(config: Any) -> list[str]:
    tags = ["unet", "pytorch", "napari-unet", f"{config.network.spatial_dims}d", "segmentation",
            "instance-segmentation" if config.task == "instance" else "semantic-segmentation"]
    text = f"{config.name} {config.description}".lower()
    for word in ("nuclei", "cells", "fluorescence", "histology", "brightfield"):
        if word in text:
            tags.append(word)
    return tags


def _readme(model: Any, citations: list[dict[str, str]], smallest: int, step: int, margin: int,
            shrink: int) -> str:
    config = model.config
    net = config.network
    norm = config.normalization
    lines = [f"# {config.name or 'napari-unet model'}", "", config.description or "", ""]
    lines += [f"Exported from napari-unet {__version__} on "
              f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d')}. In napari-unet the model segments "
              "with `napari_unet.segment(image, model)`; this package lets other tools run the same network.",
              ""]
    if config.card:
        lines += ["## Model card", ""]
        lines += [f"- **{key}**: {value}" for key, value in config.card.items()]
        lines.append("")
    lines += ["## Network", "",
              f"A {net.spatial_dims}D U-Net (Ronneberger et al. 2015): depth {net.depth}, {net.base_features} "
              f"features at the top level, {net.padding} padding, {net.upsampling} up-sampling, "
              f"{'batch-norm' if net.norm == 'batch' else 'no normalisation layers'}, {net.in_channels} input "
              f"channel(s), {net.out_channels} classes: {', '.join(config.classes)}."
              + (" Batch-norm uses its running statistics: run the network in eval mode (every bioimage.io "
                 "consumer does), never in training mode, or a tile's output depends on the tile." if
                 net.norm == "batch" else ""), "",
              f"Input sizes: {smallest} + k x {step} pixels along every spatial axis ({', '.join(config.axes)}).",
              ""]
    if margin:
        lines += [f"Tiling: the outputs within {margin} pixels of a tile edge depend on the zero padding there; "
                  "crop them (the description's output halo) and overlap tiles by twice that. Tiles should start "
                  f"at multiples of {step} pixels, as the network pools {net.depth} times.", ""]
    if shrink:
        lines += [f"Tiling: valid padding, so the output is {shrink} pixels smaller than the input along every "
                  f"spatial axis ({shrink // 2} on each side) and every output pixel is exact: place output "
                  "tiles edge to edge and mirror the image at its border.", ""]
    lines += ["## Preprocessing", ""]
    if norm.method == "percentile":
        lines.append(f"Per channel, percentile {norm.low:g} of the whole image becomes 0 and percentile "
                     f"{norm.high:g} becomes 1 (`scale_range`). Compute the percentiles once per image, not per "
                     "tile, so that tiles agree.")
    else:
        lines.append("None: the network takes the raw intensities as float32.")
    if norm.invert:
        lines.append("Then x becomes 1 - x (`scale_linear` with gain -1 and offset 1): the model was trained on "
                     "dark objects on a bright background and sees them inverted, bright on dark.")
    lines += ["NaN and infinite pixels are set to 0 after normalising (napari-unet does; the spec has no step "
              "for it).", ""]
    lines += ["## Output and postprocessing", "",
              "The output is the class probabilities (softmax over the classes, part of the network; a sigmoid "
              "for a one-class model), one channel per class: " + ", ".join(config.classes) + ".", ""]
    if config.task == "instance":
        flt = config.object_filter
        foreground = ("P(background) < " + f"{flt.foreground:g}" if flt.foreground is not None
                      else "background is not the most probable class")
        seeds = (f"P(interior) > {flt.seed:g}" if flt.seed is not None else "interior is the most probable class")
        lines += ["To get one label per object, as napari-unet does:", "",
                  f"1. foreground (classes > 0) = the pixels where {foreground}; interior = the foreground pixels "
                  f"where {seeds};",
                  "2. seeds = the connected components of the interior pixels (face connectivity);",
                  "3. grow the seeds over interior and boundary pixels by a seeded watershed on 1 - P(interior) "
                  "(`skimage.segmentation.watershed(1 - p[1], seeds, mask=classes > 0, connectivity=1)`);",
                  f"4. drop objects smaller than {flt.min_size} pixels or than {flt.min_fraction:g} x the "
                  "median object size of the image, and number the rest 1..N.", ""]
    else:
        lines += ["Class labels: the most probable class per pixel (for one class: probability above 0.5).", ""]
    if config.object_diameter:
        lines += [f"Object size: trained on objects about {config.object_diameter:g} pixels across; resample "
                  "images whose objects differ much from that first.", ""]
    lines += ["## Validation", ""]
    metrics = {k: v for k, v in config.card.items() if "metric" in str(k).lower()}
    lines += [f"- {key}: {value}" for key, value in metrics.items()]
    if config.provenance.get("metrics"):
        lines.append("- last training run, on its held-out part of the training images: "
                     + ", ".join(f"{k} {v}" for k, v in config.provenance["metrics"].items()))
    if not metrics and not config.provenance.get("metrics"):
        lines.append("No validation recorded for this model.")
    lines += ["- export check: the test input through this package reproduces napari-unet's output "
              "(`bioimageio.core` `test_model`).", ""]
    lines += ["## Training history", ""]
    if config.history:
        lines += ["| date | parent | steps | time (s) | samples | metrics |", "|---|---|---:|---:|---:|---|"]
        for run in config.history:
            metrics = ", ".join(f"{k} {v}" for k, v in (run.get("metrics") or {}).items())
            lines.append(f"| {run.get('date', '')} | {run.get('parent') or '-'} | {run.get('steps', '')} | "
                         f"{run.get('time_s', '')} | {run.get('samples', '')} | {metrics} |")
    else:
        lines.append("No training runs recorded.")
    lines.append("")
    prov = config.provenance
    if prov:
        lines += ["## Provenance", ""]
        for key in ("date", "parent", "package_version", "data_fingerprint", "seed", "steps", "stopped"):
            if prov.get(key) is not None:
                lines.append(f"- {key}: {prov[key]}")
        lines.append("")
    lines += ["## Cite", ""]
    lines += [f"- {c['text']}" + (f" doi:{c['doi']}" if c.get("doi") else f" {c['url']}" if c.get("url") else "")
              for c in citations]
    lines.append("")
    return "\n".join(lines)
