r"""Dense multipliers: one multiplier per entry of the constraint, read and restarted in bulk.

Besides :class:`DenseMultiplier`, the functions :func:`restart_dense_` and
:func:`add_dense_gradients_` act on the weights of many dense multipliers at once, for the
vectorized paths of the constrained optimizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from conopt.multipliers.base import Multiplier, _initial_weight, _same_shape_state

if TYPE_CHECKING:
    from conopt.problem import ConstraintState


def _zero_where_(
    tensors: Sequence[torch.Tensor], feasible: torch.Tensor, *, project: bool = False
) -> None:
    """Fill with 0, in place, the entries of ``tensors`` where ``feasible`` (no autograd).

    ``feasible`` is shaped like the only tensor, or is the tensors' masks flattened and
    concatenated. With ``project``, the tensors are first clamped at 0. Same-shape, same-dtype
    tensors (e.g. a hundred scalars) take a fixed number of operations (stack, clamp, fill,
    unbind, copy) instead of one clamp and one fill per tensor; the result is the same.
    """
    if len(tensors) == 1:
        tensor = tensors[0]
        if project:
            tensor.clamp_min_(0.0)
        tensor.masked_fill_(feasible, 0.0)
        return
    if len({t.dtype for t in tensors}) == 1:
        try:
            stacked = torch.stack(list(tensors))
        except RuntimeError:  # shapes or devices differ
            pass
        else:
            if project:
                stacked.clamp_min_(0.0)
            stacked.masked_fill_(feasible.view(stacked.shape), 0.0)
            torch._foreach_copy_(list(tensors), stacked.unbind())
            return
    masks = feasible.reshape(-1).split([t.numel() for t in tensors])
    for tensor, mask in zip(tensors, masks, strict=True):
        if project:
            tensor.clamp_min_(0.0)
        tensor.masked_fill_(mask.view(tensor.shape), 0.0)


def restart_dense_(
    weights: Sequence[torch.Tensor],
    feasible: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    project: bool = False,
) -> None:
    r""":meth:`DenseMultiplier.restart_` of several dense multipliers at once.

    Args:
        weights: The multipliers' weights.
        feasible: Which entries to restart: shaped like the only weight, or the weights' masks
            flattened and concatenated in the order of ``weights``.
        optimizer: The dual optimizer; its per-entry state of the weights is zeroed alike.
        project: First project the weights onto :math:`\lambda \ge 0` (the projection that
            precedes restarts), fused with the restart.
    """
    with torch.no_grad():
        _zero_where_(weights, feasible, project=project)
        if not optimizer.state:  # e.g. SGD without momentum: no state to look up
            return
        states = [_same_shape_state(optimizer, w) for w in weights]
        if len(weights) == 1 or all(len(s) == len(states[0]) for s in states):
            for slot in zip(*states, strict=True):  # e.g. every weight's momentum buffer
                _zero_where_(slot, feasible)
            return
        masks = feasible.reshape(-1).split([w.numel() for w in weights])
        for state, mask, weight in zip(states, masks, weights, strict=True):
            for tensor in state:
                tensor.masked_fill_(mask.view(weight.shape), 0.0)


def add_dense_gradients_(
    weights: Sequence[torch.Tensor], directions: Sequence[torch.Tensor]
) -> None:
    """:meth:`DenseMultiplier.add_dual_gradient_` of several multipliers, given their weights.

    Args:
        weights: The multipliers' weights.
        directions: Their ascent directions, shaped like them; each may become a gradient.
    """
    for weight, direction in zip(weights, directions, strict=True):
        grad = weight.grad
        if grad is None:
            weight.grad = direction
        else:
            grad.add_(direction)


class DenseMultiplier(Multiplier):
    r"""One multiplier per entry of the constraint: :math:`\lambda \in \mathbb{R}^{shape}`.

    Args:
        shape: The multiplier's shape; defaults to the constraint's shape at binding.
        init: Initial value (a number or a tensor broadcastable to the shape). Inequality
            multipliers must start non-negative.

    Example:
        >>> import conopt
        >>> c = conopt.Constraint("<=", shape=2, multiplier=conopt.DenseMultiplier(init=0.5))
        >>> c.multiplier.weight.tolist()
        [0.5, 0.5]
    """

    def __init__(
        self, shape: int | Sequence[int] | None = None, *, init: float | torch.Tensor = 0.0
    ) -> None:
        super().__init__()
        self._requested_shape = (
            None if shape is None else torch.Size((shape,) if isinstance(shape, int) else shape)
        )
        self._init = init
        # Until binding gives the constraint's shape, hold the init's own shape.
        shape = self._requested_shape
        self.weight = nn.Parameter(
            _initial_weight(torch.as_tensor(init).shape if shape is None else shape, init)
        )

    def bind(self, constraint_shape: torch.Size, *, nonnegative: bool) -> None:  # noqa: D102
        if self._requested_shape is not None and self._requested_shape != constraint_shape:
            raise ValueError(
                f"DenseMultiplier shape {tuple(self._requested_shape)} differs from the "
                f"constraint's shape {tuple(constraint_shape)}."
            )
        super().bind(constraint_shape, nonnegative=nonnegative)
        if self.weight.shape != constraint_shape:
            self.weight = nn.Parameter(_initial_weight(constraint_shape, self._init))
        if nonnegative and bool((self.weight < 0).any()):
            raise ValueError("An inequality multiplier must be initialized non-negative.")

    def value(self, state: ConstraintState | None) -> torch.Tensor:  # noqa: D102
        return self._parameters["weight"]  # type: ignore[return-value] - hot path, no __getattr__

    def expected_shape(self, state: ConstraintState) -> torch.Size:  # noqa: D102
        return self.constraint_shape

    def projection_targets(self) -> list[torch.Tensor]:  # noqa: D102
        return [self.weight] if self.nonnegative else []

    def add_dual_gradient_(  # noqa: D102
        self, state: ConstraintState | None, direction: torch.Tensor
    ) -> None:
        add_dense_gradients_([self.weight], [direction])

    def restart_(  # noqa: D102
        self, state: ConstraintState, feasible: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        restart_dense_([self.weight], feasible, optimizer)
