"""The ``napari-unet`` command: segment, finetune, models, export and demo.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``. Those modules
import torch and napari only inside ``run``, so ``napari-unet --help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

from napari_unet import __version__

SUBCOMMANDS = ("segment", "finetune", "models", "export", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation for microscopy images: segment, fine-tune on your corrections, "
        "manage models, or open the napari demo.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        import_module(f"napari_unet.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValueError as exc:  # every user-caused error is a ValueError subclass with a helpful message
        print(f"napari-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
