"""First-use self-check of the compiled kernel: run against the CPU kernel, with wrong kernels
injected to see the fallback warning, the forced-compiled error and the machine cache."""
import warnings

import pytest
import torch

from models.dino.ops import __main__ as ops_main
from models.dino.ops import _build, backend, ms_deform_attn, ms_deform_attn_pytorch, selfcheck, set_backend
from tests.ops.conftest import make_inputs


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    """A fresh machine cache, the CPU kernel checked on first use, backend choice reset."""
    monkeypatch.delenv("MSDA_BACKEND", raising=False)
    monkeypatch.setattr(selfcheck, "CHECKED_ON_FIRST_USE", ("cpu",))
    monkeypatch.setattr(selfcheck, "_process_cache", {})
    real_cache_dir = _build.cache_dir
    monkeypatch.setattr(_build, "cache_dir", lambda with_cuda: tmp_path / ("cuda" if with_cuda else "cpu"))
    set_backend(None)
    yield real_cache_dir
    set_backend(None)


def _wrong_backward(*args):
    grad_value, grad_loc, grad_attn = torch.ops.msda.ms_deform_attn_backward(*args)
    grad_loc = grad_loc.clone()
    grad_loc[..., 0] *= 1.01  # x gradients 1 % off
    return grad_value, grad_loc, grad_attn


def _inject(monkeypatch, **kernel):
    real = selfcheck.run_check
    monkeypatch.setattr(selfcheck, "run_check", lambda device_type: real(device_type, **kernel))


def test_check_passes_on_the_cpu_kernel(compiled):
    result = selfcheck.run_check("cpu")
    assert result.ok and result.max_error < result.tolerance
    assert len(result.errors) == 2 * 2 * 4  # cases x dtypes x (output, three gradients)
    assert result.line().startswith("msda self-check on cpu (") and ": OK, largest error" in result.line()


def test_check_names_the_largest_error_of_a_wrong_kernel(compiled):
    result = selfcheck.run_check("cpu", backward=_wrong_backward)
    assert not result.ok and result.where.startswith("grad_sampling_locations (")
    assert result.max_error > 10 * result.tolerance and "FAILED" in result.line()
    raising = selfcheck.run_check("cpu", forward=lambda *a: torch.ops.msda.ms_deform_attn_forward(*a[:4], a[4][:1]))
    assert not raising.ok and raising.where.startswith("the kernel call (d=5")


def test_wrong_kernel_falls_back_with_one_warning(compiled, monkeypatch):
    _inject(monkeypatch, backward=_wrong_backward)
    args = make_inputs(dtype=torch.float32)
    with pytest.warns(UserWarning) as record:
        out = ms_deform_attn(*args)
    (w,) = [r for r in record if "msda" in str(r.message)]
    msg = str(w.message)
    assert "\n" not in msg and "uses the pytorch backend (the compiled kernel failed its self-check on cpu" in msg
    assert "largest error" in msg and "in grad_sampling_locations (" in msg and "--check" in msg
    torch.testing.assert_close(out, ms_deform_attn_pytorch(*args))
    assert backend.backend_info()["cpu"]["backend"] == "pytorch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(*args)  # once per process


def test_wrong_kernel_forced_compiled_raises(compiled, monkeypatch):
    _inject(monkeypatch, backward=_wrong_backward)
    with pytest.raises(RuntimeError, match="backend 'compiled' forced by set_backend.*failed its self-check on cpu"
                                           ".*largest error .* in grad_sampling_locations"):
        set_backend("compiled")


def test_passing_kernel_is_used_silently(compiled):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(*make_inputs(dtype=torch.float32))
    assert backend.backend_info()["cpu"]["backend"] == "compiled"


def test_result_is_cached_per_machine_by_build_and_device(compiled, monkeypatch, tmp_path):
    first = selfcheck.cached_check("cpu")
    files = list((tmp_path / "cpu" / "selfcheck").glob("*.json"))
    assert [f.name for f in files] == [f"{_build.build_id()}-{selfcheck.device_name('cpu')}.json"]
    monkeypatch.setattr(selfcheck, "_process_cache", {})  # a new process on the same machine
    monkeypatch.setattr(selfcheck, "run_check", lambda device_type: pytest.fail("re-ran a cached check"))
    again = selfcheck.cached_check("cpu")
    assert again.cached and again.ok and again.max_error == first.max_error
    monkeypatch.setattr(selfcheck, "_process_cache", {})
    monkeypatch.setattr(_build, "build_id", lambda: "lib-rebuilt")  # another build: checked again
    with pytest.raises(pytest.fail.Exception, match="re-ran"):
        selfcheck.cached_check("cpu")


def test_build_id_follows_the_library_file(monkeypatch, tmp_path):
    lib = tmp_path / "msda.so"
    lib.write_bytes(b"one")
    monkeypatch.setitem(_build._state, "library", str(lib))
    first = _build.build_id()
    lib.write_bytes(b"two")
    assert first.startswith("lib-") and _build.build_id() != first
    monkeypatch.setitem(_build._state, "library", None)
    assert _build.build_id() == "src-" + _build.source_hash()


def test_cli_check(compiled, monkeypatch, capsys):
    assert ops_main.main(["--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("msda self-check on cpu (") and ": OK," in out[0]
    if not torch.cuda.is_available():
        assert out[1] == "msda self-check on cuda: skipped, CUDA is unavailable (no CUDA device visible)"
    _inject(monkeypatch, backward=_wrong_backward)
    assert ops_main.main(["--check"]) == 1
    assert ": FAILED, largest error" in capsys.readouterr().out
