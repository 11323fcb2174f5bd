"""Export a model as a bioimage.io package (model description format 0.5) that other tools run, and load such
a package back.

A package is a zip with ``rdf.yaml`` (the description), the weights in two formats, a standalone architecture
file, a test input and the model's own output for it, a cover picture and a README with the model card. Tools
that read bioimage.io models (Fiji with deepImageJ, QuPath, ilastik, BiaPy, ``bioimageio.core``) then run the
network with the same normalisation and tile it with the right sizes and margins.

What the description says and why:

* **Input**: ``(batch, channel, [z,] y, x)``, float32. Valid spatial sizes are ``min + k * step``: ``step`` is
  ``2**depth`` (every pooling halves), ``min`` the smallest size the network takes (see ``core/unet.py``) and,
  for same-padding networks, one whose output is larger than twice the halo.
* **Preprocessing** expresses ours exactly with the spec's operations: percentile normalisation is
  ``scale_range`` with the model's percentiles, per channel over the spatial axes; an inverted model
  (``normalization.invert``) adds ``scale_linear`` with gain -1 and offset 1, which is 1 - x. (Not expressible:
  we set NaN/Inf pixels to 0 after normalising; the spec adds 1e-6 to the percentile range, we floor it at a
  tiny value instead: neither matters for real images.)
* **Output**: class probabilities ``(batch, channel, [z,] y, x)``. The softmax (a sigmoid for one class) is
  part of the exported network rather than a ``softmax`` postprocessing step, so that tools which do not
  implement that newer operation still get probabilities. Same-padding networks declare a **halo**: the
  outputs next to a tile edge depend on the padding there and are to be cropped; it is the reach measured by
  ``core.tiling.boundary_margin``. Valid-padding networks crop themselves: their output is smaller by a fixed
  amount, declared as a size offset.
* **Instance labelling** (seeded watershed of the background / interior / boundary probabilities) has no
  operation in the spec; the package's README describes it step by step.
* **Weights**: ``pytorch_state_dict`` with ``unet_architecture.py`` (``core/unet.py`` made standalone, plus
  the softmax wrapper) and ``torchscript`` (traced, checked at a second size). The network has batch-norm: it
  must run in eval mode (running statistics), which every consumer does for inference. No ONNX: it is only
  offered where it passes the same test, and ONNX tooling is not a dependency of this package.

The package also carries the model's own ``config.json`` (as an attachment), which :func:`load_bioimageio`
reads back with the ``pytorch_state_dict`` weights (``torch.load(weights_only=True)``: tensors only):
``load_model("model.zip")`` gives the same model, with no code from the package run. The weights are in the
package once per format, not a third time in napari-unet's own format (packages exported before this carry
``weights.safetensors`` too, and load from it). Packages from other tools are loaded by ``foreign``.

``bioimageio.spec`` and ``bioimageio.core`` are imported only in this package and only when an export runs:
they are the optional extra ``napari-unet[bioimageio]``. Loading needs neither.

The modules: ``export`` (:func:`export_bioimageio`, :func:`test_package`), ``package`` (the files and the
description), ``network`` (the standalone architecture file, the exported network and its trace), ``samples``
(test input and cover), ``describe`` (README and description text), ``citations`` and ``load``
(:func:`load_bioimageio`).
"""
from napari_unet.bioimageio.citations import KNOWN_DOIS, UNET_CITATION, training_data_citations
from napari_unet.bioimageio.export import (DEFAULT_AUTHOR, DEFAULT_LICENSE, INSTALL_HINT, export_bioimageio,
                                           test_package)
from napari_unet.bioimageio.load import MAX_WEIGHTS_BYTES, is_package, load_bioimageio
from napari_unet.bioimageio.network import ARCHITECTURE_CALLABLE, ARCHITECTURE_FILE, architecture_source

__all__ = [
    "KNOWN_DOIS", "UNET_CITATION", "training_data_citations",
    "DEFAULT_AUTHOR", "DEFAULT_LICENSE", "INSTALL_HINT", "export_bioimageio", "test_package",
    "MAX_WEIGHTS_BYTES", "is_package", "load_bioimageio",
    "ARCHITECTURE_CALLABLE", "ARCHITECTURE_FILE", "architecture_source",
]
