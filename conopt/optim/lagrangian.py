r"""Assemble one step's Lagrangian from a :class:`~conopt.problem.ProblemState`.

Constraints that share a formulation class and a kind are concatenated and handled by one
vectorized expression, so the cost of a step grows with the number of constraint *groups*, not
of constraints. The assembled scalar has

* the value of the Lagrangian :math:`f + \sum_i \text{term}_i(\lambda_i, g_i)`;
* the gradient :math:`\nabla_\theta f + \sum_i \lambda_i \nabla_\theta g_i` (multipliers
  detached) with respect to the primal parameters;
* the gradient :math:`d_i` (the formulation's dual direction, values detached) with respect to
  each multiplier,

so one backward pass yields both players' gradients (see
:meth:`~conopt.formulations.Formulation.lagrangian_term`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from conopt import distributed
from conopt.diagnostics import GroupRecord
from conopt.formulations import Formulation, Lagrangian
from conopt.multipliers import DenseMultiplier, Multiplier, add_dense_gradients_, dtype_epoch
from conopt.problem import ConstrainedProblem, Constraint, ConstraintState, ProblemState

_AT_LEAST_FLOAT32 = (torch.float32, torch.float64)
"""Value dtypes that the Lagrangian keeps as they are (others are promoted to float32)."""


_ANOTHER_RANK = (
    "a loss or constraint value is not finite on another rank; the step was refused on every rank."
)


class NonFiniteError(ValueError):
    """A loss or constraint value, or a dual update, is NaN or infinite; the step was refused.

    Nothing has been changed then: parameters, multipliers and optimizer states are as before.
    """


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


@dataclass
class ConstraintGroup:
    """Constraints of one formulation class and kind, evaluated in one step."""

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

    def write_dual_gradients(self) -> None:
        """Accumulate :attr:`direction` into the explicit multipliers' gradients."""
        if self.direction is None:
            return
        # A copy owned here: the direction may alias the user's constraint values, and the
        # gradients written below are accumulated into in place by later steps.
        assert self.multipliers is not None
        dtype = self.multipliers.dtype if self.dual_dtype is None else self.dual_dtype
        direction = (
            self.direction.clone()  # cheaper than .to(copy=True) when no cast is needed
            if self.direction.dtype == dtype
            else self.direction.to(dtype, copy=True)
        )
        if len(self.entries) == 1:
            shape = self.values[0].shape
            parts: Sequence[torch.Tensor] = [
                direction if direction.shape == shape else direction.view(shape)
            ]
        elif self.values[0].dim() == 0 and direction.numel() == len(self.entries):
            parts = direction.unbind()  # all scalars: one call, no per-constraint reshape
        else:
            parts = [
                part.view(value.shape)
                for part, value in zip(direction.split(self.sizes), self.values, strict=True)
            ]
        weights = self.dense_weights
        if weights is not None:  # plain dense multipliers: no per-constraint method call
            add_dense_gradients_(weights, parts)
            return
        for entry, state, part in zip(self.entries, self.states, parts, strict=True):
            if entry.explicit:
                entry.multiplier.add_dual_gradient_(state, part)  # type: ignore[union-attr]

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


@dataclass
class AssembledLagrangian:
    """The result of :func:`assemble`: the scalar to differentiate and what the step needs."""

    objective: torch.Tensor
    loss: torch.Tensor
    groups: list[ConstraintGroup]
    records: list[GroupRecord]

    def accumulated(self, later: AssembledLagrangian) -> AssembledLagrangian:
        """This assembly with the values of a later one of the same step added (accumulation).

        Under gradient accumulation every micro-batch's :func:`assemble` adds its closed-form dual
        gradients to the multipliers'; the restarts, penalty updates and the step's report must
        then read the whole batch's values too:

        * a constraint with a fixed shape (a mean over the batch, or a function of the
          parameters) is **summed** over the micro-batches, so weight each micro-batch's loss and
          constraints by its share of the batch (:meth:`~conopt.problem.ProblemState.scaled`),
          as you would for the primal gradient;
        * a per-sample constraint (its multiplier reads the batch's indices or features, as
          :class:`~conopt.multipliers.IndexedMultiplier` and
          :class:`~conopt.multipliers.ImplicitMultiplier` do) is **concatenated**: each sample
          belongs to one micro-batch, as it does to the batch.

        Args:
            later: The assembly of the step's next micro-batch.

        Returns:
            A new assembly: objective (detached), loss and constraint values combined.

        Raises:
            ValueError: The micro-batches hold different constraints or fixed shapes.
        """
        if _layout(self.groups) != _layout(later.groups):
            first = [n for g in self.groups for n in g.names]
            then = [n for g in later.groups for n in g.names]
            raise ValueError(
                "gradient accumulation: every lagrangian() call of one step must hold the same "
                f"constraints with the same shapes; got {first} and then {then}. The step's "
                "gradients are now inconsistent: call zero_grad()."
            )
        pairs = zip(self.groups, later.groups, self.records, later.records, strict=True)
        merged = [_merged_group(*pair) for pair in pairs]
        return AssembledLagrangian(
            objective=self.objective.detach() + later.objective.detach(),
            loss=self.loss + later.loss,
            groups=[group for group, _ in merged],
            records=[record for _, record in merged],
        )


