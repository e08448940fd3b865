"""Tests of conopt.solve: outer updates, penalty rule, stopping rules, bounds, results, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import conopt
from conopt.solver.result import STATUS_MESSAGES, OuterIterate
from conopt.solver.subproblem import KKTMeasures
from tests.conopt.toy_problems import QP, random_qp

f64 = torch.float64


class Scalar(conopt.ConstrainedProblem):
    """min x^2 s.t. x >= 1 (``g = 1 - x <= 0``) or x = 1 (``h = x - 1``): x* = 1, |multiplier| 2.

    The augmented Lagrangian's minimizer is known in closed form: for the inequality with
    multiplier lam and penalty rho, ``x = (lam + rho) / (2 + rho)`` while ``lam + rho (1 - x) > 0``;
    for the equality with multiplier mu, ``x = (rho - mu) / (2 + rho)``.
    """

    def __init__(self, kind: str = "<=") -> None:
        super().__init__()
        self.kind = kind
        self.c = conopt.Constraint(kind)
        self.points: list[torch.Tensor] = []

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        self.points.append(x.detach().clone())
        value = 1 - x[0] if self.kind == "<=" else x[0] - 1
        return conopt.ProblemState((x**2).sum(), {self.c: value})


class Box(conopt.ConstrainedProblem):
    """min ||x - c||^2 with no constraints at all (only bounds)."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.target = c
        self.points: list[torch.Tensor] = []

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        self.points.append(x.detach().clone())
        return conopt.ProblemState(((x - self.target) ** 2).sum())


def _record(problem: conopt.ConstrainedProblem, x0: torch.Tensor, **kwargs):
    iterates: list[OuterIterate] = []
    result = conopt.solve(problem, x0, callback=iterates.append, **kwargs)
    return result, iterates


# ----------------------------------------------------------------------------------------------
# Outer updates and the penalty rule
# ----------------------------------------------------------------------------------------------


def test_inequality_multiplier_update_is_projected_step():
    result, iterates = _record(
        Scalar("<="), torch.zeros(1, dtype=f64), rho=10.0, scaling=False, optimality_tol=1e-9
    )
    assert result.success and len(iterates) >= 2
    lam, rho = torch.zeros(1, dtype=f64), 10.0
    for it in iterates:
        assert it.rho == rho
        # The inner minimizer is the closed-form one, to the inner tolerance.
        assert float(it.x[0]) == pytest.approx((float(lam[0]) + rho) / (2 + rho), abs=1e-2)
        torch.testing.assert_close(it.ineq, 1 - it.x)
        if it.multipliers_updated:
            expected = torch.clamp(lam + rho * it.ineq, min=0)
            torch.testing.assert_close(it.ineq_multipliers, expected, rtol=0, atol=0)
            assert it.next_rho == rho  # the violation shrank: same penalty
        lam, rho = it.ineq_multipliers, it.next_rho
    assert float(result.x[0]) == pytest.approx(1.0, abs=1e-7)
    assert float(result.multipliers["c"]) == pytest.approx(2.0, rel=1e-5)


