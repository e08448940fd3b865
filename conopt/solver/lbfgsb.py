r"""The inner solver of :func:`conopt.solve`: a bound-aware, L-BFGS-B-like quasi-Newton method.

One job: minimize a :class:`~conopt.solver.subproblem.Subproblem` (the augmented Lagrangian for
fixed multipliers) over its box. A projected L-BFGS method written for this purpose; the bounds
are kept exactly, never penalized. Variables at or within :math:`\epsilon` of a bound whose
gradient points outwards are moved onto the bound (Bertsekas' :math:`\epsilon`-active set); the
others take the reduced quasi-Newton step :math:`-B_{FF}^{-1}\nabla_F\mathcal{L}_A` of the
compact L-BFGS matrix (Byrd, Lu, Nocedal & Zhu, 1995), and an Armijo backtracking search runs
along the projected path :math:`P_{[l,u]}(x + \alpha d)`, falling back on Hager & Zhang's
approximate Wolfe conditions where value differences are rounding errors. A step is never more
than ten times longer than the previous one; after a step along which the function fell at
least as much as its linear model (no positive curvature seen), a step in nearly the same
direction is stretched to that limit, so that an objective unbounded below is followed
geometrically. The curvature pairs (:class:`Memory`) are kept across outer iterations (a
multiplier update hardly changes the Hessian of :math:`\mathcal{L}_A` near the solution), which
makes every inner solve after the first one short. Every inner solve takes at least one step
(unless its start is exactly stationary): a multiplier update that leaves the reduced gradient
within the tolerance still moves :math:`x`, so the violation keeps shrinking from one outer
iteration to the next instead of waiting for the multipliers to drift far enough.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from conopt.solver.evaluation import Point
from conopt.solver.subproblem import Iterate, Subproblem

__all__ = ["Memory", "clip", "minimize"]

_ARMIJO = 1e-4  # sufficient decrease constant of the line search
_MAX_BACKTRACKS = 30
_EPS_ACTIVE = 1e-3  # largest width of Bertsekas' epsilon-active set
_STEP_GROWTH = 10.0  # a step is at most this many times longer than the previous one
_DIVERGENCE = 1e2  # an inner solve is abandoned when the violation grows by this factor
_ROUNDOFF = 1e-10  # relative size of value differences treated as rounding error
_APPROX_ARMIJO = 0.1  # delta of Hager and Zhang's approximate Armijo condition
_WOLFE = 0.9  # sigma of their curvature condition
_ALIGNED = 0.9  # cosine above which a step continues the previous one (extrapolation)


class Memory:
    r"""Limited-memory BFGS curvature pairs in compact form, kept across inner solves.

    With the pairs as rows of :math:`S, Y` (oldest first) and :math:`\theta = y^\top y /
    s^\top y` of the newest pair, the Hessian approximation is (Byrd, Nocedal & Schnabel, 1994)

    .. math::

        B = \theta I - W K^{-1} W^\top, \quad W = [Y^\top, \theta S^\top], \quad
        K = \begin{pmatrix} -D & L^\top \\ L & \theta S S^\top \end{pmatrix},

    :math:`D` the diagonal and :math:`L` the strictly lower triangle of :math:`S Y^\top`.

    Args:
        size: The largest number of pairs kept.

    Attributes:
        last_step: The largest entry of the last step in absolute value (None before any).
        flat: The last step when it had no positive curvature and decreased the function at
            least as much as its linear model (None otherwise).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.s: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.w: torch.Tensor | None = None
        self.system: torch.Tensor | None = None
        self.theta = 1.0
        self.last_step: float | None = None
        self.flat: torch.Tensor | None = None  # the last step, if along nonpositive curvature

    def __len__(self) -> int:
        return 0 if self.s is None else self.s.shape[0]

    def clear(self) -> None:
        """Forget every pair."""
        self.s = self.y = self.k = self.w = self.system = self.flat = None

    def push(self, s: torch.Tensor, y: torch.Tensor, linear: bool) -> None:
        r"""Add a pair when its curvature :math:`s^\top y` is safely positive.

        Otherwise, when the step decreased the function at least as much as its linear model
        (``linear``), the step is kept as :attr:`flat`: the next step may extrapolate along it.
        """
        sy, yy, ss, self.last_step = torch.stack(
            [s.dot(y), y.dot(y), s.dot(s), s.abs().max()]
        ).tolist()
        self.flat = None
        if not sy > 1e-10 * math.sqrt(ss * yy):
            self.flat = s if linear else None
            return
        keep = self.size - 1
        if self.s is None or self.y is None or keep == 0:
            self.s, self.y = s[None], y[None]
        else:
            self.s = torch.cat([self.s[-keep:], s[None]])
            self.y = torch.cat([self.y[-keep:], y[None]])
        self.theta = yy / sy
        sy_matrix = self.s @ self.y.T
        lower = torch.tril(sy_matrix, diagonal=-1)
        self.k = torch.cat(
            [
                torch.cat([-torch.diag(torch.diagonal(sy_matrix)), lower.T], dim=1),
                torch.cat([lower, self.theta * (self.s @ self.s.T)], dim=1),
            ]
        )
        self.w = torch.cat([self.y, self.theta * self.s])  # W^T, shape (2m, n)
        self.system = self.k - (self.w @ self.w.T) / self.theta

    def solve(self, v: torch.Tensor, free: torch.Tensor | None) -> torch.Tensor | None:
        r"""The reduced quasi-Newton step :math:`B_{FF}^{-1} v_F` on the ``free`` variables.

        By the Sherman–Morrison–Woodbury formula (Byrd, Lu, Nocedal & Zhu, 1995, eq. 5.11),
        :math:`B_{FF}^{-1} = \theta^{-1} I + \theta^{-2} W_F (K - \theta^{-1} W_F^\top
        W_F)^{-1} W_F^\top`. Zero outside ``free`` (None: every variable is free); None when
        the small system is singular.
        """
        assert self.w is not None and self.k is not None and self.system is not None
        if free is None:
            w, system = self.w, self.system
        else:
            w, v = self.w * free, v * free
            system = self.k - (w @ w.T) / self.theta
        try:
            z = torch.linalg.solve(system, w @ v)
        except RuntimeError:  # torch.linalg.LinAlgError: the system is singular
            return None
        return v / self.theta + (w.T @ z) / self.theta**2


