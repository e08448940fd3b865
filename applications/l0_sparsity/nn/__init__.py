"""Gates and gated layers: the first rooms of the pipeline.

The pipeline runs one way: the hard-concrete gate distribution (:mod:`~l0_sparsity.nn.gates`)
→ the gated layers that hold the gates (:mod:`~l0_sparsity.nn.layers`) → the gate set that
samples them jointly (:mod:`~l0_sparsity.nn.gate_set`) → :func:`sparsify`, which swaps the
layers of a dense model for gated ones.
"""

from l0_sparsity.nn.gate_set import GateSet, JointSampling, sample_jointly
from l0_sparsity.nn.gates import (
    BETA,
    GAMMA,
    ZETA,
    HardConcrete,
    init_log_alpha_,
    log_alpha_for_droprate,
)
from l0_sparsity.nn.layers import (
    GatedBatchNorm2d,
    GatedLayer,
    GateLeafTracer,
    L0Conv2d,
    L0Linear,
    SkipSpec,
    SparsifyReport,
    gate_parameters,
    gated_layers,
    sparsify,
    weight_parameters,
)

__all__ = [
    "BETA",
    "GAMMA",
    "ZETA",
    "GateLeafTracer",
    "GateSet",
    "GatedBatchNorm2d",
    "GatedLayer",
    "HardConcrete",
    "JointSampling",
    "L0Conv2d",
    "L0Linear",
    "SkipSpec",
    "SparsifyReport",
    "gate_parameters",
    "gated_layers",
    "init_log_alpha_",
    "log_alpha_for_droprate",
    "sample_jointly",
    "sparsify",
    "weight_parameters",
]
