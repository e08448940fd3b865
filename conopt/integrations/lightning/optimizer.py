r"""A conopt optimizer that Lightning's automatic optimization can drive as one torch optimizer.

Lightning's automatic optimization accepts a single ``torch.optim.Optimizer`` and, for every
optimizer step, calls ``optimizer.step(closure)``, where ``closure`` runs ``training_step``,
``optimizer.zero_grad()`` (on the first micro-batch of an accumulation window) and the
backward pass; the precision plugin runs the gradient clipping between the closure and the
update. :class:`LightningConstrainedOptimizer` maps that protocol onto conopt's open step path:

* ``training_step`` returns
  :meth:`~conopt.integrations.wrapped_optimizer.WrappedConstrainedOptimizer.lagrangian` of its
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
from typing import Any, ClassVar

from conopt.diagnostics import StepReport
from conopt.integrations.wrapped_optimizer import WrappedConstrainedOptimizer
from conopt.optim.constrained import ConstrainedOptimizer

__all__ = ["STATE_FORMAT", "LightningConstrainedOptimizer"]

STATE_FORMAT = "conopt.integrations.lightning/1"
"""The ``"format"`` entry of :meth:`LightningConstrainedOptimizer.state_dict
<conopt.integrations.wrapped_optimizer.WrappedConstrainedOptimizer.state_dict>`."""


class LightningConstrainedOptimizer(WrappedConstrainedOptimizer):
    """A conopt optimizer with an open step path, as the one optimizer Lightning steps.

    Return it from ``configure_optimizers`` (alone, in a list, or as the ``"optimizer"`` of a
    dictionary with a learning-rate scheduler built on it). The multipliers' dual step happens in
    the same ``step()`` as the primal one, so Lightning's optimizer-step count, gradient
    accumulation, clipping and checkpoints cover both players. ``training_step`` returns the
    result of :meth:`~conopt.integrations.wrapped_optimizer.WrappedConstrainedOptimizer.lagrangian`
    with ``accumulation`` set to Lightning's ``accumulate_grad_batches``
    (:class:`~conopt.integrations.lightning.module.ConstrainedLightningModule` does it);
    ``zero_grad()`` clears the primal gradients only, since Lightning calls it after the first
    ``training_step`` of a window, when the multipliers' gradients are already written. The
    multipliers are saved with the module, not in the optimizer's ``state_dict()``.

    Args:
        optimizer: The :class:`~conopt.optim.simultaneous.SimultaneousGDA` to drive.

    Raises:
        TypeError: ``optimizer`` is refused as by
            :class:`~conopt.integrations.wrapped_optimizer.WrappedConstrainedOptimizer`: it is
            not one that Lightning's automatic optimization can step once per forward and backward.
    """

    state_format: ClassVar[str] = STATE_FORMAT
    """The ``"format"`` entry of its ``state_dict()``: :data:`STATE_FORMAT`."""

    _one_evaluation_loop = (
        "Lightning's automatic optimization runs one training_step and one backward per step"
    )
    _lagrangian_advice = (
        "training_step must return self.lagrangian(state) (ConstrainedLightningModule), not its "
        "own loss"
    )

    def __init__(self, optimizer: ConstrainedOptimizer) -> None:
        super().__init__(optimizer)
        self._stepped = False  # a step was applied and not yet collected by finish_step()

    def _step_without_lagrangian(self, closure: Callable[[], Any] | None, loss: Any) -> Any:
        """Lightning skips the step when ``training_step`` returned ``None``; else refuse."""
        if closure is not None and loss is None:
            return None
        return super()._step_without_lagrangian(closure, loss)

    def _apply(self) -> None:
        """Both players' step, remembered for :meth:`finish_step`."""
        super()._apply()
        self._stepped = True

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
            self._drop_window()
        return None

    def _restore(self, state_dict: Mapping[str, Any]) -> None:
        """Load the wrapped optimizer; no step is left to collect."""
        super()._restore(state_dict)
        self._stepped = False
