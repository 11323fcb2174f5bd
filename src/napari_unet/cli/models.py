"""``napari-unet models``: list the bundled and library models with their model cards."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list bundled and library models",
                                   description="List the bundled models and the models in your library.")
    parser.add_argument("name", nargs="?", help="show the full model card of this model")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.library import list_models, read_config_json, resolve_model_folder

    if args.name:
        folder = resolve_model_folder(args.name)
        config = read_config_json(folder / "config.json")
        print(f"{folder.name}  ({folder})")
        print(f"  {config.get('description', '')}")
        print(f"  task: {config.get('task')}   axes: {config.get('axes')}   classes: {config.get('classes')}")
        for key, value in (config.get("card") or {}).items():
            print(f"  {key}: {value}")
        parent = (config.get("provenance") or {}).get("parent")
        if parent:
            print(f"  fine-tuned from: {parent}")
        return 0
    models = list_models()
    if not models:
        print("no models found")
        return 0
    width = max(len(m.name) for m in models)
    for info in models:
        print(f"{info.name:<{width}}  {info.source:<8}  {info.task:<8}  {info.axes:<4}  {info.description}")
    return 0
