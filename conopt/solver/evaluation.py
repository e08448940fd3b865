r"""Problem evaluation for :func:`conopt.solve`: a ConstrainedProblem as flat vectors.

One job: turn the problem into flat vectors. Every ``"<="`` constraint becomes rows of one
inequality vector :math:`g \le 0` and every ``"=="`` one rows of one equality vector :math:`h`;
an evaluation (:class:`Point`) keeps the scaled values and the autograd graph, so that the
gradient of any weighted sum of objective and rows is one vector-Jacobian product. The flat
multiplier vectors are split back into per-constraint tensors here as well, and the bounds are
made flat tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from conopt.multipliers import DenseMultiplier
from conopt.optim.lagrangian import ConstraintIndex
from conopt.problem import ConstrainedProblem, ConstraintState

__all__ = ["EvaluationLimit", "Evaluator", "Point", "Scales", "flat_bounds"]


@dataclass(frozen=True)
class Scales:
    """Positive factors applied to the objective and to each inequality and equality row.

    Attributes:
        f: The objective's factor.
        g: The inequality rows' factors.
        h: The equality rows' factors.
        unit: Whether all factors are 1.
    """

    f: float
    g: torch.Tensor
    h: torch.Tensor
    unit: bool = False

    @cached_property
    def f_weight(self) -> torch.Tensor:
        """The objective's factor as a 0-d tensor (the rows' dtype and device)."""
        return self.g.new_tensor(self.f)

    def to_units(self, lam: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multipliers of the scaled problem in the problem's own units."""
        return lam * self.g / self.f, mu * self.h / self.f

    def from_units(self, lam: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multipliers in the problem's own units as multipliers of the scaled problem."""
        return lam * self.f / self.g, mu * self.f / self.h


class Point:
    """One evaluation of the problem: scaled values at ``x`` and the graph to differentiate them.

    Attributes:
        leaf: The point as the autograd leaf of the evaluation.
        outputs: The unscaled objective, inequality and equality rows, with their graph.
        x: The (detached, flat) point.
        f: The scaled objective (0-d).
        g: The scaled inequality rows.
        h: The scaled equality rows.
        g_raw: The inequality rows in the problem's units.
        h_raw: The equality rows in the problem's units.
        scales: The scale factors.
    """

    def __init__(
        self,
        leaf: torch.Tensor,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        scales: Scales,
    ) -> None:
        self.leaf = leaf
        self.outputs = outputs
        self.scales = scales
        self.x = leaf.detach()
        f, self.g_raw, self.h_raw = (t.detach() for t in outputs)
        if scales.unit:
            self.f, self.g, self.h = f, self.g_raw, self.h_raw
        else:
            self.f, self.g, self.h = f * scales.f, self.g_raw * scales.g, self.h_raw * scales.h

    def rescaled(self, scales: Scales) -> Point:
        """The same evaluation under other scale factors."""
        return Point(self.leaf, self.outputs, scales)

    def gradient(self, weight_g: torch.Tensor, weight_h: torch.Tensor) -> torch.Tensor:
        r"""The gradient of the scaled :math:`f + w_g^\top g + w_h^\top h` at :attr:`x`."""
        s = self.scales
        if s.unit:
            weights = (s.f_weight, weight_g, weight_h)
        else:
            weights = (s.f_weight, weight_g * s.g, weight_h * s.h)
        pairs = [
            (out, weight)
            for out, weight in zip(self.outputs, weights, strict=True)
            if out.requires_grad and out.numel()
        ]
        if not pairs:
            return torch.zeros_like(self.x)
        outs, ws = zip(*pairs, strict=True)
        (grad,) = torch.autograd.grad(outs, self.leaf, ws, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.x) if grad is None else grad


class EvaluationLimit(Exception):
    """Raised by :class:`Evaluator` when ``max_evaluations`` is spent."""


class Evaluator:
    """Evaluates a problem at flat points, its constraints flattened into ``g <= 0`` and ``h``.

    Attributes:
        problem: The problem.
        shape: The shape of its variable.
        index: Its constraints by name.
        nfev: Evaluations so far.
        limit: The largest number of evaluations (``inf``: none).
        layout: Each constraint's name, kind and flat shape, in the order of the rows (set by
            the first evaluation).
        scales: The scale factors applied to new evaluations (unit ones until set).
    """

    def __init__(self, problem: ConstrainedProblem, shape: torch.Size) -> None:
        self.problem = problem
        self.shape = shape
        self.index = ConstraintIndex(problem)
        for name, constraint in self.index.by_name.items():
            if constraint.multiplier is not None and not isinstance(
                constraint.multiplier, DenseMultiplier
            ):
                raise TypeError(
                    f"solve() handles dense multipliers only; constraint {name!r} has "
                    f"{type(constraint.multiplier).__name__}."
                )
        self.nfev = 0
        self.limit = math.inf
        self.layout: list[tuple[str, bool, torch.Size]] | None = None
        self.scales: Scales | None = None

    def __call__(self, x: torch.Tensor) -> Point:
        """Evaluate the problem at the flat point ``x`` (keeping the graph for gradients).

        Raises:
            EvaluationLimit: When the evaluation budget is spent.
            ValueError: For constraint values of the wrong shape, or constraints that differ
                from the first evaluation's.
        """
        if self.nfev >= self.limit:
            raise EvaluationLimit
        self.nfev += 1
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            state = self.problem.evaluate(leaf.view(self.shape))
            ineq: list[torch.Tensor] = []
            eq: list[torch.Tensor] = []
            layout: list[tuple[str, bool, torch.Size]] = []
            for key, raw in state.constraints.items():
                entry = self.index.resolve(key)
                value = raw.value if isinstance(raw, ConstraintState) else raw
                if value.shape != entry.constraint.shape:
                    raise ValueError(
                        f"constraint {entry.name!r}: value has shape {tuple(value.shape)}, "
                        f"expected {tuple(entry.constraint.shape)}."
                    )
                value = _flat(value, x)
                (ineq if entry.constraint.is_inequality else eq).append(value)
                layout.append((entry.name, entry.constraint.is_inequality, value.shape))
            loss = state.loss
            f = _flat(loss if isinstance(loss, torch.Tensor) else torch.as_tensor(loss), x, True)
            g = _join(ineq, x)
            h = _join(eq, x)
        if self.layout is None:
            self.layout = layout
            self.scales = Scales(1.0, torch.ones_like(g), torch.ones_like(h), unit=True)
        elif layout != self.layout:
            raise ValueError("problem.evaluate() must return the same constraints at every call.")
        assert self.scales is not None
        return Point(leaf, (f, g, h), self.scales)

    def split(self, lam: torch.Tensor, mu: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-constraint tensors from flat inequality and equality vectors."""
        assert self.layout is not None
        out: dict[str, torch.Tensor] = {}
        i = j = 0
        for name, inequality, shape in self.layout:
            constraint_shape = self.index.by_name[name].shape
            n = shape.numel()
            if inequality:
                out[name] = lam[i : i + n].reshape(constraint_shape).clone()
                i += n
            else:
                out[name] = mu[j : j + n].reshape(constraint_shape).clone()
                j += n
        return out

    def initial_multipliers(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The problem's own multipliers, flat (inequality ones clamped at zero)."""
        assert self.layout is not None
        lam: list[torch.Tensor] = []
        mu: list[torch.Tensor] = []
        for name, inequality, _ in self.layout:
            constraint = self.index.by_name[name]
            multiplier = constraint.multiplier
            value = (
                torch.zeros(constraint.shape)
                if multiplier is None
                else multiplier.value(None).detach()
            )
            (lam if inequality else mu).append(value.to(like).reshape(-1))
        lam_t = torch.cat(lam).clamp(min=0) if lam else like.new_zeros(0)
        return lam_t, (torch.cat(mu) if mu else like.new_zeros(0))


def _flat(value: torch.Tensor, like: torch.Tensor, scalar: bool = False) -> torch.Tensor:
    """``value`` in ``like``'s dtype and device, flat (0-d when ``scalar``); no copy when it is."""
    if value.dtype != like.dtype or value.device != like.device:
        value = value.to(dtype=like.dtype, device=like.device)
    if value.dim() == (0 if scalar else 1):
        return value
    return value.reshape(() if scalar else -1)


def _join(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The concatenation of flat tensors (empty for none)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if parts else like.new_zeros(0)


def flat_bounds(
    lower: float | torch.Tensor | None, upper: float | torch.Tensor | None, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds on ``x0`` as flat tensors of its dtype (``-inf`` and ``+inf`` for None).

    Raises:
        ValueError: If a bound does not broadcast to ``x0``'s shape, or a lower bound exceeds
            its upper bound.
    """
    lower_t = _as_bounds(lower, x0, -math.inf, "lower").reshape(-1)
    upper_t = _as_bounds(upper, x0, math.inf, "upper").reshape(-1)
    if bool((lower_t > upper_t).any()):
        raise ValueError("lower bounds must not exceed upper bounds.")
    return lower_t, upper_t


def _as_bounds(
    bound: float | torch.Tensor | None, x: torch.Tensor, default: float, name: str
) -> torch.Tensor:
    if bound is None:
        return torch.full_like(x, default)
    tensor = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    try:
        return tensor.expand_as(x).clone()
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}, which does not broadcast to x0's shape "
            f"{tuple(x.shape)}."
        ) from None
