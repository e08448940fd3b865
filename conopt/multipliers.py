r"""Lagrange multipliers as ordinary ``nn.Module``\ s with ``nn.Parameter`` weights.

Any ``torch.optim`` optimizer built with ``maximize=True`` drives them (gradient *ascent* on the
Lagrangian). After each dual step the constrained optimizer projects inequality multipliers onto
:math:`\lambda \ge 0`.

* :class:`DenseMultiplier`: one multiplier per entry of the constraint.
* :class:`IndexedMultiplier`: one multiplier per index (for example per training sample), of
  which each evaluation uses the rows named by :attr:`ConstraintState.indices
  <conopt.problem.ConstraintState.indices>`. Its gradient is dense (zeros for unused rows), so
  it works with Adam and with ``torch.distributed`` all-reduce.
* :class:`ImplicitMultiplier`: a model predicting multipliers from features.

Dense and indexed multipliers are created in the default dtype and follow their constraints'
values: the first step whose values (promoted to at least ``float32``) are wider than a
multiplier widens it, with its gradient and its dual optimizer state, before the multiplier's
gradient is written (see :meth:`Multiplier.follow_dtype_`). A multiplier is never narrowed, and
loading a wider ``state_dict`` widens it too, so a resumed run continues in the same dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from conopt import distributed

if TYPE_CHECKING:
    from conopt.problem import ConstraintState


_DTYPE_EPOCH = [0]
"""Counts the changes of any multiplier's dtype (see :func:`dtype_epoch`)."""


def dtype_epoch() -> int:
    """A number that changes whenever the parameters of some multiplier may have changed dtype.

    It changes on :meth:`Multiplier.follow_dtype_`, ``Module.to()`` (and ``double()``,
    ``cuda()``, ...) and when a ``state_dict`` widens a multiplier: what the hot path caches
    about the multipliers' dtypes is valid while it stays the same.

    Returns:
        The current epoch.
    """
    return _DTYPE_EPOCH[0]


def _new_dtype_epoch() -> None:
    _DTYPE_EPOCH[0] += 1


def _widen_(
    param: torch.Tensor, dtype: torch.dtype, optimizer: torch.optim.Optimizer | None
) -> bool:
    """Cast ``param`` (and its gradient) to the wider ``dtype``; return whether it changed.

    The floating-point state that ``optimizer`` keeps for ``param`` (momentum, moments, ...),
    when narrower than ``dtype``, is cast too; the ``step`` counter keeps its dtype, as torch's
    ``Optimizer.load_state_dict`` keeps it. Widening is exact: no value changes.
    """
    changed = param.dtype != dtype
    with torch.no_grad():
        if changed:
            param.data = param.data.to(dtype)
            if param.grad is not None:
                param.grad = param.grad.to(dtype)
        state = None if optimizer is None else optimizer.state.get(param)
        for key, value in list((state or {}).items()):
            if (
                key != "step"
                and isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and value.dtype != dtype
                and torch.promote_types(value.dtype, dtype) == dtype
            ):
                state[key] = value.to(dtype)  # type: ignore[index]
    return changed


