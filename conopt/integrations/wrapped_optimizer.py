r"""A conopt constrained optimizer presented as one ``torch.optim.Optimizer``.

Training frameworks (Lightning's automatic optimization, ``accelerate``, the Hugging Face
``Trainer``) drive exactly one torch optimizer: they read its ``param_groups`` (to clip gradients,
unscale a ``GradScaler``'s gradients, schedule learning rates), move its ``state``, call
``zero_grad()`` and ``step()``, and save its ``state_dict()``. :class:`WrappedConstrainedOptimizer`
maps that protocol onto conopt's open step path, for the parts that every framework shares:

* :meth:`~WrappedConstrainedOptimizer.lagrangian` builds the scalar to backpropagate for one
  micro-batch, weighted for gradient accumulation, and writes the multipliers' gradients;
* :meth:`~WrappedConstrainedOptimizer.step` takes conopt's whole step (the primal optimizers'
  steps, the dual step, projections, restarts, penalty updates) from the Lagrangians built
  since the last step;
* ``param_groups`` are the primal optimizers' groups and ``state`` the primal and dual
  optimizers' per-parameter states, so that what a framework does to them reaches the wrapped
  optimizers, never a copy.

What differs between frameworks lives in the subclasses: where the multipliers are saved
(:class:`~conopt.integrations.accelerate.AccelerateConstrainedOptimizer` saves them in its
``state_dict``; Lightning saves them with the module), what ``zero_grad()`` does (Lightning calls
it in the middle of an accumulation window) and how the accumulation factor is found.

This module imports no framework.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch

from conopt.diagnostics import StepReport
from conopt.optim.constrained import ConstrainedOptimizer
from conopt.problem import ConstrainedProblem, ProblemState

__all__ = ["WrappedConstrainedOptimizer"]


class WrappedConstrainedOptimizer(torch.optim.Optimizer):
    """The framework-free part of the integrations' optimizers: both players as one optimizer.

    Subclasses set :attr:`state_format` and the class's message fragments, and add what their
    framework needs (see the module docstring).

    Args:
        optimizer: The constrained optimizer to drive; it must support the open step path
            (:class:`~conopt.optim.simultaneous.SimultaneousGDA`).

    Raises:
        TypeError: ``optimizer`` is not a conopt constrained optimizer, or has no open step
            path (the alternating and extragradient optimizers evaluate the problem more than
            once per step, where a training framework runs one forward and one backward).

    Attributes:
        constrained: The wrapped conopt optimizer.
        last_report: The report of the last step taken, ``None`` before the first.
    """

    state_format: ClassVar[str] = "conopt.integrations.wrapped_optimizer/1"
    """The ``"format"`` entry of :meth:`state_dict`, checked by :meth:`load_state_dict`."""

    # How the framework runs a step, for the refusal of an optimizer that evaluates twice.
    _one_evaluation_loop: ClassVar[str] = "a training framework runs one forward and one backward"
    # What to do when a step finds no Lagrangian (ends "... no Lagrangian to step on: <this>").
    _lagrangian_advice: ClassVar[str] = "backpropagate lagrangian(state), not the loss"
    # What a checkpoint written by this class holds, for the refusal of a foreign one.
    _saved_contents: ClassVar[str] = "dual optimizer state"

    def __init__(self, optimizer: ConstrainedOptimizer) -> None:
        name = type(self).__name__
        if not isinstance(optimizer, ConstrainedOptimizer):
            raise TypeError(
                f"{name} wraps a conopt constrained optimizer (such as "
                f"conopt.optim.SimultaneousGDA), got {type(optimizer).__name__}."
            )
        if not optimizer.supports_open_step:
            raise TypeError(
                f"{type(optimizer).__name__} evaluates the problem more than once per step, but "
                f"{self._one_evaluation_loop}; use conopt.optim.SimultaneousGDA."
            )
        self.constrained = optimizer
        self.last_report: StepReport | None = None
        self._pending = 0  # micro-batches whose Lagrangian was built since the last step
        # torch.optim.Optimizer's bookkeeping (step hooks, profiling) without parameter groups
        # of its own: ours are the primal optimizers' (see param_groups). __setstate__ is the
        # initializer torch itself uses when unpickling an optimizer.
        self.__setstate__({"defaults": dict(optimizer.primal_optimizers[0].defaults)})

    # ---------------------------------------------------------------- what frameworks read
    @property
    def problem(self) -> ConstrainedProblem:
        """The constrained problem whose multipliers the dual optimizer drives."""
        return self.constrained.problem

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The primal optimizers' parameter groups: the same dictionaries, read afresh.

        Assigning a list (as Lightning's ``BaseFinetuning`` does when it restores the groups it
        added before a checkpoint) gives the groups back to the primal optimizers: all of them to
        the only one, or, with several, as many to each as it holds now, in order.

        Raises:
            ValueError: On assignment, with several primal optimizers, the list's length is not
                their total number of groups (which optimizer a group belongs to is unknown); or
                a group holds a multiplier.
        """
        return [g for o in self.constrained.primal_optimizers for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        groups = list(groups)
        for group in groups:
            self._refuse_multipliers(group)
        primal = self.constrained.primal_optimizers
        if len(primal) == 1:
            primal[0].param_groups = groups
            return
        counts = [len(o.param_groups) for o in primal]
        if len(groups) != sum(counts):
            raise ValueError(
                f"{type(self).__name__}.param_groups was given {len(groups)} groups, but it drives "
                f"{len(primal)} primal optimizers holding {counts} groups: which optimizer each "
                "group belongs to is unknown. Assign the groups to the primal optimizers "
                "(optimizer.constrained.primal_optimizers) themselves."
            )
        start = 0
        for o, count in zip(primal, counts, strict=True):
            o.param_groups = groups[start : start + count]
            start += count

    def _refuse_multipliers(self, group: Mapping[str, Any]) -> None:
        """Refuse a parameter group holding a multiplier: only the dual optimizer steps those."""
        dual = self.constrained.dual_optimizer
        multipliers = (
            {id(p) for g in dual.param_groups for p in g["params"]} if dual is not None else set()
        )
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        found = sum(id(p) in multipliers for p in params)
        if found:
            raise ValueError(
                f"a parameter group given to {type(self).__name__} holds {found} multiplier(s); "
                "its groups are the primal optimizers', and the multipliers are stepped by the "
                "dual optimizer alone (leave them out, e.g. with primal_parameters())."
            )

    def _wrapped_optimizers(self) -> list[torch.optim.Optimizer]:
        """The primal optimizers, then the dual one if there is one."""
        optimizers = list(self.constrained.primal_optimizers)
        if self.constrained.dual_optimizer is not None:
            optimizers.append(self.constrained.dual_optimizer)
        return optimizers

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        """The per-parameter states of the primal and dual optimizers, in one new dictionary.

        Its values are the optimizers' own state dictionaries, so that moving their tensors in
        place (as Lightning does to bring a restored state to the device) moves theirs.
        Assigning a mapping (as ``accelerate``'s ``AcceleratedOptimizer.state`` setter and
        ``torch.optim.swap_in_optimizer_params_and_state`` do) gives each wrapped optimizer the
        entries of its own parameters, and only those: an optimizer whose parameters the
        mapping leaves out ends with an empty state.

        Raises:
            ValueError: On assignment, a key of the mapping is not a parameter of the primal or
                dual optimizers (its state would be dropped without a word).
        """
        return {p: s for o in self._wrapped_optimizers() for p, s in o.state.items()}

    @state.setter
    def state(self, state: Mapping[torch.Tensor, Any]) -> None:
        optimizers = self._wrapped_optimizers()
        owner = {
            id(p): index
            for index, o in enumerate(optimizers)
            for group in o.param_groups
            for p in group["params"]
        }
        strays = [k for k in state if id(k) not in owner]
        if strays:
            shapes = [tuple(k.shape) if isinstance(k, torch.Tensor) else type(k) for k in strays]
            raise ValueError(
                f"{type(self).__name__}.state was given entries for {len(strays)} key(s) (shapes "
                f"{shapes}) that are not parameters of its primal or dual optimizers; expected "
                "a mapping from those optimizers' parameters to their states."
            )
        split: list[defaultdict[torch.Tensor, Any]] = [defaultdict(dict) for _ in optimizers]
        for parameter, entry in state.items():
            split[owner[id(parameter)]][parameter] = entry
        for o, entries in zip(optimizers, split, strict=True):
            o.state = entries

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the primal torch optimizer (for example unfrozen layers).

        Lightning's ``BaseFinetuning.unfreeze_and_add_param_group`` calls it. The group's unset
        options take the primal optimizer's defaults.

        Args:
            param_group: The group to add: ``{"params": ..., **options}``.

        Raises:
            ValueError: The group holds a multiplier, or a parameter the primal optimizer
                already has (as ``torch.optim.Optimizer.add_param_group`` refuses).
            TypeError: The wrapped optimizer has several primal optimizers: which one is meant
                is unknown.
        """
        if isinstance(param_group.get("params"), Iterator):  # read twice below: keep it
            param_group = {**param_group, "params": list(param_group["params"])}
        self._refuse_multipliers(param_group)
        primal = self.constrained.primal_optimizers
        if len(primal) != 1:
            raise TypeError(
                f"{type(self).__name__} drives {len(primal)} primal optimizers, so which one a "
                "new parameter group belongs to is unknown; add it to one of "
                "optimizer.constrained.primal_optimizers itself."
            )
        primal[0].add_param_group(param_group)

    # ------------------------------------------------------------------------------ the step
    def lagrangian(self, state: ProblemState, accumulation: int = 1) -> torch.Tensor:
        """The scalar to backpropagate for one micro-batch: conopt's Lagrangian for ``state``.

        Writes the multipliers' gradients (see
        :meth:`~conopt.optim.constrained.ConstrainedOptimizer.lagrangian`). Under gradient
        accumulation over ``accumulation`` micro-batches, the state is weighted by
        ``1/accumulation`` (:meth:`~conopt.problem.ProblemState.scaled`), so that the dual step,
        restarts, penalty updates and report use the window's mean, and the result is
        multiplied back, since the framework divides the backpropagated scalar by the same
        number: the primal gradients are those of conopt's own accumulation.

        Args:
            state: The problem's state on this micro-batch.
            accumulation: The number of micro-batches of an accumulation window.

        Returns:
            The scalar whose backward pass gives the primal gradients.

        Raises:
            ValueError: ``accumulation`` is below 1.
        """
        if accumulation < 1:
            raise ValueError(f"accumulation must be at least 1, got {accumulation}.")
        weighted = state if accumulation == 1 else state.scaled(1.0 / accumulation)
        objective = self.constrained.lagrangian(weighted)
        self._pending += 1
        return objective if accumulation == 1 else objective * accumulation

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the primal gradients; the multipliers' are cleared by each step.

        Args:
            set_to_none: Set the gradients to ``None`` instead of zeros.
        """
        for optimizer in self.constrained.primal_optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def _drop_window(self, set_to_none: bool = True) -> None:
        """Forget the Lagrangians built since the last step, with both players' gradients."""
        self._pending = 0
        self.constrained.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run ``closure``, then step both players from the Lagrangians built since the last step.

        Args:
            closure: Run first, if given (re-evaluates and backpropagates the Lagrangian).

        Returns:
            What ``closure`` returned, or ``None``.

        Raises:
            RuntimeError: No Lagrangian was built since the last step (the scalar given to
                ``backward`` was not :meth:`lagrangian`'s result).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending == 0:
            return self._step_without_lagrangian(closure, loss)
        self._apply()
        return loss

    def _step_without_lagrangian(self, closure: Callable[[], Any] | None, loss: Any) -> Any:
        """What ``step`` does when no Lagrangian was built: refuse, naming the remedy."""
        raise RuntimeError(
            f"no Lagrangian to step on: {self._lagrangian_advice}, or the multipliers would "
            "never take their dual step."
        )

    def _apply(self) -> None:
        """Both players' step from the accumulated gradients; clears the multipliers' gradients."""
        self._pending = 0
        self.last_report = self.constrained.apply()
        if self.constrained.dual_optimizer is not None:
            self.constrained.dual_optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The primal and dual optimizers' states and the step counters.

        Returns:
            ``{"format": state_format, "constrained": ...}``, the second entry being the
            wrapped optimizer's
            :meth:`~conopt.optim.constrained.ConstrainedOptimizer.state_dict`.
        """
        return {"format": self.state_format, "constrained": self.constrained.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state_dict: The optimizer state of a checkpoint.

        Raises:
            ValueError: ``state_dict`` was not written by this class (its ``"format"`` is not
                :attr:`state_format`: it holds none of conopt's state).
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != self.state_format:
            found = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
            raise ValueError(
                f"this optimizer state holds no conopt {self._saved_contents} (found keys "
                f"{found}, expected 'format': {self.state_format!r}): it was not written by "
                f"{type(self).__name__}. Resume from a checkpoint of the constrained run."
            )
        self._restore(state_dict)
        self._pending = 0

    def _restore(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checked :meth:`state_dict` into the wrapped optimizer."""
        self.constrained.load_state_dict(state_dict["constrained"])
