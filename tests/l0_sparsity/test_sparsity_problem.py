import pytest
import torch

import conopt
from l0_sparsity.measures import expected_density
from l0_sparsity.models import build_model
from l0_sparsity.nn import gate_parameters
from l0_sparsity.problem import SparsityProblem


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("mlp", droprate_init=0.5)


def batch():
    return torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))


def test_model_wise_constraint_is_density_minus_target(model):
    problem = SparsityProblem(model, target=0.3)
    state = problem.evaluate(*batch())
    (value,) = state.constraints.values()
    assert torch.allclose(value, expected_density(model) - 0.3)
    assert problem.mode == "model-wise"


def test_layer_wise_constraint_has_one_entry_per_gated_layer(model):
    problem = SparsityProblem(model, layer_targets=[0.5, 0.4, 0.9])
    state = problem.evaluate(*batch())
    (value,) = state.constraints.values()
    assert value.shape == (3,)
    assert problem.layer_density.shape == (3,)


def test_layer_targets_by_name_must_cover_every_layer(model):
    with pytest.raises(ValueError, match="missing"):
        SparsityProblem(model, layer_targets={"layers.0": 0.5})


def test_wrong_number_of_layer_targets_names_the_layers(model):
    with pytest.raises(ValueError, match="3 gated layers"):
        SparsityProblem(model, layer_targets=[0.5, 0.5])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_target_outside_unit_interval_is_rejected(model, bad):
    with pytest.raises(ValueError, match="density in \\(0, 1\\]"):
        SparsityProblem(model, target=bad)


def test_exactly_one_mode_is_required(model):
    with pytest.raises(ValueError, match="exactly one"):
        SparsityProblem(model, target=0.3, penalty=1.0)


def test_penalized_problem_adds_penalty_times_density_and_has_no_constraint(model):
    torch.manual_seed(1)
    inputs, targets = batch()
    penalized = SparsityProblem(model, penalty=2.0)
    assert list(penalized.named_constraints()) == []
    model.eval()
    state = penalized.evaluate(inputs, targets)
    expected = state.extras["cross_entropy"] + 2.0 * expected_density(model)
    assert torch.allclose(state.loss, expected)


def test_macs_penalty_adds_its_coefficient_times_the_expected_macs_and_no_constraint(model):
    inputs, targets = batch()
    penalized = SparsityProblem(model, macs_penalty=0.5, example_input=inputs)
    assert list(penalized.named_constraints()) == [] and penalized.mode == "budget-only"
    model.eval()
    state = penalized.evaluate(inputs, targets)
    macs = penalized.expected_compute()["macs"]
    assert torch.allclose(state.loss, state.extras["cross_entropy"] + 0.5 * macs)
    assert torch.equal(state.extras["macs"], macs.detach())
    state.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_parameters(model))
    with pytest.raises(ValueError, match="macs_penalty needs example_input"):
        SparsityProblem(model, macs_penalty=0.5)
    with pytest.raises(ValueError, match=r"macs_penalty must be >= 0, got -1\.0"):
        SparsityProblem(model, macs_penalty=-1, example_input=inputs)
    both = SparsityProblem(model, target=0.5, macs_penalty=0.5, example_input=inputs)
    assert [name for name, _ in both.named_constraints()] == ["density"]


def test_density_gradient_reaches_the_gates(model):
    problem = SparsityProblem(model, target=0.3)
    state = problem.evaluate(*batch())
    (value,) = state.constraints.values()
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_parameters(model))


def test_problem_state_dict_holds_multipliers_not_model_weights(model):
    problem = SparsityProblem(model, target=0.3)
    keys = set(problem.state_dict())
    assert "density.multiplier.weight" in keys
    assert not any(k.startswith("layers") for k in keys)


def test_constrained_training_lowers_density_toward_target(model):
    problem = SparsityProblem(model, target=0.5)
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        primal=[torch.optim.Adam(gate_parameters(model), lr=0.05)],
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
    )
    inputs, targets = batch()
    start = float(expected_density(model).detach())
    for _ in range(60):
        optimizer.step(lambda: problem.evaluate(inputs, targets))
    assert float(expected_density(model).detach()) < start - 0.1


def test_the_model_can_be_swapped_for_another_wrapper_of_the_same_layers(model):
    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, x):
            return self.module(x)

    problem = SparsityProblem(Wrapper(model), target=0.3)
    problem.set_model(model)  # what the trainer does to drop its DDP wrapper
    assert problem.model is model
    assert not any(key.startswith("model") for key in problem.state_dict())
    with pytest.raises(ValueError, match="does not hold this problem's gated layers"):
        problem.set_model(build_model("mlp"))


def test_a_compute_budget_alone_needs_no_density_mode(model):
    problem = SparsityProblem(model, macs_target=0.5, example_input=(1, 1, 28, 28))
    assert problem.mode == "budget-only"
    assert [name for name, _ in problem.named_constraints()] == ["macs"]
    density, _ = problem.densities()  # still measured, for the logs
    assert torch.allclose(density, expected_density(model))
