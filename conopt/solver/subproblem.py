r"""The subproblem of one outer iteration of :func:`conopt.solve`, and the KKT measures.

One job: for fixed multipliers :math:`\lambda, \mu` and penalty :math:`\rho`, the augmented
Lagrangian of the scaled problem over the box :math:`l \le x \le u` (:class:`Subproblem`), and
what an accepted point of it tells (:class:`Iterate`): its value and gradient, the first-order
multiplier estimates :math:`([\lambda + \rho g]_+, \mu + \rho h)` and the KKT residuals at them
(:class:`KKTMeasures`). The augmented Lagrangian's term and the multiplier update are
:func:`~conopt.formulations.augmented_lagrangian_term` and
:func:`~conopt.formulations.multiplier_update`, the ones of the
:class:`~conopt.formulations.AugmentedLagrangian` formulation.

Since :math:`\nabla_x\mathcal{L}_A(x;\lambda,\mu,\rho) = \nabla_x L(x, [\lambda+\rho g]_+,
\mu+\rho h)`, one vector-Jacobian product gives both the gradient the inner solver needs and the
Lagrangian's gradient at the estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from conopt.formulations import augmented_lagrangian_term, multiplier_update
from conopt.solver.evaluation import Point

__all__ = [
    "Iterate",
    "KKTMeasures",
    "Subproblem",
    "reduced_gradient",
]

_MULTIPLIER_SCALE = 100.0  # s_max of IPOPT's dual scaling: mean multipliers above it relax it
_MAX_RELAXATION = 100.0  # the largest factor by which large multipliers relax optimality_tol


def reduced_gradient(
    x: torch.Tensor, grad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """``grad`` without the components that the bounds hold (at a bound, pointing out)."""
    held = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
    return torch.where(held, torch.zeros_like(grad), grad)


@dataclass(frozen=True)
class KKTMeasures:
    r"""KKT measures (in the problem's units) at a point for its first-order multipliers.

    Attributes:
        violation: The largest constraint violation, :math:`\max(\|[g]_+\|_\infty,
            \|h\|_\infty)`.
        slackness: :math:`\max_i |\lambda_i g_i| / \max(1, \lambda_i)`.
        stationarity: The largest entry of the reduced gradient of the Lagrangian.
        multiplier_size: :math:`(\|\lambda\|_1 + \|\mu\|_1) / m`, 0 without constraints.
    """

    violation: float
    slackness: float
    stationarity: float
    multiplier_size: float

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
class Iterate:
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

    point: Point
    value: float
    grad: torch.Tensor
    lam: torch.Tensor
    mu: torch.Tensor
    reduced_norm: float
    violation: float
    kkt: KKTMeasures
    finite: bool
    fun: float
    size: float


class Subproblem:
    r""":math:`\mathcal{L}_A(\cdot; \lambda, \mu, \rho)` of the scaled problem, over a box.

    Args:
        lam: The inequality multipliers :math:`\lambda \ge 0` (scaled).
        mu: The equality multipliers :math:`\mu` (scaled).
        rho: The penalty :math:`\rho > 0`.
        lower: Flat lower bounds.
        upper: Flat upper bounds.
    """

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

    def residual(self, p: Point) -> torch.Tensor:
        r"""The inequality part of LANCELOT's violation measure, :math:`\max(g, -\lambda/\rho)`."""
        return torch.maximum(p.g, -self.lam / self.rho)

    def _value(self, p: Point) -> torch.Tensor:
        ineq = augmented_lagrangian_term(self.lam, p.g, self.rho, inequality=True).sum()
        eq = augmented_lagrangian_term(self.mu, p.h, self.rho, inequality=False).sum()
        return p.f + ineq + eq

    def value(self, p: Point) -> tuple[float, torch.Tensor]:
        """The augmented Lagrangian at ``p`` as a number (``inf`` if not finite) and a tensor."""
        tensor = self._value(p)
        value = float(tensor)
        return (value if math.isfinite(value) else math.inf), tensor

    def iterate(self, p: Point, value: torch.Tensor | None = None) -> Iterate:
        r"""Value, gradient, multiplier estimates and KKT measures at ``p``.

        The gradient of :math:`\mathcal{L}_A` is that of the Lagrangian at the estimates
        :math:`([\lambda + \rho g]_+, \mu + \rho h)`, so one vector-Jacobian product gives both.
        ``value`` is the augmented Lagrangian at ``p`` when already known.
        """
        lam = multiplier_update(self.lam, p.g, self.rho, inequality=True)
        mu = multiplier_update(self.mu, p.h, self.rho, inequality=False)
        grad = p.gradient(lam, mu)
        s = p.scales
        # Complementary slackness |lam g| / max(1, lam), lam and g in the problem's units.
        slack = lam * p.g_raw if s.unit else lam * s.g * p.g_raw / s.f
        lam_units, mu_units = (lam, mu) if s.unit else s.to_units(lam, mu)
        multipliers = torch.cat([lam_units, mu_units])
        # NaN and infinite values propagate to these maxima: their finiteness is the check.
        measures = torch.stack(
            [
                self._value(p) if value is None else value,
                torch.maximum(_amax(p.g_raw.clamp(min=0)), _amax(p.h_raw)),
                torch.maximum(_amax(p.g.clamp(min=0)), _amax(p.h)),
                _amax(slack / lam_units.clamp(min=1)),
                _amax(reduced_gradient(p.x, grad, self.lower, self.upper)),
                multipliers.abs().mean() if multipliers.numel() else p.f.new_zeros(()),
                p.f / s.f,
                _amax(p.x),
            ]
        )
        values = measures.tolist()
        ok = all(math.isfinite(v) for v in values)
        value_f, violation, scaled_violation, slackness, norm, m_size, fun, size = values
        kkt = KKTMeasures(violation, slackness, norm / s.f, m_size)
        value_f = value_f if ok else math.inf
        return Iterate(p, value_f, grad, lam, mu, norm, scaled_violation, kkt, ok, fun, size)


def _amax(t: torch.Tensor) -> torch.Tensor:
    """The largest absolute entry of ``t`` (0 when empty), as a 0-d tensor."""
    return t.abs().max() if t.numel() else t.new_zeros(())
