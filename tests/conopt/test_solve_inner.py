"""Tests of conopt.solve's inner solve and scaling: at least one step, one batched row product."""

from __future__ import annotations

import math

import torch

import conopt
from conopt.solver.evaluation import Evaluator
from conopt.solver.lbfgsb import Memory, minimize
from conopt.solver.scaling import row_gradient_norms
from conopt.solver.subproblem import Subproblem

torch.set_num_threads(1)
f64 = torch.float64


class Parabola(conopt.ConstrainedProblem):
    """min (1 - x0)^2 s.t. 10 (x1 - x0^2) = 0 (Hock–Schittkowski 6): x* = (1, 1), f* = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.curve = conopt.Constraint("==")

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        return conopt.ProblemState((1 - x[0]) ** 2, {self.curve: 10 * (x[1] - x[0] ** 2)})


class Plane(conopt.ConstrainedProblem):
    """min x0^2 + 2 x1^2 s.t. x0 + x1 >= 1 and 3 x0 = x1 (``"<="`` and ``"=="`` rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.above = conopt.Constraint("<=")
        self.line = conopt.Constraint("==")

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        return conopt.ProblemState(
            x[0] ** 2 + 2 * x[1] ** 2,
            {self.above: 1 - x[0] - x[1], self.line: 3 * x[0] - x[1]},
        )


def _start(problem: conopt.ConstrainedProblem, x: list[float], rho: float = 10.0):
    """The evaluator, the subproblem (zero multipliers) and its iterate at ``x``."""
    x0 = torch.tensor(x, dtype=f64)
    evaluate = Evaluator(problem, x0.shape)
    point = evaluate(x0)
    lam, mu = torch.zeros_like(point.g), torch.zeros_like(point.h)
    inf = torch.full_like(x0, math.inf)
    objective = Subproblem(lam, mu, rho, -inf, inf)
    return evaluate, objective, objective.iterate(point)


def _never(_: object) -> bool:
    return False


def test_inner_solve_steps_once_when_the_start_is_within_the_tolerance() -> None:
    # After a multiplier update the reduced gradient may already be within the inner tolerance:
    # x must still move, or the violation stays where it was for the next outer iterations.
    evaluate, objective, start = _start(Plane(), [0.3, 0.9])
    assert start.reduced_norm > 0
    tolerance = 2 * start.reduced_norm
    end, iterations, reason = minimize(start, objective, evaluate, Memory(5), tolerance, 50, _never)
    assert (iterations, reason) == (1, "tolerance")
    assert end.value < start.value
    assert not torch.equal(end.point.x, start.point.x)


def test_inner_solve_does_not_step_from_a_stationary_point() -> None:
    # At the solution of HS6 with zero multipliers the augmented Lagrangian's gradient is 0.
    evaluate, objective, start = _start(Parabola(), [1.0, 1.0])
    assert start.reduced_norm == 0
    end, iterations, reason = minimize(start, objective, evaluate, Memory(5), 1e-6, 50, _never)
    assert (iterations, reason) == (0, "tolerance")
    assert end is start
    assert evaluate.nfev == 1


def test_every_outer_iteration_moves_x() -> None:
    # Hock–Schittkowski 6 used to spend half of its outer iterations on multiplier updates with
    # no inner step (the violation stuck at 4e-7 for eight iterations).
    inner: list[int] = []
    result = conopt.solve(
        Parabola(),
        torch.tensor([-1.2, 1.0], dtype=f64),
        callback=lambda it: inner.append(it.inner_iterations),
    )
    assert result.success
    assert abs(result.fun) < 1e-8
    assert all(count >= 1 for count in inner)
    assert result.nit <= 8


def test_row_gradient_norms_lists_the_objective_first() -> None:
    x0 = torch.tensor([2.0, -1.0], dtype=f64)
    point = Evaluator(Plane(), x0.shape)(x0)
    norms = row_gradient_norms(point)
    # grad f = (2 x0, 4 x1) = (4, -4); grad g = (-1, -1); grad h = (3, -1).
    assert norms.tolist() == [4.0, 1.0, 3.0]


def test_scaled_solve_matches_the_closed_form() -> None:
    # x0 + x1 = 1 and x1 = 3 x0: x = (1/4, 3/4) is the only feasible point of the equality on
    # the active half-plane; the unconstrained minimizer on the line is 0, outside.
    result = conopt.solve(Plane(), torch.tensor([2.0, -1.0], dtype=f64))
    assert result.success
    torch.testing.assert_close(result.x, torch.tensor([0.25, 0.75], dtype=f64), atol=1e-7, rtol=0)
