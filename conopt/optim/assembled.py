r"""What assembling a step's Lagrangian gives, and how micro-batches' assemblies combine.

:class:`AssembledLagrangian` is the result of :func:`~conopt.optim.lagrangian.assemble`: the
scalar to differentiate, and the grouped values that the dual step, the restarts, the penalty
updates and the report read. Under gradient accumulation,
:meth:`AssembledLagrangian.accumulated` combines the assemblies of one step's micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from conopt.diagnostics import GroupRecord
from conopt.optim.grouping import ConstraintGroup
from conopt.problem import ConstraintState


@dataclass
class AssembledLagrangian:
    """What :func:`~conopt.optim.lagrangian.assemble` returns: what a step differentiates and reads.

    Attributes:
        objective: The scalar to call ``backward()`` on (its value is the Lagrangian).
        loss: The detached loss.
        groups: The step's constraint groups, with their values, multipliers and directions.
        records: The groups' detached values, for the step's report.
    """

    objective: torch.Tensor
    loss: torch.Tensor
    groups: list[ConstraintGroup]
    records: list[GroupRecord]

    def accumulated(self, later: AssembledLagrangian) -> AssembledLagrangian:
        """This assembly with the values of a later one of the same step added (accumulation).

        Under gradient accumulation every micro-batch's assembly adds its closed-form dual
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
