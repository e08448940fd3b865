r"""Extragradient: extrapolate both players, evaluate there, update from the original point.

.. math::

    \tilde\theta = \theta_t - \eta\nabla_\theta\mathcal{L}(\theta_t, \lambda_t), \quad
    \tilde\lambda = \Pi[\lambda_t + \eta\nabla_\lambda\mathcal{L}(\theta_t, \lambda_t)],

.. math::

    \theta_{t+1} = \theta_t - \eta\nabla_\theta\mathcal{L}(\tilde\theta, \tilde\lambda),
    \quad
    \lambda_{t+1} = \Pi[\lambda_t + \eta\nabla_\lambda\mathcal{L}(\tilde\theta, \tilde\lambda)]

(Korpelevich, 1976; Gidel et al., 2019). It converges on bilinear games such as
:math:`\min_x \max_y xy`, where simultaneous gradient descent-ascent spirals outwards.
Any torch optimizer becomes an extragradient one with :class:`ExtrapolationMixin`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from conopt.diagnostics import StepReport
from conopt.optim.constrained import Closure, ConstrainedOptimizer

_ORIGIN = "extrapolation_origin"


def _return_to_origin(optimizer: Any) -> None:
    """Copy back the parameters that ``optimizer``'s last extrapolation remembered (if any)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            origin = optimizer.state[p].pop(_ORIGIN, None)
            if origin is not None:
                p.copy_(origin)


class ExtrapolationMixin:
    """Gives a ``torch.optim.Optimizer`` subclass an extrapolation step.

    :meth:`extrapolation` remembers the current parameters and takes an ordinary step from
    them; the next :meth:`step` first returns to the remembered point, then steps with the
    gradients evaluated at the extrapolated one.

    Example:
        >>> import torch, conopt
        >>> class ExtraRMSprop(conopt.optim.ExtrapolationMixin, torch.optim.RMSprop):
        ...     pass
    """

    state: Any
    param_groups: list[dict[str, Any]]

    @torch.no_grad()
    def extrapolation(self) -> None:
        """Move to the extrapolated point, remembering the current parameters."""
        origins = [(p, p.detach().clone()) for group in self.param_groups for p in group["params"]]
        # Store the origins after the step: optimizers such as Adam initialize a parameter's
        # state only while it is empty.
        super().step()  # type: ignore[misc]
        for p, origin in origins:
            self.state[p][_ORIGIN] = origin

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Return to the remembered point (if any), then take the update step."""
        _return_to_origin(self)
        return super().step(closure)  # type: ignore[misc]


class ExtraSGD(ExtrapolationMixin, torch.optim.SGD):
    """``torch.optim.SGD`` with an extrapolation step (same arguments)."""


class ExtraAdam(ExtrapolationMixin, torch.optim.Adam):
    """``torch.optim.Adam`` with an extrapolation step (same arguments).

    The moments are updated at both the extrapolation and the update, as in Gidel et al. (2019).
    """


def _check_extrapolates(optimizer: torch.optim.Optimizer | None, role: str) -> None:
    if optimizer is not None and not callable(getattr(optimizer, "extrapolation", None)):
        raise TypeError(
            f"Extragradient needs {role} optimizers with an extrapolation() step (ExtraSGD, "
            f"ExtraAdam, or a class using ExtrapolationMixin); got {type(optimizer).__name__}."
        )


class Extragradient(ConstrainedOptimizer):
    """Extragradient descent-ascent (two evaluations and two backward passes per step).

    The primal and dual optimizers must provide ``extrapolation()`` (:class:`ExtraSGD`,
    :class:`ExtraAdam`, or any optimizer class with :class:`ExtrapolationMixin`). Multipliers
    are projected after both the extrapolation and the update; dual restarts and penalty growth
    use the constraint values at the extrapolated point. The report describes the original point.
    See :class:`~conopt.optim.ConstrainedOptimizer` for the arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for optimizer in self.primal_optimizers:
            _check_extrapolates(optimizer, "primal")
        _check_extrapolates(self.dual_optimizer, "dual")

    def _players(self) -> list[Any]:
        players: list[Any] = list(self.primal_optimizers)
        if self.dual_optimizer is not None:
            players.append(self.dual_optimizer)
        return players

    def step(self, closure: Closure) -> StepReport:  # noqa: D102
        self.zero_grad()
        state, first = self._evaluate(closure)
        self.step_count += 1
        if first is None:
            return self._skipped_report(state)
        first.objective.backward()
        stationarity = self._stationarity()
        for optimizer in self._players():
            optimizer.extrapolation()
        self._project()

        for optimizer in self._players():  # keeps the first point's gradients for stationarity
            optimizer.zero_grad()
        try:  # refused: both players return to the original point
            extrapolated_state, second = self._evaluate(closure, undo=self._restore_origins)
        except Exception:
            self.step_count -= 1  # a refused step that raises is not counted
            raise
        if second is None:
            return self._skipped_report(extrapolated_state)
        second.objective.backward()
        self._primal_step()
        self._dual_step(second)
        return self._report(first, stationarity)

    def _restore_origins(self) -> None:
        with torch.no_grad():
            for optimizer in self._players():
                _return_to_origin(optimizer)
