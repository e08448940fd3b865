r"""Group a step's constraint values by formulation class and kind, and cache their layout.

:class:`ConstraintIndex` resolves the keys of a :class:`~conopt.problem.ProblemState` to the
problem's constraints (and what the hot path needs of each, read once), and caches the layout of
the states it has seen. :func:`group_constraints` validates a state's constraint values and
groups them into :class:`ConstraintGroup`\ s, which the Lagrangian is assembled from
(:mod:`conopt.optim.lagrangian`); a state laid out like an earlier one takes a fast path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from conopt.formulations import Formulation
from conopt.multipliers import DenseMultiplier, Multiplier, MultiplierPack
from conopt.optim.value_checks import check_whole_packs, checked_value
from conopt.problem import ConstrainedProblem, Constraint, ConstraintState, ProblemState


@dataclass(frozen=True)
class _Entry:
    """What the hot path needs of a registered constraint, read once (no module lookups)."""

    constraint: Constraint
    name: str
    multiplier: Multiplier | None
    formulation: Formulation
    group_key: tuple[type[Formulation], bool]
    fixed_shape: torch.Size | None  # the value's shape when it does not depend on the state
    explicit: bool  # the multiplier's gradient is written in closed form, not by autograd
    penalized: bool  # the formulation has a penalty growth rule
    value_reduction: str | None  # how the dual value is all-reduced across ranks (or not)
    dense_weight: torch.Tensor | None  # the weight of a plain DenseMultiplier (batched paths)
    pack_slice: tuple[MultiplierPack, int, int] | None  # a packed multiplier's place in its pack


@dataclass
class ConstraintGroup:
    """Constraints of one formulation class and kind, evaluated in one step.

    Grouping fills the layout (formulation, kind, entries, values, states); assembly then sets
    the values it derives (strict values, multipliers, closed-form dual direction and dtype).
    """

    formulation: type[Formulation]
    inequality: bool
    entries: list[_Entry] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    states: list[ConstraintState | None] = field(default_factory=list)
    has_strict: bool = False
    strict_values: torch.Tensor | None = None
    multipliers: torch.Tensor | None = None
    direction: torch.Tensor | None = None  # closed-form dual gradient of explicit multipliers
    dual_dtype: torch.dtype | None = None  # the explicit multipliers' dtype once they follow
    # (entry, state as given, 0-d bool "some index was out of range") of indexed multipliers
    index_checks: list[tuple[_Entry, ConstraintState, torch.Tensor]] = field(default_factory=list)

    @cached_property
    def names(self) -> list[str]:
        """The constraints' names, in the order of the state."""
        return [e.name for e in self.entries]

    @cached_property
    def key(self) -> tuple[str, ...]:
        """The constraints' names as a tuple: the group's key in caches of the index."""
        return tuple(self.names)

    @cached_property
    def all_explicit(self) -> bool:
        """Whether every multiplier of the group gets its dual gradient in closed form."""
        return all(e.explicit for e in self.entries)

    @cached_property
    def dense_weights(self) -> list[torch.Tensor] | None:
        r"""The weights of the multipliers if all are plain :class:`DenseMultiplier`\ s, else None.

        Such a group is read, written and restarted in a few vectorized operations, with no
        per-constraint method calls (see :func:`~conopt.multipliers.restart_dense_`).
        """
        weights = [e.dense_weight for e in self.entries]
        if any(w is None for w in weights) or len(set(map(id, weights))) < len(weights):
            return None  # not all dense, or one constraint given twice (by object and name)
        return weights  # type: ignore[return-value]

    @cached_property
    def penalized(self) -> bool:
        """Whether some constraint of the group has a penalty growth rule."""
        return any(e.penalized for e in self.entries)

    @cached_property
    def pack(self) -> tuple[MultiplierPack, int, int] | None:
        """``(pack, start, stop)`` when the group's multipliers are that slice of one pack.

        Such a group reads, writes and restarts its multipliers as one slice of the pack's
        flat weight (see :mod:`conopt.multipliers.packed`).
        """
        slices = [e.pack_slice for e in self.entries]
        first = slices[0]
        if first is None:
            return None
        stop = first[1]
        for place in slices:
            if place is None or place[0] is not first[0] or place[1] != stop:
                return None
            stop = place[2]
        return first[0], first[1], stop

    @property
    def constraints(self) -> list[Constraint]:
        """The group's constraints, in the order of the state."""
        return [e.constraint for e in self.entries]

    @cached_property
    def sizes(self) -> list[int]:
        """Number of entries of each constraint's value."""
        return [v.numel() for v in self.values]

    @cached_property
    def shapes(self) -> list[torch.Size]:
        """Each constraint's value's shape."""
        return [v.shape for v in self.values]

    def state(self, i: int) -> ConstraintState:
        """The :class:`ConstraintState` of the ``i``-th constraint (built for plain tensors)."""
        return self.states[i] or ConstraintState(self.values[i])

    def strict(self, i: int) -> torch.Tensor:
        """The dual value of the ``i``-th constraint."""
        state = self.states[i]
        return self.values[i] if state is None else state.dual_value


