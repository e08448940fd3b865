"""Constrained optimizers and the torch optimizers they use for the dual player."""

from conopt.optim.alm import SolveResult, solve
from conopt.optim.constrained import (
    AlternatingGDA,
    Closure,
    ConstrainedOptimizer,
    SimultaneousGDA,
)
from conopt.optim.extragradient import (
    ExtraAdam,
    Extragradient,
    ExtrapolationMixin,
    ExtraSGD,
)
from conopt.optim.lagrangian import NonFiniteError
from conopt.optim.nupi import nuPI

__all__ = [
    "AlternatingGDA",
    "Closure",
    "ConstrainedOptimizer",
    "ExtraAdam",
    "ExtraSGD",
    "Extragradient",
    "ExtrapolationMixin",
    "NonFiniteError",
    "SimultaneousGDA",
    "SolveResult",
    "nuPI",
    "solve",
]
