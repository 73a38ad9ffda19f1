"""util/host_memory.py: glibc's malloc keeps freed memory (no mmap for large blocks, no trim)."""
import ctypes
import platform

import pytest
import torch

from util import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class _Mallinfo2(ctypes.Structure):  # glibc >= 2.33, all fields size_t
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_bytes() -> int:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc without mallinfo2 (< 2.33)")
    libc.mallinfo2.restype = _Mallinfo2
    return libc.mallinfo2().hblkhd


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_large_tensors_come_from_the_heap_once_applied():
    assert host_memory.keep_freed_host_memory()
    before = _mmapped_bytes()
    big = torch.empty(64 * 2 ** 20 // 4)  # 64 MiB: mmap'd by default (threshold at most 32 MiB)
    big.fill_(1.0)
    assert _mmapped_bytes() == before  # served by the heap, which keeps it after the free
    del big
    assert host_memory.keep_freed_host_memory()  # idempotent


def test_other_mallocs_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", False)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert host_memory.keep_freed_host_memory() is False


@pytest.mark.parametrize("option,calls", [([], 1), (["keep_freed_host_memory=False"], 0)])
def test_tools_apply_it_on_the_cpu_as_main_does(monkeypatch, option, calls):
    from tools.common import tool_args
    seen = []
    monkeypatch.setattr(host_memory, "keep_freed_host_memory", lambda: seen.append(1) or True)
    args = tool_args("config/DINO/DINO_synthetic.py", option)
    assert len(seen) == calls and args.keep_freed_host_memory is (calls == 1)


@pytest.mark.parametrize("device,key,calls", [("cpu", True, 1), ("cpu", False, 0), ("cuda:0", True, 0)])
def test_apply_config_only_for_cpu_runs_that_ask(monkeypatch, device, key, calls):
    from types import SimpleNamespace
    seen = []
    monkeypatch.setattr(host_memory, "keep_freed_host_memory", lambda: seen.append(1) or False)
    applied = host_memory.apply_config(SimpleNamespace(device=device, keep_freed_host_memory=key))
    assert len(seen) == calls and applied is (calls == 0)  # False only when asked for and not applied
