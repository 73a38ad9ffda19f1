"""Keep freed host memory in the process, so that a CPU training step reuses its pages.

PyTorch's CPU allocator takes every tensor from malloc. glibc's malloc serves a request above
its mmap threshold (128 KiB, rising to at most 32 MiB) with fresh pages from mmap and hands them
back to the kernel at free, and it trims the top of its heap back too. A training step frees
and allocates the same large activations every step (at 800x1333 an encoder map is 22 MB and
EMCA's stacked maps 136 MB), so each step page-faults and zeroes all of them again: about 1 s
of DINO's 14 s CPU step and more of AugDETR's (tools/benchmark.py --train-step, see README).

`keep_freed_host_memory` turns both off (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = -1), so
freed blocks stay in the heap and the next step reuses them. The price: the process keeps its
peak resident memory until it exits, which a training run reaches every step anyway. It acts
on glibc only (Linux); elsewhere (macOS, musl) it does nothing and says so. It changes no
numbers, only where the bytes come from.
"""
import ctypes
import platform

import torch

from util.config_schema import KeyGroup, bool_key

RUNTIME_KEYS = KeyGroup("runtime", "runtime", {
    "keep_freed_host_memory": bool_key("CPU runs: glibc malloc keeps freed memory (no mmap, no trim), so a step "
                                       "does not page-fault its large tensors in again"),
})

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = False


def keep_freed_host_memory() -> bool:
    """Applies the settings above once per process; True if glibc took them (or did earlier)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a trim threshold of -1 turns trimming off (man 3 mallopt)
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _applied


def apply_config(args) -> bool:
    """keep_freed_host_memory where the config asks for it (the key set, a CPU run), as main.py
    and the tools do; False only when it was asked for but this malloc is not glibc's."""
    if not args.keep_freed_host_memory or torch.device(args.device).type != "cpu":
        return True
    return keep_freed_host_memory()
