"""conopt tests run in float64 (multipliers take the default dtype when built)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
