r"""Formulations: how a constraint enters the function the primal player minimizes.

Each constraint has its own formulation object. A formulation class states two element-wise
maps, vectorized over every constraint of the same class and kind (so a hundred scalar
constraints cost about as much as one vector constraint):

* :meth:`Formulation.primal_term`: the constraint's contribution to the primal objective, with
  the multiplier held fixed;
* :meth:`Formulation.dual_direction`: the ascent direction for the multiplier, whose dual step
  with SGD of learning rate :math:`\eta` is :math:`\lambda \leftarrow \lambda + \eta\,d`.

Penalty coefficients :math:`\rho` are buffers (in ``state_dict()``, initial value included) and
are grown by :class:`IncreaseOnStagnation` rules that the constrained optimizer applies.

The augmented Lagrangian's term and its multiplier update are also pure functions,
:func:`augmented_lagrangian_term` and :func:`multiplier_update`, which
:class:`AugmentedLagrangian` and :func:`conopt.solve` share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

__all__ = [
    "AugmentedLagrangian",
    "Formulation",
    "IncreaseOnStagnation",
    "Lagrangian",
    "QuadraticPenalty",
    "augmented_lagrangian_term",
    "multiplier_update",
]


@dataclass(frozen=True)
class IncreaseOnStagnation:
    r"""Grow a penalty coefficient when the violation does not shrink fast enough.

    After each dual step, for every entry (or for the constraint as a whole when
    :math:`\rho` is a scalar) with violation :math:`v_t` (:math:`[g]_+` or :math:`|h|`):

    .. math::

        \rho \leftarrow \min(\text{factor}\cdot\rho,\ \text{max\_value})
        \quad\text{if}\quad v_t > \text{tolerance}\cdot v_{t-1} \text{ and } v_t > 0,

    the classical rule of the method of multipliers (Bertsekas, 1982; Nocedal & Wright, §17.4),
    applied once every ``every`` dual steps.

    Args:
        factor: Multiplicative growth, > 1.
        tolerance: Required shrink ratio of the violation, in (0, 1].
        every: Apply the rule once every this many dual steps.
        max_value: Upper bound of the coefficient.
    """

    factor: float = 10.0
    tolerance: float = 0.25
    every: int = 1
    max_value: float = 1e8

    def __post_init__(self) -> None:
        if not self.factor > 1:
            raise ValueError(f"IncreaseOnStagnation.factor must be > 1, got {self.factor}.")
        if not 0 < self.tolerance <= 1:
            raise ValueError(
                f"IncreaseOnStagnation.tolerance must be in (0, 1], got {self.tolerance}."
            )
        if self.every < 1:
            raise ValueError(f"IncreaseOnStagnation.every must be >= 1, got {self.every}.")

    def new_coefficient(
        self, rho: torch.Tensor, violation: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        """The grown coefficient given this and the previous violation (same shape as ``rho``)."""
        stalled = (violation > self.tolerance * previous) & (violation > 0)
        grown = torch.clamp(rho * self.factor, max=self.max_value)
        return torch.where(stalled, grown, rho)


def _as_coefficient(rho: float | torch.Tensor, owner: str) -> torch.Tensor:
    tensor = torch.as_tensor(rho, dtype=torch.get_default_dtype()).detach().clone()
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(f"{owner}: the penalty coefficient must be finite and >= 0, got {rho}.")
    return tensor


class Formulation(nn.Module):
    """Base class of formulations. One instance belongs to one constraint."""

    uses_multiplier: ClassVar[bool] = True
    """Whether the formulation has a Lagrange multiplier (and so a dual step)."""

    def __init__(self) -> None:
        super().__init__()
        self.constraint_shape: torch.Size | None = None

    def bind(self, constraint_shape: torch.Size, owner: str = "constraint") -> None:
        """Attach to a constraint of ``constraint_shape``; a formulation serves one constraint."""
        if self.constraint_shape is not None:
            raise ValueError(
                f"this {type(self).__name__} already belongs to another constraint; "
                "create one formulation object per constraint."
            )
        self.constraint_shape = torch.Size(constraint_shape)

    def coefficient(self) -> torch.Tensor | None:
        r"""The penalty coefficient :math:`\rho`, or ``None`` for formulations without one."""
        return None

    @staticmethod
    def primal_term(
        multiplier: torch.Tensor | None,
        value: torch.Tensor,
        rho: torch.Tensor | None,
        inequality: bool,
    ) -> torch.Tensor:
        """Element-wise contribution to the primal objective (the multiplier is detached)."""
        raise NotImplementedError

    @staticmethod
    def dual_direction(value: torch.Tensor, rho: torch.Tensor | None) -> torch.Tensor:
        """Element-wise ascent direction of the multiplier (``value`` is detached)."""
        raise NotImplementedError

    @classmethod
    def lagrangian_term(
        cls,
        multiplier: torch.Tensor | None,
        value: torch.Tensor,
        strict_value: torch.Tensor | None,
        rho: torch.Tensor | None,
        inequality: bool,
    ) -> torch.Tensor:
        """Element-wise term whose value is the primal term and whose gradients are both players'.

        Its gradient with respect to the primal parameters is that of :meth:`primal_term` at the
        detached ``multiplier``; with respect to ``multiplier`` it is :meth:`dual_direction` of
        the detached ``strict_value`` (``value`` when ``None``).
        """
        if multiplier is None:
            return cls.primal_term(None, value, rho, inequality)
        fixed = multiplier.detach()
        dual_value = (value if strict_value is None else strict_value).detach()
        # (multiplier - fixed) is zero-valued and carries the multiplier's gradient.
        ascent = (multiplier - fixed) * cls.dual_direction(dual_value, rho)
        return cls.primal_term(fixed, value, rho, inequality) + ascent

    def update_penalty_(self, violation: torch.Tensor) -> None:
        """Apply the penalty growth rule, if any, to this dual step's ``violation`` (>= 0)."""


