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

**PI control is the augmented Lagrangian in disguise.** Ramirez & Lacoste-Julien (ICLR 2026,
arXiv 2509.22500) show that for equality constraints :math:`h(x) = 0` the dual optimistic (PI)
update on the Lagrangian produces the primal iterates of gradient descent-ascent on the
augmented Lagrangian when the optimism equals the penalty. In our arguments, for every ordering
conopt offers: any primal optimizer (SGD, momentum, ...) steps from
:math:`\nabla f(x_t) + J(x_t)^\top m_t`, where :math:`m_t` is the multiplier its gradient sees,
so equal :math:`m_t` give equal iterates. Write :math:`h_t = h(x_t)`, :math:`c` the penalty,
:math:`\eta_A` the dual learning rate of the augmented Lagrangian (its dual step is
:math:`\mu \leftarrow \mu + \eta_A c\,h`).

* ``SimultaneousGDA`` with ``AugmentedLagrangian(rho=c)`` and ``SGD(lr=eta_A)``: the gradient
  of :math:`\mu^\top h + \frac{c}{2}\|h\|^2` is :math:`J^\top(\mu_t + c\,h_t)`, so
  :math:`m_t = \mu_0 + \eta_A c \sum_{s<t} h_s + c\,h_t`.
* ``AlternatingGDA(dual_first=True)`` with the ``Lagrangian`` and ``nuPI(lr=eta, kp, ki,
  ema_nu=0)``: the primal step sees the new multiplier, which telescopes (:math:`\xi_{-1} = 0`
  plays :math:`h_{-1} = 0`) to :math:`m_t = \mu_0 + \eta K_I \sum_{s \le t} h_s + \eta K_P h_t`.

They agree for every :math:`t` and every :math:`x_0` iff :math:`\eta K_I = \eta_A c` and
:math:`\eta (K_I + K_P) = c`: **lr·ki = eta_A·rho and lr·kp = rho·(1 − eta_A)**, with the same
initial multiplier (so :math:`\eta_A \le 1`; at :math:`\eta_A = 1`, the method of multipliers,
:math:`K_P = 0`). The primal-first augmented Lagrangian (``AlternatingGDA``, the usual
single-step ALM) has a dual step that reads :math:`h_{t+1}`, so
:math:`m_t = \mu_0 + \eta_A c \sum_{1 \le s \le t} h_s + c\,h_t`, and nuPI with
``dual_first=True`` matches it iff **lr·kp = rho** (optimism = penalty), lr·ki = eta_A·rho,
and nuPI starts from :math:`\mu_0 - \eta_A c\,h(x_0)` (any :math:`\eta_A > 0`). With nuPI also
primal first (both ``AlternatingGDA``), nuPI's multiplier is :math:`\mu^{PI}_0` at
:math:`t = 0` and :math:`\mu^{PI}_0 + \eta K_I \sum_{1 \le s \le t} h_s + \eta K_P h_t` after:
the same gains match from :math:`t = 1` on, and at :math:`t = 0` only from a feasible start
:math:`h(x_0) = 0` (any :math:`x_0` would need :math:`\mu^{PI}_0 = \mu_0 + c\,h(x_0)` together
with :math:`\xi_{-1} = h(x_0)`, and nuPI starts :math:`\xi` at 0). All need :math:`\nu = 0` and
a fixed :math:`c` (no ``penalty_update``); for inequalities the projections break the identity
(the paper proves equal stable points only). ``SimultaneousGDA`` with nuPI sees
:math:`h_{t-1}` where the augmented Lagrangian sees :math:`h_t`: no gains make them equal.
``tests/conopt/test_pi_alm_identity.py`` checks the three pairings on random nonconvex problems.

