"""What the gates cost: the measures that budgets constrain and reports print.

One implementation per measure, used by the problem (:mod:`l0_sparsity.problem`), the trainer's
logs and the reports: density (:mod:`~l0_sparsity.measures.density`) and compute, i.e. the
purged model's multiply-accumulates and parameters (:mod:`~l0_sparsity.measures.compute`).
"""

from l0_sparsity.measures.compute import ComputeCost
from l0_sparsity.measures.density import (
    expected_density,
    expected_l2,
    layer_densities,
    test_density,
)

__all__ = ["ComputeCost", "expected_density", "expected_l2", "layer_densities", "test_density"]
