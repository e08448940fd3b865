"""The arguments of :func:`conopt.solve`, checked before the problem is first evaluated.

One job: validate the arguments and group the numeric options by what they control: the
tolerances (:class:`Tolerances`), the penalty (:class:`PenaltyOptions`) and the iteration and
evaluation limits (:class:`Limits`). Each group checks itself when made, with the messages that
:func:`conopt.solve` raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conopt.problem import ConstrainedProblem

__all__ = ["Limits", "PenaltyOptions", "Tolerances", "check_inputs"]


def check_inputs(problem: object, x0: object) -> None:
    """Check the problem and the initial point's types.

    Raises:
        TypeError: If ``problem`` is not a :class:`~conopt.problem.ConstrainedProblem` or ``x0``
            not a floating-point tensor.
    """
    if not isinstance(problem, ConstrainedProblem):
        raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}.")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError("x0 must be a floating-point tensor.")


@dataclass(frozen=True)
class Tolerances:
    """The KKT tolerances, in the problem's units.

    Attributes:
        feasibility: On the constraint violation and on complementary slackness.
        optimality: On the largest entry of the Lagrangian's reduced gradient.

    Raises:
        ValueError: If a tolerance is not positive.
    """

    feasibility: float
    optimality: float

    def __post_init__(self) -> None:
        if not (self.feasibility > 0 and self.optimality > 0):
            raise ValueError(
                f"tolerances must be positive; got feasibility_tol={self.feasibility}, "
                f"optimality_tol={self.optimality}."
            )


@dataclass(frozen=True)
class PenaltyOptions:
    """The penalty's initial value, growth factor and largest value (of the scaled problem).

    Attributes:
        initial: The initial penalty, or None to choose it at the initial point.
        growth: Factor by which the penalty grows when the violation does not shrink.
        maximum: The largest penalty.

    Raises:
        ValueError: Unless ``0 < initial <= maximum`` (or ``initial`` is None) and
            ``growth > 1``.
    """

    initial: float | None
    growth: float
    maximum: float

    def __post_init__(self) -> None:
        rho, rho_growth, rho_max = self.initial, self.growth, self.maximum
        if not (rho is None or 0 < rho <= rho_max) or not rho_growth > 1:
            raise ValueError(
                f"need 0 < rho <= rho_max (or rho=None) and rho_growth > 1; got rho={rho}, "
                f"rho_growth={rho_growth}, rho_max={rho_max}."
            )


@dataclass(frozen=True)
class Limits:
    """The iteration, memory and evaluation limits.

    Attributes:
        max_outer: Largest number of outer iterations.
        max_inner: Largest number of L-BFGS iterations per outer iteration.
        history_size: L-BFGS memory (curvature pairs).
        max_evaluations: Largest number of evaluations of the problem (None: no limit).

    Raises:
        ValueError: If a limit is below 1.
    """

    max_outer: int
    max_inner: int
    history_size: int
    max_evaluations: int | None

    def __post_init__(self) -> None:
        if min(self.max_outer, self.max_inner, self.history_size) < 1:
            raise ValueError(
                f"max_outer, max_inner and history_size must be >= 1; got {self.max_outer}, "
                f"{self.max_inner}, {self.history_size}."
            )
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ValueError(f"max_evaluations must be >= 1 or None, got {self.max_evaluations}.")
