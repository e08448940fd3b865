"""Laws of the dual updates and of the optimizers, checked with hypothesis on random QPs.

Problems: min ½xᵀQx + cᵀx s.t. Ax − b ≤ 0, Ex − d = 0, with random dimensions, data, points,
multipliers and step sizes (float64).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from toy_problems import QP, QPData, kkt_solution, random_qp, slsqp_solution

import conopt
from conopt.optim import AlternatingGDA, Extragradient, ExtraSGD, SimultaneousGDA, nuPI

finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)
nonnegative = st.floats(0, 3, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw, min_constraints=1):
    """A random (convex) QP, a point x, multipliers λ ≥ 0 and μ, and a constraint layout."""
    n = draw(st.integers(1, 5))
    m_ineq = draw(st.integers(0, 3))
    m_eq = draw(st.integers(0 if m_ineq >= min_constraints else min_constraints - m_ineq, 3))

    def matrix(*shape, elements=finite):
        return torch.from_numpy(draw(arrays(np.float64, shape, elements=elements)))

    root = matrix(n, n)
    data = QPData(
        Q=root.T @ root + torch.eye(n, dtype=torch.float64),
        c=matrix(n),
        A=matrix(m_ineq, n),
        b=matrix(m_ineq),
        E=matrix(m_eq, n),
        d=matrix(m_eq),
    )
    return {
        "data": data,
        "x": matrix(n),
        "lam": matrix(m_ineq, elements=nonnegative),
        "mu": matrix(m_eq),
        "split": draw(st.booleans()),
    }


step_sizes = st.floats(1e-3, 1.0)
penalties = st.floats(1e-3, 10.0)


def _setup(
    case,
    formulation=None,
    cls=SimultaneousGDA,
    primal=torch.optim.SGD,
    dual=torch.optim.SGD,
    dual_lr=0.1,
    **kwargs,
):
    problem = QP(case["data"], split=case["split"], formulation=formulation)
    problem.set_multipliers("<=", case["lam"])
    problem.set_multipliers("==", case["mu"])
    x = case["x"].clone().requires_grad_()
    optimizer = cls(
        problem,
        primal([x], lr=0.1),
        dual(problem.dual_parameters(), lr=dual_lr, maximize=True),
        **kwargs,
    )
    return problem, x, optimizer


# ------------------------------------------------------------------------- dual updates
DUALS = {
    "sgd": lambda ps, **k: torch.optim.SGD(ps, **k),
    "sgd-momentum": lambda ps, **k: torch.optim.SGD(ps, momentum=0.9, **k),
    "adam": lambda ps, **k: torch.optim.Adam(ps, **k),
    "nupi": lambda ps, **k: nuPI(ps, kp=2.0, ki=1.0, **k),
}
FORMULATIONS = {
    "lagrangian": None,
    "augmented": lambda: conopt.AugmentedLagrangian(rho=2.0),
}


@given(
    case=problems(),
    dual=st.sampled_from(sorted(DUALS)),
    formulation=st.sampled_from(sorted(FORMULATIONS)),
    method=st.sampled_from(["simultaneous", "alternating", "dual_first", "extragradient"]),
    lr=step_sizes,
)
def test_inequality_multipliers_are_never_negative_after_a_step(
    case, dual, formulation, method, lr
):
    """λ ≥ 0 after every step, whatever the dual optimizer, formulation and method."""
    kwargs = {}
    if method == "extragradient":
        kwargs.update(
            cls=Extragradient,
            primal=ExtraSGD,
            dual=lambda ps, **k: ExtraSGD(ps, momentum=0.5, **k),
        )
    else:
        kwargs["dual"] = DUALS[dual]
        if method != "simultaneous":
            kwargs.update(cls=AlternatingGDA, dual_first=method == "dual_first")
    problem, x, optimizer = _setup(case, FORMULATIONS[formulation], dual_lr=lr, **kwargs)
    for _ in range(3):
        optimizer.step(lambda: problem.evaluate(x))
        assert (problem.multipliers("<=") >= 0).all()


@given(case=problems(), lr=step_sizes, formulation=st.sampled_from(sorted(FORMULATIONS)))
def test_equality_multipliers_move_with_the_sign_of_h(case, lr, formulation):
    """sign(μ_new − μ_old) = sign(h(x_old)) for a gradient-ascent dual step.

    In floating point a move smaller than μ's rounding may vanish, but never goes against h.
    """
    problem, x, optimizer = _setup(case, FORMULATIONS[formulation], dual_lr=lr)
    h = case["data"].h(case["x"])
    optimizer.step(lambda: problem.evaluate(x))
    moved = problem.multipliers("==") - case["mu"]
    assert (torch.sign(moved) * torch.sign(h) >= 0).all()
    representable = lr * h.abs() > 4 * torch.finfo(h.dtype).eps * case["mu"].abs().clamp(min=1)
    assert torch.equal(torch.sign(moved)[representable], torch.sign(h)[representable])


@given(case=problems(), lr=step_sizes)
def test_sgd_dual_step_is_lr_times_the_violation_before_projection(case, lr):
    """λ_new = max(λ + η g(x), 0) and μ_new = μ + η h(x), exactly."""
    problem, x, optimizer = _setup(case, dual_lr=lr)
    data = case["data"]
    optimizer.step(lambda: problem.evaluate(x))
    g, h = data.g(case["x"]), data.h(case["x"])
    assert torch.equal(problem.multipliers("<="), torch.add(case["lam"], g, alpha=lr).clamp(min=0))
    assert torch.equal(problem.multipliers("=="), torch.add(case["mu"], h, alpha=lr))


@given(case=problems(), lr=step_sizes, rho=penalties)
def test_augmented_lagrangian_sgd_dual_step_is_lr_times_rho_times_the_violation(case, lr, rho):
    """λ_new = max(λ + η ρ g(x), 0) and μ_new = μ + η ρ h(x), exactly."""
    problem, x, optimizer = _setup(case, lambda: conopt.AugmentedLagrangian(rho=rho), dual_lr=lr)
    data = case["data"]
    optimizer.step(lambda: problem.evaluate(x))
    rho_t = torch.tensor(rho)
    g, h = data.g(case["x"]), data.h(case["x"])
    expected_lam = torch.add(case["lam"], rho_t * g, alpha=lr).clamp(min=0)
    assert torch.equal(problem.multipliers("<="), expected_lam)
    assert torch.equal(problem.multipliers("=="), torch.add(case["mu"], rho_t * h, alpha=lr))


@given(case=problems(), lr=step_sizes, momentum=st.sampled_from([0.0, 0.9]))
def test_restarts_end_the_step_of_strictly_feasible_inequalities_at_zero(case, lr, momentum):
    """With restarts: λ_new = 0 where g(x) < 0, and max(λ + η g(x), 0) elsewhere."""
    problem, x, optimizer = _setup(
        case,
        dual=lambda ps, **k: torch.optim.SGD(ps, momentum=momentum, **k),
        dual_lr=lr,
        dual_restarts=True,
    )
    optimizer.step(lambda: problem.evaluate(x))
    g = case["data"].g(case["x"])
    stepped = torch.add(case["lam"], g, alpha=lr).clamp(min=0)
    expected = torch.where(g < 0, torch.zeros_like(g), stepped)
    assert torch.equal(problem.multipliers("<="), expected)


# ----------------------------------------------------------------------- primal gradient
def _primal_gradient(problem, x, optimizer):
    optimizer.zero_grad()
    objective = optimizer.lagrangian(problem.evaluate(x))
    objective.backward()
    return objective.detach(), x.grad.detach().clone()


def _written_out_gradient(value):
    x = value.clone().requires_grad_()
    return x, lambda expression: torch.autograd.grad(expression(x), x)[0]


@given(case=problems())
def test_primal_gradient_is_grad_f_plus_multipliers_times_constraint_gradients(case):
    """∇ₓ = ∇f + Σᵢ λᵢ∇gᵢ + Σⱼ μⱼ∇hⱼ, as autograd gives it on the written-out Lagrangian."""
    problem, x, optimizer = _setup(case)
    value, grad = _primal_gradient(problem, x, optimizer)
    data, lam, mu = case["data"], case["lam"], case["mu"]

    def lagrangian(z):
        return data.f(z) + lam @ data.g(z) + mu @ data.h(z)

    z, differentiate = _written_out_gradient(case["x"])
    assert torch.allclose(grad, differentiate(lagrangian), rtol=1e-12, atol=1e-12)
    assert torch.allclose(value, lagrangian(z).detach(), rtol=1e-12, atol=1e-12)


@given(case=problems(), rho=penalties)
def test_augmented_lagrangian_primal_gradient_uses_the_shifted_multipliers(case, rho):
    """∇ₓ = ∇f + Σᵢ [λᵢ + ρgᵢ]₊∇gᵢ + Σⱼ (μⱼ + ρhⱼ)∇hⱼ."""
    problem, x, optimizer = _setup(case, lambda: conopt.AugmentedLagrangian(rho=rho))
    value, grad = _primal_gradient(problem, x, optimizer)
    data, lam, mu = case["data"], case["lam"], case["mu"]

    def augmented(z):
        g, h = data.g(z), data.h(z)
        inequality = ((lam + rho * g).clamp(min=0) ** 2 - lam**2).sum() / (2 * rho)
        return data.f(z) + inequality + mu @ h + rho / 2 * (h**2).sum()

    z, differentiate = _written_out_gradient(case["x"])
    g, h = data.g(case["x"]), data.h(case["x"])
    shifted = data.Q @ case["x"] + data.c
    shifted = shifted + data.A.T @ (lam + rho * g).clamp(min=0) + data.E.T @ (mu + rho * h)
    assert torch.allclose(grad, shifted, rtol=1e-10, atol=1e-10)
    assert torch.allclose(grad, differentiate(augmented), rtol=1e-10, atol=1e-10)
    assert torch.allclose(value, augmented(z).detach(), rtol=1e-10, atol=1e-10)


# -------------------------------------------------------------------------- convergence
@st.composite
def solvable_qps(draw):
    """Strictly convex QPs (eigenvalues of Q in [1, 3]) with a known, well-conditioned KKT point."""
    n = draw(st.integers(1, 5))
    m_ineq = draw(st.integers(0, min(n, 3)))
    m_eq = draw(st.integers(1 if m_ineq == 0 else 0, min(n, 3) - m_ineq))
    return random_qp(draw(st.integers(0, 2**31 - 1)), n, m_ineq, m_eq)


CONVERGENT = {
    "simultaneous": dict(),
    "alternating": dict(cls=AlternatingGDA),
    "alternating-dual-first": dict(cls=AlternatingGDA, dual_first=True),
    "extragradient": dict(cls=Extragradient, primal=ExtraSGD, dual=ExtraSGD),
    "augmented-lagrangian": dict(
        formulation=lambda: conopt.AugmentedLagrangian(rho=0.5), dual_lr=1.0
    ),
    "augmented-lagrangian-nupi": dict(
        formulation=lambda: conopt.AugmentedLagrangian(rho=0.5),
        dual=lambda ps, **k: nuPI(ps, kp=1.0, ki=1.0, **k),
        dual_lr=1.0,
    ),
}


def _reference(qp):
    """SLSQP for QPs with inequalities, the KKT linear system for equality-only QPs."""
    if qp.A.shape[0]:
        return torch.from_numpy(slsqp_solution(qp))
    return kkt_solution(qp)[0]


@pytest.mark.parametrize("method", list(CONVERGENT))
@settings(max_examples=8)
@given(qp=solvable_qps())
def test_methods_converge_to_the_reference_solution_of_a_strictly_convex_qp(method, qp):
    """On a strictly convex QP with LICQ and strict complementarity, each method reaches the
    reference solver's solution within 1e-4 and its KKT report says so."""
    config = dict(CONVERGENT[method])
    cls = config.pop("cls", SimultaneousGDA)
    primal = config.pop("primal", torch.optim.SGD)
    dual = config.pop("dual", torch.optim.SGD)
    dual_lr = config.pop("dual_lr", 0.2)
    problem = QP(qp, formulation=config.pop("formulation", None))
    x = torch.zeros(qp.n).requires_grad_()
    optimizer = cls(
        problem,
        primal([x], lr=0.2),
        dual(problem.dual_parameters(), lr=dual_lr, maximize=True),
        **config,
    )
    reference = _reference(qp)
    assert torch.allclose(reference, qp.x_star, atol=1e-6)  # the reference solver agrees
    for step in range(3000):
        report = optimizer.step(lambda: problem.evaluate(x))
        if step % 25 == 0 and report.kkt.satisfied(1e-7):
            break
    assert (x.detach() - reference).abs().max() <= 1e-4
    assert report.kkt.satisfied(1e-4), report.kkt
    assert torch.allclose(problem.multipliers("<="), qp.lam_star, atol=1e-3)
    assert torch.allclose(problem.multipliers("=="), qp.mu_star, atol=1e-3)
