r"""The :class:`Multiplier` interface, and what multipliers with weights share.

Every multiplier kind subclasses :class:`Multiplier`. This module also keeps the dtype
bookkeeping of all multipliers (:func:`dtype_epoch`, the widening of weights, their gradients
and their dual optimizer state) and the helpers of multipliers that hold a ``weight`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

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
        """Attach to a constraint of ``constraint_shape`` (an inequality if ``nonnegative``).

        Args:
            constraint_shape: The shape of the constraint (of one sample's value, for
                per-sample multipliers).
            nonnegative: Whether the constraint is an inequality (multipliers ``>= 0``).

        Raises:
            ValueError: The multiplier already belongs to a constraint.
        """
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

        Args:
            state: The constraint's state; ``None`` when its value was given as a plain tensor.

        Returns:
            The multipliers of the evaluated entries.
        """
        raise NotImplementedError

    def expected_shape(self, state: ConstraintState) -> torch.Size:
        """The shape ``state.value`` must have for this multiplier.

        Args:
            state: The constraint's state of this step.

        Returns:
            The expected shape.
        """
        raise NotImplementedError

    def optimized_parameters(self) -> list[torch.Tensor]:
        """The parameters the dual optimizer drives for this multiplier.

        Its own parameters, or the shared weight of its pack once packed (see
        :mod:`conopt.multipliers.packed`).
        """
        return list(self.parameters())

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
        """What is wrong with ``state`` for this multiplier (synchronizes), or ``None``.

        Args:
            state: The constraint's state as given.

        Returns:
            A description of the problem, or ``None`` if the state is valid.
        """
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

        Args:
            state: The constraint's state (``None`` for a plain tensor value).
            direction: The ascent direction of the evaluated entries.
        """
        raise NotImplementedError(f"{type(self).__name__} gets its gradient from autograd.")

    def restart_(
        self, state: ConstraintState, feasible: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> None:
        """Set the multipliers of strictly ``feasible`` entries, and their optimizer state, to 0.

        The optimizer state reset is the per-entry one (momentum, moments); counters such as
        Adam's ``step`` keep counting the parameter's updates.

        Args:
            state: The constraint's state of the step.
            feasible: Which evaluated entries are strictly feasible, shaped like the value.
            optimizer: The dual optimizer.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support dual restarts.")


def _initial_weight(shape: torch.Size, init: float | torch.Tensor) -> torch.Tensor:
    """A weight of ``shape`` in the default dtype, filled with ``init`` (broadcast)."""
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
