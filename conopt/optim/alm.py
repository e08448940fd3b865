"""Deprecated location of the solver: it moved to :mod:`conopt.solver` (use ``conopt.solve``)."""

import warnings

from conopt.solver import SolveResult, solve

__all__ = ["SolveResult", "solve"]

warnings.warn(
    "conopt.optim.alm moved to conopt.solver (use conopt.solve and conopt.SolveResult); the old "
    "module will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
