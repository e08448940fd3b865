r"""What a step reports: the loss, the Lagrangian, each constraint, and how close to KKT it is.

The KKT conditions of :math:`\min f \text{ s.t. } g \le 0,\ h = 0` at
:math:`(\theta, \lambda, \mu)`:

* primal feasibility: :math:`g(\theta) \le 0,\ h(\theta) = 0`;
* dual feasibility: :math:`\lambda \ge 0`;
* complementary slackness: :math:`\lambda_i g_i(\theta) = 0`;
* stationarity: :math:`\nabla_\theta \mathcal{L} = \nabla f + \lambda^\top \nabla g +
  \mu^\top \nabla h = 0`.

:class:`KKTReport` measures each. Reports hold detached tensors and convert to Python numbers
only when read, so building one costs no device synchronization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class KKTReport:
    r"""Distance of an iterate from the KKT conditions (all zero at a KKT point).

    Attributes:
        max_violation: :math:`\max(\max_i [g_i]_+, \max_j |h_j|)`, 0 when feasible.
        min_multiplier: The smallest inequality multiplier (negative means dual infeasible);
            ``None`` without inequality multipliers.
        max_complementary_slackness: :math:`\max_i |\lambda_i g_i|`; ``None`` without
            inequality multipliers.
        stationarity: :math:`\|\nabla_\theta \mathcal{L}\|_2` over the primal parameters,
            at the multipliers of the step; ``None`` when not measured.
    """

    max_violation: float
    min_multiplier: float | None
    max_complementary_slackness: float | None
    stationarity: float | None

    def satisfied(self, tolerance: float = 1e-4) -> bool:
        """Whether every measured condition holds within ``tolerance``."""
        checks = [self.max_violation <= tolerance]
        if self.min_multiplier is not None:
            checks.append(self.min_multiplier >= -tolerance)
        if self.max_complementary_slackness is not None:
            checks.append(self.max_complementary_slackness <= tolerance)
        if self.stationarity is not None:
            checks.append(self.stationarity <= tolerance)
        return all(checks)

    def as_dict(self) -> dict[str, float | None]:
        """The fields as a flat dictionary, for loggers."""
        return {
            "max_violation": self.max_violation,
            "min_multiplier": self.min_multiplier,
            "max_complementary_slackness": self.max_complementary_slackness,
            "stationarity": self.stationarity,
        }


@dataclass(frozen=True)
class ConstraintReport:
    """One constraint in one step.

    Attributes:
        kind: ``"<="`` or ``"=="``.
        value: The value used by the primal step (the proxy, for proxy constraints).
        strict_value: The value used by the dual step and the KKT report.
        multiplier: The multiplier the step's Lagrangian used (before the dual update), or
            ``None`` for formulations without multipliers.
    """

    kind: str
    value: torch.Tensor
    strict_value: torch.Tensor
    multiplier: torch.Tensor | None

    @property
    def violation(self) -> torch.Tensor:
        """:math:`[g]_+` for inequalities, :math:`|h|` for equalities (of the strict value)."""
        return torch.relu(self.strict_value) if self.kind == "<=" else self.strict_value.abs()


class GradientNorm:
    r"""The Euclidean norm of a set of gradients, computed when first read.

    It holds the gradient tensors of one step until it is read or :meth:`release`\ d, which the
    constrained optimizer does when its next step starts: read a report's stationarity before
    the next step (after that, unless it was read, it is ``None``). This keeps the KKT report
    free for steps whose report nobody reads.
    """

    def __init__(self, grads: list[torch.Tensor]) -> None:
        self._grads: list[torch.Tensor] | None = grads
        self._norm: torch.Tensor | None = None

    def release(self) -> None:
        """Drop the references to the gradients (the norm is no longer computable)."""
        self._grads = None

    def value(self) -> torch.Tensor | None:
        """The norm (a 0-d tensor), or ``None`` when released unread or without gradients."""
        if self._norm is None and self._grads:
            self._norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._grads)))
        self._grads = None
        return self._norm


class GroupRecord(NamedTuple):
    """Detached, concatenated values of one group of constraints (internal to reports)."""

    inequality: bool
    names: Sequence[str]
    shapes: Sequence[torch.Size]
    values: torch.Tensor
    strict_values: torch.Tensor
    multipliers: torch.Tensor | None


@dataclass(frozen=True)
class StepReport:
    """What one constrained step did.

    Attributes:
        step: How many steps the optimizer has taken, this one included.
        loss: The objective :math:`f` (detached tensor).
        lagrangian: The value of the function the primal player minimized (detached).
        skipped: True when the step was skipped (non-finite values with ``on_nonfinite="skip"``).
    """

    step: int
    loss: torch.Tensor
    lagrangian: torch.Tensor
    skipped: bool = False
    groups: Sequence[GroupRecord] = field(default=(), repr=False)
    primal_gradient: GradientNorm | None = field(default=None, repr=False)

    @property
    def stationarity(self) -> torch.Tensor | None:
        r"""The norm of the primal gradient :math:`\|\nabla_\theta \mathcal{L}\|_2`.

        Taken at the step's multipliers (a 0-d tensor); ``None`` when not measured, or when first
        read after the optimizer's next step began (see :class:`GradientNorm`).
        """
        return None if self.primal_gradient is None else self.primal_gradient.value()

    @cached_property
    def constraints(self) -> dict[str, ConstraintReport]:
        """Each evaluated constraint's report, by name."""
        reports: dict[str, ConstraintReport] = {}
        for group in self.groups:
            sizes = [shape.numel() for shape in group.shapes]
            kind = "<=" if group.inequality else "=="
            values = group.values.reshape(-1).split(sizes)
            stricts = group.strict_values.reshape(-1).split(sizes)
            multipliers = (
                None if group.multipliers is None else group.multipliers.reshape(-1).split(sizes)
            )
            for i, (name, shape) in enumerate(zip(group.names, group.shapes, strict=True)):
                reports[name] = ConstraintReport(
                    kind=kind,
                    value=values[i].reshape(shape),
                    strict_value=stricts[i].reshape(shape),
                    multiplier=None if multipliers is None else multipliers[i].reshape(shape),
                )
        return reports

    @cached_property
    def kkt(self) -> KKTReport:
        """The KKT report of this step (reads values from the device once)."""
        violations: list[torch.Tensor] = []
        min_multipliers: list[torch.Tensor] = []
        slackness: list[torch.Tensor] = []
        for group in self.groups:
            if group.strict_values.numel() == 0:
                continue
            if group.inequality:
                violations.append(torch.relu(group.strict_values).max())
                if group.multipliers is not None:
                    min_multipliers.append(group.multipliers.min())
                    slackness.append((group.multipliers * group.strict_values).abs().max())
            else:
                violations.append(group.strict_values.abs().max())

        def largest(items: list[torch.Tensor]) -> float | None:
            return float(torch.stack(items).max()) if items else None

        smallest = float(torch.stack(min_multipliers).min()) if min_multipliers else None
        return KKTReport(
            max_violation=largest(violations) or 0.0,
            min_multiplier=smallest,
            max_complementary_slackness=largest(slackness),
            stationarity=None if (norm := self.stationarity) is None else float(norm),
        )

    def as_dict(self) -> dict[str, float | None]:
        """Flat numbers for loggers.

        The loss, the Lagrangian, the KKT fields, and each constraint's mean value and mean
        multiplier (keys ``"<name>/value"`` and ``"<name>/multiplier"``).
        """
        row: dict[str, float | None] = {
            "step": float(self.step),
            "loss": float(self.loss),
            "lagrangian": float(self.lagrangian),
            **self.kkt.as_dict(),
        }
        for name, report in self.constraints.items():
            row[f"{name}/value"] = float(report.strict_value.float().mean())
            if report.multiplier is not None:
                row[f"{name}/multiplier"] = float(report.multiplier.float().mean())
        return row
