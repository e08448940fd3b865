"""Specification of conopt.formulations: Lagrangian, augmented Lagrangian, quadratic penalty."""

import math

import pytest
import torch

import conopt
from conopt.optim import SimultaneousGDA

G = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.5], dtype=torch.float64)
LAM = torch.tensor([0.0, 0.5, 1.0, 0.0, 2.0], dtype=torch.float64)
MU = torch.tensor([-1.0, 0.5, 1.0, 0.0, 2.0], dtype=torch.float64)


class Both(conopt.ConstrainedProblem):
    """f(x) = ½‖x‖², g(x) = x + G (inequality), h(x) = x + G (equality)."""

    def __init__(self, formulation, ineq_init=LAM, eq_init=MU):
        super().__init__()
        with_multiplier = formulation().uses_multiplier
        self.g = conopt.Constraint(
            "<=",
            5,
            formulation=formulation(),
            multiplier=conopt.DenseMultiplier(init=ineq_init) if with_multiplier else None,
        )
        self.h = conopt.Constraint(
            "==",
            5,
            formulation=formulation(),
            multiplier=conopt.DenseMultiplier(init=eq_init) if with_multiplier else None,
        )

    def evaluate(self, x):
        return conopt.ProblemState(
            loss=0.5 * (x**2).sum(), constraints={self.g: x + G, self.h: x + G}
        )


def _lagrangian_and_grad(formulation, x0=None, lr=0.1):
    """The value of optimizer.lagrangian() and x's gradient from its backward pass."""
    problem = Both(formulation)
    x = (torch.zeros(5) if x0 is None else x0.clone()).requires_grad_()
    duals = list(problem.dual_parameters())
    dual = torch.optim.SGD(duals, lr=lr, maximize=True) if duals else None
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=lr), dual)
    value = optimizer.lagrangian(problem.evaluate(x))
    value.backward()
    return problem, optimizer, value.detach(), x.grad.detach()


# ---------------------------------------------------------------------------- term values
def test_lagrangian_value_is_f_plus_lambda_g_plus_mu_h():
    _, _, value, grad = _lagrangian_and_grad(conopt.Lagrangian)
    assert value == pytest.approx(float(0.5 * 0 + LAM @ G + MU @ G))
    assert torch.allclose(grad, LAM + MU)


@pytest.mark.parametrize("rho", [0.5, 1.0, 4.0])
def test_augmented_lagrangian_value_matches_the_written_out_formula(rho):
    _, _, value, grad = _lagrangian_and_grad(lambda: conopt.AugmentedLagrangian(rho=rho))
    inequality = ((LAM + rho * G).clamp(min=0) ** 2 - LAM**2).sum() / (2 * rho)
    equality = MU @ G + rho / 2 * (G**2).sum()
    assert value == pytest.approx(float(inequality + equality), rel=1e-12)
    expected_grad = (LAM + rho * G).clamp(min=0) + (MU + rho * G)
    assert torch.allclose(grad, expected_grad, rtol=1e-12)


@pytest.mark.parametrize("rho", [0.5, 2.0])
def test_quadratic_penalty_value_matches_the_written_out_formula(rho):
    _, _, value, grad = _lagrangian_and_grad(lambda: conopt.QuadraticPenalty(rho=rho))
    expected = rho / 2 * (G.clamp(min=0) ** 2).sum() + rho / 2 * (G**2).sum()
    assert value == pytest.approx(float(expected), rel=1e-12)
    assert torch.allclose(grad, rho * G.clamp(min=0) + rho * G)


def test_quadratic_penalty_has_no_multiplier_and_no_dual_direction():
    assert not conopt.QuadraticPenalty.uses_multiplier
    with pytest.raises(TypeError, match="no multiplier"):
        conopt.QuadraticPenalty.dual_direction(G, torch.ones(()))


def test_dual_directions_are_g_for_the_lagrangian_and_rho_g_for_the_augmented_lagrangian():
    rho = torch.tensor(3.0, dtype=torch.float64)
    assert torch.equal(conopt.Lagrangian.dual_direction(G, None), G)
    assert torch.equal(conopt.AugmentedLagrangian.dual_direction(G, rho), rho * G)


