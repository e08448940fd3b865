r"""Constrained problems: constraints, the values a problem reports, and the problem container.

A problem is written as

.. math::

    \min_\theta f(\theta) \quad \text{s.t.} \quad g(\theta) \le 0, \; h(\theta) = 0,

with :class:`Constraint` objects declared as attributes of a :class:`ConstrainedProblem`
(kind ``"<="`` for :math:`g` and ``"=="`` for :math:`h`). The problem's ``evaluate`` method
returns a :class:`ProblemState` with the loss and each constraint's value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from conopt.formulations import Formulation, Lagrangian
from conopt.multipliers import DenseMultiplier, Multiplier, MultiplierPack, pack_optimizer_state_

if TYPE_CHECKING:
    from collections.abc import Sequence

ConstraintKind = Literal["<=", "=="]
r"""``"<="`` declares an inequality :math:`g \le 0`; ``"=="`` an equality :math:`h = 0`."""

ConstraintReduction = Literal["mean", "sum"] | None
"""How a constraint's value is combined across data-parallel ranks before the dual update."""

_KINDS: tuple[str, ...] = ("<=", "==")


class Constraint(nn.Module):
    """A named constraint of a :class:`ConstrainedProblem`: kind, shape, formulation, multiplier.

    Declare constraints as attributes of a problem; the attribute path becomes the constraint's
    :attr:`name`. The value reported for a constraint follows the convention ``g(x) <= 0`` for
    inequalities and ``h(x) = 0`` for equalities.

    Args:
        kind: ``"<="`` (inequality) or ``"=="`` (equality).
        shape: The shape of the constraint's value; an int is a vector length, ``()`` a scalar.
            With an :class:`~conopt.multipliers.IndexedMultiplier` or an
            :class:`~conopt.multipliers.ImplicitMultiplier` it is the shape of one sample's value.
        formulation: How the constraint enters the Lagrangian. Defaults to a new
            :class:`~conopt.formulations.Lagrangian`.
        multiplier: The Lagrange multiplier. Defaults to a zero-initialized
            :class:`~conopt.multipliers.DenseMultiplier` of ``shape`` when the formulation uses
            multipliers, and to none otherwise. It is created in the default dtype and widened
            to the dtype of the constraint's values at the first step that reports wider ones
            (float64 values give float64 multipliers; see :mod:`conopt.multipliers`).
        reduction: How values computed from each rank's data are combined across
            ``torch.distributed`` ranks before the dual update: ``"mean"`` (default, right for
            data-dependent constraints and harmless for parameter-only ones) or ``"sum"``;
            ``None`` declares a constraint that depends on parameters only (no communication).

    Example:
        >>> import conopt
        >>> c = conopt.Constraint("<=", shape=3)
        >>> c.kind, tuple(c.shape), type(c.multiplier).__name__
        ('<=', (3,), 'DenseMultiplier')
    """

    def __init__(
        self,
        kind: ConstraintKind,
        shape: int | Sequence[int] | torch.Size = (),
        *,
        formulation: Formulation | None = None,
        multiplier: Multiplier | None = None,
        reduction: ConstraintReduction = "mean",
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"Constraint kind must be '<=' or '==', got {kind!r}.")
        if reduction not in ("mean", "sum", None):
            raise ValueError(
                f"Constraint reduction must be 'mean', 'sum' or None, got {reduction!r}."
            )
        self.kind: ConstraintKind = kind
        self.shape = torch.Size((shape,) if isinstance(shape, int) else tuple(shape))
        if any(s < 0 for s in self.shape):
            raise ValueError(f"Constraint shape must be non-negative, got {tuple(self.shape)}.")
        self.reduction: ConstraintReduction = reduction
        self.formulation = formulation if formulation is not None else Lagrangian()
        if not isinstance(self.formulation, Formulation):
            raise TypeError(
                f"formulation must be a conopt Formulation, got {type(self.formulation).__name__}."
            )
        self.formulation.bind(self.shape)
        if self.formulation.uses_multiplier:
            if multiplier is None:
                multiplier = DenseMultiplier(self.shape)
            if not isinstance(multiplier, Multiplier):
                raise TypeError(
                    f"multiplier must be a conopt Multiplier, got {type(multiplier).__name__}."
                )
            multiplier.bind(self.shape, nonnegative=kind == "<=")
            multiplier.synchronized = reduction is not None
        elif multiplier is not None:
            raise ValueError(
                f"{type(self.formulation).__name__} uses no multiplier, but one was given."
            )
        self.multiplier: Multiplier | None = multiplier
        self.name: str = "<unregistered>"

    @property
    def is_inequality(self) -> bool:
        """Whether this is an inequality constraint ``g(x) <= 0``."""
        return self.kind == "<="

    def extra_repr(self) -> str:
        """Kind and shape, for ``print(problem)``."""
        return f"{self.kind!r}, shape={tuple(self.shape)}"


