r"""A deterministic solver: the method of multipliers with a bound-aware L-BFGS inner solver.

For small, full-batch problems that must be solved to high accuracy. The problem

.. math::

    \min_x f(x) \quad\text{s.t.}\quad g(x) \le 0,\ h(x) = 0,\ l \le x \le u

is solved as a sequence of bound-constrained minimizations of the augmented Lagrangian
(:class:`~conopt.formulations.AugmentedLagrangian`, Nocedal & Wright eq. 17.65)

.. math::

    \mathcal{L}_A(x; \lambda, \mu, \rho) = f(x)
    + \frac{1}{2\rho}\sum_i\left([\lambda_i + \rho g_i(x)]_+^2 - \lambda_i^2\right)
    + \mu^\top h(x) + \frac{\rho}{2}\|h(x)\|^2
    \quad\text{over}\quad l \le x \le u,

following the LANCELOT rules (Conn, Gould & Toint, 1991; Nocedal & Wright, Algorithm 17.4).
After each inner minimization, with :math:`V = \|(\max(g, -\lambda/\rho), h)\|_\infty`:

* if :math:`V \le \eta`, the multipliers are updated, :math:`\lambda \leftarrow [\lambda + \rho
  g]_+`, :math:`\mu \leftarrow \mu + \rho h`, and the tolerances tightened,
  :math:`\eta \leftarrow \eta / \bar\rho^{0.9}`, :math:`\omega \leftarrow \omega / \bar\rho`;
* otherwise the penalty grows, :math:`\rho \leftarrow \gamma\rho`, and the tolerances restart
  from :math:`\eta = \bar\rho^{-0.1}`, :math:`\omega = 1/\bar\rho`,

with :math:`\bar\rho = \max(\rho, 10)` (so that the schedule tightens also when the penalty
starts small); :math:`\omega` bounds the inner solve's reduced gradient. Two safeguards keep the
penalty from exploding: an inner solve that stalls at the limit of floating-point precision is
followed by a multiplier update, never by a larger penalty; and an inner solve along which the
violation grows a hundredfold (the augmented Lagrangian looks unbounded below) is abandoned, the
penalty grown and the next solve restarted from where that one started. The initial penalty
balances the objective against the initial infeasibility (Birgin & Martínez, 2014),
:math:`\rho_0 = 10 \max(1, |f(x_0)|) / \max(1, \tfrac12\|(g(x_0)_+, h(x_0))\|^2)`, clipped to
:math:`[10^{-2}, 10^2]`.

**Scaling.** By default the objective and each constraint row are scaled at :math:`x_0` so that
their gradients' largest entries are at most 1 (rows with smaller gradients are scaled up, by a
factor 10 at most); the tolerances, the multipliers and every reported quantity are in the
problem's own units.

**Inner solver.** A projected L-BFGS method written for this purpose; the bounds are kept
exactly, never penalized. Variables at or within :math:`\epsilon` of a bound whose gradient
points outwards are moved onto the bound (Bertsekas' :math:`\epsilon`-active set); the others
take the reduced quasi-Newton step :math:`-B_{FF}^{-1}\nabla_F\mathcal{L}_A` of the compact
L-BFGS matrix (Byrd, Lu, Nocedal & Zhu, 1995), and an Armijo backtracking search runs along the
projected path :math:`P_{[l,u]}(x + \alpha d)`, falling back on Hager & Zhang's approximate
Wolfe conditions where value differences are rounding errors. A step is never more than ten
times longer than the previous one; after a step along which the function fell at least as much
as its linear model (no positive curvature seen), a step in nearly the same direction is
stretched to that limit, so that an objective unbounded below is followed geometrically (a
feasible iterate with :math:`f \le -10^{20}` or :math:`\|x\|_\infty \ge 10^{20}` ends the
solve as unbounded). The curvature pairs are kept across outer iterations (a multiplier update
hardly changes the Hessian of :math:`\mathcal{L}_A` near the solution), which makes every inner
solve after the first one short.

**Evaluations.** Each evaluation of the problem is used once: the objective, the constraint
values and the autograd graph of an accepted point are kept, so the gradient of
:math:`\mathcal{L}_A` for new multipliers is a vector-Jacobian product there, not a new
evaluation. Since :math:`\nabla_x\mathcal{L}_A(x;\lambda,\mu,\rho) = \nabla_x L(x,
[\lambda+\rho g]_+, \mu+\rho h)`, every inner iterate comes with first-order multiplier
estimates: the solver stops at the first iterate that meets the KKT tolerances (see
:func:`solve` for the exact test), and otherwise returns the iterate whose KKT measures were best.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from conopt.diagnostics import KKTReport
from conopt.multipliers import DenseMultiplier
from conopt.optim.lagrangian import ConstraintIndex
from conopt.problem import ConstrainedProblem, ConstraintState

__all__ = ["OuterIterate", "SolveResult", "solve"]

STATUS_MESSAGES = {
    0: "converged: the KKT tolerances are met",
    1: "outer iteration limit reached",
    2: "penalty limit reached without feasibility (the problem may be infeasible)",
    3: "a non-finite objective or constraint value at the initial point",
    4: "no further progress: the inner line search fails at the limit of precision",
    5: "evaluation limit reached",
    6: "the problem looks unbounded: a feasible iterate has an objective below -1e20 or an "
    "entry above 1e20 in size",
}

_ARMIJO = 1e-4  # sufficient decrease constant of the line search
_MAX_BACKTRACKS = 30
_EPS_ACTIVE = 1e-3  # largest width of Bertsekas' epsilon-active set
_STEP_GROWTH = 10.0  # a step is at most this many times longer than the previous one
_RHO_INITIAL_RANGE = (1e-2, 1e2)  # clip of the automatic initial penalty
_SCALE_TARGET = 1.0  # largest gradient entry of the scaled objective and rows at x0
_SCALE_UP_MAX = 1e1  # largest factor by which a row with small gradients is scaled up
_DIVERGENCE = 1e2  # an inner solve is abandoned when the violation grows by this factor
_ROUNDOFF = 1e-10  # relative size of value differences treated as rounding error
_APPROX_ARMIJO = 0.1  # delta of Hager and Zhang's approximate Armijo condition
_WOLFE = 0.9  # sigma of their curvature condition
_MAX_STALLS = 3  # outer iterations in a row whose inner solves stall without improving
_MULTIPLIER_SCALE = 100.0  # s_max of IPOPT's dual scaling: mean multipliers above it relax it
_MAX_RELAXATION = 100.0  # the largest factor by which large multipliers relax optimality_tol
_UNBOUNDED = 1e20  # a feasible iterate with f below -this, or an entry above it: unbounded
_ALIGNED = 0.9  # cosine above which a step continues the previous one (extrapolation)


@dataclass(frozen=True)
class SolveResult:
    """What :func:`solve` returns, in the manner of ``scipy.optimize.OptimizeResult``.

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
    r"""What :func:`solve`'s ``callback`` receives after each outer iteration.

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


# ------------------------------------------------------------------------------------------------
# Evaluations.
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scales:
    """Positive factors applied to the objective and to each inequality and equality row."""

    f: float
    g: torch.Tensor
    h: torch.Tensor
    unit: bool = False  # all factors are 1


class _Point:
    """One evaluation of the problem: scaled values at ``x`` and the graph to differentiate them.

    Attributes:
        x: The (detached, flat) point.
        f: The scaled objective (0-d).
        g: The scaled inequality rows.
        h: The scaled equality rows.
        g_raw: The inequality rows in the problem's units.
        h_raw: The equality rows in the problem's units.
        scales: The scale factors.
    """

    def __init__(
        self,
        leaf: torch.Tensor,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        scales: _Scales,
    ) -> None:
        self.leaf = leaf
        self.outputs = outputs
        self.scales = scales
        self.x = leaf.detach()
        f, self.g_raw, self.h_raw = (t.detach() for t in outputs)
        if scales.unit:
            self.f, self.g, self.h = f, self.g_raw, self.h_raw
        else:
            self.f, self.g, self.h = f * scales.f, self.g_raw * scales.g, self.h_raw * scales.h

    def rescaled(self, scales: _Scales) -> _Point:
        """The same evaluation under other scale factors."""
        return _Point(self.leaf, self.outputs, scales)

    def gradient(self, weight_g: torch.Tensor, weight_h: torch.Tensor) -> torch.Tensor:
        r"""The gradient of the scaled :math:`f + w_g^\top g + w_h^\top h` at :attr:`x`."""
        s = self.scales
        if s.unit:
            weights = (torch.ones_like(self.f), weight_g, weight_h)
        else:
            weights = (self.f.new_tensor(s.f), weight_g * s.g, weight_h * s.h)
        pairs = [
            (out, weight)
            for out, weight in zip(self.outputs, weights, strict=True)
            if out.requires_grad and out.numel()
        ]
        if not pairs:
            return torch.zeros_like(self.x)
        outs, ws = zip(*pairs, strict=True)
        (grad,) = torch.autograd.grad(outs, self.leaf, ws, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.x) if grad is None else grad


class _Evaluator:
    """Evaluates a problem at flat points, its constraints flattened into ``g <= 0`` and ``h``."""

    def __init__(self, problem: ConstrainedProblem, shape: torch.Size) -> None:
        self.problem = problem
        self.shape = shape
        self.index = ConstraintIndex(problem)
        for name, constraint in self.index.by_name.items():
            if constraint.multiplier is not None and not isinstance(
                constraint.multiplier, DenseMultiplier
            ):
                raise TypeError(
                    f"solve() handles dense multipliers only; constraint {name!r} has "
                    f"{type(constraint.multiplier).__name__}."
                )
        self.nfev = 0
        self.limit = math.inf
        self.layout: list[tuple[str, bool, torch.Size]] | None = None
        self.scales: _Scales | None = None

    def __call__(self, x: torch.Tensor) -> _Point:
        """Evaluate the problem at the flat point ``x`` (keeping the graph for gradients).

        Raises:
            _EvaluationLimit: When the evaluation budget is spent.
        """
        if self.nfev >= self.limit:
            raise _EvaluationLimit
        self.nfev += 1
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            state = self.problem.evaluate(leaf.view(self.shape))
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
            f = torch.as_tensor(state.loss).to(dtype=x.dtype, device=x.device).reshape(())
            g = _join(ineq, x)
            h = _join(eq, x)
        if self.layout is None:
            self.layout = layout
            self.scales = _Scales(1.0, torch.ones_like(g), torch.ones_like(h), unit=True)
        elif layout != self.layout:
            raise ValueError("problem.evaluate() must return the same constraints at every call.")
        assert self.scales is not None
        return _Point(leaf, (f, g, h), self.scales)

    def split(self, lam: torch.Tensor, mu: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-constraint tensors from flat inequality and equality vectors."""
        assert self.layout is not None
        out: dict[str, torch.Tensor] = {}
        i = j = 0
        for name, inequality, shape in self.layout:
            constraint_shape = self.index.by_name[name].shape
            n = shape.numel()
            if inequality:
                out[name] = lam[i : i + n].reshape(constraint_shape).clone()
                i += n
            else:
                out[name] = mu[j : j + n].reshape(constraint_shape).clone()
                j += n
        return out

    def initial_multipliers(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The problem's own multipliers, flat (inequality ones clamped at zero)."""
        assert self.layout is not None
        lam: list[torch.Tensor] = []
        mu: list[torch.Tensor] = []
        for name, inequality, _ in self.layout:
            constraint = self.index.by_name[name]
            multiplier = constraint.multiplier
            value = (
                torch.zeros(constraint.shape)
                if multiplier is None
                else multiplier.value(None).detach()
            )
            (lam if inequality else mu).append(value.to(like).reshape(-1))
        lam_t = torch.cat(lam).clamp(min=0) if lam else like.new_zeros(0)
        return lam_t, (torch.cat(mu) if mu else like.new_zeros(0))


def _join(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The concatenation of flat tensors (empty for none)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if parts else like.new_zeros(0)


class _EvaluationLimit(Exception):
    """Raised by :class:`_Evaluator` when ``max_evaluations`` is spent."""


def _row_gradient_norms(point: _Point) -> torch.Tensor:
    """The largest entry of each constraint row's gradient at ``point`` (``[g; h]`` order)."""
    _, g, h = point.outputs
    rows = torch.cat([g, h])
    m = rows.numel()
    if m == 0 or not rows.requires_grad:
        return torch.zeros_like(rows.detach())
    eye = torch.eye(m, dtype=rows.dtype, device=rows.device)
    try:
        (jac,) = torch.autograd.grad(
            rows, point.leaf, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
    except (RuntimeError, NotImplementedError):  # a backward vmap cannot batch: row by row
        grads = [
            torch.autograd.grad(rows, point.leaf, e, retain_graph=True, allow_unused=True)[0]
            for e in eye
        ]
        if any(grad is None for grad in grads):
            return torch.zeros_like(rows.detach())
        jac = torch.stack(grads)  # type: ignore[arg-type]
    if jac is None:
        return torch.zeros_like(rows.detach())
    return jac.abs().amax(dim=1) if jac.shape[1] else torch.zeros_like(rows.detach())


def _scale(norm: torch.Tensor) -> torch.Tensor:
    """Scale factors bringing gradients' largest entries ``norm`` to ``_SCALE_TARGET``.

    Large gradients are scaled down; small ones up, by ``_SCALE_UP_MAX`` at most.
    """
    return (_SCALE_TARGET / norm.clamp(min=_SCALE_TARGET / _SCALE_UP_MAX)).clamp(max=_SCALE_UP_MAX)


# ------------------------------------------------------------------------------------------------
# The augmented Lagrangian for fixed multipliers, and the KKT measures of its iterates.
# ------------------------------------------------------------------------------------------------


def _reduced(
    x: torch.Tensor, grad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """``grad`` without the components that the bounds hold (at a bound, pointing out)."""
    held = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
    return torch.where(held, torch.zeros_like(grad), grad)


@dataclass(frozen=True)
class _KKT:
    """KKT measures (in the problem's units) at a point for its first-order multipliers."""

    violation: float
    slackness: float  # max_i |lam_i g_i| / max(1, lam_i)
    stationarity: float  # largest entry of the reduced gradient of the Lagrangian
    multiplier_size: float  # (||lam||_1 + ||mu||_1) / m, 0 without constraints

    def merit(self, feasibility_tol: float, optimality_tol: float) -> float:
        r"""The largest measure relative to its tolerance (<= 1: converged).

        The stationarity tolerance is ``optimality_tol`` times IPOPT's dual scaling factor
        :math:`s_d = \max(1, \bar m / s_{max})`, :math:`\bar m` the mean absolute multiplier,
        capped at ``_MAX_RELAXATION`` (an absolute tolerance, as IPOPT's ``dual_inf_tol``).
        """
        s_d = min(max(1.0, self.multiplier_size / _MULTIPLIER_SCALE), _MAX_RELAXATION)
        return max(
            self.violation / feasibility_tol,
            self.slackness / feasibility_tol,
            self.stationarity / (optimality_tol * s_d),
        )


@dataclass
class _Iterate:
    """An accepted point with what the solver needs of it (all scaled but ``kkt``).

    Attributes:
        point: The evaluation.
        value: The augmented Lagrangian there.
        grad: Its gradient, which is also the Lagrangian's at the estimates.
        lam: First-order inequality multiplier estimates.
        mu: First-order equality multiplier estimates.
        reduced_norm: Largest entry of the reduced gradient (the inner stopping measure).
        violation: The largest violation of a scaled constraint.
        kkt: The KKT measures for the estimates, unscaled.
        finite: Whether every value and the gradient are finite.
        fun: The objective, unscaled.
        size: The largest entry of ``point.x`` in absolute value.
    """

    point: _Point
    value: float
    grad: torch.Tensor
    lam: torch.Tensor
    mu: torch.Tensor
    reduced_norm: float
    violation: float
    kkt: _KKT
    finite: bool
    fun: float
    size: float


class _AugmentedLagrangian:
    r""":math:`\mathcal{L}_A(\cdot; \lambda, \mu, \rho)` of the scaled problem, over a box."""

    def __init__(
        self,
        lam: torch.Tensor,
        mu: torch.Tensor,
        rho: float,
        lower: torch.Tensor,
        upper: torch.Tensor,
    ) -> None:
        self.lam, self.mu, self.rho = lam, mu, rho
        self.lower, self.upper = lower, upper
        # The flat branch of AugmentedLagrangian.primal_term, which is constant here.
        self.flat = -lam.square() / (2 * rho)

    def residual(self, p: _Point) -> torch.Tensor:
        r"""The inequality part of LANCELOT's violation measure, :math:`\max(g, -\lambda/\rho)`."""
        return torch.maximum(p.g, -self.lam / self.rho)

    def _value(self, p: _Point) -> torch.Tensor:
        # AugmentedLagrangian.primal_term, specialized to a fixed rho > 0 (the branch is taken as
        # there, so that a NaN value propagates through the smooth branch).
        g, h, rho = p.g, p.h, self.rho
        smooth = g * (self.lam + (0.5 * rho) * g)
        ineq = torch.where(self.lam + rho * g < 0, self.flat, smooth).sum()
        return p.f + ineq + (h * (self.mu + (0.5 * rho) * h)).sum()

    def value(self, p: _Point) -> tuple[float, torch.Tensor]:
        """The augmented Lagrangian at ``p`` as a number (``inf`` if not finite) and a tensor."""
        tensor = self._value(p)
        value = float(tensor)
        return (value if math.isfinite(value) else math.inf), tensor

    def iterate(self, p: _Point, value: torch.Tensor | None = None) -> _Iterate:
        r"""Value, gradient, multiplier estimates and KKT measures at ``p``.

        The gradient of :math:`\mathcal{L}_A` is that of the Lagrangian at the estimates
        :math:`([\lambda + \rho g]_+, \mu + \rho h)`, so one vector-Jacobian product gives both.
        ``value`` is the augmented Lagrangian at ``p`` when already known.
        """
        lam = torch.clamp(self.lam + self.rho * p.g, min=0)
        mu = self.mu + self.rho * p.h
        grad = p.gradient(lam, mu)
        s = p.scales
        # Complementary slackness |lam g| / max(1, lam), lam and g in the problem's units.
        slack = lam * p.g_raw if s.unit else lam * s.g * p.g_raw / s.f
        lam_units = lam if s.unit else lam * s.g / s.f
        mu_units = mu if s.unit else mu * s.h / s.f
        multipliers = torch.cat([lam_units, mu_units])
        # NaN and infinite values propagate to these maxima: their finiteness is the check.
        measures = torch.stack(
            [
                self._value(p) if value is None else value,
                torch.maximum(_amax(p.g_raw.clamp(min=0)), _amax(p.h_raw)),
                torch.maximum(_amax(p.g.clamp(min=0)), _amax(p.h)),
                _amax(slack / lam_units.clamp(min=1)),
                _amax(_reduced(p.x, grad, self.lower, self.upper)),
                multipliers.abs().mean() if multipliers.numel() else p.f.new_zeros(()),
                p.f / s.f,
                _amax(p.x),
            ]
        )
        values = measures.tolist()
        ok = all(math.isfinite(v) for v in values)
        value_f, violation, scaled_violation, slackness, norm, m_size, fun, size = values
        kkt = _KKT(violation, slackness, norm / s.f, m_size)
        value_f = value_f if ok else math.inf
        return _Iterate(p, value_f, grad, lam, mu, norm, scaled_violation, kkt, ok, fun, size)


def _amax(t: torch.Tensor) -> torch.Tensor:
    """The largest absolute entry of ``t`` (0 when empty), as a 0-d tensor."""
    return t.abs().max() if t.numel() else t.new_zeros(())


# ------------------------------------------------------------------------------------------------
# The inner solver: projected L-BFGS with reduced quasi-Newton steps.
# ------------------------------------------------------------------------------------------------


class _Memory:
    r"""Limited-memory BFGS curvature pairs in compact form, kept across inner solves.

    With the pairs as rows of :math:`S, Y` (oldest first) and :math:`\theta = y^\top y /
    s^\top y` of the newest pair, the Hessian approximation is (Byrd, Nocedal & Schnabel, 1994)

    .. math::

        B = \theta I - W K^{-1} W^\top, \quad W = [Y^\top, \theta S^\top], \quad
        K = \begin{pmatrix} -D & L^\top \\ L & \theta S S^\top \end{pmatrix},

    :math:`D` the diagonal and :math:`L` the strictly lower triangle of :math:`S Y^\top`.
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
        self.last_step = float(s.abs().max())
        sy, yy, ss = torch.stack([s.dot(y), y.dot(y), s.dot(s)]).tolist()
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


def _clip(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, lower), upper)


def _inner_solve(
    start: _Iterate,
    objective: _AugmentedLagrangian,
    evaluate: Callable[[torch.Tensor], _Point],
    memory: _Memory,
    tolerance: float,
    max_iter: int,
    accept: Callable[[_Iterate], bool],
) -> tuple[_Iterate, int, str]:
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
        if current.reduced_norm <= tolerance:
            return current, iteration, "tolerance"
        x, grad = current.point.x, current.grad
        # Bertsekas' epsilon-active set: variables near a bound, the gradient pushing out.
        eps = min(_EPS_ACTIVE, current.reduced_norm)
        held = ((x - lower <= eps) & (grad > 0)) | ((upper - x <= eps) & (grad < 0))
        free = ~held if bool(held.any()) else None
        # Held variables move onto their bound; free ones take the reduced quasi-Newton step.
        step = memory.solve(grad, free) if len(memory) else None
        if step is None:
            if len(memory):
                memory.clear()  # the small system is singular
            step = (grad if free is None else grad * free) / max(1.0, current.reduced_norm)
        direction = -step
        if free is not None:
            direction = torch.where(free, direction, torch.where(grad > 0, lower - x, upper - x))
        direction = _step_length(direction, memory)
        new = _line_search(current, direction, objective, evaluate)
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


def _step_length(direction: torch.Tensor, memory: _Memory) -> torch.Tensor:
    """``direction`` at most ``_STEP_GROWTH`` times longer than the last step, or extrapolated.

    A direction that continues a last step of nonpositive curvature (:attr:`_Memory.flat`) is
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
    current: _Iterate,
    direction: torch.Tensor,
    objective: _AugmentedLagrangian,
    evaluate: Callable[[torch.Tensor], _Point],
) -> _Iterate | None:
    """Armijo backtracking along the projected path ``P(x + alpha d)``; None if it fails."""
    lower, upper = objective.lower, objective.upper
    x, grad = current.point.x, current.grad
    roundoff = _ROUNDOFF * max(1.0, abs(current.value))
    alpha = 1.0
    previous: torch.Tensor | None = None
    for _ in range(_MAX_BACKTRACKS):
        x_new = _clip(x + alpha * direction, lower, upper)
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


# ------------------------------------------------------------------------------------------------
# The solver.
# ------------------------------------------------------------------------------------------------


def _initial_penalty(point: _Point, rho_max: float) -> float:
    """Birgin and Martínez's initial penalty at the (scaled) initial point (module docstring)."""
    initial = float(torch.cat([point.g.clamp(min=0), point.h]).square().sum()) / 2
    f_size = abs(float(point.f)) if math.isfinite(float(point.f)) else 1.0
    rho = 10 * max(1.0, f_size) / max(1.0, initial) if math.isfinite(initial) else 1.0
    return min(max(rho, _RHO_INITIAL_RANGE[0]), _RHO_INITIAL_RANGE[1], rho_max)


class _Monitor:
    """Watches every iterate: keeps the best one and tells when the solve should stop."""

    def __init__(self, feasibility_tol: float, optimality_tol: float, first: _Iterate) -> None:
        self.feasibility_tol = feasibility_tol
        self.optimality_tol = optimality_tol
        self.best = first
        self.best_merit = math.inf
        self.status = 0  # why the solve should stop, once __call__ has said so

    def __call__(self, candidate: _Iterate) -> bool:
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
            f"{name} has shape {tuple(tensor.shape)}, which does not broadcast to x0's shape "
            f"{tuple(x.shape)}."
        ) from None


def _check_arguments(
    problem: ConstrainedProblem,
    x0: torch.Tensor,
    feasibility_tol: float,
    optimality_tol: float,
    rho: float | None,
    rho_growth: float,
    rho_max: float,
    max_outer: int,
    max_inner: int,
    history_size: int,
    max_evaluations: int | None,
) -> None:
    if not isinstance(problem, ConstrainedProblem):
        raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}.")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError("x0 must be a floating-point tensor.")
    if not (feasibility_tol > 0 and optimality_tol > 0):
        raise ValueError(
            f"tolerances must be positive; got feasibility_tol={feasibility_tol}, "
            f"optimality_tol={optimality_tol}."
        )
    if not (rho is None or 0 < rho <= rho_max) or not rho_growth > 1:
        raise ValueError(
            f"need 0 < rho <= rho_max (or rho=None) and rho_growth > 1; got rho={rho}, "
            f"rho_growth={rho_growth}, rho_max={rho_max}."
        )
    if min(max_outer, max_inner, history_size) < 1:
        raise ValueError(
            f"max_outer, max_inner and history_size must be >= 1; got {max_outer}, "
            f"{max_inner}, {history_size}."
        )
    if max_evaluations is not None and max_evaluations < 1:
        raise ValueError(f"max_evaluations must be >= 1 or None, got {max_evaluations}.")


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
    r"""Solve ``problem`` from ``x0`` by the method of multipliers (see the module docstring).

    ``problem.evaluate(x)`` must return every constraint's value (a tensor of the declared
    shape) at every call. The constraints' own formulations are ignored here: the solver always
    uses the augmented Lagrangian. The final multipliers are also written into the constraints'
    :class:`~conopt.multipliers.DenseMultiplier`\ s, and the initial ones are read from them.

    **Termination test.** The solve converges (status 0) at the first iterate :math:`x` where,
    for its first-order multipliers :math:`\lambda \ge 0, \mu` and the gradient :math:`r` of the
    Lagrangian without its bound-held components (all in the problem's units),

    .. math::

        \max(\|[g]_+\|_\infty, \|h\|_\infty) \le \epsilon_{feas}, \quad
        \max_i \frac{|\lambda_i g_i|}{\max(1, \lambda_i)} \le \epsilon_{feas}, \quad
        \|r\|_\infty \le \epsilon_{opt}\, s_d, \quad
        s_d = \min\Big(100, \max\Big(1, \frac{\|\lambda\|_1 + \|\mu\|_1}{100\, m}\Big)\Big),

    :math:`\epsilon_{feas}` = ``feasibility_tol``, :math:`\epsilon_{opt}` = ``optimality_tol``,
    :math:`m` the number of constraint rows (:math:`s_d = 1` without any). Stationarity is thus
    absolute unless the mean multiplier exceeds 100, when it is relative to it as in IPOPT's
    scaled dual infeasibility, and never looser than ``100 * optimality_tol``. The solve stops
    as unbounded (status 6) at an iterate within ``feasibility_tol`` of feasibility where
    :math:`f(x) \le -10^{20}` or :math:`\|x\|_\infty \ge 10^{20}`. Bounds hold at every iterate.

    Args:
        problem: The problem; its constraints must have dense multipliers (or none).
        x0: Initial point (a floating-point tensor of any shape; use float64 for accuracy), on
            any device. It is clipped to the bounds.
        lower: Lower bounds on ``x`` (a number or a tensor broadcastable to ``x0``; ``-inf``
            for none).
        upper: Upper bounds on ``x`` (``+inf`` for none).
        feasibility_tol: Tolerance on the constraint violation and on complementary slackness.
        optimality_tol: Tolerance on the largest entry of the Lagrangian's reduced gradient
            (absolute; relaxed by :math:`s_d` for large multipliers, see above).
        rho: Initial penalty coefficient (of the scaled problem); None chooses it from
            :math:`f(x_0)` and the initial violation.
        rho_growth: Factor by which the penalty grows when the violation does not shrink.
        rho_max: Largest penalty coefficient; needing more while infeasible ends with status 2.
        max_outer: Largest number of outer iterations.
        max_inner: Largest number of L-BFGS iterations per outer iteration.
        history_size: L-BFGS memory (curvature pairs).
        max_evaluations: Largest number of evaluations of the problem (None: no limit).
        scaling: Scale the objective and the constraint rows by their gradients at ``x0`` (the
            row gradients cost one batched vector-Jacobian product, or one per row when the
            problem's backward cannot be batched).
        callback: Called with an :class:`OuterIterate` after each outer iteration.

    Returns:
        A :class:`SolveResult`.

    Raises:
        TypeError: If ``problem`` is not a :class:`~conopt.problem.ConstrainedProblem`, a
            constraint has a multiplier other than a dense one, or ``x0`` is not a
            floating-point tensor.
        ValueError: For inconsistent arguments (tolerances, penalty parameters, limits, bound
            shapes, lower bounds above upper bounds), or constraint values of the wrong shape.

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
    _check_arguments(
        problem,
        x0,
        feasibility_tol,
        optimality_tol,
        rho,
        rho_growth,
        rho_max,
        max_outer,
        max_inner,
        history_size,
        max_evaluations,
    )
    start = time.perf_counter()
    lower_t = _as_bounds(lower, x0, -math.inf, "lower").reshape(-1)
    upper_t = _as_bounds(upper, x0, math.inf, "upper").reshape(-1)
    if bool((lower_t > upper_t).any()):
        raise ValueError("lower bounds must not exceed upper bounds.")
    evaluate = _Evaluator(problem, x0.shape)
    point = evaluate(_clip(x0.detach().reshape(-1).clone(), lower_t, upper_t))
    if max_evaluations is not None:
        evaluate.limit = max_evaluations

    # Scaling, tolerances and the initial multipliers and penalty.
    zeros_g, zeros_h = torch.zeros_like(point.g), torch.zeros_like(point.h)
    grad_f0 = point.gradient(zeros_g, zeros_h)
    grad_scale = float(torch.cat([grad_f0.new_ones(1), grad_f0.abs()]).max())
    if not math.isfinite(grad_scale):
        grad_scale = 1.0
    if scaling:
        rows = _row_gradient_norms(point)
        row_scales = torch.where(torch.isfinite(rows), _scale(rows), torch.ones_like(rows))
        m_in = point.g.numel()
        evaluate.scales = _Scales(
            float(_scale(point.f.new_tensor(grad_scale))), row_scales[:m_in], row_scales[m_in:]
        )
        point = point.rescaled(evaluate.scales)
    scales = evaluate.scales
    assert scales is not None
    lam_units, mu_units = evaluate.initial_multipliers(point.x)
    lam, mu = lam_units * scales.f / scales.g, mu_units * scales.f / scales.h
    rho = _initial_penalty(point, rho_max) if rho is None else rho
    min_scale = float(torch.cat([scales.g, scales.h, scales.g.new_ones(1)]).min())
    eta_floor = feasibility_tol * min_scale / 10
    omega_floor = optimality_tol / (10 * grad_scale)  # omega is relative to grad_scale
    bar = max(rho, 10.0)
    omega, eta = 1.0 / bar, bar**-0.1

    objective = _AugmentedLagrangian(lam, mu, rho, lower_t, upper_t)
    current = objective.iterate(point)
    accept = _Monitor(feasibility_tol, optimality_tol, current)
    status, outer, ninner, stalls = 1, 0, 0, 0
    if not current.finite:
        status = 3
    elif accept(current):
        status = accept.status
    memory = _Memory(history_size)
    while status == 1 and outer < max_outer:
        outer += 1
        merit_before = accept.best_merit
        try:
            current, iterations, reason = _inner_solve(
                current,
                objective,
                evaluate,
                memory,
                omega * scales.f * grad_scale,
                max_inner,
                accept,
            )
        except _EvaluationLimit:
            status = 5
            break
        ninner += iterations
        if reason == "accepted":
            status = accept.status
            break
        # An inner solve that stalls has gone as far as rounding lets it: a larger penalty would
        # only make that worse, so the multipliers are updated whatever the violation.
        stalled = reason == "stalled"
        stalls = stalls + 1 if stalled and accept.best_merit >= merit_before else 0
        p = current.point
        measure = torch.cat([p.g.new_zeros(1), objective.residual(p), p.h])
        violation = float(measure.abs().max())
        inner_rho = rho
        updated = reason != "diverged" and (violation <= eta or stalled)
        if updated:
            lam, mu = current.lam, current.mu
            if violation <= eta:
                bar = max(rho, 10.0)
                eta = max(eta / bar**0.9, eta_floor)
                omega = max(omega / bar, omega_floor)
        elif rho >= rho_max:
            status = 2
            break
        else:
            rho = min(rho * rho_growth, rho_max)
            bar = max(rho, 10.0)
            eta = max(bar**-0.1, eta_floor)
            omega = max(1.0 / bar, omega_floor)
        if callback is not None:
            callback(
                OuterIterate(
                    iteration=outer,
                    x=p.x.clone(),
                    fun=float(p.f) / scales.f,
                    ineq=p.g_raw,
                    eq=p.h_raw,
                    max_violation=current.kkt.violation,
                    rho=inner_rho,
                    next_rho=rho,
                    ineq_multipliers=lam * scales.g / scales.f,
                    eq_multipliers=mu * scales.h / scales.f,
                    multipliers_updated=updated,
                    inner_iterations=iterations,
                )
            )
        if stalls >= _MAX_STALLS:
            status = 4
            break
        objective = _AugmentedLagrangian(lam, mu, rho, lower_t, upper_t)
        current = objective.iterate(p)
        if accept(current):
            status = accept.status
            break

    final = current if status in (0, 6) else accept.best
    return _result(evaluate, final, lower_t, upper_t, outer, ninner, rho, status, start)


def _result(
    evaluate: _Evaluator,
    final: _Iterate,
    lower: torch.Tensor,
    upper: torch.Tensor,
    outer: int,
    ninner: int,
    rho: float,
    status: int,
    start: float,
) -> SolveResult:
    """Assemble the :class:`SolveResult` at ``final``, in the problem's units."""
    point, s = final.point, final.point.scales
    x = point.x
    grad = final.grad / s.f
    lam, mu = final.lam * s.g / s.f, final.mu * s.h / s.f
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