def test_augmented_lagrangian_dual_step_with_sgd_lr_one_is_the_method_of_multipliers():
    rho = 0.7
    problem, optimizer, _, _ = _lagrangian_and_grad(
        lambda: conopt.AugmentedLagrangian(rho=rho), lr=1.0
    )
    optimizer.apply()
    assert torch.allclose(problem.g.multiplier.weight, (LAM + rho * G).clamp(min=0))
    assert torch.allclose(problem.h.multiplier.weight, MU + rho * G)


# --------------------------------------------------------------------------- rho -> 0
@pytest.mark.parametrize("rho", [0.0, 1e-300, 1e-30, 1e-12])
def test_augmented_lagrangian_is_finite_as_rho_goes_to_zero(rho):
    problem, optimizer, value, grad = _lagrangian_and_grad(
        lambda: conopt.AugmentedLagrangian(rho=rho)
    )
    assert math.isfinite(float(value)) and torch.isfinite(grad).all()
    optimizer.apply()
    for p in problem.dual_parameters():
        assert torch.isfinite(p).all()


def test_augmented_lagrangian_at_rho_zero_is_the_lagrangian():
    _, _, value, grad = _lagrangian_and_grad(lambda: conopt.AugmentedLagrangian(rho=0.0))
    _, _, reference_value, reference_grad = _lagrangian_and_grad(conopt.Lagrangian)
    assert value == pytest.approx(float(reference_value), rel=1e-12)
    assert torch.allclose(grad, reference_grad)


def test_augmented_lagrangian_inequality_term_is_continuous_at_the_kink():
    rho = torch.tensor(2.0, dtype=torch.float64)
    lam = torch.tensor(1.0, dtype=torch.float64)
    kink = -lam / rho
    below = conopt.AugmentedLagrangian.primal_term(lam, kink - 1e-9, rho, True)
    above = conopt.AugmentedLagrangian.primal_term(lam, kink + 1e-9, rho, True)
    assert float(below) == pytest.approx(float(above), abs=1e-8)
    assert float(below) == pytest.approx(-0.25)  # -λ²/(2ρ)


# ------------------------------------------------------------------------ per-entry rho
def test_per_entry_rho_scales_each_entry_of_the_dual_step():
    rho = torch.tensor([0.1, 1.0, 10.0, 1.0, 0.5], dtype=torch.float64)
    problem, optimizer, _, grad = _lagrangian_and_grad(
        lambda: conopt.AugmentedLagrangian(rho=rho), lr=0.5
    )
    assert torch.allclose(grad, (LAM + rho * G).clamp(min=0) + MU + rho * G)
    optimizer.apply()
    assert torch.allclose(problem.g.multiplier.weight, (LAM + 0.5 * rho * G).clamp(min=0))
    assert torch.allclose(problem.h.multiplier.weight, MU + 0.5 * rho * G)


def test_rho_must_broadcast_to_the_constraint_shape():
    with pytest.raises(ValueError, match=r"rho of shape \(2,\) does not broadcast"):
        conopt.Constraint("<=", 3, formulation=conopt.AugmentedLagrangian(rho=[1.0, 2.0]))


@pytest.mark.parametrize("rho", [-1.0, float("inf"), float("nan"), [1.0, -0.1]])
@pytest.mark.parametrize("cls", [conopt.AugmentedLagrangian, conopt.QuadraticPenalty])
def test_penalty_coefficient_must_be_finite_and_nonnegative(cls, rho):
    with pytest.raises(ValueError, match=f"{cls.__name__}.*finite and >= 0"):
        cls(rho=rho)


def test_set_rho_keeps_the_shape_and_rejects_negative_values():
    formulation = conopt.AugmentedLagrangian(rho=[1.0, 2.0])
    formulation.set_rho(5.0)
    assert formulation.rho.tolist() == [5.0, 5.0]
    with pytest.raises(ValueError, match="finite and >= 0"):
        formulation.set_rho(-1.0)
    assert formulation.rho.tolist() == [5.0, 5.0]


def test_penalty_buffers_are_in_the_formulation_state_dict():
    formulation = conopt.AugmentedLagrangian(rho=2.0)
    state = formulation.state_dict()
    assert set(state) == {"rho", "initial_rho", "previous_violation", "dual_steps"}
    assert float(state["initial_rho"]) == 2.0


# ------------------------------------------------------------------ IncreaseOnStagnation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, "factor must be > 1"),
        ({"tolerance": 0.0}, r"tolerance must be in \(0, 1\]"),
        ({"tolerance": 1.5}, r"tolerance must be in \(0, 1\]"),
        ({"every": 0}, "every must be >= 1"),
    ],
)
def test_increase_on_stagnation_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conopt.IncreaseOnStagnation(**kwargs)