class Multiplier(nn.Module):
    """Base class of multipliers. A constraint calls :meth:`bind` once with its shape and kind."""

    supports_restarts: ClassVar[bool] = True
    """Whether :meth:`restart_` can reset individual entries (dual restarts)."""

    gradient_reduction: ClassVar[str | None] = None
    """Under ``torch.distributed``: ``None`` when the constraint's *values* are all-reduced
    before the dual update (multipliers shared by all samples); ``"sum"`` or ``"mean"`` when the
    multiplier's *gradient* is all-reduced instead (per-sample and implicit multipliers)."""

    explicit_gradient: ClassVar[bool] = True
    """Whether the dual gradient is written by :meth:`add_dual_gradient_` in closed form
    (``True``), rather than obtained by backpropagating through :meth:`value`."""

    def __init__(self) -> None:
        super().__init__()
        self.nonnegative = False
        self.bound = False
        self.synchronized = True  # across torch.distributed ranks; see Constraint(reduction=...)
        self.constraint_shape = torch.Size()

    def bind(self, constraint_shape: torch.Size, *, nonnegative: bool) -> None:
        """Attach to a constraint of ``constraint_shape`` (an inequality if ``nonnegative``)."""
        if self.bound:
            raise ValueError(
                f"this {type(self).__name__} already belongs to another constraint; "
                "create one multiplier object per constraint."
            )
        self.bound = True
        self.constraint_shape = torch.Size(constraint_shape)
        self.nonnegative = nonnegative

    def value(self, state: ConstraintState | None) -> torch.Tensor:
        """The multiplier for one evaluation, shaped like ``state.value``.

        ``state`` is ``None`` when the constraint's value was given as a plain tensor.
        """
        raise NotImplementedError

    def expected_shape(self, state: ConstraintState) -> torch.Size:
        """The shape ``state.value`` must have for this multiplier."""
        raise NotImplementedError

    def projection_targets(self) -> list[torch.Tensor]:
        """Parameters to clamp at zero after each dual step (empty for equality multipliers)."""
        return []

    def safe_state(self, state: ConstraintState) -> tuple[ConstraintState, torch.Tensor | None]:
        """``state`` made safe to read this multiplier with, without a host synchronization.

        Multipliers that index their weight with the state (:class:`IndexedMultiplier`) check
        host indices at once; for device indices they return a state whose indices are clamped
        into range, and a 0-d boolean tensor that is ``True`` if some were not in range: the
        caller refuses the step then, at its one host synchronization, with
        :meth:`state_error`. Others return ``(state, None)``.

        Args:
            state: The constraint's state of this step.

        Returns:
            The state to read the multiplier with, and the flag (or ``None``).

        Raises:
            ValueError: The state cannot be used (indices out of range on the host, or of a
                float dtype).
        """
        return state, None

    def state_error(self, state: ConstraintState) -> str | None:
        """What is wrong with ``state`` for this multiplier (synchronizes), or ``None``."""
        return None

    def follow_dtype_(
        self, dtype: torch.dtype, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Widen the weights to ``dtype``, the dtype of the constraint's values, if narrower.

        The weights keep their identity (the dual optimizer keeps driving them); their gradients
        and the per-parameter state of ``optimizer`` are cast alike. Weights are never narrowed.

        Args:
            dtype: The dtype the weights should have at least.
            optimizer: The dual optimizer, whose state of the weights is cast too.
        """
        changed = False
        for param in self._parameters.values():
            if param is None or not param.is_floating_point():
                continue
            if torch.promote_types(param.dtype, dtype) == dtype:
                changed = _widen_(param, dtype, optimizer) or changed
        if changed:
            _new_dtype_epoch()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # Module.to(), double(), cuda(), ...: the parameters may change dtype.
        _new_dtype_epoch()
        return super()._apply(fn, recurse)

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
        # A wider saved weight (the multiplier followed float64 values, say) widens this one
        # first, so that loading it is exact and the resumed run continues bit for bit.
        changed = False
        for name, param in self._parameters.items():
            saved = state_dict.get(prefix + name)
            if (
                param is not None
                and isinstance(saved, torch.Tensor)
                and saved.shape == param.shape
                and saved.is_floating_point()
                and param.is_floating_point()
            ):
                wider = torch.promote_types(param.dtype, saved.dtype)
                changed = _widen_(param, wider, None) or changed
        if changed:
            _new_dtype_epoch()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def add_dual_gradient_(self, state: ConstraintState | None, direction: torch.Tensor) -> None:
        r"""Accumulate the ascent ``direction`` into the weight's gradient.

        ``direction`` is shaped like the constraint's value, has the weight's dtype, and belongs
        to the caller (it may become the gradient itself).

        The gradient of :math:`\lambda^\top d` with respect to the multiplier's weight, written
        directly: it keeps the multipliers out of the autograd graph, so a hundred constraints
        add no hundred leaves to the backward pass.
        """
        raise NotImplementedError(f"{type(self).__name__} gets its gradient from autograd.")

    def restart_(
        self, state: ConstraintState, feasible: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        """Set the multipliers of strictly ``feasible`` entries, and their optimizer state, to 0.

        The optimizer state reset is the per-entry one (momentum, moments); counters such as
        Adam's ``step`` keep counting the parameter's updates.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support dual restarts.")


def _initial_weight(shape: torch.Size, init: float | torch.Tensor) -> torch.Tensor:
    weight = torch.empty(shape, dtype=torch.get_default_dtype())
    with torch.no_grad():
        weight.copy_(torch.as_tensor(init, dtype=weight.dtype).expand(shape))
    return weight


def _same_shape_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    """Per-entry state tensors (momentum, moments, ...) of ``param`` in ``optimizer``.

    The ``step`` counter of torch's optimizers counts the parameter's updates, not an entry's;
    it is left out even when it has the parameter's shape (a 0-d counter of a scalar).
    """
    return [
        buffer
        for key, buffer in optimizer.state.get(param, {}).items()
        if key != "step" and isinstance(buffer, torch.Tensor) and buffer.shape == param.shape
    ]


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
    """:meth:`DenseMultiplier.add_dual_gradient_` of several multipliers, given their weights."""
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
