r"""Feasibility on held-out data: evaluate the constraints without gradients, and track it.

Training reports the constraints on the batches it trains on. Whether a model *is* feasible is
a statement about data it did not train on: :func:`evaluate_feasibility` evaluates a problem's
constraints over any iterable of batches (a ``DataLoader``, a list) under ``torch.no_grad``,
and combines the batches as the constraints' :attr:`~conopt.problem.Constraint.reduction`
says:

* ``"mean"`` (and parameter-only constraints, ``reduction=None``): the weighted mean
  :math:`\sum_b n_b v_b / \sum_b n_b`, with :math:`n_b` the batch's
  :attr:`~conopt.problem.ConstraintState.count` when given, else the batch size;
* ``"sum"``: :math:`\sum_b v_b`;
* per-sample constraints (an :class:`~conopt.multipliers.IndexedMultiplier` or an
  :class:`~conopt.multipliers.ImplicitMultiplier`): every sample must hold, so the largest
  violation over all samples.

Under ``torch.distributed`` each rank evaluates its own shard; the sums, counts and maxima are
all-reduced (two collectives), so every rank gets the global report. The strict value of proxy
constraints (:attr:`~conopt.problem.ConstraintState.strict_value`) is the one evaluated.

:class:`FeasibilityTracker` keeps, across evaluations, since which step the constraints have
held on held-out data, and gives loggers a flat :meth:`~FeasibilityTracker.as_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from conopt import distributed
from conopt.multipliers import DenseMultiplier
from conopt.problem import ConstrainedProblem, Constraint, ConstraintState, ProblemState

__all__ = ["FeasibilityReport", "FeasibilityTracker", "evaluate_feasibility"]


@dataclass(frozen=True)
class FeasibilityReport:
    r"""The constraints of a problem evaluated on held-out data.

    Attributes:
        values: Each evaluated constraint's held-out value (a detached float64 tensor of the
            constraint's shape), by name; per-sample constraints are left out (see
            ``violations``).
        violations: Each evaluated constraint's largest violation (:math:`\max [g]_+` for
            inequalities, :math:`\max |h|` for equalities), by name.
        tolerance: The violation up to which a constraint counts as satisfied.
    """

    values: Mapping[str, torch.Tensor]
    violations: Mapping[str, float]
    tolerance: float = 0.0

    @property
    def max_violation(self) -> float:
        """The largest violation of any constraint (0.0 when none was evaluated)."""
        return max(self.violations.values(), default=0.0)

    @property
    def most_violated(self) -> str | None:
        """The name of the constraint with the largest violation (``None`` if none is violated)."""
        if not self.violations or self.max_violation <= 0.0:
            return None
        return max(self.violations, key=self.violations.__getitem__)

    @property
    def feasible(self) -> bool:
        """Whether every evaluated constraint holds within :attr:`tolerance`."""
        return self.max_violation <= self.tolerance


def _batch_size(batch: Any) -> float | None:
    """The leading dimension of the batch's first tensor (tensor, sequence or mapping)."""
    if isinstance(batch, torch.Tensor):
        return float(batch.shape[0]) if batch.dim() > 0 else None
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, (list, tuple)) or isinstance(batch, Mapping):
        for item in items:
            size = _batch_size(item)
            if size is not None:
                return size
    return None


