"""The state that a constrained optimizer holds between the start of a step and its update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conopt.diagnostics import GradientNorm
    from conopt.optim.assembled import AssembledLagrangian


@dataclass(slots=True)
class OpenStep:
    """What a constrained optimizer holds while a step is open, instead of loose attributes.

    :meth:`~conopt.optim.constrained.ConstrainedOptimizer.lagrangian` adds each micro-batch's
    assembly (:meth:`add`), ``apply()`` takes the step's (:meth:`take`), and ``zero_grad()``
    clears it all (:meth:`clear`) when the next step starts.

    Attributes:
        assembled: The step's assembly so far: the first micro-batch's, with the values of the
            later ones accumulated into it; ``None`` before the first, or once refused.
        refused: A micro-batch of the step was refused (not finite, with
            ``on_nonfinite="skip"``): the whole step is skipped.
        gradient: The primal gradients whose norm the last report offers as its stationarity;
            released (no longer computable unless already read) when the next step starts.
    """

    assembled: AssembledLagrangian | None = None
    refused: bool = False
    gradient: GradientNorm | None = None

    @property
    def empty(self) -> bool:
        """Whether no micro-batch has been added since the step opened."""
        return self.assembled is None and not self.refused

    def add(self, assembled: AssembledLagrangian | None) -> bool:
        """Add one micro-batch's assembly, ``None`` for a refused one; one refusal is final.

        Args:
            assembled: The micro-batch's assembly, or ``None`` if it was refused.

        Returns:
            Whether the step still stands (no micro-batch of it was refused).
        """
        if assembled is None or self.refused:
            self.assembled, self.refused = None, True
            return False
        # Accumulation: a later micro-batch adds its values to the step's.
        pending = self.assembled
        self.assembled = assembled if pending is None else pending.accumulated(assembled)
        return True

    def take(self) -> AssembledLagrangian | None:
        """The step's assembly (``None`` if refused) for its update; the step is empty after."""
        assembled = self.assembled
        self.assembled, self.refused = None, False
        return assembled

    def release_gradient(self) -> None:
        """Release the last report's gradients (its stationarity stays, if it was read)."""
        if self.gradient is not None:
            self.gradient.release()
            self.gradient = None

    def clear(self) -> None:
        """Drop everything the open step holds: a new step starts."""
        self.assembled, self.refused = None, False
        self.release_gradient()