def test_inequality_multiplier_is_projected_at_zero():
    # min x1^2 + x2^2 s.t. x1 >= -0.1 (inactive at x* = 0) and x2 = 1, from lam = 3: the first
    # inner minimizer has x1 = 1/6 and lam = [3 - 10 (0.1 + 1/6)]_+ = 1/3; at the next one,
    # x1 ~ 0 and lam + rho g ~ -2/3 < 0 is projected to 0.
    class Inactive(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.low = conopt.Constraint("<=", multiplier=conopt.DenseMultiplier(init=3.0))
            self.one = conopt.Constraint("==")

        def evaluate(self, x):
            return conopt.ProblemState((x**2).sum(), {self.low: -0.1 - x[0], self.one: x[1] - 1})

    result, iterates = _record(
        Inactive(), torch.zeros(2, dtype=f64), rho=10.0, scaling=False, optimality_tol=1e-9
    )
    assert result.success and len(iterates) >= 2
    assert float(iterates[0].x[0]) == pytest.approx(1 / 6, abs=1e-2)
    lam, mu, rho = torch.full((1,), 3.0, dtype=f64), torch.zeros(1, dtype=f64), 10.0
    projected = False
    for it in iterates:
        if it.multipliers_updated:
            step = lam + rho * it.ineq
            torch.testing.assert_close(it.ineq_multipliers, step.clamp(min=0), rtol=0, atol=0)
            torch.testing.assert_close(it.eq_multipliers, mu + rho * it.eq, rtol=0, atol=0)
            projected |= bool(step[0] < 0) and float(it.ineq_multipliers[0]) == 0.0
        lam, mu, rho = it.ineq_multipliers, it.eq_multipliers, it.next_rho
    assert projected
    assert float(result.multipliers["low"]) == 0.0
    assert float(result.multipliers["one"]) == pytest.approx(-2.0, rel=1e-6)
    torch.testing.assert_close(result.x, torch.tensor([0.0, 1.0], dtype=f64), atol=1e-7, rtol=0)


def test_equality_multiplier_update():
    result, iterates = _record(
        Scalar("=="), torch.zeros(1, dtype=f64), rho=10.0, scaling=False, optimality_tol=1e-9
    )
    assert result.success and len(iterates) >= 2
    mu, rho = torch.zeros(1, dtype=f64), 10.0
    for it in iterates:
        assert float(it.x[0]) == pytest.approx((rho - float(mu[0])) / (2 + rho), abs=1e-2)
        torch.testing.assert_close(it.eq, it.x - 1)
        if it.multipliers_updated:
            torch.testing.assert_close(it.eq_multipliers, mu + rho * it.eq, rtol=0, atol=0)
        mu, rho = it.eq_multipliers, it.next_rho
    assert float(result.multipliers["c"]) == pytest.approx(-2.0, rel=1e-5)


def test_penalty_grows_when_the_violation_does_not_shrink():
    # With rho = 0.01 the first inner minimizer x = 0.01 / 2.01 violates x >= 1 by ~1 > eta:
    # the multiplier is kept and the penalty grows by rho_growth.
    result, iterates = _record(
        Scalar("<="), torch.zeros(1, dtype=f64), rho=0.01, rho_growth=5.0, scaling=False
    )
    first = iterates[0]
    assert float(first.x[0]) == pytest.approx(0.01 / 2.01, abs=1e-2)  # to the inner tolerance
    assert not first.multipliers_updated
    assert first.rho == 0.01 and first.next_rho == pytest.approx(0.05)
    assert float(first.ineq_multipliers[0]) == 0.0
    grown = [it for it in iterates if not it.multipliers_updated]
    for it in grown:
        assert it.next_rho == pytest.approx(min(5.0 * it.rho, 1e12))
        assert it.max_violation > 0
    assert result.success and result.rho > 0.01


def test_diverging_inner_solve_grows_the_penalty():
    # min -x^3 s.t. x = 1: at a small penalty the augmented Lagrangian is unbounded below
    # (x -> inf); the inner solve is abandoned, the penalty grown and the solve restarted.
    class Cubic(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.one = conopt.Constraint("==")

        def evaluate(self, x):
            return conopt.ProblemState(-(x**3).sum(), {self.one: x[0] - 1})

    result, iterates = _record(Cubic(), torch.full((1,), 1.5, dtype=f64), rho=0.1)
    assert result.success
    assert float(result.x[0]) == pytest.approx(1.0, abs=1e-7)
    assert float(result.multipliers["one"]) == pytest.approx(3.0, rel=1e-5)
    abandoned = [it for it in iterates if not it.multipliers_updated]
    assert abandoned and all(it.next_rho == 10 * it.rho for it in abandoned)
    assert all(abs(float(it.x[0])) < 1e3 for it in iterates)


def test_penalty_limit_on_an_infeasible_problem():
    class Infeasible(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.c = conopt.Constraint("==", shape=2)

        def evaluate(self, x):
            return conopt.ProblemState((x**2).sum(), {self.c: torch.stack([x[0] - 1, x[0] + 1])})

    result = conopt.solve(Infeasible(), torch.zeros(1, dtype=f64), rho=1.0, rho_max=1e4)
    assert result.status == 2 and not result.success
    assert "penalty limit" in result.message
    assert result.rho == 1e4
    assert result.max_violation == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# Stopping rules
# ----------------------------------------------------------------------------------------------


def test_stops_on_kkt_tolerances():
    for feasibility_tol, optimality_tol in ((1e-4, 1e-3), (1e-9, 1e-8)):
        result = conopt.solve(
            Scalar("<="),
            torch.zeros(1, dtype=f64),
            feasibility_tol=feasibility_tol,
            optimality_tol=optimality_tol,
        )
        assert result.success
        assert result.kkt.max_violation <= feasibility_tol
        assert result.kkt.stationarity <= optimality_tol  # the gradient scale is max(1, 0)
        assert result.kkt.max_complementary_slackness <= feasibility_tol * 2  # |lam g|, lam ~ 2
    loose = conopt.solve(Scalar("<="), torch.zeros(1, dtype=f64), feasibility_tol=1e-3)
    tight = conopt.solve(Scalar("<="), torch.zeros(1, dtype=f64), feasibility_tol=1e-10)
    assert loose.nfev < tight.nfev


def test_stops_at_once_at_a_kkt_point():
    # x0 = 0 is optimal for min x^2 s.t. x >= -1: no outer iteration, one evaluation.
    class Loose(Scalar):
        def evaluate(self, x):
            return conopt.ProblemState((x**2).sum(), {self.c: -1 - x[0]})

    result = conopt.solve(Loose(), torch.zeros(1, dtype=f64))
    assert result.success and result.nit == 0 and result.nfev == 1 and result.ninner == 0


def test_status_outer_iteration_limit_returns_best_iterate():
    problem = Scalar("<=")
    result = conopt.solve(problem, torch.zeros(1, dtype=f64), rho=0.01, max_outer=1)
    assert result.status == 1 and "outer iteration limit" in result.message
    assert result.nit == 1
    assert any(torch.equal(result.x, p) for p in problem.points)


def test_status_evaluation_limit():
    problem = Scalar("<=")
    result = conopt.solve(problem, torch.zeros(1, dtype=f64), max_evaluations=3)
    assert result.status == 5 and result.nfev == 3 == len(problem.points)


def test_status_nonfinite_initial_point():
    class Log(Scalar):
        def evaluate(self, x):
            return conopt.ProblemState(-torch.log(x).sum(), {self.c: 1 - x[0]})

    result = conopt.solve(Log(), torch.full((1,), -1.0, dtype=f64))
    assert result.status == 3 and not result.success and result.nfev == 1


def test_status_no_progress_with_a_wrong_gradient():
    class WrongGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x**2).sum()

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return -2 * x * grad_output  # the wrong sign: no descent is possible

    class Broken(Scalar):
        def evaluate(self, x):
            return conopt.ProblemState(WrongGradient.apply(x), {self.c: -10 - x[0]})

    result = conopt.solve(Broken(), torch.ones(1, dtype=f64))
    assert result.status == 4 and "no further progress" in result.message


class RosenbrockInDisk(conopt.ConstrainedProblem):
    """Rosenbrock's function in the disk x^2 + y^2 <= 2: x* = (1, 1) on the circle, f* = 0."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.disk = conopt.Constraint("<=")

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        f = self.scale * (100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2)
        return conopt.ProblemState(f, {self.disk: (x**2).sum() - 2})


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_rosenbrock_in_the_disk_converges_to_the_optimum(scale):
    # Issue #12, item 12: ||grad f(x0)||_inf = 215.6 at (-1.2, 1); with stationarity measured
    # relative to it the solver said "converged" 4.6e-4 from (1, 1). The test is absolute now.
    result = conopt.solve(RosenbrockInDisk(scale), torch.tensor([-1.2, 1.0], dtype=f64))
    assert result.success, result.message
    assert float((result.x - 1).abs().max()) <= 1e-6
    assert result.fun <= 1e-11 * scale
    assert result.max_violation <= 1e-7
    assert result.kkt.stationarity <= math.sqrt(2) * 1e-5  # its 2-norm; the test is on max


def test_stationarity_tolerance_is_relaxed_by_large_multipliers_only_up_to_a_cap():
    def merit(stationarity: float, multiplier_size: float) -> float:
        kkt = KKTMeasures(0.0, 0.0, stationarity, multiplier_size)
        return kkt.merit(feasibility_tol=1e-7, optimality_tol=1e-5)

    # s_d = max(1, mean |multiplier| / 100), at most 100.
    assert merit(1e-5, 0.0) == pytest.approx(1.0)
    assert merit(1e-4, 50.0) == pytest.approx(10.0)  # small multipliers: absolute
    assert merit(1e-4, 1e3) == pytest.approx(1.0)  # s_d = 10
    assert merit(1e-3, 1e9) == pytest.approx(1.0)  # s_d capped at 100
    assert merit(1.0, 1e12) > 1.0


class Unbounded(conopt.ConstrainedProblem):
    """min x1 + x2 + c x1^2 s.t. x1 <= 1: unbounded below (x2 -> -inf)."""

    def __init__(self, curvature: float = 0.0) -> None:
        super().__init__()
        self.curvature = curvature
        self.cap = conopt.Constraint("<=")
        self.points: list[torch.Tensor] = []

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        self.points.append(x.detach().clone())
        f = x.sum() + self.curvature * x[0] ** 2
        return conopt.ProblemState(f, {self.cap: x[0] - 1})


@pytest.mark.parametrize(
    ("curvature", "x0"),
    [(0.0, (0.0, 0.0)), (0.0, (-3.0, 5.0)), (0.0, (2.0, 1.0)), (1.0, (0.5, -2.0))],
)
def test_unbounded_problem_is_detected(curvature, x0):
    # Issue #12, item 12: this ran 50 x 500 inner iterations (11 s) creeping by unit steps
    # and returned x0 with "outer iteration limit reached".
    problem = Unbounded(curvature)
    result = conopt.solve(problem, torch.tensor(x0, dtype=f64))
    assert result.status == 6 and not result.success
    assert "unbounded" in result.message
    assert result.nit <= 2 and result.ninner <= 50 and result.nfev <= 60
    assert result.fun <= -1e20 or float(result.x.abs().max()) >= 1e20
    assert result.max_violation <= 1e-7
    if curvature == 0:  # every step is accepted in full: the evaluations are the iterates
        # The steps grow geometrically, never more than tenfold from one step to the next.
        steps = [float((b - a).abs().max()) for a, b in itertools.pairwise(problem.points)]
        assert all(b <= 10 * a * (1 + 1e-12) for a, b in itertools.pairwise(steps))
        assert steps[-1] >= 1e18


def test_bounded_problem_with_a_linear_direction_is_not_unbounded():
    # min x1 + x2 s.t. x1^2 + x2^2 <= 1e6: the steps extrapolated along the linear objective
    # overshoot the disk, and the solve must still end at x* = -(1e3 / sqrt 2) (1, 1).
    class BigDisk(Unbounded):
        def evaluate(self, x):
            return conopt.ProblemState(x.sum(), {self.cap: (x**2).sum() - 1e6})

    result = conopt.solve(BigDisk(), torch.zeros(2, dtype=f64))
    assert result.success, result.message
    torch.testing.assert_close(
        result.x, torch.full((2,), -1e3 / math.sqrt(2), dtype=f64), atol=1e-6, rtol=0
    )


# ----------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------


def test_bounds_are_honoured_at_every_evaluation():
    target = torch.tensor([-1.0, 0.5, 3.0], dtype=f64)
    problem = Box(target)
    x0 = torch.tensor([5.0, -5.0, 0.2], dtype=f64)  # outside the box: clipped
    result = conopt.solve(problem, x0, lower=0.0, upper=torch.tensor([1.0, 1.0, 2.0]))
    assert result.success
    upper = torch.tensor([1.0, 1.0, 2.0], dtype=f64)
    for point in problem.points:
        assert bool((point >= 0).all()) and bool((point <= upper).all())
    torch.testing.assert_close(result.x, torch.tensor([0.0, 0.5, 2.0], dtype=f64))
    lower_mult, upper_mult = result.bound_multipliers
    # grad f = 2 (x - c): +2 at the lower bound of x0, -2 at the upper bound of x2.
    torch.testing.assert_close(lower_mult, torch.tensor([2.0, 0.0, 0.0], dtype=f64))
    torch.testing.assert_close(upper_mult, torch.tensor([0.0, 0.0, 2.0], dtype=f64))
    assert result.multipliers == {} and result.max_violation == 0.0


def test_bounds_and_constraints_together():
    # min -x1 - x2 s.t. x1^2 + x2^2 <= 1, 0 <= x <= 0.6: x = (0.6, 0.6) (the disk is inactive).
    class Quarter(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.disk = conopt.Constraint("<=")

        def evaluate(self, x):
            return conopt.ProblemState(-x.sum(), {self.disk: (x**2).sum() - 1})

    result = conopt.solve(Quarter(), torch.zeros(2, dtype=f64), lower=0.0, upper=0.6)
    assert result.success
    torch.testing.assert_close(result.x, torch.full((2,), 0.6, dtype=f64))
    torch.testing.assert_close(result.bound_multipliers[1], torch.ones(2, dtype=f64))
    assert float(result.multipliers["disk"]) == 0.0


# ----------------------------------------------------------------------------------------------
# Accuracy on QPs with known solutions, scaling, shapes and devices
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "m_ineq", "m_eq"), [(0, 3, 0), (1, 0, 3), (2, 4, 2)])
def test_random_qp_solution_and_multipliers(seed, m_ineq, m_eq):
    data = random_qp(seed, n=8, m_ineq=m_ineq, m_eq=m_eq)
    problem = QP(data)
    result = conopt.solve(problem, torch.zeros(8, dtype=f64))
    assert result.success, result.message
    torch.testing.assert_close(result.x, data.x_star, atol=1e-5, rtol=0)
    if m_ineq:
        torch.testing.assert_close(result.multipliers["ineq"], data.lam_star, atol=1e-4, rtol=0)
        # The multipliers are also written into the constraint's DenseMultiplier.
        torch.testing.assert_close(problem.multipliers("<="), result.multipliers["ineq"])
    if m_eq:
        torch.testing.assert_close(result.multipliers["eq"], data.mu_star, atol=1e-4, rtol=0)
    assert result.kkt.min_multiplier is None or result.kkt.min_multiplier >= 0


def test_constraint_scaling_is_invisible_in_the_result():
    class Scaled(Scalar):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def evaluate(self, x):
            return conopt.ProblemState(1e3 * (x**2).sum(), {self.c: self.factor * (1 - x[0])})

    for scaling in (True, False):
        results = [
            conopt.solve(Scaled(k), torch.zeros(1, dtype=f64), scaling=scaling, max_outer=100)
            for k in (1.0, 1e4)
        ]
        for k, result in zip((1.0, 1e4), results, strict=True):
            assert result.success
            assert float(result.x[0]) == pytest.approx(1.0, abs=1e-7)
            assert float(result.multipliers["c"]) == pytest.approx(2e3 / k, rel=1e-5)


def test_result_fields_shapes_and_dtype():
    class Matrix(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.rows = conopt.Constraint("==", shape=2)
            self.cap = conopt.Constraint("<=", shape=(2, 2))

        def evaluate(self, x):
            return conopt.ProblemState(
                ((x - 2) ** 2).sum(), {self.rows: x.sum(dim=1) - 1, self.cap: x - 0.8}
            )

    x0 = torch.zeros(2, 2, dtype=f64)
    result = conopt.solve(Matrix(), x0)
    assert result.success and result.status == 0
    assert result.x.shape == (2, 2) and result.x.dtype == f64
    torch.testing.assert_close(result.x.sum(dim=1), torch.ones(2, dtype=f64), atol=1e-7, rtol=0)
    assert set(result.multipliers) == {"rows", "cap"}
    assert result.multipliers["rows"].shape == (2,) and result.multipliers["cap"].shape == (2, 2)
    assert all(t.shape == (2, 2) for t in result.bound_multipliers)
    assert result.fun == pytest.approx(float(((result.x - 2) ** 2).sum()))
    assert result.max_violation == result.kkt.max_violation <= 1e-7
    assert result.nit >= 1 and result.ninner >= 1 and result.nfev >= result.ninner
    assert result.time > 0 and result.rho > 0 and result.message == STATUS_MESSAGES[0]


def test_float32_keeps_its_dtype():
    x0 = torch.zeros(1, dtype=torch.float32)
    result = conopt.solve(Scalar("<="), x0, feasibility_tol=1e-4, optimality_tol=1e-3)
    assert result.x.dtype == torch.float32
    assert float(result.x[0]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    data = random_qp(3, n=6, m_ineq=2, m_eq=1)
    problem = QP(data).cuda()
    result = conopt.solve(problem, torch.zeros(6, dtype=f64, device="cuda"), lower=-10.0)
    assert result.success and result.x.device.type == "cuda"
    torch.testing.assert_close(result.x.cpu(), data.x_star, atol=1e-5, rtol=0)


def test_doc_example_disk():
    class Disk(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.inside = conopt.Constraint("<=")

        def evaluate(self, x):
            return conopt.ProblemState(x.sum(), {self.inside: (x**2).sum() - 1})

    result = conopt.solve(Disk(), torch.zeros(2, dtype=f64))
    torch.testing.assert_close(result.x, torch.full((2,), -math.sqrt(0.5), dtype=f64))
    assert float(result.multipliers["inside"]) == pytest.approx(math.sqrt(0.5), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -1.0}, "rho"),
        ({"rho": 1e13}, "rho"),
        ({"rho_growth": 1.0}, "rho_growth"),
        ({"feasibility_tol": 0.0}, "tolerances"),
        ({"optimality_tol": -1.0}, "tolerances"),
        ({"max_outer": 0}, "max_outer"),
        ({"history_size": 0}, "history_size"),
        ({"max_evaluations": 0}, "max_evaluations"),
        ({"lower": 1.0, "upper": 0.0}, "lower bounds"),
        ({"lower": torch.zeros(3)}, "broadcast"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conopt.solve(Scalar(), torch.zeros(1, dtype=f64), **kwargs)


def test_bad_problem_and_point():
    with pytest.raises(TypeError, match="ConstrainedProblem"):
        conopt.solve(torch.nn.Linear(1, 1), torch.zeros(1, dtype=f64))
    with pytest.raises(TypeError, match="floating-point"):
        conopt.solve(Scalar(), torch.zeros(1, dtype=torch.long))


def test_non_dense_multipliers_are_rejected():
    class Indexed(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.c = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(4))

        def evaluate(self, x):
            return conopt.ProblemState(x.sum(), {self.c: x})

    with pytest.raises(TypeError, match="dense multipliers"):
        conopt.solve(Indexed(), torch.zeros(1, dtype=f64))


def test_wrong_constraint_shape_is_an_error():
    class WrongShape(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.c = conopt.Constraint("<=", shape=3)

        def evaluate(self, x):
            return conopt.ProblemState(x.sum(), {self.c: x})

    with pytest.raises(ValueError, match="shape"):
        conopt.solve(WrongShape(), torch.zeros(2, dtype=f64))
