"""autocast: a torch.autocast context for an optional dtype."""

import torch

from l0_sparsity.precision import autocast


def test_autocast_to_a_dtype_or_disabled_for_none():
    a = torch.ones(2, 2)
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert (a @ a).dtype == torch.float32
