"""``conopt.solve``: a deterministic solver for small smooth constrained problems."""

from conopt.solver.alm import SolveResult, solve

__all__ = ["SolveResult", "solve"]
