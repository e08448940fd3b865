r"""Indexed multipliers: one multiplier per index (for example per training sample)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from conopt import distributed
from conopt.multipliers.base import Multiplier, _initial_weight, _same_shape_state

if TYPE_CHECKING:
    from conopt.problem import ConstraintState


class IndexedMultiplier(Multiplier):
    r"""One multiplier per index, e.g. per training sample: :math:`\lambda_i` for constraint i.

    The constraint's value for a batch has shape ``(len(indices), *constraint_shape)`` and
    :attr:`~conopt.problem.ConstraintState.indices` names the rows. The gradient of
    ``weight`` is dense (zeros on rows not in the batch), so any optimizer (Adam included) and
    ``torch.distributed`` all-reduce work on it. Note that optimizers with momentum keep moving
    rows whose gradient is zero in a given step, exactly as they would for any parameter.

    Args:
        num_indices: How many multipliers (e.g. the dataset's size).
        init: Initial value of every multiplier.

    Example:
        >>> import torch, conopt
        >>> c = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(10))
        >>> state = conopt.ConstraintState(torch.zeros(3), indices=torch.tensor([0, 4, 9]))
        >>> c.multiplier.value(state).shape
        torch.Size([3])
    """

    gradient_reduction: ClassVar[str | None] = "sum"  # each rank owns its samples' rows

    host_checked_devices: ClassVar[frozenset[str]] = frozenset({"cpu"})
    """Device types whose indices are range-checked as soon as a step reads them (reading them
    needs no device synchronization). Indices elsewhere are clamped and checked at the step's
    one host synchronization instead (see :meth:`Multiplier.safe_state`)."""

    def __init__(self, num_indices: int, *, init: float = 0.0) -> None:
        super().__init__()
        if num_indices <= 0:
            raise ValueError(f"IndexedMultiplier needs num_indices > 0, got {num_indices}.")
        self.num_indices = num_indices
        self._init = init
        self.weight = nn.Parameter(_initial_weight(torch.Size((num_indices,)), init))

    def bind(self, constraint_shape: torch.Size, *, nonnegative: bool) -> None:  # noqa: D102
        super().bind(constraint_shape, nonnegative=nonnegative)
        shape = torch.Size((self.num_indices, *constraint_shape))
        if self.weight.shape != shape:
            self.weight = nn.Parameter(_initial_weight(shape, self._init))
        if nonnegative and self._init < 0:
            raise ValueError("An inequality multiplier must be initialized non-negative.")

    def _indices(self, state: ConstraintState | None) -> torch.Tensor:
        if state is None or state.indices is None:
            raise ValueError("an IndexedMultiplier needs ConstraintState(indices=...).")
        return state.indices

    def value(self, state: ConstraintState | None) -> torch.Tensor:  # noqa: D102
        return self.weight.index_select(0, self._indices(state).reshape(-1))

    def safe_state(  # noqa: D102
        self, state: ConstraintState
    ) -> tuple[ConstraintState, torch.Tensor | None]:
        indices = self._indices(state)
        if indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"the indices of an IndexedMultiplier must be an int64 or int32 tensor, got "
                f"{indices.dtype}."
            )
        if indices.device.type in self.host_checked_devices:
            # Reading host indices synchronizes nothing: refuse bad ones right away.
            if indices.numel():
                low, high = torch.aminmax(indices)
                if low.item() < 0 or high.item() >= self.num_indices:
                    raise ValueError(f"{self.state_error(state)}; the step was refused.")
            return state, None
        # Clamped, device indices are safe to read the weight with (on CUDA an index out of
        # range would kill the process); whether any was clamped is read at the step's one host
        # synchronization, where the step is refused.
        safe = indices.clamp(0, self.num_indices - 1)
        return replace(state, indices=safe), (safe != indices).any()

    def state_error(self, state: ConstraintState) -> str | None:  # noqa: D102
        indices = self._indices(state).reshape(-1)
        outside = indices[(indices < 0) | (indices >= self.num_indices)]
        if outside.numel() == 0:
            return None
        return (
            f"indices must be in [0, {self.num_indices}) (the IndexedMultiplier's num_indices), "
            f"got {outside.numel()} outside it: {outside[:5].tolist()}"
            f"{' ...' if outside.numel() > 5 else ''}"
        )

    def expected_shape(self, state: ConstraintState) -> torch.Size:  # noqa: D102
        return torch.Size((self._indices(state).numel(), *self.constraint_shape))

    def projection_targets(self) -> list[torch.Tensor]:  # noqa: D102
        return [self.weight] if self.nonnegative else []

    def add_dual_gradient_(  # noqa: D102
        self, state: ConstraintState | None, direction: torch.Tensor
    ) -> None:
        rows = self._indices(state).reshape(-1)
        if self.weight.grad is None:
            self.weight.grad = torch.zeros_like(self.weight)
        direction = direction.to(self.weight.dtype).reshape(rows.numel(), *self.constraint_shape)
        self.weight.grad.index_add_(0, rows, direction)

    def restart_(  # noqa: D102
        self, state: ConstraintState, feasible: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        rows = self._indices(state).reshape(-1)
        tensors = [self.weight, *_same_shape_state(optimizer, self.weight)]
        with torch.no_grad():
            if self.synchronized and distributed.world_size() > 1:
                # Other ranks reset other rows: combine the rows to reset, as a 0/1 mask.
                reset = torch.zeros_like(self.weight)
                reset.index_put_((rows,), feasible.to(reset.dtype))
                distributed.all_reduce_max_(reset)
                for tensor in tensors:
                    tensor.masked_fill_(reset > 0, 0.0)
                return
            for tensor in tensors:
                tensor.index_put_((rows,), tensor.index_select(0, rows).masked_fill(feasible, 0.0))
