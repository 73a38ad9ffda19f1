"""Fixtures shared by the test packages."""
import pytest

from tiny_configs import TINY_SWIN


@pytest.fixture
def tiny_swin_spec(monkeypatch):
    """swin_T_224_1k at the fixture's width (TINY_SWIN), so a whole DINO built in this test holds the
    fixture's backbone."""
    from models.dino.backbone_timm import SPECS, Spec
    spec = SPECS["swin_T_224_1k"]
    monkeypatch.setitem(SPECS, "swin_T_224_1k", Spec(spec.family, spec.variant, dict(spec.kwargs, **TINY_SWIN),
                                                     spec.file))
