"""What the gates cost: the measures that budgets constrain and reports print.

One implementation per measure, used by the problem (:mod:`l0_sparsity.problem`), the trainer's
logs and the reports: density (:mod:`~l0_sparsity.measures.density`) and compute, i.e. the
purged model's multiply-accumulates and parameters (:mod:`~l0_sparsity.measures.compute`), and
its latency on a device, fitted from measurements (:mod:`~l0_sparsity.measures.latency`).
"""

from l0_sparsity.measures.compute import ComputeCost
from l0_sparsity.measures.density import (
    expected_density,
    expected_l2,
    layer_densities,
    test_density,
)
from l0_sparsity.measures.latency import LatencyModel, LatencyRow, default_cache_dir

__all__ = [
    "ComputeCost",
    "LatencyModel",
    "LatencyRow",
    "default_cache_dir",
    "expected_density",
    "expected_l2",
    "layer_densities",
    "test_density",
]