@dataclass(frozen=True)
class ConstraintState:
    r"""One evaluation of a constraint.

    Args:
        value: The (differentiable) value of the constraint, used for the primal step.
        strict_value: For proxy constraints: the true, possibly non-differentiable, value used
            for the dual step, dual restarts and the KKT report. Defaults to ``value``.
        indices: For an :class:`~conopt.multipliers.IndexedMultiplier`: the index of each
            entry's multiplier (for example the sample indices of the batch).
        features: For an :class:`~conopt.multipliers.ImplicitMultiplier`: the input of the
            multiplier model.
        count: For a value that is a mean over this many samples, under ``torch.distributed``
            with ``reduction="mean"``: the ranks' values are combined as
            :math:`\sum_r n_r v_r / \sum_r n_r` (exact for uneven shards). Defaults to equal
            weights.
    """

    value: torch.Tensor
    strict_value: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    features: torch.Tensor | None = None
    count: float | None = None

    @property
    def dual_value(self) -> torch.Tensor:
        """The value that drives the dual update: ``strict_value`` when given, else ``value``."""
        return self.value if self.strict_value is None else self.strict_value


@dataclass(frozen=True)
class ProblemState:
    """What one evaluation of a problem returns: the loss, the constraints' values, extras.

    Args:
        loss: The scalar objective :math:`f`.
        constraints: Each constraint's value, keyed by the :class:`Constraint` object (or its
            name); a plain tensor or a :class:`ConstraintState` (for proxy, indexed or implicit
            constraints). Constraints left out are not updated in that step.
        extras: Anything else to carry along (predictions, metrics); never used by conopt.
    """

    loss: torch.Tensor
    constraints: Mapping[Constraint | str, torch.Tensor | ConstraintState] = field(
        default_factory=dict
    )
    extras: Mapping[str, Any] = field(default_factory=dict)

    def scaled(self, weight: float) -> ProblemState:
        """This state with its loss and every constraint value multiplied by ``weight``.

        The step's weight of one micro-batch under gradient accumulation (``weight = 1/k`` for
        ``k`` equal micro-batches): conopt sums the micro-batches' values for the dual step,
        restarts and the report, so the weighted sum is the full batch's mean (see
        :meth:`~conopt.optim.constrained.ConstrainedOptimizer.lagrangian`). Strict values are
        scaled too; counts and extras are kept. Per-sample constraints (a
        :class:`ConstraintState` with ``indices`` or ``features``) are left as they are: each
        sample belongs to one micro-batch, and conopt concatenates them.

        Args:
            weight: The factor.

        Returns:
            A new state.

        Example:
            >>> import torch, conopt
            >>> c = conopt.Constraint("<=")
            >>> one = torch.tensor(1.0)
            >>> state = conopt.ProblemState(loss=2 * one, constraints={c: one})
            >>> half = state.scaled(0.5)
            >>> half.loss.item(), half.constraints[c].item()
            (1.0, 0.5)
        """

        def scale(value: torch.Tensor | ConstraintState) -> torch.Tensor | ConstraintState:
            if not isinstance(value, ConstraintState):
                return value * weight
            if value.indices is not None or value.features is not None:
                return value  # per-sample values: not a share of a batch mean
            strict = value.strict_value
            return replace(
                value,
                value=value.value * weight,
                strict_value=None if strict is None else strict * weight,
            )

        return ProblemState(
            loss=self.loss * weight,
            constraints={key: scale(value) for key, value in self.constraints.items()},
            extras=self.extras,
        )