class Lagrangian(Formulation):
    r"""The Lagrangian :math:`\lambda^\top g(\theta)`, with projected dual ascent.

    .. math::

        \mathcal{L} = f + \lambda^\top g + \mu^\top h, \qquad
        \lambda \leftarrow [\lambda + \eta\, g]_+, \quad \mu \leftarrow \mu + \eta\, h.
    """

    @staticmethod
    def primal_term(  # noqa: D102
        multiplier: torch.Tensor | None,
        value: torch.Tensor,
        rho: torch.Tensor | None,
        inequality: bool,
    ) -> torch.Tensor:
        assert multiplier is not None
        return multiplier * value

    @staticmethod
    def dual_direction(value: torch.Tensor, rho: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        return value

    @classmethod
    def lagrangian_term(  # noqa: D102
        cls,
        multiplier: torch.Tensor | None,
        value: torch.Tensor,
        strict_value: torch.Tensor | None,
        rho: torch.Tensor | None,
        inequality: bool,
    ) -> torch.Tensor:
        if strict_value is None and multiplier is not None:
            # d(lambda * g)/d lambda = g: one product carries both players' gradients.
            return multiplier * value
        return super().lagrangian_term(multiplier, value, strict_value, rho, inequality)


class _Penalized(Formulation):
    """Shared state of formulations with a penalty coefficient."""

    def __init__(
        self,
        rho: float | Sequence[float] | torch.Tensor = 1.0,
        penalty_update: IncreaseOnStagnation | None = None,
    ) -> None:
        super().__init__()
        coefficient = _as_coefficient(rho, type(self).__name__)
        self.register_buffer("rho", coefficient)
        self.register_buffer("initial_rho", coefficient.clone())
        self.register_buffer("previous_violation", torch.full_like(coefficient, float("inf")))
        self.register_buffer("dual_steps", torch.zeros((), dtype=torch.long))
        self.penalty_update = penalty_update

    def bind(self, constraint_shape: torch.Size, owner: str = "constraint") -> None:
        super().bind(constraint_shape, owner)
        try:
            torch.broadcast_shapes(self.rho.shape, constraint_shape)
        except RuntimeError:
            raise ValueError(
                f"{type(self).__name__}: rho of shape {tuple(self.rho.shape)} does not broadcast "
                f"to the constraint's shape {tuple(constraint_shape)}."
            ) from None

    def coefficient(self) -> torch.Tensor:
        return self.rho

    def set_rho(self, rho: float | torch.Tensor) -> None:
        """Set the penalty coefficient (for example from a schedule), keeping its shape."""
        self.rho.copy_(_as_coefficient(rho, type(self).__name__).expand_as(self.rho))

    def update_penalty_(self, violation: torch.Tensor) -> None:
        rule = self.penalty_update
        if rule is None:
            return
        self.dual_steps += 1
        if int(self.dual_steps) % rule.every:
            return
        if self.rho.dim() == 0:
            violation = (
                violation.detach().abs().max() if violation.numel() else violation.new_zeros(())
            )
        else:
            violation = violation.detach().reshape(self.rho.shape)
        violation = violation.to(self.rho)
        self.rho.copy_(rule.new_coefficient(self.rho, violation, self.previous_violation))
        self.previous_violation.copy_(violation)

    def extra_repr(self) -> str:
        """The penalty coefficient."""
        return f"rho={self.rho.tolist()}"


class AugmentedLagrangian(_Penalized):
    r"""The augmented Lagrangian, with the method-of-multipliers dual step.

    Inequalities (Nocedal & Wright, eq. 17.65) and equalities:

    .. math::

        \frac{1}{2\rho}\left([\lambda + \rho g]_+^2 - \lambda^2\right), \qquad
        \mu^\top h + \frac{\rho}{2}\|h\|^2.

    The dual direction is :math:`\rho g` (resp. :math:`\rho h`): an SGD dual step of
    learning rate 1 followed by the projection is exactly :math:`\lambda \leftarrow
    [\lambda + \rho g]_+`. Every expression stays finite as :math:`\rho \to 0`, where the
    formulation becomes the :class:`Lagrangian`.

    Args:
        rho: Penalty coefficient :math:`\rho \ge 0`: a number, or one per entry.
        penalty_update: Optional growth rule applied after each dual step.
    """

    @staticmethod
    def primal_term(  # noqa: D102
        multiplier: torch.Tensor | None,
        value: torch.Tensor,
        rho: torch.Tensor | None,
        inequality: bool,
    ) -> torch.Tensor:
        assert multiplier is not None and rho is not None
        return augmented_lagrangian_term(multiplier, value, rho, inequality)

    @staticmethod
    def dual_direction(  # noqa: D102
        value: torch.Tensor, rho: float | torch.Tensor | None
    ) -> torch.Tensor:
        assert rho is not None
        return rho * value


def augmented_lagrangian_term(
    multiplier: torch.Tensor, value: torch.Tensor, rho: float | torch.Tensor, inequality: bool
) -> torch.Tensor:
    r"""The augmented Lagrangian's element-wise term at fixed multipliers and penalty.

    For an inequality :math:`g \le 0` (Nocedal & Wright, eq. 17.65) and an equality :math:`h`:

    .. math::

        \frac{1}{2\rho}\left([\lambda + \rho g]_+^2 - \lambda^2\right) =
        \begin{cases} g(\lambda + \tfrac{\rho}{2} g) & \lambda + \rho g \ge 0 \\
        -\lambda^2 / (2\rho) & \text{otherwise,} \end{cases} \qquad
        h(\mu + \tfrac{\rho}{2} h).

    A pure function: :meth:`AugmentedLagrangian.primal_term` and :func:`conopt.solve` both
    evaluate the term through it. Where :math:`\rho = 0` the inequality term is
    :math:`\lambda g` (the :class:`Lagrangian`'s), and a NaN ``value`` selects (and propagates
    through) the smooth branch.

    Args:
        multiplier: The multipliers :math:`\lambda` (or :math:`\mu`), held fixed.
        value: The constraint values :math:`g` (or :math:`h`), broadcastable with
            ``multiplier``.
        rho: The penalty coefficient :math:`\rho \ge 0`: a number, or a tensor broadcastable
            with ``value``.
        inequality: Whether the rows are inequalities :math:`g \le 0`.

    Returns:
        The element-wise term (not summed).
    """
    smooth = value * (multiplier + (0.5 * rho) * value)
    if not inequality:
        return smooth
    if isinstance(rho, torch.Tensor):
        positive = rho > 0
        flat = -multiplier.square() / torch.where(positive, 2 * rho, torch.ones_like(rho))
        flat = torch.where(positive, flat, torch.zeros_like(flat))
    else:
        flat = -multiplier.square() / (2 * rho) if rho > 0 else torch.zeros_like(multiplier)
    # Written so that a NaN value selects (and propagates through) the smooth branch.
    return torch.where(multiplier + rho * value < 0, flat, smooth)


def multiplier_update(
    multiplier: torch.Tensor, value: torch.Tensor, rho: float | torch.Tensor, inequality: bool
) -> torch.Tensor:
    r"""The method of multipliers' update, :math:`[\lambda + \rho g]_+` or :math:`\mu + \rho h`.

    It is the multiplier plus :meth:`AugmentedLagrangian.dual_direction`, projected onto
    :math:`\lambda \ge 0` for inequalities: what a dual SGD step of learning rate 1 on the
    :class:`AugmentedLagrangian` does, and the first-order multiplier estimate at which the
    Lagrangian's gradient equals the augmented Lagrangian's.

    Args:
        multiplier: The current multipliers.
        value: The constraint values.
        rho: The penalty coefficient (a number, or a tensor broadcastable with ``value``).
        inequality: Whether the rows are inequalities (the update is then clamped at 0).

    Returns:
        The updated multipliers.
    """
    updated = multiplier + AugmentedLagrangian.dual_direction(value, rho)
    return torch.clamp(updated, min=0) if inequality else updated


class QuadraticPenalty(_Penalized):
    r"""The quadratic penalty, without multipliers.

    .. math::

        \frac{\rho}{2}\,[g]_+^2, \qquad \frac{\rho}{2}\,h^2.

    Args:
        rho: Penalty coefficient :math:`\rho \ge 0`: a number, or one per entry.
        penalty_update: Optional growth rule applied after each step.
    """

    uses_multiplier: ClassVar[bool] = False

    @staticmethod
    def primal_term(  # noqa: D102
        multiplier: torch.Tensor | None,
        value: torch.Tensor,
        rho: torch.Tensor | None,
        inequality: bool,
    ) -> torch.Tensor:
        assert rho is not None
        violation = torch.relu(value) if inequality else value
        return 0.5 * rho * violation.square()

    @staticmethod
    def dual_direction(value: torch.Tensor, rho: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        raise TypeError("QuadraticPenalty has no multiplier and no dual direction.")
