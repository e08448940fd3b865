"""Laws of the dual updates and of the optimizers on toy problems (hypothesis)."""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_problems import sgd_gda

import conopt


class LinearQP(conopt.ConstrainedProblem):
    """min ½ xᵀQx + cᵀx  s.t.  A x − b ≤ 0 (and optionally E x − e = 0)."""

    def __init__(self, Q, c, A, b, E=None, e=None, formulation=None):
        super().__init__()
        self.Q, self.c, self.A, self.b, self.E, self.e = Q, c, A, b, E, e
        self.ineq = conopt.Constraint("<=", shape=A.shape[0], formulation=formulation)
        if E is not None:
            self.eq = conopt.Constraint("==", shape=E.shape[0])

    def evaluate(self, x):
        constraints = {self.ineq: self.A @ x - self.b}
        if self.E is not None:
            constraints[self.eq] = self.E @ x - self.e
        return conopt.ProblemState(0.5 * x @ self.Q @ x + self.c @ x, constraints)


@st.composite
def qps(draw, equalities=False):
    n = draw(st.integers(2, 5))
    m = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = 1 + 2 * torch.rand(n, generator=g, dtype=torch.float64)
    Q = basis @ torch.diag(eigenvalues) @ basis.T
    c = torch.randn(n, generator=g, dtype=torch.float64)
    A = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64)
    E = e = None
    if equalities:
        E = torch.randn(1, n, generator=g, dtype=torch.float64)
        e = torch.randn(1, generator=g, dtype=torch.float64)
    return Q, c, A, b, E, e


def sgd_players(problem, x, lr_primal, lr_dual):
    return conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD([x], lr=lr_primal),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=lr_dual, maximize=True),
    )


@given(qps(equalities=True), st.floats(0.01, 1.0), st.floats(0.0, 2.0))
def test_dual_step_is_projected_ascent_by_lr_times_violation(qp, lr, init):
    """λ⁺ = max(λ + η g, 0) for inequalities and μ⁺ = μ + η h for equalities (SGD dual)."""
    problem = LinearQP(*qp)
    with torch.no_grad():
        problem.ineq.multiplier.weight.fill_(init)
    x = torch.randn(qp[0].shape[0], dtype=torch.float64, requires_grad=True)
    lam, mu = problem.ineq.multiplier.weight.clone(), problem.eq.multiplier.weight.clone()
    g, h = (t.detach() for t in problem.evaluate(x).constraints.values())
    sgd_players(problem, x, 0.01, lr).step(lambda: problem.evaluate(x))
    assert torch.allclose(problem.ineq.multiplier.weight, torch.clamp(lam + lr * g, min=0))
    assert torch.allclose(problem.eq.multiplier.weight, mu + lr * h)
    assert bool((problem.ineq.multiplier.weight >= 0).all())


@given(qps(), st.floats(0.01, 1.0), st.floats(0.0, 5.0))
def test_augmented_lagrangian_dual_step_is_scaled_by_rho(qp, lr, rho):
    """With the augmented Lagrangian, λ⁺ = max(λ + η ρ g, 0)."""
    problem = LinearQP(*qp, formulation=conopt.AugmentedLagrangian(rho=rho))
    x = torch.randn(qp[0].shape[0], dtype=torch.float64, requires_grad=True)
    lam = problem.ineq.multiplier.weight.clone()
    g = problem.evaluate(x).constraints[problem.ineq].detach()
    sgd_players(problem, x, 0.01, lr).step(lambda: problem.evaluate(x))
    assert torch.allclose(problem.ineq.multiplier.weight, torch.clamp(lam + lr * rho * g, min=0))


@given(qps(), st.floats(0.01, 1.0))
def test_restarts_zero_the_multipliers_of_strictly_feasible_inequalities(qp, lr):
    """After a step with dual restarts, g_i < 0 implies λ_i = 0."""
    problem = LinearQP(*qp)
    with torch.no_grad():
        problem.ineq.multiplier.weight.fill_(1.0)
    x = torch.randn(qp[0].shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD([x], lr=0.01),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=lr, momentum=0.5, maximize=True),
        dual_restarts=True,
    )
    report = optimizer.step(lambda: problem.evaluate(x))
    feasible = report.constraints["ineq"].strict_value < 0
    weight = problem.ineq.multiplier.weight
    assert bool((weight[feasible] == 0).all())
    momentum = optimizer.dual_optimizer.state[weight]["momentum_buffer"]
    assert bool((momentum[feasible] == 0).all())


