"""The base of constrained optimizers: the two players, and what every step does to them.

A constrained optimizer wraps ordinary ``torch.optim`` optimizers: one or more for the primal
parameters (minimizing) and one for the multipliers (``maximize=True``). It speaks the same
words as they do: ``step(closure)``, ``zero_grad()``, ``state_dict()``.
:class:`ConstrainedOptimizer` validates the players and takes the steps' common parts (the
dual step's projection, restarts and penalty growth, reports, checkpoints); its subclasses say
who moves when:

* :class:`~conopt.optim.simultaneous.SimultaneousGDA`: both players step from the same point;
* :class:`~conopt.optim.alternating.AlternatingGDA`: one player steps, then the other reacts;
* :class:`~conopt.optim.extragradient.Extragradient`: both extrapolate, then update.

Beside ``step(closure)``, an optimizer with ``supports_open_step`` (:class:`SimultaneousGDA
<conopt.optim.simultaneous.SimultaneousGDA>`) has an open path for custom backward passes
(AMP's ``GradScaler``, gradient clipping, accumulation, DDP's ``no_sync``)::

    lagrangian = optimizer.lagrangian(problem.evaluate(batch))
    scaler.scale(lagrangian).backward()
    scaler.unscale_(primal); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    report = optimizer.apply(scaler=scaler)
    scaler.update(); optimizer.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch.amp import GradScaler

from conopt import distributed
from conopt.diagnostics import GradientNorm, StepReport
from conopt.errors import NonFiniteError
from conopt.multipliers import converted_dual_state_dict, restart_dense_, restart_slice_
from conopt.optim.assembled import AssembledLagrangian
from conopt.optim.grouping import ConstraintGroup, ConstraintIndex
from conopt.optim.lagrangian import assemble
from conopt.optim.open_step import OpenStep
from conopt.optim.players import check_players, primal_optimizer_list
from conopt.problem import ConstrainedProblem, ProblemState

Closure = Callable[[], ProblemState]
"""A function that evaluates the problem at the current parameters and returns its state."""

NonFinitePolicy = Literal["raise", "skip"]


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` without repeats (the members of a pack share its weight), in order."""
    seen: set[int] = set()
    return [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]  # type: ignore[func-returns-value]


