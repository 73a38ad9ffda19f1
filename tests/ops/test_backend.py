"""Backend choice: set_backend / MSDA_BACKEND forcing, fallback warning, dtype handling, backend_info."""
import warnings

import pytest
import torch

from models.dino.ops import backend, backend_info, ms_deform_attn, ms_deform_attn_pytorch, set_backend
from tests.ops.conftest import make_inputs


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch):
    monkeypatch.delenv("MSDA_BACKEND", raising=False)
    set_backend(None)
    yield
    set_backend(None)


def _spy():
    calls = []

    def reference(*args):
        calls.append(1)
        return ms_deform_attn_pytorch(*args)
    return reference, calls


def test_set_backend_pytorch_uses_reference():
    set_backend("pytorch")
    ref, calls = _spy()
    backend.dispatch(ref, *make_inputs())
    assert calls and backend_info()["cpu"]["backend"] == "pytorch"


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("MSDA_BACKEND", "pytorch")
    ref, calls = _spy()
    backend.dispatch(ref, *make_inputs())
    assert calls and backend.requested() == ("pytorch", "MSDA_BACKEND")


def test_set_backend_beats_env_var(monkeypatch, compiled):
    monkeypatch.setenv("MSDA_BACKEND", "pytorch")
    set_backend("compiled")
    ref, calls = _spy()
    out = backend.dispatch(ref, *make_inputs())
    assert not calls
    torch.testing.assert_close(out, ms_deform_attn_pytorch(*make_inputs()))


def test_bad_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="msda_backend"):
        set_backend("cuda")
    monkeypatch.setenv("MSDA_BACKEND", "fast")
    with pytest.raises(ValueError, match="MSDA_BACKEND='fast'"):
        ms_deform_attn(*make_inputs())


def _break_compiled(monkeypatch):
    monkeypatch.setattr(backend._build, "load", lambda: None)
    monkeypatch.setattr(backend._build, "load_error", lambda: "no compiler (test)")


def test_auto_falls_back_with_one_warning(monkeypatch):
    _break_compiled(monkeypatch)
    args = make_inputs()
    with pytest.warns(UserWarning, match="uses the pytorch backend.*no compiler"):
        out = ms_deform_attn(*args)
    torch.testing.assert_close(out, ms_deform_attn_pytorch(*args))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ms_deform_attn(*args)  # second call: silent


def test_forcing_unavailable_compiled_raises(monkeypatch):
    _break_compiled(monkeypatch)
    with pytest.raises(RuntimeError, match="backend 'compiled' forced by set_backend.*pip install"):
        set_backend("compiled")


def test_auto_prefers_compiled(compiled):
    info = backend_info()
    assert info["cpu"]["backend"] == "compiled" and info["requested"] == "auto"
    assert "cuda" in info


@pytest.mark.parametrize("name", ["pytorch", "compiled"])
def test_half_precision_and_emca_through_dispatch(name, compiled):
    set_backend(name)
    value, shapes, starts, loc, attn = make_inputs(m=4, loc_heads=2, dtype=torch.float32)
    ref = ms_deform_attn_pytorch(value, shapes, starts, loc.repeat(1, 1, 2, 1, 1, 1), attn.repeat(1, 1, 2, 1, 1))
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn), ref)
    for dtype in (torch.float16, torch.bfloat16):
        out = ms_deform_attn(value.to(dtype), shapes, starts, loc.to(dtype), attn.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_module_main_prints_info(compiled, capsys):
    from models.dino.ops import __main__

    assert __main__.main([]) == 0
    assert '"backend": "compiled"' in capsys.readouterr().out
