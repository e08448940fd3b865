r"""The multiplier and penalty updates of :func:`conopt.solve` (LANCELOT's rules).

One job: between two inner minimizations, decide whether the multipliers are updated or the
penalty grows, and set the inner tolerances, following the LANCELOT rules (Conn, Gould & Toint,
1991; Nocedal & Wright, Algorithm 17.4). After each inner minimization, with
:math:`V = \|(\max(g, -\lambda/\rho), h)\|_\infty`:

* if :math:`V \le \eta`, the multipliers are updated, :math:`\lambda \leftarrow [\lambda + \rho
  g]_+`, :math:`\mu \leftarrow \mu + \rho h`, and the tolerances tightened,
  :math:`\eta \leftarrow \eta / \bar\rho^{0.9}`, :math:`\omega \leftarrow \omega / \bar\rho`;
* otherwise the penalty grows, :math:`\rho \leftarrow \gamma\rho`, and the tolerances restart
  from :math:`\eta = \bar\rho^{-0.1}`, :math:`\omega = 1/\bar\rho`,

with :math:`\bar\rho = \max(\rho, 10)` (so that the schedule tightens also when the penalty
starts small); :math:`\omega` bounds the inner solve's reduced gradient. Two safeguards keep the
penalty from exploding: an inner solve that stalls at the limit of floating-point precision is
followed by a multiplier update, never by a larger penalty; and an inner solve along which the
violation grows a hundredfold (the augmented Lagrangian looks unbounded below) is abandoned and
followed by a larger penalty. The initial penalty balances the objective against the initial
infeasibility (Birgin & Martínez, 2014),
:math:`\rho_0 = 10 \max(1, |f(x_0)|) / \max(1, \tfrac12\|(g(x_0)_+, h(x_0))\|^2)`, clipped to
:math:`[10^{-2}, 10^2]`. Everything here is of the scaled problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from conopt.solver.evaluation import Evaluator, Point
from conopt.solver.options import PenaltyOptions, Tolerances
from conopt.solver.subproblem import Iterate, Subproblem

__all__ = ["Schedule", "initial_penalty"]

_RHO_INITIAL_RANGE = (1e-2, 1e2)  # clip of the automatic initial penalty


def initial_penalty(point: Point, rho_max: float) -> float:
    """Birgin and Martínez's initial penalty at the (scaled) initial point (module docstring)."""
    initial = float(torch.cat([point.g.clamp(min=0), point.h]).square().sum()) / 2
    f_size = abs(float(point.f)) if math.isfinite(float(point.f)) else 1.0
    rho = 10 * max(1.0, f_size) / max(1.0, initial) if math.isfinite(initial) else 1.0
    return min(max(rho, _RHO_INITIAL_RANGE[0]), _RHO_INITIAL_RANGE[1], rho_max)


@dataclass
class Schedule:
    r"""The multipliers, penalty and tolerances between inner minimizations (scaled problem).

    Attributes:
        lam: The inequality multipliers :math:`\lambda`.
        mu: The equality multipliers :math:`\mu`.
        rho: The penalty :math:`\rho`.
        eta: The violation :math:`\eta` at or below which the multipliers are updated.
        omega: The inner tolerance :math:`\omega`, relative to the objective's gradient scale.
        eta_floor: The smallest :math:`\eta` (a tenth of the feasibility tolerance, scaled).
        omega_floor: The smallest :math:`\omega` (a tenth of the optimality tolerance).
        penalty: The penalty's growth factor and largest value.
    """

    lam: torch.Tensor
    mu: torch.Tensor
    rho: float
    eta: float
    omega: float
    eta_floor: float
    omega_floor: float
    penalty: PenaltyOptions

    @classmethod
    def start(
        cls,
        evaluate: Evaluator,
        point: Point,
        grad_scale: float,
        penalty: PenaltyOptions,
        tolerances: Tolerances,
    ) -> Schedule:
        r"""The schedule at the (scaled) initial ``point``.

        Args:
            evaluate: The evaluator, whose problem's multipliers are the initial ones.
            point: The initial evaluation, under the final scale factors.
            grad_scale: The largest entry of the objective's unscaled gradient there (>= 1).
            penalty: The penalty options (None as the initial penalty: chosen at ``point``).
            tolerances: The KKT tolerances, which set the floors of :math:`\eta, \omega`.

        Returns:
            The schedule of the first inner minimization.
        """
        scales = point.scales
        lam, mu = scales.from_units(*evaluate.initial_multipliers(point.x))
        rho = penalty.initial
        rho = initial_penalty(point, penalty.maximum) if rho is None else rho
        min_scale = float(torch.cat([scales.g, scales.h, scales.g.new_ones(1)]).min())
        eta_floor = tolerances.feasibility * min_scale / 10
        omega_floor = tolerances.optimality / (10 * grad_scale)  # omega is relative to it
        bar = max(rho, 10.0)
        return cls(lam, mu, rho, bar**-0.1, 1.0 / bar, eta_floor, omega_floor, penalty)

    def subproblem(self, lower: torch.Tensor, upper: torch.Tensor) -> Subproblem:
        """The augmented Lagrangian to minimize next, over the box ``[lower, upper]``."""
        return Subproblem(self.lam, self.mu, self.rho, lower, upper)

    def update(self, current: Iterate, objective: Subproblem, reason: str) -> bool | None:
        """After the inner minimization of ``objective`` ended at ``current``: update or grow.

        Args:
            current: The inner minimizer.
            objective: The augmented Lagrangian that was minimized.
            reason: Why the inner solve ended (see :func:`~conopt.solver.lbfgsb.minimize`).

        Returns:
            True when the multipliers were updated (the violation is small, or the inner solve
            stalled and did not diverge), False when the penalty grew instead, None when it
            would have to grow past its largest value (nothing changes then).
        """
        p = current.point
        measure = torch.cat([p.g.new_zeros(1), objective.residual(p), p.h])
        violation = float(measure.abs().max())
        # An inner solve that stalls has gone as far as rounding lets it: a larger penalty would
        # only make that worse, so the multipliers are updated whatever the violation.
        if reason != "diverged" and (violation <= self.eta or reason == "stalled"):
            self.lam, self.mu = current.lam, current.mu
            if violation <= self.eta:
                bar = max(self.rho, 10.0)
                self.eta = max(self.eta / bar**0.9, self.eta_floor)
                self.omega = max(self.omega / bar, self.omega_floor)
            return True
        if self.rho >= self.penalty.maximum:
            return None
        self.rho = min(self.rho * self.penalty.growth, self.penalty.maximum)
        bar = max(self.rho, 10.0)
        self.eta = max(bar**-0.1, self.eta_floor)
        self.omega = max(1.0 / bar, self.omega_floor)
        return False
