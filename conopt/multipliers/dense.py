r"""Dense multipliers: one multiplier per entry of the constraint, read and restarted in bulk.

Besides :class:`DenseMultiplier`, the functions :func:`restart_dense_` and
:func:`add_dense_gradients_` act on the weights of many dense multipliers at once, for the
vectorized paths of the constrained optimizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from conopt.multipliers.base import (
    Multiplier,
    _initial_weight,
    _new_dtype_epoch,
    _same_shape_state,
    _widen_,
)
from conopt.multipliers.packed import MultiplierPack, restart_slice_

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

    @property
    def weight(self) -> torch.Tensor:
        """The multipliers: an ``nn.Parameter``, or a view of its pack's weight once packed."""
        param = self._parameters.get("weight")
        if param is not None:
            return param
        pack = self.__dict__.get("_pack")
        if pack is None:
            raise AttributeError(f"{type(self).__name__} has no weight")
        start, stop = self.__dict__["_slice"]
        return pack.weight[start:stop].view(self.constraint_shape)

    @property
    def pack(self) -> MultiplierPack | None:
        """The :class:`~conopt.multipliers.packed.MultiplierPack` holding the weight, if any."""
        return self.__dict__.get("_pack")

    def pack_into_(self, pack: MultiplierPack) -> None:
        """Drop the own parameter: from now on the weight is a view of ``pack``'s slice.

        Args:
            pack: The pack, which already holds this multiplier's values.
        """
        self.__dict__["_slice"] = pack.slice_of(self)
        self.__dict__["_pack"] = pack
        del self._parameters["weight"]

    def optimized_parameters(self) -> list[torch.Tensor]:  # noqa: D102
        pack = self.pack
        return list(self.parameters()) if pack is None else [pack.weight]

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
        param = self._parameters.get("weight")  # hot path: no property, no __getattr__
        return self.weight if param is None else param

    def expected_shape(self, state: ConstraintState) -> torch.Size:  # noqa: D102
        return self.constraint_shape

    def projection_targets(self) -> list[torch.Tensor]:  # noqa: D102
        return self.optimized_parameters() if self.nonnegative else []

    def add_dual_gradient_(  # noqa: D102
        self, state: ConstraintState | None, direction: torch.Tensor
    ) -> None:
        pack = self.pack
        if pack is None:
            add_dense_gradients_([self.weight], [direction])
            return
        start, stop = self.__dict__["_slice"]
        add_pack_gradient_(pack, start, stop, direction)

    def restart_(  # noqa: D102
        self, state: ConstraintState, feasible: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        pack = self.pack
        if pack is None:
            restart_dense_([self.weight], feasible, optimizer)
        else:
            restart_slice_(pack, *self.__dict__["_slice"], feasible, optimizer)

    def follow_dtype_(  # noqa: D102
        self, dtype: torch.dtype, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        pack = self.pack
        if pack is None:
            super().follow_dtype_(dtype, optimizer)
        elif torch.promote_types(pack.weight.dtype, dtype) == dtype:
            if _widen_(pack.weight, dtype, optimizer):  # the whole pack: one dtype
                _new_dtype_epoch()

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.pack is not None:  # the same key as unpacked: checkpoints load either way
            destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        pack = self.pack
        if pack is None:
            args = (strict, missing_keys, unexpected_keys, error_msgs)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)
            return
        key = prefix + "weight"
        saved = state_dict.get(key)
        if not isinstance(saved, torch.Tensor):
            missing_keys.append(key)
            return
        if saved.shape != self.constraint_shape:
            error_msgs.append(
                f"size mismatch for {key}: copying a param with shape {tuple(saved.shape)}, "
                f"the shape in the current model is {tuple(self.constraint_shape)}."
            )
            return
        if saved.is_floating_point():
            self.follow_dtype_(saved.dtype)  # a wider saved weight widens the pack
        with torch.no_grad():
            self.weight.copy_(saved)


def add_pack_gradient_(
    pack: MultiplierPack, start: int, stop: int, direction: torch.Tensor
) -> None:
    """Accumulate ``direction`` into the gradient of the pack's entries ``start:stop``.

    Args:
        pack: The pack.
        start: First entry.
        stop: One past the last entry.
        direction: The ascent direction of those entries (any shape of ``stop - start``
            entries); it may become the gradient itself when it covers the whole pack.
    """
    flat = direction.reshape(-1)
    grad = pack.weight.grad
    if grad is None:
        if start == 0 and stop == pack.weight.numel():
            pack.weight.grad = flat
            return
        grad = pack.weight.grad = torch.zeros_like(pack.weight)
    grad[start:stop].add_(flat)