class _Accumulator:
    """Sums, counts and maxima of the constraints over batches (one rank's share)."""

    def __init__(self, problem: ConstrainedProblem) -> None:
        self.by_name = dict(problem.named_constraints())
        self.names = {constraint: name for name, constraint in self.by_name.items()}
        self.per_sample = {
            name
            for name, c in self.by_name.items()
            if c.multiplier is not None and not isinstance(c.multiplier, DenseMultiplier)
        }
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}
        self.maxima: dict[str, torch.Tensor] = {}
        self.device: torch.device | None = None

    def name(self, key: Constraint | str) -> str:
        name = self.names.get(key) if isinstance(key, Constraint) else key
        if name is None or name not in self.by_name:
            raise ValueError(
                f"evaluate_feasibility: the ProblemState holds a constraint {key!r} that is not "
                f"registered in the problem; registered: {sorted(self.by_name)}."
            )
        return name

    def add(self, state: ProblemState, batch_size: float | None) -> None:
        for key, raw in state.constraints.items():
            name = self.name(key)
            constraint = self.by_name[name]
            cstate = raw if isinstance(raw, ConstraintState) else ConstraintState(raw)
            value = cstate.dual_value.detach().to(torch.float64)
            self.device = self.device or value.device
            if name in self.per_sample:
                worst = _largest_violation(value, constraint.is_inequality)
                previous = self.maxima.get(name)
                self.maxima[name] = worst if previous is None else torch.maximum(previous, worst)
                continue
            if value.shape != constraint.shape:
                raise ValueError(
                    f"evaluate_feasibility: constraint {name!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(constraint.shape)}."
                )
            weight = 1.0
            if constraint.reduction != "sum":
                weight = cstate.count if cstate.count is not None else batch_size  # type: ignore[assignment]
                if weight is None:
                    raise ValueError(
                        f"evaluate_feasibility: constraint {name!r} is a mean, but the batch "
                        "size cannot be read from the batch; give ConstraintState(count=...) "
                        "or batch_size=."
                    )
            self.sums[name] = self.sums.get(name, 0.0) + float(weight) * value
            self.counts[name] = self.counts.get(name, 0.0) + float(weight)


def _largest_violation(value: torch.Tensor, inequality: bool) -> torch.Tensor:
    """The largest violation over the entries: max of [g]_+ or of abs(h); 0 for none."""
    violation = (value.clamp_min(0.0) if inequality else value.abs()).reshape(-1)
    return torch.cat([violation, violation.new_zeros(1)]).max()


def _reduced(acc: _Accumulator, device: torch.device | None) -> tuple[dict, dict]:
    """Global ``(values, per-sample maxima)``: one sum and one max all-reduce across ranks."""
    device = device or acc.device or torch.device("cpu")
    aggregate = [n for n in acc.by_name if n not in acc.per_sample]
    per_sample = [n for n in acc.by_name if n in acc.per_sample]
    sizes = [acc.by_name[n].shape.numel() for n in aggregate]
    parts = []
    for name, size in zip(aggregate, sizes, strict=True):
        total = acc.sums.get(name)
        numerator = torch.zeros(size, dtype=torch.float64, device=device)
        if total is not None:
            numerator = torch.as_tensor(total, device=device).reshape(-1)
        parts.append(numerator)
    counts = torch.tensor([acc.counts.get(n, 0.0) for n in aggregate], dtype=torch.float64)
    buffer = torch.cat([*parts, counts.to(device)])
    maxima = torch.stack(
        [acc.maxima.get(n, torch.tensor(-1.0, dtype=torch.float64)).to(device) for n in per_sample]
        or [torch.zeros((), dtype=torch.float64, device=device)]
    )
    if distributed.world_size() > 1:
        distributed.all_reduce_sum_(buffer)
        distributed.all_reduce_max_(maxima)
    numerators = buffer[: sum(sizes)].split(sizes)
    values = {}
    for i, name in enumerate(aggregate):
        count = float(buffer[sum(sizes) + i])
        if count > 0:  # evaluated on some rank
            constraint = acc.by_name[name]
            value = numerators[i] if constraint.reduction == "sum" else numerators[i] / count
            values[name] = value.reshape(constraint.shape).cpu()
    seen = {n: float(m) for n, m in zip(per_sample, maxima.tolist(), strict=False) if m >= 0}
    return values, seen


