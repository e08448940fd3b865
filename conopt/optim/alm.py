r"""A deterministic solver: the method of multipliers with an L-BFGS inner minimization.

For small, full-batch problems that must be solved to high accuracy. Each outer iteration
minimizes the augmented Lagrangian (:class:`~conopt.formulations.AugmentedLagrangian`)

.. math::

    \mathcal{L}_A(x; \lambda, \mu, \rho) = f(x)
    + \frac{1}{2\rho}\sum_i\left([\lambda_i + \rho g_i(x)]_+^2 - \lambda_i^2\right)
    + \mu^\top h(x) + \frac{\rho}{2}\|h(x)\|^2

with ``torch.optim.LBFGS`` (strong-Wolfe line search), then, following the LANCELOT rules
(Conn, Gould & Toint, 1991; Nocedal & Wright, Algorithm 17.4):

* if the constraint violation :math:`\|(\max(g, -\lambda/\rho), h)\|_\infty` is below the
  current tolerance :math:`\eta`: update the multipliers
  :math:`\lambda \leftarrow [\lambda + \rho g]_+,\ \mu \leftarrow \mu + \rho h` and tighten
  :math:`\eta \leftarrow \eta / \rho^{0.9}` and the inner tolerance :math:`\omega \leftarrow
  \omega / \rho`;
* otherwise increase the penalty :math:`\rho \leftarrow \gamma\rho` and reset
  :math:`\eta = \rho^{-0.1}`, :math:`\omega = 1/\rho`.

Variable bounds :math:`l \le x \le u` enter as inequality rows :math:`l - x \le 0`,
:math:`x - u \le 0` with their own multipliers, and the returned point is clipped to them.
The solver stops when the KKT report meets the tolerances (primal feasibility, complementary
slackness, stationarity); otherwise it returns the iterate with the best KKT measures it met.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from conopt.diagnostics import KKTReport
from conopt.formulations import AugmentedLagrangian
from conopt.multipliers import DenseMultiplier
from conopt.optim.lagrangian import ConstraintIndex
from conopt.problem import ConstrainedProblem, ConstraintState

__all__ = ["SolveResult", "solve"]

STATUS_MESSAGES = {
    0: "converged: the KKT tolerances are met",
    1: "outer iteration limit reached",
    2: "penalty limit reached without feasibility (the problem may be infeasible)",
    3: "a non-finite objective or constraint value was met",
}


@dataclass(frozen=True)
class SolveResult:
    """What :func:`solve` returns, in the manner of ``scipy.optimize.OptimizeResult``.

    Attributes:
        x: The solution (a tensor of the initial point's dtype and device).
        fun: The objective at ``x``.
        multipliers: Each constraint's multiplier, by name.
        bound_multipliers: Multipliers of the lower and upper variable bounds (zeros where a
            bound is infinite).
        kkt: The KKT report at ``x`` and the final multipliers.
        max_violation: The largest violation of a constraint or a bound at ``x``.
        nit: Outer (multiplier) iterations.
        ninner: Inner L-BFGS iterations, summed.
        nfev: Evaluations of the problem.
        rho: The final penalty coefficient.
        status: 0 converged, 1 outer iteration limit, 2 penalty limit, 3 non-finite values.
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


class _Evaluator:
    """Flattens a problem's constraints, bounds included, into ``g <= 0`` and ``h == 0``."""

    def __init__(
        self,
        problem: ConstrainedProblem,
        lower: torch.Tensor,
        upper: torch.Tensor,
    ) -> None:
        self.problem = problem
        self.index = ConstraintIndex(problem)
        for name, constraint in self.index.by_name.items():
            if constraint.multiplier is not None and not isinstance(
                constraint.multiplier, DenseMultiplier
            ):
                raise TypeError(
                    f"solve() handles dense multipliers only; constraint {name!r} has "
                    f"{type(constraint.multiplier).__name__}."
                )
        self.has_lower = torch.isfinite(lower)
        self.has_upper = torch.isfinite(upper)
        self.lower = lower[self.has_lower]
        self.upper = upper[self.has_upper]
        self.nfev = 0
        self.layout: list[tuple[str, bool, torch.Size]] | None = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective, inequality rows (bounds last) and equality rows at ``x``."""
        self.nfev += 1
        state = self.problem.evaluate(x)
        ineq: list[torch.Tensor] = []
        eq: list[torch.Tensor] = []
        layout: list[tuple[str, bool, torch.Size]] = []
        for key, raw in state.constraints.items():
            entry = self.index.resolve(key)
            value = raw.value if isinstance(raw, ConstraintState) else raw
            if value.shape != entry.constraint.shape:
                raise ValueError(
                    f"constraint {entry.name!r}: value has shape {tuple(value.shape)}, "
                    f"expected {tuple(entry.constraint.shape)}."
                )
            value = value.to(x.dtype).reshape(-1)
            (ineq if entry.constraint.is_inequality else eq).append(value)
            layout.append((entry.name, entry.constraint.is_inequality, value.shape))
        ineq += [self.lower - x[self.has_lower], x[self.has_upper] - self.upper]
        if self.layout is None:
            self.layout = layout
        elif layout != self.layout:
            raise ValueError("problem.evaluate() must return the same constraints at every call.")
        h = torch.cat(eq) if eq else x.new_zeros(0)
        return state.loss.to(x.dtype), torch.cat(ineq), h

    def split(self, lam: torch.Tensor, mu: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-constraint multipliers from the flat vectors (bound rows excluded)."""
        assert self.layout is not None
        out: dict[str, torch.Tensor] = {}
        i = j = 0
        for name, inequality, shape in self.layout:
            constraint = self.index.by_name[name]
            n = shape.numel()
            if inequality:
                out[name] = lam[i : i + n].reshape(constraint.shape).clone()
                i += n
            else:
                out[name] = mu[j : j + n].reshape(constraint.shape).clone()
                j += n
        return out

    def bounds_split(self, lam: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower- and upper-bound multipliers as dense vectors shaped like ``x``."""
        n_lower = int(self.has_lower.sum())
        n_upper = int(self.has_upper.sum())
        bound_part = lam[lam.numel() - n_lower - n_upper :]
        lower = torch.zeros_like(x)
        upper = torch.zeros_like(x)
        lower[self.has_lower] = bound_part[:n_lower]
        upper[self.has_upper] = bound_part[n_lower:]
        return lower, upper

    def initial_multipliers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start from the problem's own multipliers (zeros for the bounds)."""
        assert self.layout is not None
        lam: list[torch.Tensor] = []
        mu: list[torch.Tensor] = []
        for name, inequality, _ in self.layout:
            multiplier = self.index.by_name[name].multiplier
            value = (
                torch.zeros(self.index.by_name[name].shape)
                if multiplier is None
                else multiplier.value(None).detach()
            )
            (lam if inequality else mu).append(value.to(x).reshape(-1))
        n_bounds = int(self.has_lower.sum()) + int(self.has_upper.sum())
        lam.append(x.new_zeros(n_bounds))
        return torch.cat(lam), (torch.cat(mu) if mu else x.new_zeros(0))


def _as_bounds(
    bound: float | torch.Tensor | None, x: torch.Tensor, default: float, name: str
) -> torch.Tensor:
    if bound is None:
        return torch.full_like(x, default)
    tensor = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    try:
        return tensor.expand_as(x).clone()
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}, which does not broadcast to x's shape "
            f"{tuple(x.shape)}."
        ) from None


