"""Triton is kept out of a process that has the system's LLVM loaded (its LLVM crashes beside that one)."""
from __future__ import annotations

import importlib
import sys

import pytest

from napari_unet.core import llvm_guard

MESA_MAPS = """\
7f00a000-7f00b000 r-xp 00000000 fd:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1
7f00c000-7f00d000 r-xp 00000000 fd:00 2 /usr/lib/x86_64-linux-gnu/libgallium_dri.so
7f00e000-7f00f000 rw-p 00000000 00:00 0
"""
PLAIN_MAPS = """\
7f00a000-7f00b000 r-xp 00000000 fd:00 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00c000-7f00d000 r-xp 00000000 fd:00 3 /venv/site-packages/triton/_C/libLLVM-private.so
"""


@pytest.fixture
def fresh_imports(monkeypatch):
    """A process in which Triton is neither loaded nor blocked; restored afterwards."""
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, llvm_guard._TritonBlocker)])
    for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
        monkeypatch.delitem(sys.modules, name)


def test_finds_the_system_llvm_of_an_opengl_driver():
    assert llvm_guard.system_llvm_libraries(MESA_MAPS) == ["/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"]
    assert llvm_guard.system_llvm_libraries(PLAIN_MAPS) == []  # Triton's own libraries are not the system's


def test_blocks_triton_beside_a_system_llvm(fresh_imports):
    assert llvm_guard.keep_triton_out(MESA_MAPS)
    with pytest.raises(ImportError, match="libLLVM-15"):
        importlib.import_module("triton")
    with pytest.raises(ImportError):
        importlib.import_module("triton.runtime")
    assert llvm_guard.keep_triton_out(PLAIN_MAPS), "once blocked, it stays blocked"


def test_leaves_a_process_without_system_llvm_alone(fresh_imports):
    assert not llvm_guard.keep_triton_out(PLAIN_MAPS)
    assert not any(isinstance(f, llvm_guard._TritonBlocker) for f in sys.meta_path)


def test_leaves_an_already_loaded_triton_alone(fresh_imports, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", object())
    assert not llvm_guard.keep_triton_out(MESA_MAPS)
