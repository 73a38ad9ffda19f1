"""The compiled-kernel fixtures: skip without a GPU, fail with the build error when one is visible."""
import pytest
import torch

from models.dino.ops import _build
from tests.ops.conftest import require_kernels

BUILD_ERROR = "compiled kernels unavailable: JIT build failed (nvcc fatal: Unsupported gpu architecture)"


def test_gpu_visible_and_build_failed_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_build, "missing_kernel_reason", lambda device_type: BUILD_ERROR)
    for device_type in ("cuda", "cpu"):
        with pytest.raises(pytest.fail.Exception, match=f"a CUDA device is visible but the msda {device_type} "
                                                        "kernel is unusable: .*nvcc fatal"):
            require_kernels(device_type)


def test_without_gpu_skips(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="needs a CUDA device"):
        require_kernels("cuda")
    monkeypatch.setattr(_build, "missing_kernel_reason", lambda device_type: "no C++ compiler")
    with pytest.raises(pytest.skip.Exception, match="no C\\+\\+ compiler"):
        require_kernels("cpu")


def test_missing_cuda_kernel_says_why(monkeypatch, tmp_path):
    """GPU visible, no CUDA toolkit: the JIT build makes a CPU-only library and the reason is kept."""
    from torch.utils import cpp_extension

    built = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: built.append(kw["sources"]))
    monkeypatch.setenv("MSDA_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(_build._state, "cuda_note", None)
    monkeypatch.setitem(_build._state, "library", None)
    _build.jit_build()
    assert built and not any(s.endswith(".cu") for s in built[0])
    monkeypatch.setattr(_build, "load", lambda: "JIT build in x")
    monkeypatch.setattr(_build, "has_kernel", lambda device_type: device_type == "cpu")
    assert _build.missing_kernel_reason("cpu") is None
    with pytest.raises(pytest.fail.Exception, match="no CUDA kernel .*found no CUDA toolkit"):
        require_kernels("cuda")
