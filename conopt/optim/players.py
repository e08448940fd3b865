"""Check the two players of a constrained optimizer before its first step.

A constrained optimizer (:class:`~conopt.optim.constrained.ConstrainedOptimizer`) steps the
primal parameters with one or more ``torch.optim`` optimizers and the multipliers with one dual
optimizer built with ``maximize=True``. :func:`primal_optimizer_list` and :func:`check_players`
refuse, naming the constraint, any arrangement in which a step would silently go wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from conopt.problem import Constraint

__all__ = ["check_players", "primal_optimizer_list"]


def primal_optimizer_list(
    primal: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
) -> list[torch.optim.Optimizer]:
    """The primal optimizer(s) as a list.

    Args:
        primal: One ``torch.optim`` optimizer, or a sequence of them.

    Returns:
        The optimizers, in order.

    Raises:
        TypeError: If ``primal`` is empty or holds something that is not an optimizer.
    """
    optimizers = [primal] if isinstance(primal, torch.optim.Optimizer) else list(primal)
    if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        raise TypeError("primal must be a torch.optim.Optimizer or a non-empty list of them.")
    return optimizers


def check_players(
    constraints: Mapping[str, Constraint],
    primal_parameters: list[torch.Tensor],
    dual: torch.optim.Optimizer | None,
    dual_restarts: bool,
) -> None:
    """Refuse players that would not step the problem's multipliers as a dual player must.

    Args:
        constraints: The problem's constraints, by name.
        primal_parameters: The parameters of the primal optimizer(s).
        dual: The dual optimizer, or ``None``.
        dual_restarts: Whether the optimizer restarts the multipliers of satisfied
            inequalities.

    Raises:
        TypeError: The dual optimizer does not maximize, or a primal optimizer holds a
            multiplier (naming its constraint).
        ValueError: A multiplier is not driven by the dual optimizer (or there is none), or
            dual restarts are asked for with a multiplier that cannot restart (naming the
            constraint).
    """
    dual_params: dict[int, str] = {}
    for name, constraint in constraints.items():
        if constraint.multiplier is None:
            continue
        if dual_restarts and constraint.is_inequality:
            if not constraint.multiplier.supports_restarts:
                raise ValueError(
                    f"constraint {name!r}: {type(constraint.multiplier).__name__} does not "
                    "support dual restarts; use dual_restarts=False or another multiplier."
                )
        for p in constraint.multiplier.optimized_parameters():
            dual_params.setdefault(id(p), name)
    for p in primal_parameters:
        if id(p) in dual_params:
            raise TypeError(
                f"the primal optimizer holds the multiplier of constraint "
                f"{dual_params[id(p)]!r}; give multipliers to the dual optimizer only."
            )
    if dual is None:
        if dual_params:
            first = next(iter(dual_params.values()))
            raise ValueError(
                f"constraint {first!r} has a multiplier but no dual optimizer was given; "
                "pass dual=torch.optim.SGD(problem.dual_parameters(), lr=..., maximize=True)."
            )
        return
    driven: set[int] = set()
    for group in dual.param_groups:
        if not group.get("maximize", False):
            raise TypeError(
                f"the dual optimizer ({type(dual).__name__}) must be built "
                "with maximize=True: multipliers ascend the Lagrangian."
            )
        driven.update(id(p) for p in group["params"])
    missing = sorted({n for i, n in dual_params.items() if i not in driven})
    if missing:
        raise ValueError(
            f"the dual optimizer does not drive the multipliers of constraints {missing}; "
            "build it from problem.dual_parameters()."
        )
