"""l0_sparsity: train networks to a chosen budget with hard-concrete gates and conopt.

The common path in five names::

    import l0_sparsity as l0

    model = l0.sparsify(dense_model)              # gate the layers of a dense model
    problem = l0.SparsityProblem(model, target=0.3, macs_target=0.4, example_input=x)
    ...                                           # train (conopt's optimizers, or l0.train)
    small = l0.purge(model)                       # physically remove what the gates dropped
    l0.export(model, "small.pt2", example_input)  # save it to run without this package

The rooms, in the direction gates flow: :mod:`l0_sparsity.nn` (gates, gated layers, gate set,
``sparsify``) → :mod:`l0_sparsity.measures` (density, expected MACs and parameters) →
:mod:`l0_sparsity.problem` (the budgets as constraints) →
:mod:`l0_sparsity.purging` (smaller model, export). Around them: :mod:`l0_sparsity.models`,
:mod:`l0_sparsity.data`, :mod:`l0_sparsity.training` (trainer, presets, checkpoints) and the
command line :mod:`l0_sparsity.cli`.
"""

from l0_sparsity import _moved_modules
from l0_sparsity.measures import ComputeCost, expected_density, test_density
from l0_sparsity.nn import (
    GatedBatchNorm2d,
    GateSet,
    HardConcrete,
    L0Conv2d,
    L0Linear,
    SparsifyReport,
    sparsify,
)
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.purging import PurgeReport, export, purge, purge_report
from l0_sparsity.training import TrainConfig, TrainResult, get_preset, train

__version__ = "0.1.0"

__all__ = [
    "ComputeCost",
    "GateSet",
    "GatedBatchNorm2d",
    "HardConcrete",
    "L0Conv2d",
    "L0Linear",
    "PurgeReport",
    "SparsifyReport",
    "SparsityProblem",
    "TrainConfig",
    "TrainResult",
    "expected_density",
    "export",
    "get_preset",
    "purge",
    "purge_report",
    "sparsify",
    "test_density",
    "train",
]

_moved_modules.install()
