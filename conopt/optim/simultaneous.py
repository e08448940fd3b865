"""Simultaneous gradient descent-ascent: both players step from the same point.

:class:`SimultaneousGDA` takes one forward and one backward pass per step, and offers the open
step path (:meth:`~conopt.optim.constrained.ConstrainedOptimizer.lagrangian`, then
:meth:`SimultaneousGDA.apply`) for custom backward passes: AMP's ``GradScaler``, gradient
clipping, gradient accumulation, DDP's ``no_sync``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.amp import GradScaler

from conopt.diagnostics import StepReport
from conopt.optim.constrained import Closure, ConstrainedOptimizer

__all__ = ["SimultaneousGDA"]


def _ensure_unscaled(scaler: GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """Unscale ``optimizer``'s gradients unless the user already did (e.g. before clipping)."""
    if not scaler.is_enabled():  # a disabled scaler scales nothing and keeps no state
        return
    # GradScaler has no public way to ask whether an optimizer's gradients were unscaled since
    # the last update(); its documented answer to a second unscale_() is a RuntimeError, which
    # here means that they were. Any other error (unscale_() after step()) propagates.
    try:
        scaler.unscale_(optimizer)
    except RuntimeError as error:
        if "already been called" not in str(error):
            raise


class SimultaneousGDA(ConstrainedOptimizer):
    r"""Simultaneous gradient descent-ascent: both players step from the same point.

    .. math::

        \theta_{t+1} = \theta_t - \eta_\theta \nabla_\theta \mathcal{L}(\theta_t, \lambda_t),
        \qquad
        \lambda_{t+1} = \Pi\left[\lambda_t + \eta_\lambda \nabla_\lambda
        \mathcal{L}(\theta_t, \lambda_t)\right],

    with one forward and one backward pass per step (or any torch optimizer in place of the
    plain gradient steps). See :class:`ConstrainedOptimizer` for the arguments.

    Example:
        >>> import torch, conopt
        >>> class P(conopt.ConstrainedProblem):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.c = conopt.Constraint("<=")
        ...     def evaluate(self, x):
        ...         return conopt.ProblemState(loss=(x**2).sum(), constraints={self.c: 1 - x.sum()})
        >>> x = torch.zeros(2, requires_grad=True)
        >>> problem = P()
        >>> opt = conopt.optim.SimultaneousGDA(
        ...     problem,
        ...     primal=torch.optim.SGD([x], lr=0.1),
        ...     dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> for _ in range(500):
        ...     report = opt.step(lambda: problem.evaluate(x))
        >>> [round(v, 3) for v in x.tolist()], report.kkt.satisfied(1e-3)
        ([0.5, 0.5], True)
    """

    supports_open_step: ClassVar[bool] = True

    def step(self, closure: Closure) -> StepReport:  # noqa: D102
        self.zero_grad()
        state = closure()
        objective = self.lagrangian(state)
        if not self._open_step.refused:
            objective.backward()
        return self.apply()

    def apply(self, scaler: GradScaler | None = None) -> StepReport:  # noqa: D102
        if self._open_step.empty:
            raise RuntimeError("apply() needs a preceding lagrangian(state) and backward().")
        assembled = self._open_step.take()
        self.step_count += 1
        if assembled is None:
            loss = torch.zeros(())
            return StepReport(step=self.step_count, loss=loss, lagrangian=loss, skipped=True)
        if scaler is not None:
            for optimizer in self.primal_optimizers:
                _ensure_unscaled(scaler, optimizer)
        stationarity = self._stationarity()
        self._primal_step(scaler)
        self._dual_step(assembled, scaler)
        return self._report(assembled, stationarity)
