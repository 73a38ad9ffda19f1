"""Test-only build of the CUDA kernels for the CPU, under the SIMT emulator (src/emu/).

`load()` compiles src/emu/msda_emu.cpp + simt_emu.cpp, which include the CUDA device code
(src/msda_cuda_kernels.cuh) unchanged, just in time into the msda build cache
(<cache>/emu/, or <cache>/emu-asan/ for the sanitized build), and returns
`torch.ops.msda_emu`: ms_deform_attn_forward / ms_deform_attn_backward with the schema,
fake and autograd registrations of torch.ops.msda, plus set_seed and shim_selftest.

MSDA_EMU_SANITIZE=1 builds it with AddressSanitizer + UBSan (any error aborts); the ASan
runtime must then be loaded first: LD_PRELOAD=$(gcc -print-file-name=libasan.so).
"""
import hashlib
import logging
import os
import threading
from pathlib import Path

import torch

from . import _build, _library
from .build_config import SRC_DIR

EMU_DIR = SRC_DIR / "emu"
EMU_SOURCES = [EMU_DIR / "msda_emu.cpp", EMU_DIR / "simt_emu.cpp"]
CXX_FLAGS = ["-O2", "-g0", "-Wall", "-Wno-unknown-pragmas"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
_lock = threading.Lock()


def sanitize_requested() -> bool:
    return os.environ.get("MSDA_EMU_SANITIZE") == "1"


def emu_hash() -> str:
    """Hash of everything the emulator build compiles: src/*.h / *.cuh and src/emu/*."""
    h = hashlib.sha256()
    files = [p for p in SRC_DIR.iterdir() if p.suffix in (".h", ".cuh")] + list(EMU_DIR.iterdir())
    for path in sorted(files):
        if path.suffix in (".cpp", ".h", ".cuh"):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _asan_loaded() -> bool:
    return "libasan" in Path("/proc/self/maps").read_text()


def loaded() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("msda_emu::ms_deform_attn_forward", "CPU")
    except RuntimeError:
        return False


def load(sanitize: bool = None, verbose: bool = False):
    """Build (or reuse) and load the emulator; returns torch.ops.msda_emu. Raises on a failed build."""
    sanitize = sanitize_requested() if sanitize is None else sanitize
    with _lock:
        if not loaded():
            if sanitize and not _asan_loaded():
                raise RuntimeError("msda_emu: MSDA_EMU_SANITIZE=1 needs the ASan runtime loaded first: run with "
                                   "LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0")
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils import cpp_extension

            build_dir = _build.cache_dir(False).parent / ("emu-asan" if sanitize else "emu")
            flags = CXX_FLAGS + (SANITIZE_FLAGS if sanitize else []) + [f"-DMSDA_EMU_HASH={emu_hash()}"]
            with _build._file_lock(build_dir / ".msda.lock"):
                cpp_extension.load(
                    name="msda_emu_asan" if sanitize else "msda_emu",
                    sources=[str(p) for p in EMU_SOURCES],
                    extra_cflags=flags,
                    extra_ldflags=SANITIZE_FLAGS if sanitize else [],
                    extra_include_paths=[str(SRC_DIR)],
                    build_directory=str(build_dir),
                    is_python_module=False,
                    verbose=verbose,
                )
        _library.register("msda_emu")
    return torch.ops.msda_emu