class ConstraintIndex:
    """Resolves the keys of a :class:`ProblemState` (constraints or names) to constraints.

    Args:
        problem: The problem whose constraints are looked up.
        dual_optimizer: The dual optimizer, whose state is widened along with the multipliers
            when they follow wider constraint values (see
            :meth:`~conopt.multipliers.Multiplier.follow_dtype_`).
    """

    def __init__(
        self, problem: ConstrainedProblem, dual_optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        self.by_name: dict[str, Constraint] = dict(problem.named_constraints())
        self.entries: dict[Constraint | str, _Entry] = {}
        self.plans: dict[tuple[Constraint | str, ...], _Plan] = {}
        self.dual_optimizer = dual_optimizer  # its state follows the multipliers' dtypes
        # Group key -> (dtype epoch, dtype) at which its explicit multipliers last had the dtype.
        self.settled: dict[tuple[str, ...], tuple[int, torch.dtype]] = {}
        for name, constraint in self.by_name.items():
            multiplier = constraint.multiplier
            fixed = (
                None
                if multiplier is not None and not isinstance(multiplier, DenseMultiplier)
                else constraint.shape
            )
            entry = _Entry(
                constraint=constraint,
                name=name,
                multiplier=multiplier,
                formulation=constraint.formulation,
                group_key=(type(constraint.formulation), constraint.is_inequality),
                fixed_shape=fixed,
                explicit=multiplier is not None and multiplier.explicit_gradient,
                penalized=getattr(constraint.formulation, "penalty_update", None) is not None,
                value_reduction=(
                    constraint.reduction
                    if multiplier is None or multiplier.gradient_reduction is None
                    else None
                ),
                dense_weight=(
                    multiplier.weight
                    if type(multiplier) is DenseMultiplier and multiplier.pack is None
                    else None
                ),
                pack_slice=_pack_slice(multiplier),
            )
            self.entries[constraint] = self.entries[name] = entry

    def resolve(self, key: Constraint | str) -> _Entry:
        """The registered entry of a constraint.

        Args:
            key: The constraint, or its name in the problem.

        Returns:
            What the hot path needs of it.

        Raises:
            ValueError: The constraint is not registered in the problem (named in the message).
        """
        entry = self.entries.get(key)
        if entry is not None:
            return entry
        if isinstance(key, Constraint):
            raise ValueError(
                f"the ProblemState holds a constraint ({key.kind!r}, shape {tuple(key.shape)}) "
                f"that is not registered in the problem; registered: {sorted(self.by_name)}."
            )
        raise ValueError(
            f"the ProblemState names an unknown constraint {key!r}; registered: "
            f"{sorted(self.by_name)}."
        )


def _pack_slice(multiplier: Multiplier | None) -> tuple[MultiplierPack, int, int] | None:
    if not isinstance(multiplier, DenseMultiplier) or multiplier.pack is None:
        return None
    return (multiplier.pack, *multiplier.pack.slice_of(multiplier))


_LAYOUT = (
    "names",
    "key",
    "shapes",
    "sizes",
    "all_explicit",
    "dense_weights",
    "pack",
    "penalized",
)
"""Cached properties of a :class:`ConstraintGroup` that depend on its layout only."""

_Plan = list[tuple[tuple[type[Formulation], bool], list[_Entry], list[int], list[torch.Size], dict]]


def _plan(
    groups: dict[tuple[type[Formulation], bool], ConstraintGroup],
    positions: dict[tuple[type[Formulation], bool], list[int]],
) -> _Plan:
    """The layout of groups of plain-tensor values, for later states laid out alike."""
    return [
        (
            key,
            group.entries,
            positions[key],
            group.shapes,
            {name: getattr(group, name) for name in _LAYOUT},
        )
        for key, group in groups.items()
    ]


def _grouped_by_plan(state: ProblemState, plan: _Plan) -> list[ConstraintGroup] | None:
    """Group plain-tensor values laid out as in an earlier step; None if the layout changed."""
    raws = list(state.constraints.values())
    groups = []
    for group_key, entries, positions, shapes, layout in plan:
        values = [raws[i] for i in positions]
        # One pass: a ConstraintState, or anything not a tensor, takes the general path.
        if [v.shape if isinstance(v, torch.Tensor) else None for v in values] != shapes:
            return None
        group = ConstraintGroup(
            *group_key, entries=entries, values=values, states=[None] * len(values)
        )
        group.__dict__.update(layout)  # the layout's cached properties, computed once
        groups.append(group)
    return groups


def group_constraints(state: ProblemState, index: ConstraintIndex) -> list[ConstraintGroup]:
    """Validate the state's constraint values and group them by formulation class and kind.

    A state laid out like an earlier one (same constraints, plain tensors of the declared shapes)
    takes a fast path that skips the per-constraint lookups.

    Args:
        state: The problem's state of this step.
        index: The problem's constraint index, whose layout cache this reads and fills.

    Returns:
        The groups, in the order of their first constraint in the state.

    Raises:
        TypeError: ``state`` is not a :class:`ProblemState`, or a constraint's value is neither
            a tensor nor a :class:`ConstraintState`.
        ValueError: The loss is not a scalar, a constraint is not registered, or a value or
            state does not fit its constraint (shape, indices, features).
    """
    if not isinstance(state, ProblemState):
        raise TypeError(f"expected a conopt.ProblemState, got {type(state).__name__}.")
    if not isinstance(state.loss, torch.Tensor) or state.loss.dim() != 0:
        raise ValueError("the loss must be a scalar tensor.")
    keys = tuple(state.constraints)
    plan = index.plans.get(keys)
    if plan is not None:
        grouped = _grouped_by_plan(state, plan)
        if grouped is not None:
            return grouped
    groups: dict[tuple[type[Formulation], bool], ConstraintGroup] = {}
    positions: dict[tuple[type[Formulation], bool], list[int]] = {}
    plannable = True
    for position, (key, raw) in enumerate(state.constraints.items()):
        entry = index.resolve(key)
        value, cstate, unsafe = checked_value(entry, raw)
        group = groups.get(entry.group_key)
        if group is None:
            group = groups[entry.group_key] = ConstraintGroup(*entry.group_key)
            positions[entry.group_key] = []
        group.entries.append(entry)
        group.values.append(value)
        group.states.append(cstate)
        if unsafe is not None:
            group.index_checks.append((entry, raw, unsafe))  # type: ignore[arg-type]
        positions[entry.group_key].append(position)
        plannable = plannable and cstate is None
        group.has_strict = group.has_strict or (
            cstate is not None and cstate.strict_value is not None
        )
    result = list(groups.values())
    check_whole_packs(result)
    if plannable:
        if len(index.plans) >= 16:  # layouts that keep changing: keep the cache small
            index.plans.clear()
        index.plans[keys] = _plan(groups, positions)
    return result