def _violations(g: torch.Tensor, h: torch.Tensor) -> float:
    parts = [g.clamp(min=0).max() if g.numel() else g.new_zeros(())]
    if h.numel():
        parts.append(h.abs().max())
    return float(torch.stack(parts).max())


def solve(
    problem: ConstrainedProblem,
    x0: torch.Tensor,
    *,
    lower: float | torch.Tensor | None = None,
    upper: float | torch.Tensor | None = None,
    feasibility_tol: float = 1e-7,
    optimality_tol: float = 1e-5,
    rho: float = 10.0,
    rho_growth: float = 10.0,
    rho_max: float = 1e12,
    max_outer: int = 30,
    max_inner: int = 500,
    history_size: int = 20,
) -> SolveResult:
    r"""Solve ``problem`` from ``x0`` by the method of multipliers (see the module docstring).

    ``problem.evaluate(x)`` must return every constraint's value (a tensor of the declared
    shape) at every call. The constraints' own formulations are ignored here: the solver always
    uses the augmented Lagrangian. The final multipliers are also written into the constraints'
    :class:`~conopt.multipliers.DenseMultiplier`\ s.

    Args:
        problem: The problem; its constraints must have dense multipliers (or none).
        x0: Initial point (a tensor; use float64 for accuracy). Any device.
        lower: Lower bounds on ``x`` (a number or a tensor broadcastable to ``x0``; ``-inf``
            for none).
        upper: Upper bounds on ``x`` (``+inf`` for none).
        feasibility_tol: Tolerance on the constraint and bound violation and on complementary
            slackness :math:`\max_i |\lambda_i g_i|`.
        optimality_tol: Tolerance on :math:`\|\nabla_x \mathcal{L}\|_\infty`, relative to
            :math:`\max(1, \|\nabla f(x_0)\|_\infty)`.
        rho: Initial penalty coefficient.
        rho_growth: Factor by which the penalty grows when the violation does not shrink.
        rho_max: Largest penalty coefficient; reaching it while infeasible ends with status 2.
        max_outer: Largest number of outer iterations.
        max_inner: Largest number of L-BFGS iterations per outer iteration.
        history_size: L-BFGS memory.

    Returns:
        A :class:`SolveResult`.

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
    if not isinstance(problem, ConstrainedProblem):
        raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}.")
    if rho <= 0 or rho_growth <= 1 or rho_max < rho:
        raise ValueError(
            f"need rho > 0, rho_growth > 1 and rho_max >= rho; got rho={rho}, "
            f"rho_growth={rho_growth}, rho_max={rho_max}."
        )
    start = time.perf_counter()
    x = x0.detach().clone()
    lower_t = _as_bounds(lower, x, -math.inf, "lower")
    upper_t = _as_bounds(upper, x, math.inf, "upper")
    if bool((lower_t > upper_t).any()):
        raise ValueError("lower bounds must not exceed upper bounds.")
    x = torch.maximum(torch.minimum(x, upper_t), lower_t)
    evaluate = _Evaluator(problem, lower_t, upper_t)
    x.requires_grad_(True)

    with torch.enable_grad():
        f0 = evaluate(x)[0]
        (grad_f0,) = torch.autograd.grad(f0, x)
    scale = max(1.0, float(grad_f0.abs().max()))
    lam, mu = evaluate.initial_multipliers(x.detach())
    omega, eta = 1.0 / rho, rho**-0.1
    ninner = 0
    status = 1
    outer = 0
    best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def augmented() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f, g, h = evaluate(x)
        rho_t = f.new_tensor(rho)
        value = f + AugmentedLagrangian.primal_term(lam, g, rho_t, True).sum()
        if h.numel():
            value = value + AugmentedLagrangian.primal_term(mu, h, rho_t, False).sum()
        return value, f, g, h

    for iteration in range(1, max_outer + 1):
        outer = iteration
        optimizer = torch.optim.LBFGS(
            [x],
            lr=1.0,
            max_iter=max_inner,
            max_eval=max_inner * 5 // 4,
            tolerance_grad=omega * scale,
            tolerance_change=1e-15,
            history_size=history_size,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            x.grad = None
            value = augmented()[0]
            if not torch.isfinite(value):
                return value.detach().new_tensor(math.inf)
            value.backward()
            return value.detach()

        optimizer.step(closure)
        ninner += int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
        with torch.enable_grad():
            x.grad = None
            value, f, g, h = augmented()
        if not (torch.isfinite(value) and torch.isfinite(g).all() and torch.isfinite(h).all()):
            status = 3
            break
        value.backward()
        with torch.no_grad():
            measure = torch.cat([torch.maximum(g, -lam / rho), h]).abs()
            violation = float(measure.max()) if measure.numel() else 0.0
            if violation <= eta:
                lam = torch.clamp(lam + rho * g.detach(), min=0)
                mu = mu + rho * h.detach()
                # With the updated multipliers, grad L_A(x) is exactly grad_x L(x, lam, mu).
                stationarity = float(x.grad.abs().max())
                slackness = float((lam * g).abs().max()) if g.numel() else 0.0
                merit = max(
                    _violations(g, h) / feasibility_tol,
                    slackness / feasibility_tol,
                    stationarity / (optimality_tol * scale),
                )
                if best is None or merit < best[0]:
                    best = (merit, x.detach().clone(), lam.clone(), mu.clone())
                if merit <= 1.0:
                    status = 0
                    break
                eta = max(eta / rho**0.9, feasibility_tol / 10)
                omega = max(omega / rho, optimality_tol / 10)
            elif rho >= rho_max:
                status = 2
                break
            else:
                rho = min(rho * rho_growth, rho_max)
                eta, omega = max(rho**-0.1, feasibility_tol), max(1.0 / rho, optimality_tol / 10)

    if status != 0 and best is not None:
        # The penalty may have grown past usefulness: report the best KKT point met.
        _, x_best, lam, mu = best
        with torch.no_grad():
            x.copy_(x_best)
    with torch.no_grad():
        x_final = torch.maximum(torch.minimum(x.detach(), upper_t), lower_t)
    with torch.enable_grad():
        xg = x_final.clone().requires_grad_(True)
        f, g, h = evaluate(xg)
        lagrangian = f + (lam * g).sum() + (mu * h).sum()
        (grad,) = torch.autograd.grad(lagrangian, xg)
    g, h = g.detach(), h.detach()
    multipliers = evaluate.split(lam, mu)
    for name, value in multipliers.items():
        multiplier = evaluate.index.by_name[name].multiplier
        if multiplier is not None:
            with torch.no_grad():
                multiplier.value(None).copy_(value)
    kkt = KKTReport(
        max_violation=_violations(g, h),
        min_multiplier=float(lam.min()) if lam.numel() else None,
        max_complementary_slackness=float((lam * g).abs().max()) if g.numel() else None,
        stationarity=float(torch.linalg.vector_norm(grad)),
    )
    return SolveResult(
        x=x_final,
        fun=float(f.detach()),
        multipliers=multipliers,
        bound_multipliers=evaluate.bounds_split(lam, x_final),
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
