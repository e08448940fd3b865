"""Gradient scaling for :func:`conopt.solve`: the factors applied to the objective and each row.

One job: choose, at the initial point, the positive factors by which the objective and each
constraint row are multiplied, so that their gradients' largest entries are at most 1 (rows
with smaller gradients are scaled up, by a factor 10 at most). The solver works on the scaled
problem; tolerances and everything it reports stay in the problem's units.
"""

from __future__ import annotations

import math

import torch

from conopt.solver.evaluation import Evaluator, Point, Scales

__all__ = ["row_gradient_norms", "scale_factors", "scale_problem"]

_SCALE_TARGET = 1.0  # largest gradient entry of the scaled objective and rows at x0
_SCALE_UP_MAX = 1e1  # largest factor by which a row with small gradients is scaled up


def scale_problem(evaluate: Evaluator, point: Point, scaling: bool) -> tuple[Point, float]:
    """Set ``evaluate``'s scale factors from the first evaluation ``point``.

    Args:
        evaluate: The evaluator; its
            :attr:`~conopt.solver.evaluation.Evaluator.scales` are set when ``scaling``.
        point: The (unit-scaled) evaluation at the initial point.
        scaling: Whether to scale (otherwise the factors stay 1).

    Returns:
        ``(point, grad_scale)``: ``point`` under the new factors, and the largest entry of the
        objective's unscaled gradient there, at least 1 (1 where it is not finite).
    """
    norms = row_gradient_norms(point)  # the objective's first
    grad_scale = max(1.0, float(norms[0]))
    if not math.isfinite(grad_scale):
        grad_scale = 1.0
    if scaling:
        rows = norms[1:]
        row_scales = torch.where(torch.isfinite(rows), scale_factors(rows), torch.ones_like(rows))
        m_in = point.g.numel()
        evaluate.scales = Scales(
            float(scale_factors(point.f.new_tensor(grad_scale))),
            row_scales[:m_in],
            row_scales[m_in:],
        )
        point = point.rescaled(evaluate.scales)
    return point, grad_scale


def row_gradient_norms(point: Point) -> torch.Tensor:
    """The largest entry of the gradient of the objective and of each row, ``[f; g; h]`` order.

    One batched vector-Jacobian product, or one per row when the problem's backward cannot be
    batched; zeros when the rows do not depend on the variable.
    """
    f, g, h = point.outputs
    rows = torch.cat([f.reshape(1), g, h])
    m = rows.numel()
    if m == 0 or not rows.requires_grad:
        return torch.zeros_like(rows.detach())
    eye = torch.eye(m, dtype=rows.dtype, device=rows.device)
    try:
        (jac,) = torch.autograd.grad(
            rows, point.leaf, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
    except (RuntimeError, NotImplementedError):  # a backward vmap cannot batch: row by row
        grads = [
            torch.autograd.grad(rows, point.leaf, e, retain_graph=True, allow_unused=True)[0]
            for e in eye
        ]
        if any(grad is None for grad in grads):
            return torch.zeros_like(rows.detach())
        jac = torch.stack(grads)  # type: ignore[arg-type]
    if jac is None:
        return torch.zeros_like(rows.detach())
    return jac.abs().amax(dim=1) if jac.shape[1] else torch.zeros_like(rows.detach())


def scale_factors(norm: torch.Tensor) -> torch.Tensor:
    """Scale factors bringing gradients' largest entries ``norm`` to ``_SCALE_TARGET``.

    Large gradients are scaled down; small ones up, by ``_SCALE_UP_MAX`` at most.
    """
    return (_SCALE_TARGET / norm.clamp(min=_SCALE_TARGET / _SCALE_UP_MAX)).clamp(max=_SCALE_UP_MAX)
