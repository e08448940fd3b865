r"""Implicit multipliers: a model that predicts the multipliers from features."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from conopt.multipliers.base import Multiplier

if TYPE_CHECKING:
    from conopt.problem import ConstraintState


class ImplicitMultiplier(Multiplier):
    r"""Multipliers predicted by a model from features: :math:`\lambda = m_\phi(x)`.

    Useful for per-sample constraints over datasets too large for one multiplier per sample.
    The dual optimizer drives the model's parameters :math:`\phi` (``maximize=True``). For
    inequality constraints the prediction passes through a ReLU, so multipliers are never
    negative. Dual restarts do not apply (there is no per-entry multiplier to reset).

    Args:
        model: Maps ``ConstraintState.features`` (batch first) to values of shape
            ``(batch, *constraint_shape)``.

    Example:
        >>> import torch, conopt
        >>> m = conopt.ImplicitMultiplier(torch.nn.Linear(4, 1, bias=False))
        >>> c = conopt.Constraint("<=", shape=1, multiplier=m)
        >>> state = conopt.ConstraintState(torch.zeros(8, 1), features=torch.randn(8, 4))
        >>> bool((c.multiplier.value(state) >= 0).all())
        True
    """

    supports_restarts: ClassVar[bool] = False
    explicit_gradient: ClassVar[bool] = False
    gradient_reduction: ClassVar[str | None] = "mean"  # data-parallel, like any DDP model

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _features(self, state: ConstraintState | None) -> torch.Tensor:
        if state is None or state.features is None:
            raise ValueError("an ImplicitMultiplier needs ConstraintState(features=...).")
        return state.features

    def value(self, state: ConstraintState | None) -> torch.Tensor:  # noqa: D102
        prediction = self.model(self._features(state))
        return torch.relu(prediction) if self.nonnegative else prediction

    def expected_shape(self, state: ConstraintState) -> torch.Size:  # noqa: D102
        return torch.Size((self._features(state).shape[0], *self.constraint_shape))

    def follow_dtype_(
        self, dtype: torch.dtype, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Nothing: the multipliers have the dtype of the model's predictions, set by its user."""