def clip(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The projection of ``x`` onto the box ``[lower, upper]``."""
    return torch.minimum(torch.maximum(x, lower), upper)


def minimize(
    start: Iterate,
    objective: Subproblem,
    evaluate: Callable[[torch.Tensor], Point],
    memory: Memory,
    tolerance: float,
    max_iter: int,
    accept: Callable[[Iterate], bool],
) -> tuple[Iterate, int, str]:
    """Minimize ``objective`` over its box from ``start`` by projected L-BFGS.

    Where the change of value is below its rounding error, the Armijo test gives way to Hager &
    Zhang's approximate Wolfe conditions on the directional derivative at the trial point, so
    that the last digits of a solution are not lost to large objective values.

    Args:
        start: The starting iterate (for ``objective``).
        objective: The augmented Lagrangian to minimize.
        evaluate: Evaluates the problem at a point.
        memory: Curvature pairs (updated in place).
        tolerance: Stop when the reduced gradient's largest entry is at most this.
        max_iter: The largest number of iterations.
        accept: Called on every new iterate; returning True stops the solve (KKT met).

    The first step is taken even when ``start`` already meets ``tolerance`` (unless its reduced
    gradient is 0); a failed line search then ends the solve with ``"tolerance"``.

    Returns:
        ``(iterate, iterations, reason)``, the reason being ``"tolerance"``, ``"accepted"``,
        ``"max_iter"``, ``"stalled"`` (no acceptable step) or ``"diverged"`` (the violation grew
        a hundredfold: the augmented Lagrangian looks unbounded below at this penalty; the
        iterate returned is then ``start``).
    """
    lower, upper = objective.lower, objective.upper
    diverged = _DIVERGENCE * max(1.0, start.violation)
    current = start
    for iteration in range(max_iter):
        # One step at least (unless stationary): after a multiplier update that leaves the
        # reduced gradient within the tolerance, x must still follow the new multipliers.
        converged = current.reduced_norm <= tolerance
        if converged and (iteration > 0 or current.reduced_norm == 0):
            return current, iteration, "tolerance"
        x, grad = current.point.x, current.grad
        direction = _step_length(_direction(current, memory, lower, upper), memory)
        new = _line_search(current, direction, objective, evaluate)
        if new is None and converged:
            return current, iteration, "tolerance"
        if new is None:
            if len(memory):
                memory.clear()  # the quasi-Newton model misled the search: steepest descent
                continue
            return current, iteration, "stalled"
        s = new.point.x - x
        # At least the linear model's decrease (no curvature seen): extrapolation may follow.
        linear = new.value <= current.value + float(grad.dot(s)) + _ROUNDOFF * abs(current.value)
        memory.push(s, new.grad - grad, linear)
        current = new
        if accept(current):
            return current, iteration + 1, "accepted"
        if current.violation > diverged:
            memory.clear()
            return start, iteration + 1, "diverged"
        if memory.last_step is not None and memory.last_step <= 1e-15 * max(
            1.0, float(x.abs().max())
        ):
            return current, iteration + 1, "stalled"
    return current, max_iter, "max_iter"


def _direction(
    current: Iterate, memory: Memory, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """The search direction at ``current``: bound-held variables onto their bound, others by L-BFGS.

    Bertsekas' epsilon-active set holds the variables near a bound whose gradient pushes out;
    the free ones take the reduced quasi-Newton step (steepest descent, scaled, when the memory
    is empty or its small system singular, which clears it).
    """
    x, grad = current.point.x, current.grad
    eps = min(_EPS_ACTIVE, current.reduced_norm)
    held = ((x - lower <= eps) & (grad > 0)) | ((upper - x <= eps) & (grad < 0))
    free = ~held if bool(held.any()) else None
    step = memory.solve(grad, free) if len(memory) else None
    if step is None:
        if len(memory):
            memory.clear()  # the small system is singular
        step = (grad if free is None else grad * free) / max(1.0, current.reduced_norm)
    direction = -step
    if free is not None:
        direction = torch.where(free, direction, torch.where(grad > 0, lower - x, upper - x))
    return direction


def _step_length(direction: torch.Tensor, memory: Memory) -> torch.Tensor:
    """``direction`` at most ``_STEP_GROWTH`` times longer than the last step, or extrapolated.

    A direction that continues a last step of nonpositive curvature (:attr:`Memory.flat`) is
    lengthened to that limit: along a line where the function decreases at least linearly, the
    steps grow geometrically (so that an unbounded objective is found in a few dozen steps).
    """
    if memory.last_step is None:
        return direction
    limit = _STEP_GROWTH * memory.last_step
    size = float(direction.abs().max())
    flat = memory.flat
    if size > limit:
        return direction * (limit / size)
    if flat is not None and size > 0:
        cosine = float(direction.dot(flat)) / float(
            torch.linalg.vector_norm(direction) * torch.linalg.vector_norm(flat)
        )
        if cosine >= _ALIGNED:
            return direction * (limit / size)
    return direction


def _line_search(
    current: Iterate,
    direction: torch.Tensor,
    objective: Subproblem,
    evaluate: Callable[[torch.Tensor], Point],
) -> Iterate | None:
    """Armijo backtracking along the projected path ``P(x + alpha d)``; None if it fails."""
    lower, upper = objective.lower, objective.upper
    x, grad = current.point.x, current.grad
    roundoff = _ROUNDOFF * max(1.0, abs(current.value))
    alpha = 1.0
    previous: torch.Tensor | None = None
    for _ in range(_MAX_BACKTRACKS):
        x_new = clip(x + alpha * direction, lower, upper)
        step = x_new - x
        slope = float(grad.dot(step))
        if not slope < 0:
            return None
        if previous is not None and bool((x_new == previous).all()):
            alpha *= 0.1  # the projection hid the last reduction
            continue
        previous = x_new
        trial = evaluate(x_new)
        value, value_t = objective.value(trial)
        if value <= current.value + _ARMIJO * slope:
            new = objective.iterate(trial, value_t)
            if new.finite:
                return new
            value = math.inf
        elif abs(value - current.value) <= roundoff:
            # Within rounding error: judge by the slope at the trial point instead (Hager and
            # Zhang's approximate Wolfe conditions).
            new = objective.iterate(trial, value_t)
            end_slope = float(new.grad.dot(step))
            if new.finite and _WOLFE * slope <= end_slope <= -(1 - 2 * _APPROX_ARMIJO) * slope:
                return new
        if math.isfinite(value):
            # Minimizer of the quadratic through the value and slope at 0 and the value here.
            curvature = value - current.value - slope
            shrink = -slope / (2 * curvature) if curvature > 0 else 0.5
        else:
            shrink = 0.25
        alpha *= min(0.5, max(0.1, shrink))
    return None