class ConstrainedProblem(nn.Module):
    """Base class of constrained problems: subclass it, declare constraints, write ``evaluate``.

    Constraints are found wherever they are registered as sub-modules (attributes, or inside an
    ``nn.ModuleDict``/``nn.ModuleList``), and named by their attribute path. The problem's
    ``state_dict()`` holds every multiplier and penalty coefficient.

    Example:
        >>> import torch, conopt
        >>> class Budget(conopt.ConstrainedProblem):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.total = conopt.Constraint("<=")
        ...     def evaluate(self, x):
        ...         g = 1 - x.sum()
        ...         return conopt.ProblemState(loss=(x**2).sum(), constraints={self.total: g})
        >>> [name for name, _ in Budget().named_constraints()]
        ['total']
    """

    def evaluate(self, *args: Any, **kwargs: Any) -> ProblemState:
        """Compute the loss and the constraints' values. Subclasses must override this."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate().")

    def forward(self, *args: Any, **kwargs: Any) -> ProblemState:
        """Alias of :meth:`evaluate`, so that ``problem(x)`` works like any module."""
        return self.evaluate(*args, **kwargs)

    def named_constraints(self) -> Iterator[tuple[str, Constraint]]:
        """Yield ``(name, constraint)`` for every registered constraint, in declaration order.

        Also sets each constraint's :attr:`Constraint.name` to its attribute path.
        """
        for name, module in self.named_modules():
            if isinstance(module, Constraint):
                module.name = name
                yield name, module

    def constraints(self) -> Iterator[Constraint]:
        """Yield every registered constraint, in declaration order."""
        for _, constraint in self.named_constraints():
            yield constraint

    def dual_parameters(self) -> Iterator[nn.Parameter]:
        """Yield the parameters of every constraint's multiplier: what the dual optimizer drives.

        Packed multipliers (:meth:`pack_multipliers`) yield their pack's weight once, where its
        first constraint is declared.
        """
        seen: set[int] = set()
        for constraint in self.constraints():
            if constraint.multiplier is not None:
                for param in constraint.multiplier.optimized_parameters():
                    if id(param) not in seen:
                        seen.add(id(param))
                        yield param  # type: ignore[misc]

    @property
    def packing_version(self) -> int:
        """How many times :meth:`pack_multipliers` packed something (optimizers check it)."""
        return self.__dict__.get("_packing_version", 0)

    def pack_multipliers(
        self, dual_optimizer: torch.optim.Optimizer | None = None
    ) -> list[MultiplierPack]:
        r"""Store the plain dense multipliers of each kind in one shared parameter.

        Constraints with a :class:`~conopt.multipliers.DenseMultiplier` (not a subclass) that
        share a formulation class, a kind, a dtype and a device are packed together, in
        declaration order (groups of one are left alone): their ``weight``\ s become views of
        the pack's flat weight, which :meth:`dual_parameters` yields instead, so the dual step,
        projection, restarts and ``zero_grad`` act on one tensor (see
        :mod:`conopt.multipliers.packed`). Values, names, reports and the ``state_dict`` layout
        stay as they were; the steps are the same, number for number.

        Call it before building the constrained optimizer (which refuses a problem packed
        after it was built). Every step must then evaluate all constraints of a pack or none.

        Args:
            dual_optimizer: A dual optimizer already built over the unpacked multipliers (for
                example one whose ``state_dict`` was just loaded from an unpacked run): it is
                converted to drive the packs, with its per-entry state concatenated.

        Returns:
            The new packs (empty when nothing is left to pack).

        Example:
            >>> import torch, conopt
            >>> class Groups(conopt.ConstrainedProblem):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.each = torch.nn.ModuleList(conopt.Constraint("<=") for _ in range(3))
            >>> problem = Groups()
            >>> [pack.names for pack in problem.pack_multipliers()]
            [['each.0', 'each.1', 'each.2']]
            >>> [tuple(p.shape) for p in problem.dual_parameters()]
            [(3,)]
        """
        candidates: dict[tuple, list[tuple[str, DenseMultiplier]]] = {}
        for name, constraint in self.named_constraints():
            multiplier = constraint.multiplier
            if type(multiplier) is not DenseMultiplier or multiplier.pack is not None:
                continue
            weight = multiplier.weight
            key = (type(constraint.formulation), constraint.kind, weight.dtype, weight.device)
            candidates.setdefault(key, []).append((name, multiplier))
        packs: list[MultiplierPack] = []
        old_weights: dict[int, list[torch.Tensor]] = {}
        for members in candidates.values():
            if len(members) < 2:
                continue
            names = [name for name, _ in members]
            pack = MultiplierPack([m for _, m in members], names)
            old_weights[id(pack)] = [m.weight for _, m in members]
            for _, multiplier in members:
                multiplier.pack_into_(pack)
            packs.append(pack)
        if not packs:
            return []
        if "_multiplier_packs" not in self._modules:
            self._multiplier_packs = nn.ModuleList()
        self._multiplier_packs.extend(packs)
        self.__dict__["_packing_version"] = self.packing_version + 1
        if dual_optimizer is not None:
            pack_optimizer_state_(dual_optimizer, packs, old_weights)
        return packs
