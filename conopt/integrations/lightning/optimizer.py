r"""A conopt optimizer that Lightning's automatic optimization can drive as one torch optimizer.

Lightning's automatic optimization accepts a single ``torch.optim.Optimizer`` and, for every
optimizer step, calls ``optimizer.step(closure)``, where ``closure`` runs ``training_step``,
``optimizer.zero_grad()`` (on the first micro-batch of an accumulation window) and the
backward pass; the precision plugin runs the gradient clipping between the closure and the
update. :class:`LightningConstrainedOptimizer` maps that protocol onto conopt's open step path:

* ``training_step`` returns :meth:`LightningConstrainedOptimizer.lagrangian` of its
  :class:`~conopt.problem.ProblemState` (through
  :meth:`ConstrainedLightningModule.lagrangian
  <conopt.integrations.lightning.module.ConstrainedLightningModule.lagrangian>`), which writes
  the multipliers' closed-form gradients;
* ``zero_grad()`` clears the **primal** gradients only: Lightning calls it *after* the first
  ``training_step`` of a window, when the multipliers' gradients are already written;
* ``step(closure)`` runs the closure, then ``apply()``: the primal optimizers' steps, the dual
  step, projections, restarts and penalty updates;
* ``param_groups`` are the primal optimizers' groups (the same dictionaries): Lightning's
  gradient clipping, a ``GradScaler``'s ``unscale_`` and learning-rate schedulers act on the
  model's parameters and never on the multipliers;
* ``state_dict()`` holds the primal and dual optimizers' states and the step counters, so that
  ``Trainer.fit(ckpt_path=...)`` resumes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from conopt.diagnostics import StepReport
from conopt.optim.constrained import ConstrainedOptimizer
from conopt.problem import ConstrainedProblem, ProblemState

__all__ = ["STATE_FORMAT", "LightningConstrainedOptimizer"]

STATE_FORMAT = "conopt.integrations.lightning/1"
"""The ``"format"`` entry of :meth:`LightningConstrainedOptimizer.state_dict`."""


class LightningConstrainedOptimizer(torch.optim.Optimizer):
    """A conopt optimizer with an open step path, as the one optimizer Lightning steps.

    Return it from ``configure_optimizers`` (alone, in a list, or as the ``"optimizer"`` of a
    dictionary with a learning-rate scheduler built on it). The multipliers' dual step happens in
    the same ``step()`` as the primal one, so Lightning's optimizer-step count, gradient
    accumulation, clipping and checkpoints cover both players.

    Args:
        optimizer: The constrained optimizer to drive; it must support the open step path
            (:class:`~conopt.optim.simultaneous.SimultaneousGDA`).

    Raises:
        TypeError: ``optimizer`` is not a conopt constrained optimizer, or has no open step
            path (the alternating and extragradient optimizers evaluate the problem more than
            once per step, which Lightning's one ``training_step`` per step cannot do).

    Attributes:
        constrained: The wrapped conopt optimizer.
        last_report: The report of the last step taken, ``None`` before the first.
    """

    def __init__(self, optimizer: ConstrainedOptimizer) -> None:
        if not isinstance(optimizer, ConstrainedOptimizer):
            raise TypeError(
                "LightningConstrainedOptimizer wraps a conopt constrained optimizer (such as "
                f"conopt.optim.SimultaneousGDA), got {type(optimizer).__name__}."
            )
        if not optimizer.supports_open_step:
            raise TypeError(
                f"{type(optimizer).__name__} evaluates the problem more than once per step, but "
                "Lightning's automatic optimization runs one training_step and one backward per "
                "step; use conopt.optim.SimultaneousGDA."
            )
        self.constrained = optimizer
        self.last_report: StepReport | None = None
        self._pending = 0  # micro-batches whose Lagrangian was built since the last step
        self._stepped = False  # a step was applied and not yet collected by finish_step()
        # torch.optim.Optimizer's bookkeeping (step hooks, profiling) without parameter groups
        # of its own: ours are the primal optimizers' (see param_groups). __setstate__ is the
        # initializer torch itself uses when unpickling an optimizer.
        self.__setstate__({"defaults": dict(optimizer.primal_optimizers[0].defaults)})

    # ------------------------------------------------------------------ what Lightning reads
    @property
    def problem(self) -> ConstrainedProblem:
        """The constrained problem whose multipliers the dual optimizer drives."""
        return self.constrained.problem

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The primal optimizers' parameter groups: the same dictionaries, read afresh."""
        return [g for o in self.constrained.primal_optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        """The per-parameter states of the primal and dual optimizers, in one new dictionary.

        Its values are the optimizers' own state dictionaries, so that moving their tensors in
        place (as Lightning does to bring a restored state to the device) moves theirs.
        """
        optimizers = list(self.constrained.primal_optimizers)
        if self.constrained.dual_optimizer is not None:
            optimizers.append(self.constrained.dual_optimizer)
        return {p: s for o in optimizers for p, s in o.state.items()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused: add parameter groups to the primal (or dual) torch optimizer itself.

        Args:
            param_group: The group that was to be added.

        Raises:
            TypeError: Always.
        """
        raise TypeError(
            "LightningConstrainedOptimizer has no parameter groups of its own; add the group "
            "to the primal torch optimizer (or the dual one) that it drives."
        )

    # ------------------------------------------------------------------------- the step
    def lagrangian(self, state: ProblemState, accumulation: int = 1) -> torch.Tensor:
        """The scalar ``training_step`` returns: conopt's Lagrangian for ``state``.

        Writes the multipliers' gradients (see
        :meth:`~conopt.optim.constrained.ConstrainedOptimizer.lagrangian`). Under gradient
        accumulation over ``accumulation`` micro-batches, the state is weighted by
        ``1/accumulation`` (:meth:`~conopt.problem.ProblemState.scaled`), so that the dual step,
        restarts, penalty updates and report use the window's mean, and the result is
        multiplied back, since Lightning divides what ``training_step`` returns by the same
        number: the primal gradients are those of conopt's own accumulation.

        Args:
            state: The problem's state on this micro-batch.
            accumulation: Lightning's ``accumulate_grad_batches``.

        Returns:
            The scalar to return from ``training_step``.

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

        Lightning calls this after the first ``training_step`` of an accumulation window,
        between :meth:`lagrangian` (which wrote the multipliers' gradients) and the backward
        pass.

        Args:
            set_to_none: Set the gradients to ``None`` instead of zeros.
        """
        for optimizer in self.constrained.primal_optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run ``closure`` (``training_step`` and backward), then step both players.

        Args:
            closure: Lightning's closure; ``None`` when its precision plugin already ran it
                (a ``GradScaler`` found the gradients finite) or under manual optimization.

        Returns:
            What ``closure`` returned (Lightning's loss), or ``None``.

        Raises:
            RuntimeError: No Lagrangian was built since the last step: ``training_step``
                returned something other than :meth:`lagrangian`'s result.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending == 0:
            if closure is not None and loss is None:
                return None  # training_step returned None: Lightning skips the step
            raise RuntimeError(
                "no Lagrangian to step on: training_step must return self.lagrangian(state) "
                "(ConstrainedLightningModule), not its own loss, or the multipliers would never "
                "take their dual step."
            )
        self._pending = 0
        self.last_report = self.constrained.apply()
        if self.constrained.dual_optimizer is not None:
            self.constrained.dual_optimizer.zero_grad(set_to_none=True)
        self._stepped = True
        return loss

    def finish_step(self) -> StepReport | None:
        """Close Lightning's optimizer step: the report of the step taken, if one was.

        When no step was taken although Lightning attempted one (its ``GradScaler`` found
        non-finite gradients and skipped ``step()``), what the window accumulated is dropped,
        both players' gradients included, so that the next window starts clean.

        Returns:
            The report of the step just taken, or ``None`` if it was skipped.
        """
        if self._stepped:
            self._stepped = False
            return self.last_report
        if self._pending:
            self._pending = 0
            self.constrained.zero_grad()
        return None

    # --------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The primal and dual optimizers' states and the step counters.

        Returns:
            ``{"format": STATE_FORMAT, "constrained": ...}``, the second entry being the wrapped
            optimizer's :meth:`~conopt.optim.constrained.ConstrainedOptimizer.state_dict`.
        """
        return {"format": STATE_FORMAT, "constrained": self.constrained.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state_dict: The optimizer state of a checkpoint.

        Raises:
            ValueError: ``state_dict`` was not written by a ``LightningConstrainedOptimizer``
                (it holds no dual optimizer state).
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != STATE_FORMAT:
            found = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
            raise ValueError(
                "this optimizer state holds no conopt dual optimizer state (found keys "
                f"{found}, expected 'format': {STATE_FORMAT!r}): it was not written by a "
                "LightningConstrainedOptimizer. Resume from a checkpoint of the constrained run."
            )
        self.constrained.load_state_dict(state_dict["constrained"])
        self._pending, self._stepped = 0, False
