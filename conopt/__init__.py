"""conopt: train PyTorch models under constraints with Lagrangian methods.

Declare a :class:`ConstrainedProblem` with :class:`Constraint` attributes, return a
:class:`ProblemState` from its ``evaluate`` method, and step a constrained optimizer from
:mod:`conopt.optim`. See the README and the documentation for a complete example.
"""

from conopt import optim
from conopt.diagnostics import ConstraintReport, KKTReport, StepReport
from conopt.errors import NonFiniteError
from conopt.feasibility import FeasibilityReport, FeasibilityTracker, evaluate_feasibility
from conopt.formulations import (
    AugmentedLagrangian,
    Formulation,
    IncreaseOnStagnation,
    Lagrangian,
    QuadraticPenalty,
)
from conopt.multipliers import DenseMultiplier, ImplicitMultiplier, IndexedMultiplier, Multiplier
from conopt.problem import ConstrainedProblem, Constraint, ConstraintState, ProblemState
from conopt.solver import SolveResult, solve

__version__ = "0.1.0"

__all__ = [
    "AugmentedLagrangian",
    "ConstrainedProblem",
    "Constraint",
    "ConstraintReport",
    "ConstraintState",
    "DenseMultiplier",
    "FeasibilityReport",
    "FeasibilityTracker",
    "Formulation",
    "ImplicitMultiplier",
    "IncreaseOnStagnation",
    "IndexedMultiplier",
    "KKTReport",
    "Lagrangian",
    "Multiplier",
    "NonFiniteError",
    "ProblemState",
    "QuadraticPenalty",
    "SolveResult",
    "StepReport",
    "evaluate_feasibility",
    "optim",
    "solve",
]