def evaluate_feasibility(
    problem: ConstrainedProblem,
    batches: Iterable[Any],
    evaluate: Callable[[Any], ProblemState] | None = None,
    *,
    tolerance: float = 0.0,
    batch_size: Callable[[Any], float] | None = None,
    device: torch.device | str | None = None,
) -> FeasibilityReport:
    r"""Evaluate the problem's constraints on held-out ``batches`` (no gradients).

    Put models with dropout or batch statistics in ``eval()`` mode first; this function changes
    no module's mode.

    Args:
        problem: The problem whose constraints are evaluated.
        batches: Any iterable of batches (a ``DataLoader``, a list of tensors, ...); under
            ``torch.distributed``, this rank's shard.
        evaluate: Maps a batch to the problem's :class:`~conopt.problem.ProblemState`; defaults
            to ``problem.evaluate(batch)``. Its loss is ignored.
        tolerance: The violation up to which a constraint counts as satisfied.
        batch_size: Maps a batch to the weight of its ``"mean"`` values; defaults to the
            leading dimension of the batch's first tensor (a ``ConstraintState.count`` takes
            precedence).
        device: Where the cross-rank reductions run (needed with NCCL when a rank may see no
            batch); defaults to the device of the values.

    Returns:
        The held-out values and violations.

    Raises:
        ValueError: A constraint is not registered, its value has the wrong shape, or a mean's
            batch size cannot be read (the message names the constraint).

    Example:
        >>> import torch, conopt
        >>> class Mean(conopt.ConstrainedProblem):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.bound = conopt.Constraint("<=")
        ...     def evaluate(self, x):
        ...         return conopt.ProblemState(x.sum(), {self.bound: x.mean() - 0.5})
        >>> report = conopt.evaluate_feasibility(Mean(), [torch.zeros(3), torch.ones(1)])
        >>> report.values["bound"].item(), report.feasible
        (-0.25, True)
    """
    evaluate = problem.evaluate if evaluate is None else evaluate
    read_size = _batch_size if batch_size is None else batch_size
    accumulator = _Accumulator(problem)
    with torch.no_grad():
        for batch in batches:
            accumulator.add(evaluate(batch), read_size(batch))
    values, per_sample = _reduced(accumulator, None if device is None else torch.device(device))
    violations = {
        name: float(_largest_violation(value, accumulator.by_name[name].is_inequality))
        for name, value in values.items()
    }
    violations.update(per_sample)
    return FeasibilityReport(values=values, violations=violations, tolerance=tolerance)


class FeasibilityTracker:
    """Since which step the constraints have held on held-out data.

    Call :meth:`update` with the step count and each new :class:`FeasibilityReport` (for
    example every epoch); :attr:`feasible_since` is the step of the first of the consecutive
    feasible evaluations up to the latest one (``None`` while the latest is infeasible).

    Example:
        >>> import conopt
        >>> tracker = conopt.FeasibilityTracker()
        >>> _ = tracker.update(100, conopt.FeasibilityReport({}, {"bound": 0.2}))
        >>> _ = tracker.update(200, conopt.FeasibilityReport({}, {"bound": 0.0}))
        >>> _ = tracker.update(300, conopt.FeasibilityReport({}, {"bound": 0.0}))
        >>> tracker.feasible_since
        200
    """

    def __init__(self) -> None:
        self.feasible_since: int | None = None
        self.last_step: int | None = None
        self.last_report: FeasibilityReport | None = None

    def update(self, step: int, report: FeasibilityReport) -> FeasibilityReport:
        """Record the held-out report of ``step``.

        Args:
            step: The optimizer's step count when the report was evaluated.
            report: The held-out report.

        Returns:
            ``report``, for chaining.

        Raises:
            ValueError: ``step`` is earlier than the last recorded step.
        """
        if self.last_step is not None and step < self.last_step:
            raise ValueError(
                f"FeasibilityTracker.update: step {step} is earlier than the last recorded "
                f"step {self.last_step}."
            )
        if not report.feasible:
            self.feasible_since = None
        elif self.feasible_since is None:
            self.feasible_since = step
        self.last_step, self.last_report = step, report
        return report

    @property
    def feasible(self) -> bool:
        """Whether the latest held-out evaluation was feasible (``False`` before any)."""
        return self.feasible_since is not None

    def as_dict(self, prefix: str = "heldout/") -> dict[str, float | str | None]:
        """Flat values for loggers: feasible (1.0/0.0), since which step, largest violation.

        Args:
            prefix: Prepended to every key.

        Returns:
            ``feasible``, ``feasible_since``, ``max_violation`` and ``most_violated`` (a
            constraint name), plus ``<name>/violation`` for each constraint.
        """
        report = self.last_report
        row: dict[str, float | str | None] = {
            "feasible": float(self.feasible),
            "feasible_since": None if self.feasible_since is None else float(self.feasible_since),
            "max_violation": None if report is None else report.max_violation,
            "most_violated": None if report is None else report.most_violated,
        }
        for name, violation in ({} if report is None else report.violations).items():
            row[f"{name}/violation"] = violation
        return {prefix + key: value for key, value in row.items()}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the steps (the reports are not kept)."""
        return {"feasible_since": self.feasible_since, "last_step": self.last_step}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state_dict: A :meth:`state_dict` of a tracker.
        """
        self.feasible_since = state_dict["feasible_since"]
        self.last_step = state_dict["last_step"]
