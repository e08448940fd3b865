"""Constrained optimizers and the torch optimizers they use for the dual player."""

import warnings
from typing import Any

from conopt.errors import NonFiniteError
from conopt.optim.alternating import AlternatingGDA
from conopt.optim.constrained import Closure, ConstrainedOptimizer
from conopt.optim.extragradient import (
    ExtraAdam,
    Extragradient,
    ExtrapolationMixin,
    ExtraSGD,
)
from conopt.optim.nupi import nuPI
from conopt.optim.simultaneous import SimultaneousGDA

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
    "nuPI",
]


def __getattr__(name: str) -> Any:
    """Resolve ``conopt.optim.solve``/``SolveResult`` (moved to :mod:`conopt.solver`), warning."""
    if name in ("solve", "SolveResult"):
        from conopt import solver

        warnings.warn(
            f"conopt.optim.{name} moved to conopt.{name} (module conopt.solver); the old name "
            "will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(solver, name)
    raise AttributeError(f"module 'conopt.optim' has no attribute {name!r}")
