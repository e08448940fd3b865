r"""nuPI: proportional-integral control of the multipliers (Sohrabi et al., 2024).

With :math:`e_t` the multiplier's ascent direction (its gradient, i.e. the constraint
violation) and :math:`\xi` an exponential moving average of it,

.. math::

    \xi_t = \nu\,\xi_{t-1} + (1-\nu)\,e_t, \qquad
    \lambda_{t+1} = \lambda_t + \eta\left(K_I\,e_t + K_P\,(\xi_t - \xi_{t-1})\right),

with :math:`\xi_{-1} = 0`. :math:`K_P = 0, K_I = 1` is gradient ascent; :math:`K_P = K_I = 1`
with :math:`\nu = 0` is optimistic gradient ascent, :math:`\lambda_t + \eta(2e_t - e_{t-1})`.
The proportional term damps the oscillations of the multipliers. The constrained optimizer
projects inequality multipliers onto :math:`\lambda \ge 0` after each step, as for any dual
optimizer, and dual restarts reset :math:`\xi` along with :math:`\lambda`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class nuPI(torch.optim.Optimizer):
    r"""The nuPI optimizer (see the module docstring for the update).

    Args:
        params: The multipliers (``problem.dual_parameters()``).
        lr: Step size :math:`\eta > 0`.
        kp: Proportional gain :math:`K_P \ge 0`.
        ki: Integral gain :math:`K_I \ge 0`.
        ema_nu: EMA coefficient :math:`\nu \in [0, 1)` of the proportional term.
        maximize: Ascend (must be True for multipliers, as for any dual optimizer).

    Example:
        >>> import torch, conopt
        >>> lam = torch.nn.Parameter(torch.zeros(3))
        >>> dual = conopt.optim.nuPI([lam], lr=0.1, kp=1.0, ki=1.0, maximize=True)
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        kp: float = 0.0,
        ki: float = 1.0,
        ema_nu: float = 0.0,
        maximize: bool = False,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"nuPI: lr must be > 0, got {lr}.")
        if kp < 0 or ki < 0:
            raise ValueError(f"nuPI: kp and ki must be >= 0, got kp={kp}, ki={ki}.")
        if not 0 <= ema_nu < 1:
            raise ValueError(f"nuPI: ema_nu must be in [0, 1), got {ema_nu}.")
        defaults = {"lr": lr, "kp": kp, "ki": ki, "ema_nu": ema_nu, "maximize": maximize}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one nuPI step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, kp, ki, nu = group["lr"], group["kp"], group["ki"], group["ema_nu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                error = p.grad if group["maximize"] else -p.grad
                state = self.state[p]
                if "xi" not in state:
                    state["xi"] = torch.zeros_like(p)
                previous = state["xi"]
                current = previous * nu + error * (1 - nu)
                p.add_(ki * error + kp * (current - previous), alpha=lr)
                state["xi"] = current
        return loss
