"""Alternating gradient descent-ascent: one player steps, then the other reacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from conopt.diagnostics import StepReport
from conopt.optim.assembled import AssembledLagrangian
from conopt.optim.constrained import Closure, ConstrainedOptimizer
from conopt.optim.lagrangian import assemble
from conopt.problem import ConstrainedProblem, ProblemState

__all__ = ["AlternatingGDA"]


class AlternatingGDA(ConstrainedOptimizer):
    r"""Alternating gradient descent-ascent: one player steps, then the other reacts.

    Primal first (default): :math:`\theta_{t+1}` from :math:`\mathcal{L}(\theta_t,
    \lambda_t)`, then :math:`\lambda_{t+1}` from the constraints at :math:`\theta_{t+1}`
    (two evaluations of the problem per step; the second needs no primal graph and runs under
    ``torch.no_grad`` for the primal parameters). Dual first: :math:`\lambda_{t+1}` from
    :math:`g(\theta_t)`, then :math:`\theta_{t+1}` from :math:`\mathcal{L}(\theta_t,
    \lambda_{t+1})` (one evaluation, two backward passes, the first through the multipliers
    only).

    Args:
        dual_first: Update the multipliers first.
        **kwargs: See :class:`ConstrainedOptimizer`.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        dual: torch.optim.Optimizer | None = None,
        *,
        dual_first: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(problem, primal, dual, **kwargs)
        self.dual_first = dual_first

    def step(self, closure: Closure) -> StepReport:  # noqa: D102
        self.zero_grad()
        state, assembled = self._evaluate(closure)
        if assembled is None:
            self.step_count += 1
            return self._skipped_report(state)
        if self.dual_first:
            return self._dual_then_primal(state, assembled)
        return self._primal_then_dual(closure, assembled)

    def _primal_then_dual(self, closure: Closure, assembled: AssembledLagrangian) -> StepReport:
        assembled.objective.backward()
        stationarity = self._stationarity()
        if self.dual_optimizer is not None:
            self.dual_optimizer.zero_grad()
        origin = [p.detach().clone() for p in self._primal_parameters()]
        self._primal_step()

        def undo_primal_step() -> None:
            with torch.no_grad():
                torch._foreach_copy_(self._primal_parameters(), origin)

        second_state, second = self._evaluate(closure, undo=undo_primal_step, primal_graph=False)
        if second is None:  # the new point is not finite: the primal step was undone
            self.step_count += 1
            return self._skipped_report(second_state)
        if second.objective.requires_grad:
            second.objective.backward()
        self._dual_step(second)
        self.step_count += 1
        return self._report(second, stationarity)

    def _dual_then_primal(self, state: ProblemState, assembled: AssembledLagrangian) -> StepReport:
        if self.dual_optimizer is not None:
            multipliers = list(self.problem.dual_parameters())
            grads = torch.autograd.grad(
                assembled.objective, multipliers, retain_graph=True, allow_unused=True
            )
            for p, g in zip(multipliers, grads, strict=True):
                if g is not None:  # None for explicit multipliers: assemble wrote their gradient
                    p.grad = g
        self._dual_step(assembled)
        rebuilt = assemble(state, self._index, check_finite=False)
        rebuilt.objective.backward()
        stationarity = self._stationarity()
        self._primal_step()
        self.step_count += 1
        return self._report(rebuilt, stationarity)
