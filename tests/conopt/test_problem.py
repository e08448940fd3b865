"""Specification of conopt.problem: constraints, states and the problem container."""

import pytest
import torch
from torch import nn
from toy_problems import sgd_gda

import conopt


class Nested(conopt.ConstrainedProblem):
    def __init__(self):
        super().__init__()
        self.top = conopt.Constraint("<=")
        self.blocks = nn.ModuleDict(
            {
                "a": conopt.Constraint("==", shape=2),
                "inner": nn.ModuleDict({"b": conopt.Constraint("<=", shape=(2, 3))}),
            }
        )
        self.items = nn.ModuleList([conopt.Constraint("<=", shape=1)])
        self.penalty = conopt.Constraint("<=", formulation=conopt.QuadraticPenalty(rho=2.0))


class Scalar(conopt.ConstrainedProblem):
    def __init__(self, formulation=None):
        super().__init__()
        self.c = conopt.Constraint("<=", formulation=formulation)

    def evaluate(self, x):
        return conopt.ProblemState(loss=(x**2).sum(), constraints={self.c: 1 - x.sum()})


# ------------------------------------------------------------------------------- Constraint
def test_inequality_constraint_has_a_nonnegative_multiplier():
    c = conopt.Constraint("<=")
    assert c.kind == "<=" and c.is_inequality
    assert c.multiplier.nonnegative


def test_equality_constraint_has_a_free_multiplier():
    c = conopt.Constraint("==")
    assert c.kind == "==" and not c.is_inequality
    assert not c.multiplier.nonnegative


@pytest.mark.parametrize(
    ("shape", "expected"), [((), ()), (3, (3,)), ((2, 4), (2, 4)), (torch.Size([5]), (5,))]
)
def test_constraint_shape_accepts_int_tuple_and_size(shape, expected):
    assert conopt.Constraint("<=", shape).shape == torch.Size(expected)


def test_default_multiplier_is_a_zero_dense_multiplier_of_the_constraint_shape():
    c = conopt.Constraint("<=", shape=(2, 3))
    assert isinstance(c.multiplier, conopt.DenseMultiplier)
    assert c.multiplier.weight.shape == (2, 3)
    assert torch.equal(c.multiplier.weight, torch.zeros(2, 3))


def test_default_formulation_is_a_lagrangian():
    assert isinstance(conopt.Constraint("==").formulation, conopt.Lagrangian)


def test_formulation_without_multiplier_gets_no_default_multiplier():
    c = conopt.Constraint("<=", formulation=conopt.QuadraticPenalty())
    assert c.multiplier is None


def test_bad_kind_is_rejected():
    with pytest.raises(ValueError, match=r"'<=' or '=='.*'>='"):
        conopt.Constraint(">=")


def test_bad_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        conopt.Constraint("<=", reduction="max")


def test_negative_shape_is_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        conopt.Constraint("<=", shape=(2, -1))


def test_non_formulation_is_rejected():
    with pytest.raises(TypeError, match="Formulation"):
        conopt.Constraint("<=", formulation=nn.Linear(1, 1))


def test_non_multiplier_is_rejected():
    with pytest.raises(TypeError, match="Multiplier"):
        conopt.Constraint("<=", multiplier=nn.Linear(1, 1))


def test_multiplier_given_to_a_formulation_without_multipliers_is_rejected():
    with pytest.raises(ValueError, match="QuadraticPenalty uses no multiplier"):
        conopt.Constraint(
            "<=", formulation=conopt.QuadraticPenalty(), multiplier=conopt.DenseMultiplier()
        )


def test_a_formulation_object_cannot_serve_two_constraints():
    shared = conopt.AugmentedLagrangian()
    conopt.Constraint("<=", formulation=shared)
    with pytest.raises(ValueError, match="already belongs to another constraint"):
        conopt.Constraint("<=", formulation=shared)


def test_a_multiplier_object_cannot_serve_two_constraints():
    shared = conopt.DenseMultiplier()
    conopt.Constraint("<=", multiplier=shared)
    with pytest.raises(ValueError, match="already belongs to another constraint"):
        conopt.Constraint("==", multiplier=shared)


def test_dense_multiplier_with_another_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(2,\) differs .* \(3,\)"):
        conopt.Constraint("<=", shape=3, multiplier=conopt.DenseMultiplier(2))