def _layout(groups: Sequence[ConstraintGroup]) -> list[tuple]:
    """What micro-batches must share: kinds, names, and every shape not set by the batch."""
    return [
        (
            g.formulation,
            g.inequality,
            g.names,
            [
                None if e.fixed_shape is None else s
                for e, s in zip(g.entries, g.shapes, strict=True)
            ],
        )
        for g in groups
    ]


def _merged_group(
    first: ConstraintGroup, later: ConstraintGroup, record: GroupRecord, later_record: GroupRecord
) -> tuple[ConstraintGroup, GroupRecord]:
    """One group of two micro-batches: fixed-shape values summed, per-sample ones concatenated."""
    assert first.strict_values is not None and later.strict_values is not None
    per_sample = [e.fixed_shape is None for e in first.entries]
    if not any(per_sample):  # the common case: one vectorized sum
        first.strict_values = first.strict_values + later.strict_values
        values = record.values + later_record.values
        return first, record._replace(values=values, strict_values=first.strict_values)

    def combine(a: torch.Tensor, b: torch.Tensor, *, add: bool = True) -> torch.Tensor:
        parts = zip(per_sample, a.split(first.sizes), b.split(later.sizes), strict=True)
        return torch.cat([torch.cat([x, y]) if s else (x + y if add else x) for s, x, y in parts])

    strict = combine(first.strict_values, later.strict_values)
    multipliers = None  # the step's multipliers: the same in both for fixed-shape constraints
    if first.multipliers is not None and later.multipliers is not None:
        multipliers = combine(first.multipliers, later.multipliers, add=False)
    states: list[ConstraintState | None] = []
    values: list[torch.Tensor] = []
    for i, sample_wise in enumerate(per_sample):
        if sample_wise:
            state = _concatenated(first.state(i), later.state(i))
            states.append(state)
            values.append(state.value)
        else:
            states.append(first.states[i])
            values.append(first.values[i])
    group = ConstraintGroup(
        first.formulation,
        first.inequality,
        entries=first.entries,
        values=values,
        states=states,
        has_strict=first.has_strict or later.has_strict,
        strict_values=strict,
        multipliers=multipliers,
    )
    return group, record._replace(
        shapes=group.shapes,
        values=combine(record.values, later_record.values),
        strict_values=strict,
        multipliers=multipliers,
    )


