import pytest
import torch


@pytest.fixture
def seeded():
    """Seed torch's global RNG (model init, DN noise) for the test."""
    torch.manual_seed(0)
    yield
