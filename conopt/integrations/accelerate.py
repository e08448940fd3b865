r"""Constraints in a training loop run by Hugging Face ``accelerate``.

Three additions to an existing ``accelerate`` loop (see the how-to *Constraints in an accelerate
loop*):

1. wrap a :class:`~conopt.optim.simultaneous.SimultaneousGDA` in an
   :class:`AccelerateConstrainedOptimizer` and give that to ``accelerator.prepare`` in place of
   the torch optimizer;
2. call ``accelerator.backward(constrained.lagrangian(state))`` instead of
   ``accelerator.backward(loss)``;
3. keep ``optimizer.step()`` and ``optimizer.zero_grad()`` as they are: the step is conopt's
   whole step, primal and dual.

**Why a torch optimizer.** ``accelerator.prepare`` wraps every ``torch.optim.Optimizer`` it is
given in its ``AcceleratedOptimizer``, which is what makes gradient accumulation
(``accelerator.accumulate`` turns ``step()`` and ``zero_grad()`` into no-ops until the window
closes), mixed precision (a ``GradScaler`` around ``step()``) and checkpoints
(``accelerator.save_state``) work. A conopt optimizer that *is* a torch optimizer, whose
``param_groups`` are the model's and whose ``step()`` also takes the dual step, gets all of it.
Its ``state_dict`` carries the multipliers with the optimizers' states, because under
``accelerate`` (and the Hugging Face ``Trainer``, which runs on it) the problem is not part of
the model: DDP never sees the multipliers (conopt keeps them identical on every rank from
all-reduced constraint values, :mod:`conopt.distributed`), and the model's saved weights stay
those of the model alone.

Needs ``accelerate``: ``pip install torch-conopt[accelerate]``.
"""

from __future__ import annotations

try:
    from accelerate.state import GradientState
except ImportError as error:  # pragma: no cover - exercised with accelerate hidden
    raise ImportError(
        "conopt.integrations.accelerate needs the 'accelerate' package, which is not "
        "installed: pip install torch-conopt[accelerate]"
    ) from error

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from conopt.integrations.wrapped_optimizer import WrappedConstrainedOptimizer
from conopt.optim.constrained import ConstrainedOptimizer
from conopt.problem import ProblemState

__all__ = ["STATE_FORMAT", "AccelerateConstrainedOptimizer"]

STATE_FORMAT = "conopt.integrations.accelerate/1"
"""The ``"format"`` entry of :meth:`AccelerateConstrainedOptimizer.state_dict`."""


class AccelerateConstrainedOptimizer(WrappedConstrainedOptimizer):
    """A conopt optimizer as one torch optimizer, for ``accelerator.prepare`` (and HF's Trainer).

    ``step()`` takes conopt's whole step (primal optimizers, dual step, projections, restarts,
    penalty updates) from the gradients of the Lagrangians built by :meth:`lagrangian` since
    the last step; ``param_groups`` are the primal optimizers' (so gradient clipping, a
    ``GradScaler``'s unscaling and learning-rate schedulers act on the model, never on the
    multipliers); ``state_dict()`` holds the multipliers, both players' optimizer states and
    the step counters.

    Args:
        optimizer: The :class:`~conopt.optim.simultaneous.SimultaneousGDA` to drive.

    Raises:
        TypeError: ``optimizer`` is refused as by
            :class:`~conopt.integrations.wrapped_optimizer.WrappedConstrainedOptimizer`: it is
            not one that an accelerate loop or the ``Trainer`` can step once per forward and
            backward.
    """

    state_format: ClassVar[str] = STATE_FORMAT
    """The ``"format"`` entry of :meth:`state_dict`: :data:`STATE_FORMAT`."""

    _one_evaluation_loop = (
        "an accelerate (or Trainer) loop runs one forward and one backward per micro-batch"
    )
    _lagrangian_advice = (
        "backpropagate AccelerateConstrainedOptimizer.lagrangian(state), not the loss"
    )
    _saved_contents = "multipliers or dual optimizer state"

    def __init__(self, optimizer: ConstrainedOptimizer) -> None:
        super().__init__(optimizer)
        self._window = 1  # the accumulation that the pending micro-batches declared

    def lagrangian(self, state: ProblemState, accumulation: int | None = None) -> torch.Tensor:
        """The scalar to give ``accelerator.backward``: conopt's Lagrangian for ``state``.

        Writes the multipliers' gradients. Under gradient accumulation over ``accumulation``
        micro-batches, the state is weighted by ``1/accumulation`` (so that the dual step,
        restarts, penalty updates and report use the window's mean) and the result multiplied
        back, since ``accelerator.backward`` (or the ``Trainer``) divides by the same number:
        the primal gradients are those of conopt's own accumulation.

        Args:
            state: The problem's state on this micro-batch.
            accumulation: The number of micro-batches of a window; ``None``: accelerate's
                ``gradient_accumulation_steps`` (what ``accelerator.backward`` divides by).

        Returns:
            The scalar whose backward pass gives the primal gradients.

        Raises:
            ValueError: ``accumulation`` is below 1.
            RuntimeError: More micro-batches than a window holds were added without a
                ``step()``: the dual step is being skipped (``step()`` is not called on this
                optimizer, or on the ``AcceleratedOptimizer`` that wraps it).
        """
        if accumulation is None:
            accumulation = GradientState().num_steps
        if accumulation >= 1 and self._pending >= max(accumulation, self._window):
            raise RuntimeError(
                f"{self._pending} micro-batches were added since the last step, more than a "
                f"window of {accumulation}: step() of the AccelerateConstrainedOptimizer (or of "
                "what accelerator.prepare returned for it) is not being called, so the "
                "multipliers would never take their dual step. Step it, not the primal "
                "torch optimizer."
            )
        objective = super().lagrangian(state, accumulation)
        self._window = accumulation
        return objective

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the primal gradients, and drop a window whose step was skipped.

        ``accelerate`` calls it at the end of each accumulation window (after ``step()``). If
        the window's step did not happen (a ``GradScaler`` found non-finite gradients), the
        Lagrangians it accumulated are dropped with both players' gradients, so that the next
        window starts clean.

        Args:
            set_to_none: Set the gradients to ``None`` instead of zeros.
        """
        if self._pending:
            self._drop_window(set_to_none=set_to_none)
        else:
            super().zero_grad(set_to_none=set_to_none)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The multipliers, both players' optimizer states and the step counters.

        Returns:
            ``{"format": STATE_FORMAT, "constrained": ..., "problem": ...}``: the wrapped
            optimizer's :meth:`~conopt.optim.constrained.ConstrainedOptimizer.state_dict` and
            the problem's ``state_dict`` (multipliers, penalty coefficients). Under
            ``accelerate`` the problem is not part of the model, so its optimizer state is
            where the multipliers are saved.
        """
        return {**super().state_dict(), "problem": self.problem.state_dict()}

    def _restore(self, state_dict: Mapping[str, Any]) -> None:
        """Load the multipliers, then the wrapped optimizer; forget the window's size."""
        self.problem.load_state_dict(state_dict["problem"])
        super()._restore(state_dict)
        self._window = 1