def _concatenated(first: ConstraintState, later: ConstraintState) -> ConstraintState:
    """The detached state of two micro-batches' samples of one per-sample constraint."""

    def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None or b is None else torch.cat([a.detach(), b.detach()])

    has_strict = first.strict_value is not None or later.strict_value is not None
    return ConstraintState(
        value=torch.cat([first.value.detach(), later.value.detach()]),
        strict_value=cat(first.dual_value, later.dual_value) if has_strict else None,
        indices=cat(first.indices, later.indices),
        features=cat(first.features, later.features),
    )


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
                dense_weight=(multiplier.weight if type(multiplier) is DenseMultiplier else None),
            )
            self.entries[constraint] = self.entries[name] = entry

    def resolve(self, key: Constraint | str) -> _Entry:
        """The registered entry for ``key``, or a ValueError naming it."""
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


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate flattened tensors (one tensor is returned as it is)."""
    if len(tensors) == 1:
        return tensors[0]
    try:
        return torch.stack(tensors).reshape(-1)  # one autograd node when the shapes agree
    except RuntimeError:
        return torch.cat([t.reshape(-1) for t in tensors])


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


_LAYOUT = ("names", "key", "shapes", "sizes", "all_explicit", "dense_weights")
"""Cached properties of a :class:`ConstraintGroup` that depend on its layout only."""

_Plan = list[tuple[tuple[type[Formulation], bool], list[_Entry], list[int], list[torch.Size], dict]]


def _grouped_by_plan(state: ProblemState, plan: _Plan) -> list[ConstraintGroup] | None:
    """Group plain-tensor values laid out as in an earlier step; None if the layout changed."""
    raws = list(state.constraints.values())
    groups = []
    for group_key, entries, positions, shapes, layout in plan:
        values = [raws[i] for i in positions]
        try:
            if [v.shape for v in values] != shapes:
                return None
        except AttributeError:  # a ConstraintState, or not a tensor: take the general path
            return None
        if not all(isinstance(v, torch.Tensor) for v in values):
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
    if plannable:
        if len(index.plans) >= 16:  # layouts that keep changing: keep the cache small
            index.plans.clear()
        index.plans[keys] = [
            (
                key,
                group.entries,
                positions[key],
                group.shapes,
                {name: getattr(group, name) for name in _LAYOUT},
            )
            for key, group in groups.items()
        ]
    return list(groups.values())


def _raise_unsafe_states(groups: list[ConstraintGroup]) -> None:
    """Raise the error of the first state that was made safe (e.g. an index out of range)."""
    for group in groups:
        for entry, raw, unsafe in group.index_checks:
            if bool(unsafe):
                assert entry.multiplier is not None
                message = entry.multiplier.state_error(raw) or "the state is not valid"
                raise ValueError(f"constraint {entry.name!r}: {message}; the step was refused.")


def _dual_update_terms(group: ConstraintGroup) -> torch.Tensor | None:
    r"""The multipliers plus their closed-form dual gradient, in the multipliers' dtype.

    A step is refused if this is not finite: :math:`\lambda + d` is the update of SGD with a
    learning rate of 1 (the method of multipliers), and bounds those of smaller learning rates.
    ``None`` for groups without closed-form dual gradients.
    """
    if group.direction is None or group.multipliers is None:
        return None
    return group.multipliers + group.direction


def _raise_nonfinite(state: ProblemState, groups: list[ConstraintGroup]) -> None:
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
        updates = _dual_update_terms(group)
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


def _coefficients(group: ConstraintGroup, device: torch.device) -> torch.Tensor | None:
    if group.entries[0].formulation.coefficient() is None:  # a formulation class without rho
        return None
    rhos = [e.formulation.coefficient() for e in group.entries]
    return _flat(
        [r.to(device).expand(v.shape) for r, v in zip(rhos, group.values, strict=True)]  # type: ignore[union-attr]
    )


def _scale_summed_terms(term: torch.Tensor, group: ConstraintGroup) -> torch.Tensor:
    """Multiply the terms of per-sample constraints by the world size.

    Their Lagrangian terms are sums over the rank's samples; DDP averages gradients across
    ranks, so without this factor they would weigh ``1/world_size`` of what they weigh in one
    process over the same global batch.
    """
    summed = [
        e.multiplier is not None
        and e.multiplier.gradient_reduction == "sum"
        and e.multiplier.synchronized
        for e in group.entries
    ]
    if not any(summed):
        return term
    ranks = float(distributed.world_size())
    if all(summed):
        return term * ranks
    scale = torch.cat(
        [term.new_full((n,), ranks if s else 1.0) for n, s in zip(group.sizes, summed, strict=True)]
    )
    return term * scale


def _multipliers(group: ConstraintGroup) -> torch.Tensor:
    """The group's multipliers; only those without a closed-form gradient carry autograd."""
    entries, states = group.entries, group.states
    if group.all_explicit:
        weights = group.dense_weights  # DenseMultiplier.value() is the weight
        with torch.no_grad():
            flat = _flat(
                [e.multiplier.value(s) for e, s in zip(entries, states, strict=True)]  # type: ignore[union-attr]
                if weights is None
                else weights
            )
            # A lone multiplier comes back as its weight itself: copy it, so that autograd adds
            # no second dual gradient to the closed-form one and the step keeps the values from
            # before its dual update.
            return flat.clone() if len(entries) == 1 else flat
    return _flat(
        [
            e.multiplier.value(s).detach() if e.explicit else e.multiplier.value(s)  # type: ignore[union-attr]
            for e, s in zip(entries, states, strict=True)
        ]
    )


def _dual_direction(
    group: ConstraintGroup, rho: torch.Tensor | None, values: torch.Tensor, check_finite: bool
) -> list[torch.Tensor]:
    """Set the group's closed-form dual direction and dtype; return what must be checked.

    The multipliers follow the values' dtype: they are widened to ``dual_dtype`` (never
    narrowed) once the step is accepted, and their gradient is written in it.

    Args:
        group: A group with explicit multipliers, its strict values and multipliers set.
        rho: The penalty coefficients, if any.
        values: The (detached) values of the group's primal term.
        check_finite: Whether the step is checked for non-finite numbers.

    Returns:
        A scalar that is finite only if the multipliers plus their dual gradient are, or
        nothing when that needs no check.
    """
    assert group.strict_values is not None and group.multipliers is not None
    group.direction = group.formulation.dual_direction(group.strict_values, rho)
    group.dual_dtype = torch.promote_types(group.multipliers.dtype, group.direction.dtype)
    if not check_finite or (group.formulation is Lagrangian and group.strict_values is values):
        # A plain Lagrangian's direction is the value: lambda + g is finite whenever the
        # objective, which holds lambda * g in the same dtype, is.
        return []
    return [_dual_update_terms(group).sum()]  # type: ignore[union-attr]