class ConstrainedOptimizer:
    r"""Base class: validates the players, applies projections, restarts and penalty growth.

    Args:
        problem: The constrained problem whose multipliers the dual optimizer drives.
        primal: The optimizer(s) of the primal parameters (minimizing).
        dual: The optimizer of ``problem.dual_parameters()``, built with ``maximize=True``;
            ``None`` only when no constraint has a multiplier.
        dual_restarts: After each dual step, set the multiplier (and its dual optimizer state)
            of every strictly satisfied inequality entry (:math:`g_i < 0`) to zero
            (Gallego-Posada et al., 2022).
        on_nonfinite: ``"raise"`` (default) refuses a step whose loss or constraint values are
            NaN/Inf with a :class:`~conopt.errors.NonFiniteError` naming the constraint;
            ``"skip"`` skips such steps, leaving every parameter and multiplier unchanged, and
            counts them in :attr:`skipped_steps`.
        measure_stationarity: Offer :math:`\|\nabla_\theta \mathcal{L}\|` in the KKT report. It is
            computed only when read, before the next step (see
            :class:`~conopt.diagnostics.GradientNorm`).

    Raises:
        TypeError: The dual optimizer does not maximize, or an optimizer holds the other
            player's parameters.
        ValueError: A multiplier is not driven by the dual optimizer, or dual restarts are asked
            for with a multiplier that cannot restart.
    """

    supports_open_step: ClassVar[bool] = False
    """Whether :meth:`lagrangian` / :meth:`apply` may be used instead of :meth:`step`."""

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        dual: torch.optim.Optimizer | None = None,
        *,
        dual_restarts: bool = False,
        on_nonfinite: NonFinitePolicy = "raise",
        measure_stationarity: bool = True,
    ) -> None:
        if not isinstance(problem, ConstrainedProblem):
            raise TypeError(f"problem must be a ConstrainedProblem, got {type(problem).__name__}.")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
        self.problem = problem
        self.primal_optimizers = primal_optimizer_list(primal)
        self.dual_optimizer = dual
        self.dual_restarts = dual_restarts
        self.on_nonfinite = on_nonfinite
        self.measure_stationarity = measure_stationarity
        self.step_count = 0
        self.skipped_steps = 0
        self._index = ConstraintIndex(problem, dual)
        check_players(self._index.by_name, self._primal_parameters(), dual, dual_restarts)
        multipliers = [
            c.multiplier for c in self._index.by_name.values() if c.multiplier is not None
        ]
        self._projection_targets = _unique([t for m in multipliers for t in m.projection_targets()])
        self._explicit_dual_parameters = _unique(
            [p for m in multipliers if m.explicit_gradient for p in m.optimized_parameters()]
        )
        self._packing_version = problem.packing_version
        self._has_implicit_multipliers = any(not m.explicit_gradient for m in multipliers)
        # Under torch.distributed: multipliers whose gradients (not values) are all-reduced.
        self._gradient_reductions = [
            (list(m.parameters()), m.gradient_reduction == "mean")
            for m in multipliers
            if m.gradient_reduction is not None and m.synchronized
        ]
        self._open_step = OpenStep()

    # ------------------------------------------------------------------------------ building
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of both players, and any values accumulated since :meth:`apply`."""
        self._open_step.clear()
        for optimizer in self.primal_optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)
        if self.dual_optimizer is not None:
            self.dual_optimizer.zero_grad(set_to_none=set_to_none)

    def _assemble(self, state: ProblemState) -> AssembledLagrangian | None:
        """Assemble, or return None for a refused-and-skipped step."""
        if self.problem.packing_version != self._packing_version:
            raise RuntimeError(
                f"{type(self).__name__}: the problem's multipliers were packed after this "
                "optimizer was built; call problem.pack_multipliers() first, then build the "
                "dual optimizer from problem.dual_parameters() and the constrained optimizer."
            )
        try:
            return assemble(state, self._index)
        except NonFiniteError:
            if self.on_nonfinite == "raise":
                raise
            self.skipped_steps += 1
            return None

    def _evaluate(
        self,
        closure: Closure,
        *,
        undo: Callable[[], None] | None = None,
        primal_graph: bool = True,
    ) -> tuple[ProblemState, AssembledLagrangian | None]:
        """Evaluate the problem and assemble its Lagrangian (``None``: refused and skipped).

        Args:
            closure: Evaluates the problem.
            undo: Takes back what the step has moved so far, if the evaluation is refused
                (raises, or is skipped): the later evaluations of two-point steps.
            primal_graph: Build the primal graph (else evaluate under ``torch.no_grad``).
        """
        try:
            if primal_graph:
                state = closure()
            else:
                with torch.no_grad():
                    state = closure()
            assembled = self._assemble(state)
        except Exception:  # refused (not finite, or malformed): undo, then raise
            if undo is not None:
                undo()
            raise
        if assembled is None and undo is not None:
            undo()
        return state, assembled

    def _primal_parameters(self) -> list[torch.Tensor]:
        return [p for o in self.primal_optimizers for g in o.param_groups for p in g["params"]]

    def _stationarity(self) -> GradientNorm | None:
        """A lazily computed norm of the primal gradients, released when the next step starts."""
        self._open_step.release_gradient()
        if not self.measure_stationarity:
            return None
        grads = [p.grad for p in self._primal_parameters() if p.grad is not None]
        self._open_step.gradient = GradientNorm(grads)
        return self._open_step.gradient

    # ----------------------------------------------------------------------------- updating
    def _primal_step(self, scaler: GradScaler | None = None) -> None:
        for optimizer in self.primal_optimizers:
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)

    def _dual_step(self, assembled: AssembledLagrangian, scaler: GradScaler | None = None) -> None:
        """Dual step from the multipliers' gradients, then projection, restarts, penalties."""
        if self.dual_optimizer is not None:
            if distributed.world_size() > 1:
                for params, mean in self._gradient_reductions:
                    distributed.all_reduce_gradients_(params, mean=mean)
            if scaler is None or not self._has_implicit_multipliers:
                # Closed-form dual gradients never went through the scaled backward pass.
                self.dual_optimizer.step()
            else:
                # Bring the closed-form gradients to the scale of the implicit multipliers'
                # (backpropagated) ones, so that the scaler unscales them all alike.
                grads = [p.grad for p in self._explicit_dual_parameters if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, scaler.get_scale())
                scaler.step(self.dual_optimizer)
            if self.dual_restarts:
                self._project_and_restart(assembled)
            else:
                self._project()
        self._update_penalties(assembled)

    def _project(self, targets: list[torch.Tensor] | None = None) -> None:
        """Clamp the inequality multipliers (or ``targets``) at 0, in one operation."""
        targets = self._projection_targets if targets is None else targets
        if targets:
            with torch.no_grad():
                torch._foreach_clamp_min_(targets, 0.0)

    def _project_and_restart(self, assembled: AssembledLagrangian) -> None:
        """Project every inequality multiplier, then restart those strictly feasible this step.

        Groups of plain dense multipliers do both in a few vectorized operations; the others
        are projected together, then restarted one constraint at a time.
        """
        assert self.dual_optimizer is not None
        restarted: list[tuple[ConstraintGroup, torch.Tensor]] = []  # (group, feasibility mask)
        slices: list[tuple[ConstraintGroup, torch.Tensor]] = []  # packed groups, after projection
        projected: set[int] = set()
        for group in assembled.groups:
            if not group.inequality or group.multipliers is None:
                continue
            assert group.strict_values is not None
            weights = group.dense_weights
            if group.pack is not None:
                slices.append((group, group.strict_values < 0))
                continue
            if weights is None:
                restarted.append((group, group.strict_values < 0))
                continue
            restart_dense_(weights, group.strict_values < 0, self.dual_optimizer, project=True)
            projected.update(map(id, weights))
        if len(projected) < len(self._projection_targets):
            self._project([t for t in self._projection_targets if id(t) not in projected])
        for group, mask in slices:
            restart_slice_(*group.pack, mask, self.dual_optimizer)  # type: ignore[misc]
        for group, mask in restarted:
            feasible = mask.reshape(-1).split(group.sizes)
            for i, (entry, mask) in enumerate(zip(group.entries, feasible, strict=True)):
                entry.multiplier.restart_(  # type: ignore[union-attr]
                    group.state(i), mask.reshape(group.values[i].shape), self.dual_optimizer
                )

    def _update_penalties(self, assembled: AssembledLagrangian) -> None:
        for group in assembled.groups:
            if not group.penalized:
                continue
            assert group.strict_values is not None
            violation = (
                group.strict_values.relu() if group.inequality else group.strict_values.abs()
            )
            parts = violation.reshape(-1).split(group.sizes)
            for entry, part in zip(group.entries, parts, strict=True):
                entry.formulation.update_penalty_(part)

    def _report(
        self, assembled: AssembledLagrangian, primal_gradient: GradientNorm | None
    ) -> StepReport:
        return StepReport(
            step=self.step_count,
            loss=assembled.loss,
            lagrangian=assembled.objective.detach(),
            groups=assembled.records,
            primal_gradient=primal_gradient,
        )

    def _skipped_report(self, state: ProblemState) -> StepReport:
        loss = state.loss.detach()
        return StepReport(step=self.step_count, loss=loss, lagrangian=loss, skipped=True)

    # ---------------------------------------------------------------------------- public API
    def step(self, closure: Closure) -> StepReport:
        """Take one constrained step. ``closure`` evaluates the problem (no backward inside)."""
        raise NotImplementedError

    def lagrangian(self, state: ProblemState) -> torch.Tensor:
        """Open path, part 1: the scalar to call ``backward()`` on for this ``state``.

        Its value is the Lagrangian; its gradients are the primal gradient and the multipliers'
        ascent directions. Validates the state first (shapes, names, finiteness).

        Gradient accumulation: call it once per micro-batch (each followed by ``backward()``),
        then :meth:`apply` once. The dual gradients, restarts, penalty updates and the report all
        use the sum of the micro-batches' values (per-sample constraints: their concatenation),
        so weight each micro-batch's state by its share of the batch
        (:meth:`~conopt.problem.ProblemState.scaled`) to get the full batch's means (see
        :meth:`~conopt.optim.assembled.AssembledLagrangian.accumulated`). One refused
        micro-batch (non-finite, with ``on_nonfinite="skip"``) refuses the whole step.
        """
        if not self.supports_open_step:
            raise TypeError(f"{type(self).__name__} has no open step path; use step(closure).")
        assembled = self._assemble(state)
        if not self._open_step.add(assembled):  # one refused micro-batch refuses the step
            return torch.zeros((), requires_grad=True)
        return assembled.objective  # type: ignore[union-attr]

    def apply(self, scaler: GradScaler | None = None) -> StepReport:
        """Open path, part 2: step both players from the gradients of :meth:`lagrangian`.

        Args:
            scaler: The ``torch.amp.GradScaler`` that scaled the backward pass, if any; the
                gradients are unscaled here unless you already called ``scaler.unscale_``.
                Call ``scaler.update()`` yourself afterwards, as usual, except after a refused
                step (``report.skipped``, with ``on_nonfinite="skip"``): no gradient was
                computed or stepped then, and ``update()`` would find no inf checks to act on.
        """
        raise NotImplementedError

    def _current_dual_layout(self, saved: dict[str, Any]) -> dict[str, Any]:
        """``saved``, converted if it was saved over multipliers that are now packed."""
        if not self.problem.packing_version or self.dual_optimizer is None:
            return saved
        multipliers = [c.multiplier for c in self.problem.constraints() if c.multiplier]
        return converted_dual_state_dict(saved, multipliers, self.dual_optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The optimizers' states and the step counters (multipliers live in the problem's)."""
        return {
            "primal": [o.state_dict() for o in self.primal_optimizers],
            "dual": None if self.dual_optimizer is None else self.dual_optimizer.state_dict(),
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        A dual optimizer state saved before
        :meth:`~conopt.problem.ConstrainedProblem.pack_multipliers` (one parameter per
        multiplier, one param group) is converted to the packs.
        """
        primal = state_dict["primal"]
        if len(primal) != len(self.primal_optimizers):
            raise ValueError(
                f"state_dict has {len(primal)} primal optimizer states, this optimizer has "
                f"{len(self.primal_optimizers)}."
            )
        if (state_dict["dual"] is None) != (self.dual_optimizer is None):
            raise ValueError("state_dict and this optimizer disagree on having a dual optimizer.")
        for optimizer, optimizer_state in zip(self.primal_optimizers, primal, strict=True):
            optimizer.load_state_dict(optimizer_state)
        if self.dual_optimizer is not None:
            self.dual_optimizer.load_state_dict(self._current_dual_layout(state_dict["dual"]))
        self.step_count = int(state_dict["step_count"])
        self.skipped_steps = int(state_dict["skipped_steps"])