def test_new_coefficient_grows_only_entries_whose_violation_did_not_shrink_enough():
    rule = conopt.IncreaseOnStagnation(factor=10.0, tolerance=0.5)
    rho = torch.tensor([1.0, 1.0, 1.0, 1.0])
    previous = torch.tensor([1.0, 1.0, 1.0, 0.0])
    violation = torch.tensor([0.9, 0.5, 0.1, 0.0])
    assert rule.new_coefficient(rho, violation, previous).tolist() == [10.0, 1.0, 1.0, 1.0]


def test_new_coefficient_never_exceeds_max_value():
    rule = conopt.IncreaseOnStagnation(factor=10.0, max_value=25.0)
    grown = rule.new_coefficient(torch.tensor([1.0, 5.0]), torch.ones(2), torch.ones(2))
    assert grown.tolist() == [10.0, 25.0]


def _violation_steps(formulation, violations):
    """Feed the formulation one dual step per violation; return rho after each."""
    rhos = []
    for v in violations:
        formulation.update_penalty_(torch.as_tensor(v, dtype=torch.float64))
        rhos.append(formulation.rho.clone().tolist())
    return rhos


def test_penalty_grows_only_when_the_violation_does_not_shrink():
    rule = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.5)
    formulation = conopt.AugmentedLagrangian(rho=1.0, penalty_update=rule)
    rhos = _violation_steps(formulation, [1.0, 1.0, 0.4, 0.3, 0.0, 0.0])
    # first step: no previous violation; 1.0 > 0.5: grow; 0.4 <= 0.5: keep; 0.3 > 0.2: grow;
    # zero violation never grows the coefficient.
    assert rhos == [1.0, 2.0, 2.0, 4.0, 4.0, 4.0]


def test_penalty_rule_applies_once_every_k_dual_steps():
    rule = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.5, every=3)
    formulation = conopt.AugmentedLagrangian(rho=1.0, penalty_update=rule)
    rhos = _violation_steps(formulation, [1.0] * 9)
    assert rhos == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0]


def test_penalty_stops_at_max_value():
    rule = conopt.IncreaseOnStagnation(factor=10.0, tolerance=0.5, max_value=500.0)
    formulation = conopt.QuadraticPenalty(rho=1.0, penalty_update=rule)
    assert _violation_steps(formulation, [1.0] * 5) == [1.0, 10.0, 100.0, 500.0, 500.0]


def test_per_entry_penalty_grows_per_entry():
    rule = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.5)
    formulation = conopt.AugmentedLagrangian(rho=[1.0, 1.0], penalty_update=rule)
    formulation.bind(torch.Size([2]))
    assert _violation_steps(formulation, [[1.0, 1.0], [1.0, 0.1]]) == [[1.0, 1.0], [2.0, 1.0]]


def test_scalar_penalty_of_a_vector_constraint_follows_the_largest_violation():
    rule = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.5)
    formulation = conopt.AugmentedLagrangian(rho=1.0, penalty_update=rule)
    formulation.bind(torch.Size([2]))
    assert _violation_steps(formulation, [[1.0, 0.0], [0.1, 0.9]]) == [1.0, 2.0]


def test_optimizer_grows_the_penalty_of_a_stalled_constraint_after_each_dual_step():
    rule = conopt.IncreaseOnStagnation(factor=3.0, tolerance=0.5)
    problem = Both(lambda: conopt.QuadraticPenalty(rho=1.0, penalty_update=rule))
    x = torch.zeros(5, requires_grad=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=0.0))  # x never moves
    for _ in range(3):
        optimizer.step(lambda: problem.evaluate(x))
    assert float(problem.g.formulation.rho) == 9.0
    assert float(problem.h.formulation.rho) == 9.0
    assert float(problem.g.formulation.initial_rho) == 1.0


def test_formulation_without_penalty_rule_keeps_its_coefficient():
    problem = Both(lambda: conopt.AugmentedLagrangian(rho=1.5))
    x = torch.zeros(5, requires_grad=True)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=0.0), dual)
    for _ in range(3):
        optimizer.step(lambda: problem.evaluate(x))
    assert float(problem.g.formulation.rho) == 1.5
