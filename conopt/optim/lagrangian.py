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

The state's values are validated and grouped by :mod:`conopt.optim.grouping`, checked for
finiteness by :mod:`conopt.optim.refusal`, and the result, :class:`AssembledLagrangian`, is
combined across micro-batches in :mod:`conopt.optim.assembled`. ``ConstraintIndex`` and
``NonFiniteError`` are also importable from here, their former home.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from conopt import distributed
from conopt.diagnostics import GroupRecord
from conopt.errors import NonFiniteError
from conopt.formulations import Lagrangian
from conopt.multipliers import add_dense_gradients_, add_pack_gradient_, dtype_epoch
from conopt.optim.assembled import AssembledLagrangian
from conopt.optim.grouping import ConstraintGroup, ConstraintIndex, group_constraints
from conopt.optim.refusal import dual_update_terms, refuse_nonfinite
from conopt.problem import ProblemState

__all__ = ["AssembledLagrangian", "ConstraintIndex", "NonFiniteError", "assemble"]

_AT_LEAST_FLOAT32 = (torch.float32, torch.float64)
"""Value dtypes that the Lagrangian keeps as they are (others are promoted to float32)."""


def _fresh(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is an operation's output (no leaf, no view).

    Nothing that an optimizer step changes in place aliases such a tensor.
    """
    return tensor.grad_fn is not None and not tensor._is_view()


def _unbound_base(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The fresh vector whose ``unbind()`` (in order) gave the scalars ``tensors``, if any.

    Constraints named one per entry of a vector computed at once are given as its entries;
    that vector is their concatenation, without a copy and without a hundred autograd edges.
    """
    base = tensors[0]._base
    if base is None or base.dim() != 1 or base.numel() != len(tensors) or not _fresh(base):
        return None
    if any(t._base is not base or t.dim() for t in tensors):
        return None
    start, stride = base.storage_offset(), base.stride(0)
    offsets = range(start, start + len(tensors) * stride, stride)
    return base if [t.storage_offset() for t in tensors] == list(offsets) else None


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate flattened tensors (one tensor is returned as it is)."""
    if len(tensors) == 1:
        return tensors[0]
    base = _unbound_base(tensors)
    if base is not None:
        return base
    try:
        return torch.stack(tensors).reshape(-1)  # one autograd node when the shapes agree
    except RuntimeError:
        return torch.cat([t.reshape(-1) for t in tensors])


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
    if group.pack is not None:  # one slice of a pack's flat weight, copied for the report
        pack, start, stop = group.pack
        with torch.no_grad():
            flat = pack.weight[start:stop].clone()
        return flat.view(group.shapes[0]) if len(entries) == 1 else flat
    if group.all_explicit:
        weights = group.dense_weights  # DenseMultiplier.value() is the weight
        if weights is not None and len(weights) == 1:  # the hot path of one constraint
            # A copy (see below), detached without entering no_grad.
            return weights[0].detach().clone()
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
    return [dual_update_terms(group).sum()]  # type: ignore[union-attr]


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


def _write_dual_gradients(group: ConstraintGroup) -> None:
    """Accumulate the group's closed-form direction into its explicit multipliers' gradients."""
    if group.direction is None:
        return
    # A copy owned here: the direction may alias the user's constraint values, and the
    # gradients written below are accumulated into in place by later steps.
    assert group.multipliers is not None
    dtype = group.multipliers.dtype if group.dual_dtype is None else group.dual_dtype
    direction = (
        group.direction.clone()  # cheaper than .to(copy=True) when no cast is needed
        if group.direction.dtype == dtype
        else group.direction.to(dtype, copy=True)
    )
    if group.pack is not None:  # packed multipliers: one slice of one gradient
        add_pack_gradient_(*group.pack, direction)
        return
    if len(group.entries) == 1:
        shape = group.values[0].shape
        parts: Sequence[torch.Tensor] = [
            direction if direction.shape == shape else direction.view(shape)
        ]
    elif group.values[0].dim() == 0 and direction.numel() == len(group.entries):
        parts = direction.unbind()  # all scalars: one call, no per-constraint reshape
    else:
        parts = [
            part.view(value.shape)
            for part, value in zip(direction.split(group.sizes), group.values, strict=True)
        ]
    weights = group.dense_weights
    if weights is not None:  # plain dense multipliers: no per-constraint method call
        add_dense_gradients_(weights, parts)
        return
    for entry, state, part in zip(group.entries, group.states, parts, strict=True):
        if entry.explicit:
            entry.multiplier.add_dual_gradient_(state, part)  # type: ignore[union-attr]


def _group_term(
    group: ConstraintGroup, ranks: int, check_finite: bool
) -> tuple[torch.Tensor, list[torch.Tensor], GroupRecord]:
    """One group's summed Lagrangian term, what to check beside the objective, and its record.

    Sets the group's strict values and multipliers on the way (and its closed-form dual
    direction, for explicit multipliers).
    """
    values = _flat(group.values)
    if values.dtype not in _AT_LEAST_FLOAT32:
        values = values.to(torch.promote_types(values.dtype, torch.float32))
    # A lone value (or the vector that the values were unbound from) may be (a view of) a
    # parameter that the primal step changes in place before restarts, penalty updates and the
    # report read it: keep a copy of this step's, unless it is an operation's fresh output.
    lone = len(group.values) == 1
    detached = values.detach() if not lone or _fresh(values) else values.detach().clone()
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
    unchecked: list[torch.Tensor] = []  # values that do not reach the objective's value
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
    if group.all_explicit or any(e.explicit for e in group.entries):
        unchecked += _dual_direction(group, rho, detached, check_finite)
    if check_finite and group.index_checks:
        # Folded into the step's one host synchronization (NaN: refused, then named).
        unchecked += [torch.where(u, math.nan, 0.0) for _, _, u in group.index_checks]
    record = GroupRecord(
        inequality=group.inequality,
        names=group.names,
        shapes=group.shapes,
        values=detached,
        strict_values=group.strict_values,
        multipliers=group.multipliers,
    )
    return (term if term.dim() == 0 else term.sum()), unchecked, record


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

    Returns:
        The objective to differentiate, with the grouped values the step reads.

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
        term, checks, record = _group_term(group, ranks, check_finite)
        objective = objective + term
        unchecked += checks
        records.append(record)
    if check_finite:
        refuse_nonfinite(state, groups, objective, unchecked, ranks)
    for group in groups:
        _follow_values_dtype(group, index)
        _write_dual_gradients(group)
    return AssembledLagrangian(
        objective=objective, loss=state.loss.detach(), groups=groups, records=records
    )
