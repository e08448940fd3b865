"""mixed_precision: a torch.autocast context for an optional dtype."""

import torch

from l0_sparsity.training.precision import mixed_precision


def test_mixed_precision_autocasts_to_a_dtype_or_disabled_for_none():
    a = torch.ones(2, 2)
    with mixed_precision("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with mixed_precision("cpu", None):
        assert (a @ a).dtype == torch.float32
