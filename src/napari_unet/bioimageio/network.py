"""The network as a package ships it: ``unet_architecture.py`` (``core/unet.py`` made standalone, with a
softmax wrapper appended; the description records its sha256), the probability-output copy of the model's
network built from that very file, and its TorchScript trace."""
from __future__ import annotations

import copy
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet import __version__

ARCHITECTURE_FILE = "unet_architecture.py"
ARCHITECTURE_CALLABLE = "UNetProbabilities"

_WRAPPER = '''

class UNetProbabilities(UNet):
    """The U-Net followed by a softmax over the classes (a sigmoid for one class): class probabilities.

    Built from the keyword arguments of UNetConfig; the state dict is the plain UNet's. The network has
    batch-norm: run it in eval mode.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(UNetConfig(**kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
'''


def architecture_source() -> str:
    """``core/unet.py`` as a file that imports nothing of napari-unet, with the probability wrapper appended."""
    from napari_unet.core import unet

    source = Path(unet.__file__).read_text(encoding="utf-8")
    line = "from napari_unet.core.errors import InvalidInputError\n"
    if line not in source:
        raise RuntimeError("core/unet.py no longer imports InvalidInputError as the exporter expects; update "
                           "napari_unet.bioimageio.architecture_source")
    source = source.replace(line, "\n\nclass InvalidInputError(ValueError):\n"
                                  '    """A wrong configuration or input size."""\n')
    if "napari_unet" in re.sub(r'""".*?"""', "", source, flags=re.S):
        raise RuntimeError("core/unet.py imports more of napari-unet than the exporter can make standalone")
    header = (f"# The U-Net of napari-unet {__version__} (src/napari_unet/core/unet.py), standalone.\n"
              "# Needs only torch. Exported with `napari-unet export`.\n")
    return header + source + _WRAPPER


def _export_network(model: Any) -> Any:
    """A CPU float32 copy of the model's network in eval mode that outputs probabilities."""
    import importlib.util
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / ARCHITECTURE_FILE
        file.write_text(architecture_source(), encoding="utf-8")
        spec = importlib.util.spec_from_file_location("napari_unet_exported_architecture", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[spec.name]
    net = getattr(module, ARCHITECTURE_CALLABLE)(**model.config.network.to_dict())
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
             for k, v in copy.deepcopy(model.network.state_dict()).items()}
    net.load_state_dict(state, strict=True)
    return net.float().eval()


def _trace(net: Any, x: np.ndarray, smallest: int, step: int, target: Path) -> None:
    """Trace the network for TorchScript and check it at another valid size against the eager network."""
    import torch

    example = torch.from_numpy(x[None]).float()
    other = torch.rand((1, x.shape[0]) + (smallest + step,) * (x.ndim - 1), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes: the crop offsets are constant per model
        traced = torch.jit.trace(net, example, check_trace=False)
        for probe in (example, other):
            if not torch.allclose(traced(probe), net(probe), atol=1e-5):
                raise RuntimeError("the traced TorchScript network differs from the network; cannot export it")
    traced.save(str(target))
