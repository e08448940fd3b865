"""What :func:`conopt.solve` reports: status codes, the result and the outer iterates.

One job: the solver's output in the problem's own units. :data:`STATUS_MESSAGES` says what each
status code means, :class:`SolveResult` is what a solve returns (assembled by
:func:`build_result`, which also writes the multipliers into the constraints), and
:class:`OuterIterate` is what the ``callback`` receives after each outer iteration (made by
:func:`outer_iterate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from conopt.diagnostics import KKTReport
from conopt.solver.evaluation import Evaluator
from conopt.solver.subproblem import Iterate

__all__ = ["STATUS_MESSAGES", "OuterIterate", "SolveResult", "build_result", "outer_iterate"]

STATUS_MESSAGES: dict[int, str] = {
    0: "converged: the KKT tolerances are met",
    1: "outer iteration limit reached",
    2: "penalty limit reached without feasibility (the problem may be infeasible)",
    3: "a non-finite objective or constraint value at the initial point",
    4: "no further progress: the inner line search fails at the limit of precision",
    5: "evaluation limit reached",
    6: "the problem looks unbounded: a feasible iterate has an objective below -1e20 or an "
    "entry above 1e20 in size",
}
"""The sentence describing each status code of :class:`SolveResult`."""


@dataclass(frozen=True)
class SolveResult:
    """What :func:`conopt.solve` returns, in the manner of ``scipy.optimize.OptimizeResult``.

    Attributes:
        x: The solution (a tensor of the initial point's shape, dtype and device).
        fun: The objective at ``x``.
        multipliers: Each constraint's multiplier, by name.
        bound_multipliers: Multipliers of the lower and upper variable bounds (zeros where a
            bound is inactive or infinite), shaped like ``x``.
        kkt: The KKT report at ``x`` and the multipliers.
        max_violation: The largest violation of a constraint at ``x`` (the bounds always hold).
        nit: Outer (multiplier) iterations.
        ninner: Inner L-BFGS iterations, summed.
        nfev: Evaluations of the problem.
        rho: The final penalty coefficient (of the scaled problem).
        status: 0 converged, 1 outer iteration limit, 2 penalty limit, 3 non-finite values at
            the initial point, 4 no further progress possible, 5 evaluation limit, 6 the
            problem looks unbounded (``x`` is then the feasible iterate that shows it).
        message: A sentence describing ``status``.
        time: Wall-clock seconds.
    """

    x: torch.Tensor
    fun: float
    multipliers: dict[str, torch.Tensor]
    bound_multipliers: tuple[torch.Tensor, torch.Tensor]
    kkt: KKTReport
    max_violation: float
    nit: int
    ninner: int
    nfev: int
    rho: float
    status: int
    message: str
    time: float = field(repr=False)

    @property
    def success(self) -> bool:
        """Whether the solver converged (``status == 0``)."""
        return self.status == 0


@dataclass(frozen=True)
class OuterIterate:
    r"""What :func:`conopt.solve`'s ``callback`` receives after each outer iteration.

    Multipliers and violations are in the problem's own units (unscaled); ``rho`` is the
    penalty of the scaled problem (the same without scaling).

    Attributes:
        iteration: The outer iteration (1 for the first).
        x: The inner minimizer (flat).
        fun: The objective there.
        ineq: The inequality rows :math:`g(x)` of every ``"<="`` constraint, flat.
        eq: The equality rows :math:`h(x)`, flat.
        max_violation: The largest constraint violation there.
        rho: The penalty of this iteration's inner minimization.
        next_rho: The penalty of the next one (larger when the violation did not shrink).
        ineq_multipliers: :math:`\lambda` for the next iteration (updated when
            ``multipliers_updated``).
        eq_multipliers: :math:`\mu` for the next iteration.
        multipliers_updated: Whether the violation was small enough for the update.
        inner_iterations: L-BFGS iterations of this inner minimization.
    """

    iteration: int
    x: torch.Tensor
    fun: float
    ineq: torch.Tensor
    eq: torch.Tensor
    max_violation: float
    rho: float
    next_rho: float
    ineq_multipliers: torch.Tensor
    eq_multipliers: torch.Tensor
    multipliers_updated: bool
    inner_iterations: int


def outer_iterate(
    iteration: int,
    current: Iterate,
    rho: float,
    next_rho: float,
    multipliers: tuple[torch.Tensor, torch.Tensor],
    updated: bool,
    inner_iterations: int,
) -> OuterIterate:
    """The :class:`OuterIterate` of an outer iteration whose inner minimizer is ``current``.

    Args:
        iteration: The outer iteration (1 for the first).
        current: The inner minimizer.
        rho: The penalty of its inner minimization.
        next_rho: The penalty of the next one.
        multipliers: The (scaled) inequality and equality multipliers for the next iteration.
        updated: Whether the multipliers were updated.
        inner_iterations: L-BFGS iterations of the inner minimization.

    Returns:
        The iterate, in the problem's units.
    """
    p = current.point
    lam, mu = p.scales.to_units(*multipliers)
    return OuterIterate(
        iteration=iteration,
        x=p.x.clone(),
        fun=float(p.f) / p.scales.f,
        ineq=p.g_raw,
        eq=p.h_raw,
        max_violation=current.kkt.violation,
        rho=rho,
        next_rho=next_rho,
        ineq_multipliers=lam,
        eq_multipliers=mu,
        multipliers_updated=updated,
        inner_iterations=inner_iterations,
    )


def build_result(
    evaluate: Evaluator,
    final: Iterate,
    lower: torch.Tensor,
    upper: torch.Tensor,
    outer: int,
    ninner: int,
    rho: float,
    status: int,
    start: float,
) -> SolveResult:
    """Assemble the :class:`SolveResult` at ``final``, in the problem's units.

    Also writes the multipliers into the constraints' dense multipliers.

    Args:
        evaluate: The evaluator (layout, constraints, evaluation count).
        final: The iterate to report.
        lower: Flat lower bounds.
        upper: Flat upper bounds.
        outer: Outer iterations done.
        ninner: Inner iterations done, summed.
        rho: The final penalty.
        status: The status code (a key of :data:`STATUS_MESSAGES`).
        start: The :func:`time.perf_counter` reading at the start of the solve.

    Returns:
        The result.
    """
    point, s = final.point, final.point.scales
    x = point.x
    grad = final.grad / s.f
    lam, mu = s.to_units(final.lam, final.mu)
    g = point.g_raw
    # Bound multipliers: the part of the Lagrangian's gradient that the bounds hold.
    zero = torch.zeros_like(grad)
    lower_mult = torch.where(x <= lower, grad.clamp(min=0), zero)
    upper_mult = torch.where(x >= upper, (-grad).clamp(min=0), zero)
    residual = grad - lower_mult + upper_mult
    multipliers = evaluate.split(lam, mu)
    for name, value in multipliers.items():
        multiplier = evaluate.index.by_name[name].multiplier
        if multiplier is not None:
            with torch.no_grad():
                multiplier.value(None).copy_(value)
    kkt = KKTReport(
        max_violation=final.kkt.violation,
        min_multiplier=float(lam.min()) if lam.numel() else None,
        max_complementary_slackness=float((lam * g).abs().max()) if lam.numel() else None,
        stationarity=float(torch.linalg.vector_norm(residual)),
    )
    shape = evaluate.shape
    return SolveResult(
        x=x.reshape(shape).clone(),
        fun=float(point.f) / s.f,
        multipliers=multipliers,
        bound_multipliers=(lower_mult.reshape(shape), upper_mult.reshape(shape)),
        kkt=kkt,
        max_violation=kkt.max_violation,
        nit=outer,
        ninner=ninner,
        nfev=evaluate.nfev,
        rho=rho,
        status=status,
        message=STATUS_MESSAGES[status],
        time=time.perf_counter() - start,
    )
