r"""The method of multipliers: :func:`conopt.solve` and its outer loop.

For small, full-batch problems that must be solved to high accuracy. The problem

.. math::

    \min_x f(x) \quad\text{s.t.}\quad g(x) \le 0,\ h(x) = 0,\ l \le x \le u

is solved as a sequence of bound-constrained minimizations of the augmented Lagrangian
(:class:`~conopt.formulations.AugmentedLagrangian`, Nocedal & Wright eq. 17.65)

.. math::

    \mathcal{L}_A(x; \lambda, \mu, \rho) = f(x)
    + \frac{1}{2\rho}\sum_i\left([\lambda_i + \rho g_i(x)]_+^2 - \lambda_i^2\right)
    + \mu^\top h(x) + \frac{\rho}{2}\|h(x)\|^2
    \quad\text{over}\quad l \le x \le u.

This module's one job is the outer loop: one inner minimization
(:mod:`~conopt.solver.lbfgsb`, a projected L-BFGS method that keeps the bounds exactly) of the
:mod:`~conopt.solver.subproblem` per iteration, then a multiplier update or a larger penalty by
LANCELOT's rules (:mod:`~conopt.solver.schedule`), until a stopping rule holds. The objective
and the constraint rows are scaled at :math:`x_0` (:mod:`~conopt.solver.scaling`); tolerances,
multipliers and everything reported (:mod:`~conopt.solver.result`) are in the problem's units.
An inner solve whose violation grows a hundredfold is abandoned, and the next one restarts from
where it started; the curvature pairs are kept across outer iterations, which makes every inner
solve after the first one short.

**Termination test.** Every inner iterate comes with first-order multiplier estimates
:math:`\lambda \ge 0, \mu`. The solve converges (status 0) at the first iterate :math:`x`
where, with :math:`r` the gradient of the Lagrangian without its bound-held components (all in
the problem's units),

.. math::

    \max(\|[g]_+\|_\infty, \|h\|_\infty) \le \epsilon_{feas}, \quad
    \max_i \frac{|\lambda_i g_i|}{\max(1, \lambda_i)} \le \epsilon_{feas}, \quad
    \|r\|_\infty \le \epsilon_{opt}\, s_d, \quad
    s_d = \min\Big(100, \max\Big(1, \frac{\|\lambda\|_1 + \|\mu\|_1}{100\, m}\Big)\Big),

:math:`\epsilon_{feas}` = ``feasibility_tol``, :math:`\epsilon_{opt}` = ``optimality_tol``,
:math:`m` the number of constraint rows (:math:`s_d = 1` without any). Stationarity is thus
absolute unless the mean multiplier exceeds 100, when it is relative to it as in IPOPT's scaled
dual infeasibility, and never looser than ``100 * optimality_tol``. The solve stops as unbounded
(status 6) at an iterate within ``feasibility_tol`` of feasibility where :math:`f(x) \le
-10^{20}` or :math:`\|x\|_\infty \ge 10^{20}`. Otherwise it returns the iterate whose KKT
measures were best.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from conopt.problem import ConstrainedProblem
from conopt.solver.evaluation import EvaluationLimit, Evaluator, Point, flat_bounds
from conopt.solver.lbfgsb import Memory, clip, minimize
from conopt.solver.options import Limits, PenaltyOptions, Tolerances, check_inputs
from conopt.solver.result import OuterIterate, SolveResult, build_result, outer_iterate
from conopt.solver.scaling import scale_problem
from conopt.solver.schedule import Schedule
from conopt.solver.subproblem import Iterate

__all__ = ["solve"]

_MAX_STALLS = 3  # outer iterations in a row whose inner solves stall without improving
_UNBOUNDED = 1e20  # a feasible iterate with f below -this, or an entry above it: unbounded


def solve(
    problem: ConstrainedProblem,
    x0: torch.Tensor,
    *,
    lower: float | torch.Tensor | None = None,
    upper: float | torch.Tensor | None = None,
    feasibility_tol: float = 1e-7,
    optimality_tol: float = 1e-5,
    rho: float | None = None,
    rho_growth: float = 10.0,
    rho_max: float = 1e12,
    max_outer: int = 50,
    max_inner: int = 500,
    history_size: int = 20,
    max_evaluations: int | None = None,
    scaling: bool = True,
    callback: Callable[[OuterIterate], None] | None = None,
) -> SolveResult:
    r"""Solve ``problem`` from ``x0`` by the method of multipliers (:mod:`conopt.solver.alm`).

    ``problem.evaluate(x)`` must return every constraint (of its declared shape) at every call;
    the constraints' formulations are ignored, their dense multipliers give the initial
    multipliers and receive the final ones. The solve stops at the first iterate that meets the
    KKT tolerances (the exact test: :mod:`conopt.solver.alm`); the bounds hold at every iterate.

    Args:
        problem: The problem; its constraints must have dense multipliers (or none).
        x0: Initial point, a floating-point tensor (float64 for accuracy); clipped to the bounds.
        lower: Lower bounds: a number or a tensor broadcastable to ``x0`` (None: ``-inf``).
        upper: Upper bounds (None: ``+inf``).
        feasibility_tol: Tolerance on the constraint violation and complementary slackness.
        optimality_tol: Tolerance on the largest entry of the Lagrangian's reduced gradient.
        rho: Initial penalty (of the scaled problem); None chooses it at ``x0``.
        rho_growth: Factor by which the penalty grows when the violation does not shrink.
        rho_max: Largest penalty; needing more while infeasible ends with status 2.
        max_outer: Largest number of outer iterations.
        max_inner: Largest number of L-BFGS iterations per outer iteration.
        history_size: L-BFGS memory (curvature pairs).
        max_evaluations: Largest number of evaluations of the problem (None: no limit).
        scaling: Scale the objective and the constraint rows by their gradients at ``x0``.
        callback: Called with an :class:`OuterIterate` after each outer iteration.

    Returns:
        A :class:`SolveResult`.

    Raises:
        TypeError: If ``problem`` is not a ConstrainedProblem, ``x0`` not a floating-point
            tensor, or a constraint has a multiplier other than a dense one.
        ValueError: For inconsistent arguments or constraint values of the wrong shape.

    Example:
        >>> import torch, conopt
        >>> class Disk(conopt.ConstrainedProblem):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.inside = conopt.Constraint("<=")
        ...     def evaluate(self, x):
        ...         return conopt.ProblemState(x.sum(), {self.inside: (x**2).sum() - 1})
        >>> result = conopt.solve(Disk(), torch.zeros(2, dtype=torch.float64))
        >>> result.success, [round(v, 6) for v in result.x.tolist()], round(result.fun, 6)
        (True, [-0.707107, -0.707107], -1.414214)
    """
    check_inputs(problem, x0)
    tolerances = Tolerances(feasibility_tol, optimality_tol)
    penalty = PenaltyOptions(rho, rho_growth, rho_max)
    limits = Limits(max_outer, max_inner, history_size, max_evaluations)
    start = time.perf_counter()
    bounds = flat_bounds(lower, upper, x0)
    evaluate = Evaluator(problem, x0.shape)
    point = evaluate(clip(x0.detach().reshape(-1).clone(), *bounds))
    evaluate.limit = math.inf if max_evaluations is None else max_evaluations
    loop = _OuterLoop(evaluate, point, scaling, bounds, tolerances, penalty, limits)
    return loop.run(callback, start)


class _Monitor:
    """Watches every iterate: keeps the best one and tells when the solve should stop."""

    def __init__(self, tolerances: Tolerances, first: Iterate) -> None:
        self.feasibility_tol = tolerances.feasibility
        self.optimality_tol = tolerances.optimality
        self.best = first
        self.best_merit = math.inf
        self.status = 0  # why the solve should stop, once __call__ has said so

    def __call__(self, candidate: Iterate) -> bool:
        """Track ``candidate``; True when it meets the KKT tolerances or looks unbounded.

        ``status`` is then 0 (KKT met) or 6: the candidate is feasible (violation at most
        ``feasibility_tol``) and its objective is below ``-_UNBOUNDED`` or an entry of its
        ``x`` is above ``_UNBOUNDED`` in size.
        """
        if not candidate.finite:
            return False
        merit = candidate.kkt.merit(self.feasibility_tol, self.optimality_tol)
        if merit < self.best_merit:
            self.best, self.best_merit = candidate, merit
        if candidate.kkt.violation <= self.feasibility_tol and (
            candidate.fun <= -_UNBOUNDED or candidate.size >= _UNBOUNDED
        ):
            self.status = 6
            return True
        self.status = 0
        return merit <= 1.0


class _OuterLoop:
    """The outer iterations of one solve and their counters.

    Args:
        evaluate: The problem's evaluator.
        point: The first evaluation, at the clipped ``x0`` (scaled here when ``scaling``).
        scaling: Whether to scale the objective and the constraint rows.
        bounds: The flat lower and upper bounds.
        tolerances: The KKT tolerances.
        penalty: The penalty options.
        limits: The iteration, memory and evaluation limits.
    """

    def __init__(
        self,
        evaluate: Evaluator,
        point: Point,
        scaling: bool,
        bounds: tuple[torch.Tensor, torch.Tensor],
        tolerances: Tolerances,
        penalty: PenaltyOptions,
        limits: Limits,
    ) -> None:
        self.evaluate, self.limits = evaluate, limits
        self.lower, self.upper = bounds
        point, self.grad_scale = scale_problem(evaluate, point, scaling)
        self.schedule = Schedule.start(evaluate, point, self.grad_scale, penalty, tolerances)
        self.objective = self.schedule.subproblem(self.lower, self.upper)
        self.current = self.objective.iterate(point)
        self.accept = _Monitor(tolerances, self.current)
        self.memory = Memory(limits.history_size)
        self.outer = self.ninner = self.stalls = 0

    def run(self, callback: Callable[[OuterIterate], None] | None, start: float) -> SolveResult:
        """Iterate until a stopping rule holds; the result (``start``: the solve's start time)."""
        status = self._iterate(callback)
        final = self.current if status in (0, 6) else self.accept.best
        return build_result(
            self.evaluate,
            final,
            self.lower,
            self.upper,
            self.outer,
            self.ninner,
            self.schedule.rho,
            status,
            start,
        )

    def _iterate(self, callback: Callable[[OuterIterate], None] | None) -> int:
        """The outer iterations; the status code they end with."""
        accept, schedule = self.accept, self.schedule
        if not self.current.finite:
            return 3
        if accept(self.current):
            return accept.status
        while self.outer < self.limits.max_outer:
            self.outer += 1
            merit_before = accept.best_merit
            try:
                iterations, reason = self._inner_solve()
            except EvaluationLimit:
                return 5
            if reason == "accepted":
                return accept.status
            stalled = reason == "stalled"
            self.stalls = self.stalls + 1 if stalled and accept.best_merit >= merit_before else 0
            inner_rho = schedule.rho
            updated = schedule.update(self.current, self.objective, reason)
            if updated is None:
                return 2  # the penalty would have to grow past rho_max
            if callback is not None:
                callback(self._outer_iterate(inner_rho, updated, iterations))
            if self.stalls >= _MAX_STALLS:
                return 4
            self.objective = schedule.subproblem(self.lower, self.upper)
            self.current = self.objective.iterate(self.current.point)
            if accept(self.current):
                return accept.status
        return 1

    def _outer_iterate(self, inner_rho: float, updated: bool, iterations: int) -> OuterIterate:
        """What the callback receives after the inner solve that used the penalty ``inner_rho``."""
        multipliers = (self.schedule.lam, self.schedule.mu)
        rho = self.schedule.rho
        return outer_iterate(
            self.outer, self.current, inner_rho, rho, multipliers, updated, iterations
        )

    def _inner_solve(self) -> tuple[int, str]:
        """Minimize the current subproblem; its iterations and why it ended (see ``minimize``)."""
        scales = self.evaluate.scales
        assert scales is not None
        tolerance = self.schedule.omega * scales.f * self.grad_scale
        self.current, iterations, reason = minimize(
            self.current,
            self.objective,
            self.evaluate,
            self.memory,
            tolerance,
            self.limits.max_inner,
            self.accept,
        )
        self.ninner += iterations
        return iterations, reason