def test_constraint_is_unnamed_until_registered():
    assert conopt.Constraint("<=").name == "<unregistered>"


def test_constraint_repr_shows_kind_and_shape():
    assert "'<=', shape=(3,)" in repr(conopt.Constraint("<=", 3))


# ----------------------------------------------------------------------- ConstrainedProblem
def test_named_constraints_uses_attribute_paths_in_declaration_order():
    names = [name for name, _ in Nested().named_constraints()]
    assert names == ["top", "blocks.a", "blocks.inner.b", "items.0", "penalty"]


def test_named_constraints_sets_each_constraint_name():
    problem = Nested()
    for name, constraint in problem.named_constraints():
        assert constraint.name == name
    assert problem.blocks["inner"]["b"].name == "blocks.inner.b"


def test_constraints_yields_the_registered_constraint_objects():
    problem = Nested()
    assert list(problem.constraints()) == [c for _, c in problem.named_constraints()]


def test_dual_parameters_are_the_multiplier_weights_only():
    problem = Nested()
    expected = [
        problem.top.multiplier.weight,
        problem.blocks["a"].multiplier.weight,
        problem.blocks["inner"]["b"].multiplier.weight,
        problem.items[0].multiplier.weight,
    ]
    got = list(problem.dual_parameters())
    assert len(got) == len(expected)
    assert all(a is b for a, b in zip(got, expected, strict=True))


def test_dual_parameters_include_an_implicit_multiplier_model():
    model = nn.Linear(3, 1)
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", shape=1, multiplier=conopt.ImplicitMultiplier(model))
    assert {id(p) for p in problem.dual_parameters()} == {id(p) for p in model.parameters()}


def test_state_dict_holds_multipliers_and_penalty_coefficients():
    problem = Nested()
    problem.extra = conopt.Constraint("==", formulation=conopt.AugmentedLagrangian(rho=0.5))
    keys = set(problem.state_dict())
    assert {
        "top.multiplier.weight",
        "blocks.a.multiplier.weight",
        "blocks.inner.b.multiplier.weight",
        "items.0.multiplier.weight",
        "penalty.formulation.rho",
        "penalty.formulation.initial_rho",
        "extra.multiplier.weight",
        "extra.formulation.rho",
        "extra.formulation.initial_rho",
    } <= keys


def test_state_dict_keeps_the_initial_penalty_coefficient_after_it_grew():
    rule = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.5)
    problem = Scalar(conopt.AugmentedLagrangian(rho=0.5, penalty_update=rule))
    x = torch.zeros(2, requires_grad=True)
    optimizer = sgd_gda(problem, x, lr=0.0)
    for _ in range(3):
        optimizer.step(lambda: problem.evaluate(x))
    state = problem.state_dict()
    assert float(state["c.formulation.initial_rho"]) == 0.5
    assert float(state["c.formulation.rho"]) == 0.5 * 2**2  # no growth at the first step
    assert float(state["c.multiplier.weight"]) > 0


def test_load_state_dict_restores_multipliers_and_coefficients():
    source = Scalar(conopt.AugmentedLagrangian(rho=0.5))
    with torch.no_grad():
        source.c.multiplier.weight.fill_(3.0)
        source.c.formulation.set_rho(7.0)
    target = Scalar(conopt.AugmentedLagrangian(rho=0.5))
    weight = target.c.multiplier.weight
    target.load_state_dict(source.state_dict())
    assert target.c.multiplier.weight is weight  # in place: dual optimizers keep working
    assert weight.item() == 3.0 and float(target.c.formulation.rho) == 7.0


def test_evaluate_must_be_overridden():
    with pytest.raises(NotImplementedError, match="must implement evaluate"):
        conopt.ConstrainedProblem().evaluate()


def test_calling_the_problem_evaluates_it():
    problem = Scalar()
    x = torch.ones(2)
    state = problem(x)
    assert isinstance(state, conopt.ProblemState)
    assert float(state.loss) == 2.0 and float(state.constraints[problem.c]) == -1.0


# -------------------------------------------------------------- ConstraintState, ProblemState
def test_dual_value_is_the_strict_value_when_given():
    value, strict = torch.tensor([1.0]), torch.tensor([2.0])
    assert conopt.ConstraintState(value, strict_value=strict).dual_value is strict
    assert conopt.ConstraintState(value).dual_value is value


def test_states_are_immutable():
    state = conopt.ConstraintState(torch.zeros(1))
    with pytest.raises(AttributeError):
        state.value = torch.ones(1)


