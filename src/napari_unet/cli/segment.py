"""``napari-unet segment``: segment an image file with a model and write the labels.

    napari-unet segment INPUT -o OUTPUT [--model nuclei] [--axes ZYX] [--device auto] [--tile 512]
        [--batch 4] [--overlap N] [--tta] [--precision auto] [--scale Z Y X] [--stack 3d|planes] [--diameter PX]
        [--probabilities PATH]

INPUT is a TIFF (``.tif``/``.tiff``), a zarr folder (a plain array or an OME-Zarr image, whose first
resolution is used) or a NumPy ``.npy`` file, opened by :mod:`napari_unet.core.io`; all are read lazily, tile
by tile, so images larger than memory work. The axes and, unless ``--scale`` is given, the voxel size come from
the file's metadata where it records them (OME, ImageJ, OME-Zarr); a coarse Z is then resampled for 3D objects.
OUTPUT ending in ``.zarr`` is written tile by tile (use it for large images); ``.tif``/``.tiff`` and
``.npy`` outputs are assembled in memory first. Existing outputs are only replaced with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from napari_unet.batch.outputs import ZARR_CHUNK, commit, partial_name, remove, write_labels
from napari_unet.cli import batch as batch_cli



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment an image file and write its labels",
        description="Segment a TIFF, zarr or .npy image with a U-Net model and write the labels (instance ids, "
        "or class ids for semantic models) as TIFF, .npy or zarr. Large images are read and, with a .zarr "
        "output, written tile by tile.")
    parser.add_argument("input", type=Path, help="image: .tif/.tiff, .npy, or a zarr folder")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="labels file: .tif/.tiff, .npy, or .zarr (written tile by tile; best for large images)")
    parser.add_argument("--model", default="nuclei", help="bundled or library model name, a model folder, or a "
                        "bioimage.io package (.zip or rdf.yaml) (default: nuclei)")
    parser.add_argument("--trust", action="store_true",
                        help="let a bioimage.io package made by another tool run its code (its architecture file or "
                        "TorchScript program); use only for packages from sources you trust")
    parser.add_argument("--axes", default=None, help="image axes from T, Z, C, Y, X, e.g. YX, ZYX, TCZYX "
                        "(default: from the file's metadata, else guessed from the shape)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--tile", type=int, nargs="+", default=None, metavar="N",
                        help="largest tile, one size or one per spatial axis (default: chosen from memory)")
    parser.add_argument("--batch", type=int, default=None, help="tiles per batch (default: chosen from memory)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="pixels dropped at inner tile edges (default: the network's reach, which is exact)")
    parser.add_argument("--tta", action="store_true", help="average over flipped copies (slower, smoother)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="arithmetic precision (default: auto)")
    parser.add_argument("--scale", type=float, nargs="+", default=None, metavar="SIZE",
                        help="pixel size per spatial axis in the image's order, e.g. --scale 2 0.5 0.5 for ZYX; "
                        "a coarser Z is resampled to the pixel size for 3D objects (default: the voxel size the file's "
                        "OME or ImageJ metadata records, else isotropic)")
    parser.add_argument("--diameter", type=float, default=None, metavar="PX",
                        help="typical object diameter in pixels; the image is resampled to the model's object size "
                        "(default: measured from a first pass; a 2D image whose objects are more than 1.5 times "
                        "the model's is segmented again at its size)")
    parser.add_argument("--stack", default=None, choices=("3d", "planes"),
                        help="a 2D model on a z-stack: 3d (objects through the stack, the default for instance "
                        "models) or planes (each plane on its own)")
    parser.add_argument("--probabilities", type=Path, default=None, metavar="PATH",
                        help="also write the class probabilities (float32, classes first) to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    batch_cli.add_arguments(parser)  # --out DIR, --workers N, --scheduler ADDRESS: many files on Dask
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if batch_cli.requested(args):
        return batch_cli.run(args)
    from napari_unet.core.devices import configure_cpu_threads
    from napari_unet.core.errors import InvalidInputError
    from napari_unet.core.inference import segment
    from napari_unet.core.io import read_image
    from napari_unet.core.models import load_model

    outputs = [p for p in (args.output, args.probabilities) if p is not None]
    for path in outputs:
        _check_output_path(path, args.overwrite)
    if args.probabilities is not None and args.probabilities.resolve() == args.output.resolve():
        raise InvalidInputError("--probabilities must name a different file than --output")
    source = read_image(args.input)
    image = source.data
    model = load_model(args.model, trust=args.trust)
    axes = args.axes or source.axes
    configure_cpu_threads(interactive=False)
    tile = None if args.tile is None else (args.tile[0] if len(args.tile) == 1 else tuple(args.tile))

    from napari_unet.core.axes import Layout, resolve_axes

    spatial_dims = model.config.network.spatial_dims
    axes = resolve_axes(axes, image.shape, spatial_dims=spatial_dims, in_channels=model.config.in_channels)
    layout = Layout.create(axes, image.shape, model.config.axes)
    scale = args.scale if args.scale is not None else _file_scale(source, axes, args.quiet)
    # zarr outputs are filled as the run goes, under hidden temporary names: an old output (--overwrite) is
    # replaced only when the run has succeeded, and a failed run leaves it as it was
    created: dict[Path, Path] = {}
    try:
        out = _zarr_output(args.output, layout.output_shape, "int32", created)
        probabilities: Any = args.probabilities is not None
        if args.probabilities is not None:
            shape = (model.config.network.out_channels, *layout.output_shape)
            array = _zarr_output(args.probabilities, shape, "float32", created)
            probabilities = True if array is None else array
        result = segment(image, model, axes=axes, device=args.device, tile_shape=tile, overlap=args.overlap,
                         batch_size=args.batch, progress=None if args.quiet else _Progress(),
                         out=out, tta=args.tta, precision=args.precision, probabilities=probabilities,
                         scale=scale, stack=args.stack, diameter=args.diameter)
    except BaseException:
        for temporary in created.values():
            remove(temporary)
        raise
    for target, temporary in created.items():
        commit(temporary, target, replace_folder=True)  # --overwrite was checked before the run
    if out is None:
        write_labels(args.output, result.labels, result.labels_axes, overwrite=True)
    if args.probabilities is not None and probabilities is True:
        write_labels(args.probabilities, result.probabilities, "C" + result.labels_axes, overwrite=True)
    if not args.quiet:
        found = f"{result.objects} objects" if result.objects is not None else f"classes {list(result.classes)}"
        print(f"\n{args.output}: {found}; labels {tuple(result.labels.shape)} ({result.labels_axes}) in "
              f"{result.timings['total']:.1f} s on {result.device} ({result.precision}, tiles "
              f"{result.tile_shape} x {result.batch_size})", file=sys.stderr)
        for message in result.messages:
            print(f"note: {message}", file=sys.stderr)
    return 0


class _Progress:
    """Prints ``done/total`` on one line of stderr, at most a few times a second."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5 or done == total or "memory" in message:
            self.last = now
            print(f"\r{done}/{total} {message}".ljust(79)[:79], end="", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def _file_scale(source: Any, axes: str, quiet: bool) -> tuple[float, ...] | None:
    """The voxel size the file records for the image's spatial axes, or None; said on stderr when used, since
    it decides how a z-stack's Z is treated and ``--scale`` overrides it."""
    scale = source.voxel_size(axes)
    if scale is not None and not quiet:
        spatial = [i for i, letter in enumerate(axes) if letter in "ZYX"]
        sizes = ", ".join(f"{axes[i]} {source.scale[i]:g} {source.units[i] or ''}".rstrip() for i in spatial)
        kind = "voxel" if "Z" in axes else "pixel"
        print(f"{kind} size {sizes} from the {source.metadata} metadata of {source.path.name} (--scale overrides "
              "it)", file=sys.stderr)
    return scale


def _check_output_path(path: Path, overwrite: bool) -> None:
    from napari_unet.core.errors import InvalidInputError

    if path.suffix.lower() not in (".tif", ".tiff", ".npy", ".zarr"):
        raise InvalidInputError(f"{path}: the output must end in .tif, .tiff, .npy or .zarr")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; choose another name or pass --overwrite")
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise InvalidInputError(f"the output folder {folder} {problem}; create it or choose another place for "
                                f"{path.name}")
    if not os.access(folder, os.W_OK):
        raise InvalidInputError(f"cannot write into {folder} (no permission); choose another place for {path.name}")


def _zarr_output(path: Path, shape: tuple[int, ...], dtype: str, created: dict[Path, Path]) -> Any:
    """A new zarr array, under a temporary name until the run succeeds, for ``path`` if it ends in .zarr, else
    None (the result is written afterwards)."""
    if path.suffix.lower() != ".zarr":
        return None
    import zarr

    created[path] = partial_name(path)
    chunks = tuple(min(n, ZARR_CHUNK) if i >= len(shape) - 2 else 1 for i, n in enumerate(shape))
    return zarr.open_array(str(created[path]), mode="w-", shape=shape, chunks=chunks, dtype=dtype)