``foreach``: as in ``torch.optim``, ``None`` picks the multi-tensor path (``torch._foreach_*``
over a group's multipliers, a fixed number of kernel launches) on devices with foreach kernels
(CUDA) and the per-tensor loop elsewhere; both apply the same element-wise operations in the
same order, so on CPU (where the foreach ops run the per-tensor kernels) they agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import _default_to_fused_or_foreach


class nuPI(torch.optim.Optimizer):
    r"""The nuPI optimizer (see the module docstring for the update and its ALM identity).

    Args:
        params: The multipliers (``problem.dual_parameters()``).
        lr: Step size :math:`\eta > 0`.
        kp: Proportional gain :math:`K_P \ge 0`.
        ki: Integral gain :math:`K_I \ge 0`.
        ema_nu: EMA coefficient :math:`\nu \in [0, 1)` of the proportional term.
        maximize: Ascend (must be True for multipliers, as for any dual optimizer).
        foreach: Update all multipliers of a group with ``torch._foreach_*`` operations
            (``True``), one at a time (``False``), or as ``torch.optim`` decides (``None``:
            foreach on CUDA and other devices with foreach kernels, the loop on CPU).

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
        *,
        foreach: bool | None = None,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"nuPI: lr must be > 0, got {lr}.")
        if kp < 0 or ki < 0:
            raise ValueError(f"nuPI: kp and ki must be >= 0, got kp={kp}, ki={ki}.")
        if not 0 <= ema_nu < 1:
            raise ValueError(f"nuPI: ema_nu must be in [0, 1), got {ema_nu}.")
        defaults = {
            "lr": lr,
            "kp": kp,
            "ki": ki,
            "ema_nu": ema_nu,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the state (unpickling, ``load_state_dict``).

        Groups saved before the ``foreach`` argument existed get ``foreach=None``; the
        per-parameter state (``xi``) is unchanged, so older checkpoints load and resume alike.

        Args:
            state: The optimizer's ``__dict__`` entries to restore.
        """
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one nuPI step on every parameter that has a gradient.

        Args:
            closure: Optionally re-evaluates the problem and writes the gradients.

        Returns:
            The closure's return value, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, xis = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "xi" not in state:
                    state["xi"] = torch.zeros_like(p)
                params.append(p)
                grads.append(p.grad)
                xis.append(state["xi"])
            if not params:
                continue
            foreach = group.get("foreach")
            if foreach is None:
                _, foreach = _default_to_fused_or_foreach(params, False, use_fused=False)
            update = _multi_tensor_nupi if foreach else _single_tensor_nupi
            new_xis = update(params, grads, xis, group)
            for p, xi in zip(params, new_xis, strict=True):
                self.state[p]["xi"] = xi
        return loss


def _single_tensor_nupi(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    xis: list[torch.Tensor],
    group: dict[str, Any],
) -> list[torch.Tensor]:
    """The per-tensor loop: update ``params`` in place and return the new ``xi`` tensors."""
    lr, kp, ki, nu = group["lr"], group["kp"], group["ki"], group["ema_nu"]
    new_xis = []
    for p, grad, previous in zip(params, grads, xis, strict=True):
        error = grad if group["maximize"] else -grad
        current = previous * nu + error * (1 - nu)
        p.add_(ki * error + kp * (current - previous), alpha=lr)
        new_xis.append(current)
    return new_xis


def _multi_tensor_nupi(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    xis: list[torch.Tensor],
    group: dict[str, Any],
) -> list[torch.Tensor]:
    """The foreach path: the operations of :func:`_single_tensor_nupi`, one list at a time."""
    lr, kp, ki, nu = group["lr"], group["kp"], group["ki"], group["ema_nu"]
    new_xis: list[torch.Tensor] = [torch.empty(0)] * len(params)
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, xis],  # type: ignore[list-item]
        with_indices=True,
    )
    for (device_params, device_grads, previous), indices in grouped.values():
        errors = device_grads if group["maximize"] else torch._foreach_neg(device_grads)
        current = torch._foreach_mul(previous, nu)
        torch._foreach_add_(current, torch._foreach_mul(errors, 1 - nu))
        change = torch._foreach_sub(current, previous)
        torch._foreach_mul_(change, kp)
        direction = torch._foreach_mul(errors, ki)
        torch._foreach_add_(direction, change)
        torch._foreach_add_(device_params, direction, alpha=lr)  # type: ignore[arg-type]
        for i, xi in zip(indices, current, strict=True):
            new_xis[i] = xi
    return new_xis
