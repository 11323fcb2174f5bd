"""What a package cites: the U-Net paper, and the training data's citations found in the model's card and
provenance and in those of the models it was fine-tuned from."""
from __future__ import annotations

import re
from typing import Any

from napari_unet.core.library import CONFIG_FILE

UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. "
            "MICCAI 2015",
    "doi": "10.1007/978-3-319-24574-4_28",
}


def training_data_citations(config: Any) -> list[dict[str, str]]:
    """The training data's citations named anywhere in the model's card or provenance (keys ``citation``,
    ``cite``), as bioimage.io cite entries; an entry needs a DOI or URL, so text without one is left to the
    README."""
    found: list[str] = []

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 6:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key).lower() in ("citation", "cite", "training data citation") and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)

    walk(config.card)
    walk(config.provenance)
    for ancestor in _ancestors(config.provenance):  # a fine-tuned model learned from its parents' data too
        walk(ancestor.get("card"))
        walk(ancestor.get("provenance"))
    entries = []
    for text in dict.fromkeys(found):
        doi = re.search(r"10\.\d{4,9}/[^\s,;]+[^\s,;.)]", text) or _known_doi(text)
        url = re.search(r"https?://[^\s,;]+[^\s,;.)]", text)
        if doi:
            entries.append({"text": text, "doi": doi.group(0)})
        elif url:
            entries.append({"text": text, "url": url.group(0)})
        else:
            entries.append({"text": text})
    return entries


def _ancestors(provenance: dict[str, Any], limit: int = 20) -> list[dict[str, Any]]:
    """The configs of the models a model was fine-tuned from, nearest first, as far as they can be found."""
    from napari_unet.core.library import read_config_json, resolve_model_folder

    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(found) < limit and isinstance(provenance, dict):
        parent = provenance.get("parent_path") or provenance.get("parent")
        if not isinstance(parent, str) or parent in seen:
            break
        seen.add(parent)
        try:
            data = read_config_json(resolve_model_folder(parent) / CONFIG_FILE)
        except (ValueError, OSError):
            break
        found.append(data)
        provenance = data.get("provenance") or {}
    return found


#: DOIs of data sets whose citations napari-unet's own scripts record without one
KNOWN_DOIS = {"2018 Data Science Bowl": "10.1038/s41592-019-0612-7"}


def _known_doi(text: str) -> Any:
    for words, doi in KNOWN_DOIS.items():
        if words.lower() in text.lower():
            return re.search(".+", doi)
    return None