@given(qps(equalities=True), st.floats(0.0, 3.0))
def test_primal_gradient_is_gradient_of_written_out_lagrangian(qp, init):
    """∇ₓ of the assembled objective equals ∇f + Σ λᵢ∇gᵢ + Σ μⱼ∇hⱼ."""
    problem = LinearQP(*qp)
    with torch.no_grad():
        problem.ineq.multiplier.weight.fill_(init)
        problem.eq.multiplier.weight.fill_(-init)
    x = torch.randn(qp[0].shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = sgd_players(problem, x, 0.01, 0.01)
    optimizer.lagrangian(problem.evaluate(x)).backward()
    ours = x.grad.clone()
    x.grad = None
    state = problem.evaluate(x)
    lam, mu = problem.ineq.multiplier.weight.detach(), problem.eq.multiplier.weight.detach()
    written = (
        state.loss + lam @ state.constraints[problem.ineq] + mu @ state.constraints[problem.eq]
    )
    (expected,) = torch.autograd.grad(written, x)
    assert torch.allclose(ours, expected)


@settings(max_examples=8)
@given(qps(equalities=True))
def test_gda_converges_to_the_qp_solution_of_a_reference_solver(qp):
    """Simultaneous GDA reaches the KKT point found by SciPy's SLSQP within 1e-4."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    Q, c, A, b, E, e = qp
    # Make the feasible set non-empty: shift b so that the origin is feasible.
    b = b.abs() + 0.1
    problem = LinearQP(Q, c, A, b, E, e)
    reference = scipy_optimize.minimize(
        lambda v: 0.5 * v @ Q.numpy() @ v + c.numpy() @ v,
        torch.zeros(len(c)).numpy(),
        jac=lambda v: Q.numpy() @ v + c.numpy(),
        constraints=[
            {"type": "ineq", "fun": lambda v: b.numpy() - A.numpy() @ v},
            {"type": "eq", "fun": lambda v: E.numpy() @ v - e.numpy()},
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    x = torch.zeros(len(c), dtype=torch.float64, requires_grad=True)
    optimizer = sgd_players(problem, x, 0.1, 0.1)
    for _ in range(20000):
        report = optimizer.step(lambda: problem.evaluate(x))
        if report.kkt.satisfied(1e-7):
            break
    assert torch.allclose(x.detach(), torch.from_numpy(reference.x), atol=1e-4)
    assert report.kkt.satisfied(1e-4)


class Bilinear(conopt.ConstrainedProblem):
    """min_x max_y x·y, written as f = 0 with the equality h(x) = x and multiplier y."""

    def __init__(self):
        super().__init__()
        self.h = conopt.Constraint("==")

    def evaluate(self, x):
        return conopt.ProblemState(torch.zeros((), dtype=x.dtype), {self.h: x})


def _bilinear_distance(optimizer_class, primal_class, steps=2000):
    problem = Bilinear()
    with torch.no_grad():
        problem.h.multiplier.weight.fill_(1.0)
    x = torch.tensor(1.0, requires_grad=True)
    optimizer = optimizer_class(
        problem,
        primal=primal_class([x], lr=0.1),
        dual=primal_class(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    for _ in range(steps):
        optimizer.step(lambda: problem.evaluate(x))
    return float(torch.hypot(x.detach(), problem.h.multiplier.weight.detach()))


def test_extragradient_converges_on_bilinear_game_where_gda_does_not():
    """On min_x max_y xy from (1, 1): extragradient → (0, 0); simultaneous GDA spirals out."""
    start = 2**0.5
    assert _bilinear_distance(conopt.optim.Extragradient, conopt.optim.ExtraSGD) < 0.05 * start
    assert _bilinear_distance(conopt.optim.SimultaneousGDA, torch.optim.SGD) > start


@pytest.mark.parametrize("dual_kind", ["sgd_momentum", "adam", "nupi"])
def test_resume_from_state_dicts_is_bit_for_bit(dual_kind):
    """K steps + save/load + K steps equals 2K uninterrupted steps exactly."""
    g = torch.Generator().manual_seed(0)
    qp = (
        torch.eye(3, dtype=torch.float64) * 2,
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.randn(2, 3, generator=g, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
    )

    def build():
        rule = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.9)
        problem = LinearQP(*qp, formulation=conopt.AugmentedLagrangian(1.0, penalty_update=rule))
        x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        duals = {
            "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, maximize=True),
            "adam": lambda p: torch.optim.Adam(p, lr=0.05, maximize=True),
            "nupi": lambda p: conopt.optim.nuPI(p, lr=0.05, kp=1.0, ki=1.0, maximize=True),
        }
        optimizer = conopt.optim.SimultaneousGDA(
            problem,
            torch.optim.Adam([x], lr=0.05),
            duals[dual_kind](problem.dual_parameters()),
            dual_restarts=True,
        )
        return problem, x, optimizer

    def run(problem, x, optimizer, steps):
        for _ in range(steps):
            optimizer.step(lambda: problem.evaluate(x))

    problem, x, optimizer = build()
    run(problem, x, optimizer, 40)
    buffer = io.BytesIO()
    torch.save(
        {
            "problem": problem.state_dict(),
            "optimizer": optimizer.state_dict(),
            "x": x.detach().clone(),
        },
        buffer,
    )
    run(problem, x, optimizer, 40)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    problem2, x2, optimizer2 = build()
    with torch.no_grad():
        x2.copy_(saved["x"])
    problem2.load_state_dict(saved["problem"])
    optimizer2.load_state_dict(saved["optimizer"])
    run(problem2, x2, optimizer2, 40)
    assert torch.equal(x, x2)
    for key, value in problem.state_dict().items():
        assert torch.equal(value, problem2.state_dict()[key]), key


def test_nan_in_a_constraint_is_refused_naming_it_and_nothing_changes():
    qp = (torch.eye(2), torch.zeros(2), torch.ones(1, 2), torch.zeros(1))
    problem = LinearQP(*qp)
    x = torch.ones(2, requires_grad=True)
    optimizer = sgd_players(problem, x, 0.1, 0.1)
    before = (x.detach().clone(), problem.ineq.multiplier.weight.detach().clone())

    def closure():
        return conopt.ProblemState(x.sum(), {problem.ineq: torch.full((1,), float("nan")) * x[0]})

    with pytest.raises(conopt.optim.NonFiniteError, match="'ineq'"):
        optimizer.step(closure)
    assert torch.equal(x.detach(), before[0])
    assert torch.equal(problem.ineq.multiplier.weight, before[1])
    skipping = sgd_gda(problem, x, on_nonfinite="skip")
    assert skipping.step(closure).skipped and skipping.skipped_steps == 1
    assert torch.equal(x.detach(), before[0])


def test_wrong_shape_and_unregistered_constraints_are_named():
    qp = (torch.eye(2), torch.zeros(2), torch.ones(1, 2), torch.zeros(1))
    problem = LinearQP(*qp)
    x = torch.ones(2, requires_grad=True)
    optimizer = sgd_players(problem, x, 0.1, 0.1)
    with pytest.raises(ValueError, match="'ineq': value has shape \\(2,\\), expected \\(1,\\)"):
        optimizer.step(lambda: conopt.ProblemState(x.sum(), {problem.ineq: x}))
    with pytest.raises(ValueError, match="unknown constraint 'nope'"):
        optimizer.step(lambda: conopt.ProblemState(x.sum(), {"nope": x}))


def test_dual_optimizer_must_maximize():
    problem = LinearQP(torch.eye(2), torch.zeros(2), torch.ones(1, 2), torch.zeros(1))
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="maximize=True"):
        conopt.optim.SimultaneousGDA(
            problem,
            torch.optim.SGD([x], lr=0.1),
            torch.optim.SGD(problem.dual_parameters(), lr=0.1),
        )


def test_negative_penalty_coefficient_is_rejected():
    with pytest.raises(ValueError, match="penalty coefficient must be finite and >= 0"):
        conopt.AugmentedLagrangian(rho=-1.0)


def test_apply_accepts_a_disabled_grad_scaler():
    """``GradScaler(enabled=False)`` (AMP switched off by a flag) steps like no scaler."""
    qp = (torch.eye(2), torch.zeros(2), torch.ones(1, 2), -torch.ones(1))
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", enabled=False)):
        problem = LinearQP(*qp)
        x = torch.ones(2, requires_grad=True)
        optimizer = sgd_players(problem, x, 0.1, 0.1)
        lagrangian = optimizer.lagrangian(problem.evaluate(x))
        (lagrangian if scaler is None else scaler.scale(lagrangian)).backward()
        optimizer.apply(scaler=scaler)
        results.append((x.detach().clone(), problem.ineq.multiplier.weight.detach().clone()))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
