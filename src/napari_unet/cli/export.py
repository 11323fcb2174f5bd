"""``napari-unet export``: write a model as a bioimage.io package that other tools run.

    napari-unet export MODEL OUTPUT.zip [--author NAME ...] [--license SPDX] [--sample IMAGE]
        [--check] [--overwrite]

MODEL is a bundled or library model name, or a model folder. The package (format 0.5) holds the weights as a
PyTorch state dict with its architecture file and as TorchScript, the normalisation as preprocessing, a test
image and the model's output for it, a cover and a README with the model card. Fiji (deepImageJ), QuPath,
ilastik, BiaPy and ``bioimageio.core`` run it. Needs the optional extra ``napari-unet[bioimageio]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a model as a bioimage.io package (.zip)",
        description="Export a model as a bioimage.io model package (format 0.5) for Fiji/deepImageJ, QuPath, "
        "ilastik, BiaPy and bioimageio.core. Needs pip install 'napari-unet[bioimageio]'.")
    parser.add_argument("model", help="bundled or library model name, or a model folder")
    parser.add_argument("output", type=Path, help="the package to write, a .zip file")
    parser.add_argument("--author", action="append", default=None, metavar="NAME",
                        help="an author of the model (repeat for several; default: napari-unet contributors)")
    parser.add_argument("--license", default="BSD-3-Clause", help="SPDX licence id (default: BSD-3-Clause)")
    parser.add_argument("--sample", type=Path, default=None,
                        help="test image (.tif, .npy or zarr) with the model's axes, channels first "
                        "(default: a generated nuclei image)")
    parser.add_argument("--check", action="store_true",
                        help="run bioimageio.core's test_model on the package afterwards")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sample = None
    if args.sample is not None:  # read as segment reads images: TIFF, .npy or zarr, with clear errors
        import numpy as np

        from napari_unet.core.io import read_image

        sample = np.asarray(read_image(args.sample).data)
    try:
        from napari_unet.bioimageio import export_bioimageio
        from napari_unet.core.devices import configure_cpu_threads
        from napari_unet.core.models import load_model

        configure_cpu_threads(interactive=False)  # as segment and finetune do; NAPARI_UNET_THREADS overrides
        model = load_model(args.model)
        path = export_bioimageio(model, args.output, sample=sample, authors=args.author, license=args.license,
                                 check=args.check, overwrite=args.overwrite)
    except ImportError as exc:
        print(f"napari-unet export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)" + (": bioimageio.core's test passed"
                                                                     if args.check else ""))
    return 0
