"""Constrained optimizers: who moves when, between the primal and the dual player.

A constrained optimizer wraps ordinary ``torch.optim`` optimizers: one or more for the primal
parameters (minimizing) and one for the multipliers (``maximize=True``). It speaks the same
words as they do: ``step(closure)``, ``zero_grad()``, ``state_dict()``.

* :class:`SimultaneousGDA`: both players step from the same point; one forward and one backward.
* :class:`AlternatingGDA`: one player steps, then the other reacts.

Beside ``step(closure)``, :class:`SimultaneousGDA` has an open path for custom backward passes
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
from conopt.multipliers import restart_dense_
from conopt.optim.lagrangian import (
    AssembledLagrangian,
    ConstraintGroup,
    ConstraintIndex,
    NonFiniteError,
    assemble,
)
from conopt.problem import ConstrainedProblem, ProblemState

Closure = Callable[[], ProblemState]
"""A function that evaluates the problem at the current parameters and returns its state."""

NonFinitePolicy = Literal["raise", "skip"]


def _as_list(primal: torch.optim.Optimizer | Sequence[torch.optim.Optimizer]) -> list:
    optimizers = [primal] if isinstance(primal, torch.optim.Optimizer) else list(primal)
    if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        raise TypeError("primal must be a torch.optim.Optimizer or a non-empty list of them.")
    return optimizers


def _grads(optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    return [
        p.grad
        for optimizer in optimizers
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    ]


def _ensure_unscaled(scaler: GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """Unscale ``optimizer``'s gradients unless the user already did (e.g. before clipping)."""
    if not scaler.is_enabled():  # a disabled scaler scales nothing and keeps no state
        return
    stage = scaler._per_optimizer_states[id(optimizer)]["stage"]
    if getattr(stage, "name", "") != "UNSCALED":
        scaler.unscale_(optimizer)


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
            NaN/Inf with a :class:`~conopt.optim.lagrangian.NonFiniteError` naming the constraint;
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
        self.primal_optimizers = _as_list(primal)
        self.dual_optimizer = dual
        self.dual_restarts = dual_restarts
        self.on_nonfinite = on_nonfinite
        self.measure_stationarity = measure_stationarity
        self.step_count = 0
        self.skipped_steps = 0
        self._index = ConstraintIndex(problem, dual)
        self._validate_players()
        self._projection_targets = [
            t
            for c in self._index.by_name.values()
            if c.multiplier is not None
            for t in c.multiplier.projection_targets()
        ]
        multipliers = [
            c.multiplier for c in self._index.by_name.values() if c.multiplier is not None
        ]
        self._explicit_dual_parameters = [
            p for m in multipliers if m.explicit_gradient for p in m.parameters()
        ]
        self._has_implicit_multipliers = any(not m.explicit_gradient for m in multipliers)
        # Under torch.distributed: multipliers whose gradients (not values) are all-reduced.
        self._gradient_reductions = [
            (list(m.parameters()), m.gradient_reduction == "mean")
            for m in multipliers
            if m.gradient_reduction is not None and m.synchronized
        ]
        self._pending: AssembledLagrangian | None = None
        self._last_gradient: GradientNorm | None = None
        self._pending_skip = False

    # ----------------------------------------------------------------------------- validation
    def _validate_players(self) -> None:
        dual_params: dict[int, str] = {}
        for name, constraint in self._index.by_name.items():
            if constraint.multiplier is None:
                continue
            if self.dual_restarts and constraint.is_inequality:
                if not constraint.multiplier.supports_restarts:
                    raise ValueError(
                        f"constraint {name!r}: {type(constraint.multiplier).__name__} does not "
                        "support dual restarts; use dual_restarts=False or another multiplier."
                    )
            for p in constraint.multiplier.parameters():
                dual_params[id(p)] = name
        for optimizer in self.primal_optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) in dual_params:
                        raise TypeError(
                            f"the primal optimizer holds the multiplier of constraint "
                            f"{dual_params[id(p)]!r}; give multipliers to the dual optimizer only."
                        )
        if self.dual_optimizer is None:
            if dual_params:
                first = next(iter(dual_params.values()))
                raise ValueError(
                    f"constraint {first!r} has a multiplier but no dual optimizer was given; "
                    "pass dual=torch.optim.SGD(problem.dual_parameters(), lr=..., maximize=True)."
                )
            return
        driven: set[int] = set()
        for group in self.dual_optimizer.param_groups:
            if not group.get("maximize", False):
                raise TypeError(
                    f"the dual optimizer ({type(self.dual_optimizer).__name__}) must be built "
                    "with maximize=True: multipliers ascend the Lagrangian."
                )
            driven.update(id(p) for p in group["params"])
        missing = sorted({n for i, n in dual_params.items() if i not in driven})
        if missing:
            raise ValueError(
                f"the dual optimizer does not drive the multipliers of constraints {missing}; "
                "build it from problem.dual_parameters()."
            )

    # ------------------------------------------------------------------------------ building
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of both players, and any values accumulated since :meth:`apply`."""
        self._pending, self._pending_skip = None, False
        if self._last_gradient is not None:
            self._last_gradient.release()
            self._last_gradient = None
        for optimizer in self.primal_optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)
        if self.dual_optimizer is not None:
            self.dual_optimizer.zero_grad(set_to_none=set_to_none)

    def _assemble(self, state: ProblemState) -> AssembledLagrangian | None:
        """Assemble, or return None for a refused-and-skipped step."""
        try:
            return assemble(state, self._index)
        except NonFiniteError:
            if self.on_nonfinite == "raise":
                raise
            self.skipped_steps += 1
            return None

    def _stationarity(self) -> GradientNorm | None:
        """A lazily computed norm of the primal gradients, released when the next step starts."""
        if self._last_gradient is not None:
            self._last_gradient.release()
            self._last_gradient = None
        if not self.measure_stationarity:
            return None
        self._last_gradient = GradientNorm(_grads(self.primal_optimizers))
        return self._last_gradient

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
        projected: set[int] = set()
        for group in assembled.groups:
            if not group.inequality or group.multipliers is None:
                continue
            assert group.strict_values is not None
            weights = group.dense_weights
            if weights is None:
                restarted.append((group, group.strict_values < 0))
                continue
            restart_dense_(weights, group.strict_values < 0, self.dual_optimizer, project=True)
            projected.update(map(id, weights))
        if len(projected) < len(self._projection_targets):
            self._project([t for t in self._projection_targets if id(t) not in projected])
        for group, mask in restarted:
            feasible = mask.reshape(-1).split(group.sizes)
            for i, (entry, mask) in enumerate(zip(group.entries, feasible, strict=True)):
                entry.multiplier.restart_(  # type: ignore[union-attr]
                    group.state(i), mask.reshape(group.values[i].shape), self.dual_optimizer
                )

    def _update_penalties(self, assembled: AssembledLagrangian) -> None:
        for group in assembled.groups:
            if not any(e.penalized for e in group.entries):
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
        :meth:`~conopt.optim.lagrangian.AssembledLagrangian.accumulated`). One refused
        micro-batch (non-finite, with ``on_nonfinite="skip"``) refuses the whole step.
        """
        if not self.supports_open_step:
            raise TypeError(f"{type(self).__name__} has no open step path; use step(closure).")
        assembled = self._assemble(state)
        if assembled is None or self._pending_skip:  # one refused micro-batch refuses the step
            self._pending, self._pending_skip = None, True
            return torch.zeros((), requires_grad=True)
        # Accumulation: a second call before apply() adds its values to the step's.
        pending = self._pending
        self._pending = assembled if pending is None else pending.accumulated(assembled)
        return assembled.objective

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

    def state_dict(self) -> dict[str, Any]:
        """The optimizers' states and the step counters (multipliers live in the problem's)."""
        return {
            "primal": [o.state_dict() for o in self.primal_optimizers],
            "dual": None if self.dual_optimizer is None else self.dual_optimizer.state_dict(),
            "step_count": self.step_count,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
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
            self.dual_optimizer.load_state_dict(state_dict["dual"])
        self.step_count = int(state_dict["step_count"])
        self.skipped_steps = int(state_dict["skipped_steps"])


class SimultaneousGDA(ConstrainedOptimizer):
    r"""Simultaneous gradient descent-ascent: both players step from the same point.

    .. math::

        \theta_{t+1} = \theta_t - \eta_\theta \nabla_\theta \mathcal{L}(\theta_t, \lambda_t),
        \qquad
        \lambda_{t+1} = \Pi\left[\lambda_t + \eta_\lambda \nabla_\lambda
        \mathcal{L}(\theta_t, \lambda_t)\right],

    with one forward and one backward pass per step (or any torch optimizer in place of the
    plain gradient steps). See :class:`ConstrainedOptimizer` for the arguments.

    Example:
        >>> import torch, conopt
        >>> class P(conopt.ConstrainedProblem):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.c = conopt.Constraint("<=")
        ...     def evaluate(self, x):
        ...         return conopt.ProblemState(loss=(x**2).sum(), constraints={self.c: 1 - x.sum()})
        >>> x = torch.zeros(2, requires_grad=True)
        >>> problem = P()
        >>> opt = conopt.optim.SimultaneousGDA(
        ...     problem,
        ...     primal=torch.optim.SGD([x], lr=0.1),
        ...     dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
        ... )
        >>> for _ in range(500):
        ...     report = opt.step(lambda: problem.evaluate(x))
        >>> [round(v, 3) for v in x.tolist()], report.kkt.satisfied(1e-3)
        ([0.5, 0.5], True)
    """

    supports_open_step: ClassVar[bool] = True

    def step(self, closure: Closure) -> StepReport:  # noqa: D102
        self.zero_grad()
        state = closure()
        objective = self.lagrangian(state)
        if not self._pending_skip:
            objective.backward()
        return self.apply()

    def apply(self, scaler: GradScaler | None = None) -> StepReport:  # noqa: D102
        if self._pending is None and not self._pending_skip:
            raise RuntimeError("apply() needs a preceding lagrangian(state) and backward().")
        assembled, self._pending = self._pending, None
        self.step_count += 1
        if assembled is None:
            self._pending_skip = False
            loss = torch.zeros(())
            return StepReport(step=self.step_count, loss=loss, lagrangian=loss, skipped=True)
        if scaler is not None:
            for optimizer in self.primal_optimizers:
                _ensure_unscaled(scaler, optimizer)
        stationarity = self._stationarity()
        self._primal_step(scaler)
        self._dual_step(assembled, scaler)
        return self._report(assembled, stationarity)


class AlternatingGDA(ConstrainedOptimizer):
    r"""Alternating gradient descent-ascent: one player steps, then the other reacts.

    Primal first (default): :math:`\theta_{t+1}` from :math:`\mathcal{L}(\theta_t,
    \lambda_t)`, then :math:`\lambda_{t+1}` from the constraints at :math:`\theta_{t+1}`
    (two evaluations of the problem per step; the second needs no primal graph and runs under
    ``torch.no_grad`` for the primal parameters). Dual first: :math:`\lambda_{t+1}` from
    :math:`g(\theta_t)`, then :math:`\theta_{t+1}` from :math:`\mathcal{L}(\theta_t,
    \lambda_{t+1})` (one evaluation, two backward passes, the first through the multipliers
    only).

    Args:
        dual_first: Update the multipliers first.
        **kwargs: See :class:`ConstrainedOptimizer`.
    """

    def __init__(
        self,
        problem: ConstrainedProblem,
        primal: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        dual: torch.optim.Optimizer | None = None,
        *,
        dual_first: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(problem, primal, dual, **kwargs)
        self.dual_first = dual_first

    def step(self, closure: Closure) -> StepReport:  # noqa: D102
        self.zero_grad()
        state = closure()
        assembled = self._assemble(state)
        if assembled is None:
            self.step_count += 1
            return self._skipped_report(state)
        if self.dual_first:
            return self._dual_then_primal(state, assembled)
        return self._primal_then_dual(closure, assembled)

    def _primal_then_dual(self, closure: Closure, assembled: AssembledLagrangian) -> StepReport:
        assembled.objective.backward()
        stationarity = self._stationarity()
        if self.dual_optimizer is not None:
            self.dual_optimizer.zero_grad()
        origin = [p.detach().clone() for p in self._primal_parameters()]
        self._primal_step()
        try:
            with torch.no_grad():
                second_state = closure()
            second = self._assemble(second_state)
        except Exception:  # refused (not finite, or malformed): undo the primal step, then raise
            with torch.no_grad():
                torch._foreach_copy_(self._primal_parameters(), origin)
            raise
        if second is None:  # the new point is not finite: undo the primal step
            with torch.no_grad():
                torch._foreach_copy_(self._primal_parameters(), origin)
            self.step_count += 1
            return self._skipped_report(second_state)
        if second.objective.requires_grad:
            second.objective.backward()
        self._dual_step(second)
        self.step_count += 1
        return self._report(second, stationarity)

    def _dual_then_primal(self, state: ProblemState, assembled: AssembledLagrangian) -> StepReport:
        if self.dual_optimizer is not None:
            multipliers = list(self.problem.dual_parameters())
            grads = torch.autograd.grad(
                assembled.objective, multipliers, retain_graph=True, allow_unused=True
            )
            for p, g in zip(multipliers, grads, strict=True):
                if g is not None:  # None for explicit multipliers: assemble wrote their gradient
                    p.grad = g
        self._dual_step(assembled)
        rebuilt = assemble(state, self._index, check_finite=False)
        rebuilt.objective.backward()
        stationarity = self._stationarity()
        self._primal_step()
        self.step_count += 1
        return self._report(rebuilt, stationarity)

    def _primal_parameters(self) -> list[torch.Tensor]:
        return [p for o in self.primal_optimizers for g in o.param_groups for p in g["params"]]
