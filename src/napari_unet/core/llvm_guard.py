"""Keep Triton out of a process whose OpenGL driver has already loaded the system's LLVM.

PyTorch's default Linux wheels ship Triton. Its ``libtriton.so`` carries a private, statically linked LLVM and
exports those LLVM symbols (about 24,000 of them). torch loads it lazily, when ``torch._dynamo`` is first
imported, and every optimizer does that on its first use (``torch.optim`` wraps its methods in
``torch._disable_dynamo``). Mesa's OpenGL drivers - llvmpipe, the software renderer of a virtual or remote
display, and radeonsi - load the system's ``libLLVM``. Once napari has drawn a frame with such a driver, loading
``libtriton.so`` binds part of its LLVM to the system copy, and the process dies in Triton's initialisers with a
segmentation fault: pressing Fine-tune killed napari.

napari-unet never compiles a network (no ``torch.compile``), so it never needs Triton. When a system LLVM is
already mapped into the process and Triton is not yet loaded, :func:`keep_triton_out` makes ``import triton``
fail with an ``ImportError``; torch treats that as "Triton is not installed" and trains in eager mode as usual.
A process without such a driver (a script, the command line, a machine rendering with NVIDIA's driver) is left
alone.
"""
from __future__ import annotations

import importlib.abc
import re
import sys
from pathlib import Path

# libLLVM-15.so.1, libLLVM.so.18.1, libgallium-24.2.so (Mesa's drivers with LLVM linked in), ...
_SYSTEM_LLVM = re.compile(r"/lib(LLVM|gallium)[-.][^/]*$")
_MAPS = Path("/proc/self/maps")


class _TritonBlocker(importlib.abc.MetaPathFinder):
    """Refuses ``triton`` and its submodules with a message that says why."""

    def __init__(self, library: str) -> None:
        self.library = library

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"napari-unet keeps Triton out of this process: its private LLVM crashes beside the "
                              f"system LLVM that the OpenGL driver loaded ({self.library})")
        return None


def system_llvm_libraries(maps: str | None = None) -> list[str]:
    """The system LLVM libraries mapped into this process (``maps``: the text of /proc/self/maps)."""
    if maps is None:
        try:
            maps = _MAPS.read_text()
        except OSError:  # not Linux: no Mesa, no Triton wheels
            return []
    paths = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    return sorted(p for p in paths if _SYSTEM_LLVM.search(p) and "/triton/" not in p)


def keep_triton_out(maps: str | None = None) -> bool:
    """Block Triton's import when it would crash this process; True if Triton is (now) blocked.

    Call it before anything that may import ``torch._dynamo`` (creating an optimizer, for one). Cheap enough to
    call before every run: it reads /proc/self/maps only while Triton is neither loaded nor blocked.
    """
    if any(isinstance(finder, _TritonBlocker) for finder in sys.meta_path):
        return True
    libraries = [] if "triton" in sys.modules else system_llvm_libraries(maps)
    if not libraries:
        return False
    sys.meta_path.insert(0, _TritonBlocker(libraries[0]))
    return True
