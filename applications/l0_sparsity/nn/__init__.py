"""Gates and gated layers: the first rooms of the pipeline.

The pipeline runs one way: the hard-concrete gate distribution (:mod:`~l0_sparsity.nn.gates`)
→ the gated layers that hold the gates (:mod:`~l0_sparsity.nn.base`, the common base and the
helpers that find gated layers and their parameters; :mod:`~l0_sparsity.nn.linear`,
:mod:`~l0_sparsity.nn.conv`, :mod:`~l0_sparsity.nn.batchnorm`) → the gate set that samples
them jointly (:mod:`~l0_sparsity.nn.gate_set`) → :func:`sparsify`
(:mod:`~l0_sparsity.nn.sparsifying`), which swaps the layers of a dense model for gated ones.
"""

from l0_sparsity.nn.attention import GatedMultiheadAttention
from l0_sparsity.nn.base import GatedLayer, gate_parameters, gated_layers, weight_parameters
from l0_sparsity.nn.batchnorm import GatedBatchNorm2d
from l0_sparsity.nn.conv import L0Conv2d
from l0_sparsity.nn.gate_set import GateSet, JointSampling, sample_jointly
from l0_sparsity.nn.gates import (
    BETA,
    GAMMA,
    ZETA,
    HardConcrete,
    init_log_alpha_,
    log_alpha_for_droprate,
)
from l0_sparsity.nn.linear import L0Linear
from l0_sparsity.nn.sparsifying import GateLeafTracer, SkipSpec, SparsifyReport, sparsify
from l0_sparsity.nn.transformer import GatedTransformerEncoder, GatedTransformerEncoderLayer

__all__ = [
    "BETA",
    "GAMMA",
    "ZETA",
    "GateLeafTracer",
    "GateSet",
    "GatedBatchNorm2d",
    "GatedLayer",
    "GatedMultiheadAttention",
    "GatedTransformerEncoder",
    "GatedTransformerEncoderLayer",
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
