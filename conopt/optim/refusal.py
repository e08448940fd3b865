r"""Refuse a step whose numbers are not finite, and say why.

A step is checked at its one host synchronization (:func:`refuse_nonfinite`): a single scalar
sums everything that must be finite. Only when it is not are the loss, the constraint values,
the states and the dual updates read one by one, to raise an error that names the cause.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from conopt import distributed
from conopt.errors import NonFiniteError

if TYPE_CHECKING:
    from conopt.optim.grouping import ConstraintGroup
    from conopt.problem import ProblemState


_ANOTHER_RANK = (
    "a loss or constraint value is not finite on another rank; the step was refused on every rank."
)


def _raise_unsafe_states(groups: list[ConstraintGroup]) -> None:
    """Raise the error of the first state that was made safe (e.g. an index out of range)."""
    for group in groups:
        for entry, raw, unsafe in group.index_checks:
            if bool(unsafe):
                assert entry.multiplier is not None
                message = entry.multiplier.state_error(raw) or "the state is not valid"
                raise ValueError(f"constraint {entry.name!r}: {message}; the step was refused.")


def dual_update_terms(group: ConstraintGroup) -> torch.Tensor | None:
    r"""The multipliers plus their closed-form dual gradient, in the multipliers' dtype.

    A step is refused if this is not finite: :math:`\lambda + d` is the update of SGD with a
    learning rate of 1 (the method of multipliers), and bounds those of smaller learning rates.
    ``None`` for groups without closed-form dual gradients.

    Args:
        group: An assembled group (its multipliers and dual direction set).

    Returns:
        The flat update terms of the group's constraints, or ``None``.
    """
    if group.direction is None or group.multipliers is None:
        return None
    return group.multipliers + group.direction


def _raise_nonfinite(state: ProblemState, groups: list[ConstraintGroup]) -> None:
    """Raise the error that names the first thing not finite (after an unsafe state's)."""
    _raise_unsafe_states(groups)
    if not bool(torch.isfinite(state.loss)):
        raise NonFiniteError(
            f"the loss is not finite ({float(state.loss.detach())}); the step was refused."
        )
    for group in groups:
        for i, entry in enumerate(group.entries):
            for label, tensor in (("value", group.values[i]), ("strict value", group.strict(i))):
                if not bool(torch.isfinite(tensor).all()):
                    raise NonFiniteError(
                        f"constraint {entry.name!r}: its {label} contains NaN or Inf; "
                        "the step was refused."
                    )
    for group in groups:  # the local values are finite: are the all-reduced ones?
        if group.strict_values is not None and not bool(torch.isfinite(group.strict_values).all()):
            raise NonFiniteError(_ANOTHER_RANK)
    for group in groups:
        updates = dual_update_terms(group)
        if updates is None:
            continue
        parts = updates.reshape(-1).split(group.sizes)
        for entry, update in zip(group.entries, parts, strict=True):
            if entry.explicit and not bool(torch.isfinite(update).all()):
                raise NonFiniteError(
                    f"constraint {entry.name!r}: its dual update is not finite in the "
                    f"multiplier's dtype {update.dtype} (multiplier + dual gradient contains "
                    "NaN or Inf); the step was refused."
                )
    raise NonFiniteError(
        "the Lagrangian or a dual update overflowed (is not finite); the step was refused."
    )


def refuse_nonfinite(
    state: ProblemState,
    groups: list[ConstraintGroup],
    objective: torch.Tensor,
    unchecked: list[torch.Tensor],
    ranks: int,
) -> None:
    """The step's one host synchronization: raise if anything checked is not finite.

    Args:
        state: The step's problem state.
        groups: Its assembled constraint groups.
        objective: The assembled Lagrangian (finite only if the loss, the values and the
            multipliers in it are).
        unchecked: Scalars of what does not reach the objective's value (penalty-only groups,
            dual updates, unsafe states as NaN).
        ranks: The number of ranks, which refuse together.

    Raises:
        ValueError: A state was unsafe (an index out of range): named by constraint.
        NonFiniteError: The loss, a constraint value or a dual update is NaN/Inf, here or
            on another rank.
    """
    checked = objective
    if unchecked:
        checked = checked.detach() + torch.stack(unchecked).sum()
    finite = math.isfinite(checked.item())
    everywhere = finite
    if ranks > 1:  # all ranks refuse together
        everywhere = distributed.all_agree(finite, checked.device)
    if not finite:
        _raise_nonfinite(state, groups)
    if not everywhere:
        raise NonFiniteError(_ANOTHER_RANK)
