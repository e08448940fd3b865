"""Check a step's constraint values against their constraints, naming the constraint.

:func:`~conopt.optim.grouping.group_constraints` reads each value of a
:class:`~conopt.problem.ProblemState` through :func:`checked_value` (type, shape, the state a
multiplier needs) and refuses, with :func:`check_whole_packs`, a state that evaluates only part
of a multiplier pack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from conopt.problem import ConstraintState

if TYPE_CHECKING:
    from conopt.multipliers import MultiplierPack
    from conopt.optim.grouping import ConstraintGroup, _Entry

__all__ = ["check_whole_packs", "checked_value"]


def check_whole_packs(groups: list[ConstraintGroup]) -> None:
    """Refuse a state that evaluates some, but not all, constraints of a multiplier pack.

    Args:
        groups: The state's constraint groups.

    Raises:
        ValueError: A pack's constraint is missing from the state (naming it and the others).
    """
    present: dict[int, tuple[MultiplierPack, set[str]]] = {}
    for group in groups:
        for entry in group.entries:
            if entry.pack_slice is not None:
                pack = entry.pack_slice[0]
                present.setdefault(id(pack), (pack, set()))[1].add(entry.name)
    for pack, names in present.values():
        missing = [name for name in pack.names if name not in names]
        if missing:
            raise ValueError(
                f"the ProblemState leaves out constraints {missing}, whose multipliers are packed "
                f"with {sorted(names)}: a pack is stepped as a whole, so a state must hold all "
                "of its constraints or none (or do not pack_multipliers() these)."
            )


def _validated_state(
    entry: _Entry, raw: ConstraintState
) -> tuple[ConstraintState, torch.Tensor | None]:
    """``raw`` checked and made safe to read the multiplier with (see ``Multiplier.safe_state``).

    Returns:
        The safe state, and a 0-d bool tensor that is ``True`` if it differs from ``raw``
        (``None`` when it cannot): the step is refused then, at its host synchronization.
    """
    if raw.strict_value is not None and raw.strict_value.shape != raw.value.shape:
        raise ValueError(
            f"constraint {entry.name!r}: strict_value has shape {tuple(raw.strict_value.shape)}, "
            f"but value has shape {tuple(raw.value.shape)}."
        )
    if entry.fixed_shape is None:
        assert entry.multiplier is not None
        try:
            expected = entry.multiplier.expected_shape(raw)
            safe, unsafe = entry.multiplier.safe_state(raw)
        except ValueError as error:  # e.g. no indices: say which constraint
            raise ValueError(f"constraint {entry.name!r}: {error}") from None
        if raw.value.shape != expected:
            raise ValueError(
                f"constraint {entry.name!r}: value has shape {tuple(raw.value.shape)}, "
                f"expected {tuple(expected)}."
            )
        return safe, unsafe
    return raw, None


def checked_value(
    entry: _Entry, raw: object
) -> tuple[torch.Tensor, ConstraintState | None, torch.Tensor | None]:
    """A constraint's value as given in the state, checked against its constraint.

    Args:
        entry: The registered constraint (see
            :meth:`~conopt.optim.grouping.ConstraintIndex.resolve`).
        raw: Its value in the state: a tensor or a :class:`~conopt.problem.ConstraintState`.

    Returns:
        The value, the safe state (``None`` for a plain tensor) and its "made safe" flag (see
        :func:`_validated_state`).

    Raises:
        TypeError: ``raw`` is neither a tensor nor a :class:`~conopt.problem.ConstraintState`.
        ValueError: The value or state does not fit the constraint (shape, indices,
            features); the message names the constraint.
    """
    cstate: ConstraintState | None = None
    unsafe: torch.Tensor | None = None
    if isinstance(raw, torch.Tensor):
        if entry.fixed_shape is None:
            raise ValueError(
                f"constraint {entry.name!r}: its {type(entry.multiplier).__name__} needs a "
                "ConstraintState (with indices or features), got a plain tensor."
            )
        value = raw
    elif isinstance(raw, ConstraintState):
        cstate, unsafe = _validated_state(entry, raw)
        value = raw.value
    else:
        raise TypeError(
            f"constraint {entry.name!r}: expected a tensor or a ConstraintState, got "
            f"{type(raw).__name__}."
        )
    if entry.fixed_shape is not None and value.shape != entry.fixed_shape:
        raise ValueError(
            f"constraint {entry.name!r}: value has shape {tuple(value.shape)}, "
            f"expected {tuple(entry.fixed_shape)}."
        )
    return value, cstate, unsafe