def _refuse_nonfinite(
    state: ProblemState,
    groups: list[ConstraintGroup],
    objective: torch.Tensor,
    unchecked: list[torch.Tensor],
    ranks: int,
) -> None:
    """The step's one host synchronization: raise if anything checked is not finite.

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


def _follow_values_dtype(group: ConstraintGroup, index: ConstraintIndex) -> None:
    """Widen the group's explicit multipliers to its dual dtype (once per dtype change)."""
    dtype = group.dual_dtype
    if dtype is None:
        return
    key = group.key
    if index.settled.get(key) == (dtype_epoch(), dtype):
        return  # the hot path: nothing changed since the multipliers last had this dtype
    for entry in group.entries:
        if entry.explicit:
            entry.multiplier.follow_dtype_(dtype, index.dual_optimizer)  # type: ignore[union-attr]
    if len(index.settled) >= 64:  # layouts that keep changing: keep the cache small
        index.settled.clear()
    index.settled[key] = (dtype_epoch(), dtype)


def assemble(
    state: ProblemState, index: ConstraintIndex, *, check_finite: bool = True
) -> AssembledLagrangian:
    r"""Build the step's differentiable Lagrangian (see the module docstring).

    The closed-form dual gradients of explicit multipliers are accumulated into their
    ``.grad`` here, once the state is validated; the backward pass of the returned objective
    adds the primal gradients (and those of implicit multipliers).

    Args:
        state: The problem's state.
        index: The constraint index of the problem (and the dual optimizer).
        check_finite: Check the state at the step's one host synchronization: finiteness,
            and the indices of :class:`~conopt.multipliers.IndexedMultiplier`\ s not on the
            host. ``False`` only for a state that an earlier call has already checked.

    Raises:
        NonFiniteError: A loss or constraint value, or a multiplier plus its dual gradient,
            is NaN/Inf (when ``check_finite``); nothing has been changed.
        ValueError: A constraint is unregistered, its value has the wrong shape, or its
            indices are out of range; nothing has been changed.
    """
    groups = group_constraints(state, index)
    objective = state.loss
    unchecked: list[torch.Tensor] = []  # values that do not reach the objective's value
    records: list[GroupRecord] = []
    ranks = distributed.world_size()
    for group in groups:
        values = _flat(group.values)
        if values.dtype not in _AT_LEAST_FLOAT32:
            values = values.to(torch.promote_types(values.dtype, torch.float32))
        # A lone value may be (a view of) a parameter that the primal step changes in place
        # before restarts, penalty updates and the report read it: keep copies of this step's.
        lone = len(group.values) == 1
        detached = values.detach().clone() if lone else values.detach()
        strict = None
        if group.has_strict:
            strict = _flat([group.strict(i) for i in range(len(group.values))]).detach()
            strict = strict.to(values.dtype, copy=lone)
        group.strict_values = detached if strict is None else strict
        if ranks > 1:
            reductions = [e.value_reduction for e in group.entries]
            if any(reductions):
                # Global values drive the dual update; the local ones stay in the primal term.
                group.strict_values = group.strict_values.clone()
                counts = [None if s is None else s.count for s in group.states]
                distributed.all_reduce_values_(group.strict_values, group.sizes, reductions, counts)
        multipliers = None
        if group.formulation.uses_multiplier:
            multipliers = _multipliers(group)
            group.multipliers = multipliers.detach() if multipliers.requires_grad else multipliers
        else:
            unchecked += [values.detach().sum(), group.strict_values.sum()]
        rho = _coefficients(group, values.device)
        term = group.formulation.lagrangian_term(multipliers, values, strict, rho, group.inequality)
        if ranks > 1:
            term = _scale_summed_terms(term, group)
        objective = objective + (term if term.dim() == 0 else term.sum())
        if group.all_explicit or any(e.explicit for e in group.entries):
            unchecked += _dual_direction(group, rho, detached, check_finite)
        if check_finite and group.index_checks:
            # Folded into the step's one host synchronization (NaN: refused, then named).
            unchecked += [torch.where(u, math.nan, 0.0) for _, _, u in group.index_checks]
        records.append(
            GroupRecord(
                inequality=group.inequality,
                names=group.names,
                shapes=group.shapes,
                values=detached,
                strict_values=group.strict_values,
                multipliers=group.multipliers,
            )
        )
    if check_finite:
        _refuse_nonfinite(state, groups, objective, unchecked, ranks)
    for group in groups:
        _follow_values_dtype(group, index)
        group.write_dual_gradients()
    return AssembledLagrangian(
        objective=objective, loss=state.loss.detach(), groups=groups, records=records
    )