def test_problem_state_defaults_to_no_constraints_and_no_extras():
    state = conopt.ProblemState(loss=torch.zeros(()))
    assert dict(state.constraints) == {} and dict(state.extras) == {}


def _one_step(key_by_name: bool):
    problem = Nested()
    x = torch.tensor([0.3, -0.2], requires_grad=True)
    optimizer = sgd_gda(problem, x)
    values = {
        "top": 1 - x.sum(),
        "blocks.a": x * 2,
        "blocks.inner.b": x.sum() * torch.ones(2, 3),
        "items.0": x[:1] - 1,
        "penalty": x[1] + 1,
    }
    modules = dict(problem.named_constraints())
    constraints = values if key_by_name else {modules[k]: v for k, v in values.items()}
    report = optimizer.step(lambda: conopt.ProblemState(loss=(x**2).sum(), constraints=constraints))
    return x.detach(), [p.detach() for p in problem.dual_parameters()], report


def test_keys_by_name_and_by_object_give_the_same_step():
    x_name, duals_name, report_name = _one_step(key_by_name=True)
    x_obj, duals_obj, report_obj = _one_step(key_by_name=False)
    assert torch.equal(x_name, x_obj)
    assert all(torch.equal(a, b) for a, b in zip(duals_name, duals_obj, strict=True))
    assert report_name.constraints.keys() == report_obj.constraints.keys()


def test_constraints_left_out_of_a_state_are_not_updated():
    problem = Nested()
    x = torch.zeros(2, requires_grad=True)
    optimizer = sgd_gda(problem, x)
    before = problem.blocks["a"].multiplier.weight.detach().clone()
    report = optimizer.step(
        lambda: conopt.ProblemState(loss=(x**2).sum(), constraints={problem.top: 1 - x.sum()})
    )
    assert torch.equal(problem.blocks["a"].multiplier.weight, before)
    assert problem.top.multiplier.weight.item() == pytest.approx(0.1)
    assert list(report.constraints) == ["top"]


def test_extras_are_carried_but_unused():
    problem = Scalar()
    x = torch.zeros(2, requires_grad=True)
    optimizer = sgd_gda(problem, x)
    state = problem.evaluate(x)
    with_extras = conopt.ProblemState(state.loss, state.constraints, extras={"anything": object()})
    optimizer.step(lambda: with_extras)
    assert problem.c.multiplier.weight.item() == pytest.approx(0.1)


def test_scaled_state_scales_loss_values_and_strict_values_and_keeps_the_rest():
    plain, proxy = conopt.Constraint("<="), conopt.Constraint("==", 2)
    per_sample = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(5))
    sample_state = conopt.ConstraintState(torch.tensor([1.0, -1.0]), indices=torch.tensor([0, 3]))
    state = conopt.ProblemState(
        loss=torch.tensor(3.0),
        constraints={
            plain: torch.tensor(-2.0),
            proxy: conopt.ConstraintState(
                torch.tensor([1.0, 4.0]), strict_value=torch.tensor([2.0, 8.0]), count=7
            ),
            "by_name": torch.tensor(6.0),
            per_sample: sample_state,
        },
        extras={"logits": "kept"},
    )
    third = state.scaled(1 / 3)
    assert third.loss.item() == pytest.approx(1.0)
    assert third.constraints[plain].item() == pytest.approx(-2 / 3)
    assert third.constraints["by_name"].item() == pytest.approx(2.0)
    scaled_proxy = third.constraints[proxy]
    assert torch.allclose(scaled_proxy.value, torch.tensor([1 / 3, 4 / 3]))
    assert torch.allclose(scaled_proxy.strict_value, torch.tensor([2 / 3, 8 / 3]))
    assert scaled_proxy.count == 7 and third.extras == {"logits": "kept"}
    assert third.constraints[per_sample] is sample_state  # per-sample values are not shares
    assert state.loss.item() == 3.0  # the original is unchanged


def test_scaled_state_stays_differentiable():
    x = torch.tensor(2.0, requires_grad=True)
    c = conopt.Constraint("<=")
    state = conopt.ProblemState(loss=x**2, constraints={c: x - 1}).scaled(0.5)
    (state.loss + state.constraints[c]).backward()
    assert x.grad.item() == pytest.approx(0.5 * (2 * 2.0 + 1))
