"""Compute budgets as constraints (issue #14, items 4 and 5): MACs and parameters, model-wise.

The problem's budgets are checked against :class:`~l0_sparsity.measures.ComputeCost` (the real
one); the training runs are the ``synthetic_smoke`` preset on one CPU thread.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from l0_helpers import smoke_cli
from torch import nn

import conopt
from l0_sparsity.cli.app import budgets_met, main, target_missed
from l0_sparsity.measures import ComputeCost
from l0_sparsity.models import build_model
from l0_sparsity.nn import L0Linear, gate_parameters
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.training.checkpoint import CheckpointError
from l0_sparsity.training.metrics import MetricsLogger
from l0_sparsity.training.presets import get_preset
from l0_sparsity.training.trainer import train

SMOKE = get_preset("synthetic_smoke").replace(threads=1, num_workers=0, device="cpu", epochs=1)
SHAPE = (1, 1, 28, 28)
COMPUTE_COLUMNS = ("expected_macs", "purged_macs", "expected_params", "purged_params")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))


@pytest.fixture
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", droprate_init=0.3)


def half_gated() -> nn.Module:
    """A gated first layer and a dense classifier: the classifier's cost is the budgets' floor."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), L0Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def _names(problem: SparsityProblem) -> list[str]:
    return [name for name, _ in problem.named_constraints()]


# ------------------------------------------------------------------ construction errors


@pytest.mark.parametrize("name", ["macs", "params"])
def test_a_budget_below_the_floor_of_the_ungated_layers_is_refused_naming_it(name):
    model = half_gated()
    cost = ComputeCost(model, SHAPE)
    floor = getattr(cost, f"fixed_{name}") / getattr(cost, f"dense_{name}")
    assert 0 < floor < 0.1
    shown = f"{math.ceil(floor * 1e4) / 1e4:.4f}"
    with pytest.raises(ValueError, match=rf"{name}_target 0.00[0-9]+ is below the floor {shown}"):
        SparsityProblem(model, **{f"{name}_target": floor / 2}, example_input=SHAPE)
    at_floor = SparsityProblem(model, **{f"{name}_target": float(shown)}, example_input=SHAPE)
    assert _names(at_floor) == [name]


def test_a_budget_needs_an_example_input(lenet):
    with pytest.raises(ValueError, match="macs_target needs example_input"):
        SparsityProblem(lenet, macs_target=0.4)


@pytest.mark.parametrize("name", ["macs", "params"])
@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_a_budget_outside_the_unit_interval_is_refused(lenet, name, bad):
    with pytest.raises(ValueError, match=rf"{name}_target must be a fraction .* in \(0, 1\]"):
        SparsityProblem(lenet, **{f"{name}_target": bad}, example_input=SHAPE)


def test_nothing_to_constrain_is_still_refused(lenet):
    with pytest.raises(ValueError, match=r"exactly one of target .* got none"):
        SparsityProblem(lenet, example_input=SHAPE)


def test_a_budget_does_not_allow_two_density_modes(lenet):
    with pytest.raises(ValueError, match="exactly one"):
        SparsityProblem(lenet, target=0.3, penalty=1.0, macs_target=0.4, example_input=SHAPE)


# ---------------------------------------------------------------- the constraints


def test_a_budget_alone_constrains_the_expected_fraction_of_dense_macs(lenet):
    problem = SparsityProblem(lenet, macs_target=0.4, example_input=SHAPE)
    assert problem.mode == "budget-only" and problem.budgets == {"macs": 0.4}
    assert _names(problem) == ["macs"] and problem.macs.reduction is None
    cost = problem.compute_cost
    inputs, targets = batch()
    lenet.eval()
    state = problem.evaluate(inputs, targets)
    expected = cost.expected_macs() / cost.dense_macs
    assert torch.allclose(state.constraints[problem.macs], expected - 0.4)
    assert torch.allclose(state.extras["macs"], expected)
    assert torch.allclose(state.loss, nn.functional.cross_entropy(lenet(inputs), targets))


@pytest.mark.parametrize(
    ("density", "names"),
    [
        ({"target": 0.5}, ["density", "macs", "params"]),
        ({"layer_targets": [0.5] * 4}, ["layer_density", "macs", "params"]),
        ({"penalty": 0.1}, ["macs", "params"]),
    ],
    ids=["model-wise", "layer-wise", "penalized"],
)
def test_budgets_combine_with_each_other_and_with_every_density_mode(lenet, density, names):
    problem = SparsityProblem(
        lenet, **density, macs_target=0.4, params_target=0.5, example_input=torch.zeros(SHAPE)
    )
    assert _names(problem) == names
    state = problem.evaluate(*batch())
    assert {c.name for c in state.constraints} == set(names)
    fractions = problem.expected_compute()
    assert torch.allclose(state.constraints[problem.params], fractions["params"] - 0.5)


def test_the_budgets_gradient_reaches_the_gates(lenet):
    problem = SparsityProblem(lenet, macs_target=0.4, example_input=SHAPE)
    problem.evaluate(*batch()).constraints[problem.macs].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_parameters(lenet))


@pytest.mark.parametrize(
    ("purged", "tolerance", "strict"),
    [(0.52, 0.01, 0.02), (0.495, 0.01, 0.0), (0.4905, 0.01, 0.0), (0.48, 0.01, -0.02),
     (0.495, 0.0, -0.005), (0.5, 0.01, 0.0)],
)  # fmt: skip
def test_a_strict_budget_holds_its_multiplier_within_the_tolerance_below_it(
    lenet, monkeypatch, purged, tolerance, strict
):
    problem = SparsityProblem(
        lenet, macs_target=0.5, example_input=SHAPE, strict_budgets=True,
        budget_tolerance=tolerance,
    )  # fmt: skip
    monkeypatch.setattr(problem._measures, "strict_value", lambda name: purged)
    state = problem.evaluate(*batch())
    value = state.constraints[problem.macs]
    assert isinstance(value, conopt.ConstraintState)
    assert float(value.strict_value) == pytest.approx(strict, abs=1e-6)
    # The expected fraction still drives the gates, whatever the strict value.
    assert float(value.value.detach()) == pytest.approx(float(state.extras["macs"]) - 0.5)


def test_the_budget_tolerance_holds_the_multiplier_and_keeps_it_from_restarting(lenet, monkeypatch):
    problem = SparsityProblem(lenet, macs_target=0.5, example_input=SHAPE, strict_budgets=True)
    optimizer = conopt.optim.SimultaneousGDA(
        problem, primal=torch.optim.SGD(lenet.parameters(), lr=0.0),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=1.0, maximize=True),
        dual_restarts=True,
    )  # fmt: skip
    monkeypatch.setattr(problem._measures, "strict_value", lambda name: 0.6)
    optimizer.step(lambda: problem.evaluate(*batch()))
    held = float(problem.macs.multiplier.weight.detach())
    assert held == pytest.approx(0.1)
    monkeypatch.setattr(problem._measures, "strict_value", lambda name: 0.495)  # on the budget
    optimizer.step(lambda: problem.evaluate(*batch()))
    assert float(problem.macs.multiplier.weight.detach()) == held
    monkeypatch.setattr(problem._measures, "strict_value", lambda name: 0.45)  # well under it
    optimizer.step(lambda: problem.evaluate(*batch()))
    assert float(problem.macs.multiplier.weight.detach()) == 0.0


@pytest.mark.parametrize("bad", [-0.01, 1.0])
def test_a_budget_tolerance_outside_zero_one_is_refused(lenet, bad):
    with pytest.raises(ValueError, match="budget_tolerance must be in"):
        SparsityProblem(lenet, macs_target=0.5, example_input=SHAPE, budget_tolerance=bad)


def test_the_measures_are_fractions_of_the_dense_model(lenet):
    problem = SparsityProblem(lenet, target=0.5, example_input=SHAPE)
    cost = problem.compute_cost
    assert problem.test_compute() == {
        "macs": cost.test_macs() / cost.dense_macs,
        "params": cost.test_params() / cost.dense_params,
    }
    assert all(0 < float(v.detach()) <= 1 for v in problem.expected_compute().values())
    with pytest.raises(ValueError, match="without example_input"):
        SparsityProblem(lenet, target=0.5).expected_compute()


def test_a_macs_budget_lowers_the_expected_macs_toward_it(lenet):
    problem = SparsityProblem(lenet, macs_target=0.3, example_input=SHAPE)
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        primal=[torch.optim.Adam(gate_parameters(lenet), lr=0.05)],
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
    )
    inputs, targets = batch()
    start = float(problem.expected_compute()["macs"].detach())
    for _ in range(40):
        optimizer.step(lambda: problem.evaluate(inputs, targets))
    assert float(problem.expected_compute()["macs"].detach()) < start - 0.1


def test_measuring_compute_leaves_the_random_streams_and_batchnorm_alone():
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", in_channels=1)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    SparsityProblem(model, target=0.5, example_input=SHAPE)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------ state dicts


def test_state_dict_holds_the_budgets_multipliers_and_round_trips(lenet):
    def make() -> SparsityProblem:
        return SparsityProblem(
            lenet, target=0.5, macs_target=0.4, params_target=0.6, example_input=SHAPE
        )

    problem = make()
    with torch.no_grad():
        for i, parameter in enumerate(problem.dual_parameters()):
            parameter.fill_(0.1 * (i + 1))
    state = problem.state_dict()
    assert {"macs.multiplier.weight", "params.multiplier.weight"} <= set(state)
    restored = make()
    restored.load_state_dict(state)
    for a, b in zip(problem.dual_parameters(), restored.dual_parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_density_only_checkpoint_loads_into_a_density_only_problem(lenet):
    old = SparsityProblem(lenet, target=0.5)  # as problems were built before budgets
    measured = SparsityProblem(lenet, target=0.5, example_input=SHAPE)
    assert set(measured.state_dict()) == set(old.state_dict())
    measured.load_state_dict(old.state_dict())
    with pytest.raises(RuntimeError, match="macs"):
        SparsityProblem(lenet, target=0.5, macs_target=0.4, example_input=SHAPE).load_state_dict(
            old.state_dict()
        )


# --------------------------------------------------------------------- training runs


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_macs_budget_run_logs_compute_and_says_the_budgets_outcome(tmp_path, capsys):
    code = main(smoke_cli(tmp_path, "--epochs", "1", "--batch-size", "128", "--macs-target", "0.9"))
    out = capsys.readouterr().out
    assert code == 0
    (row,) = _csv(tmp_path / "metrics.csv")
    assert set(COMPUTE_COLUMNS) <= set(row) and float(row["macs_target"]) == 0.9
    assert "multiplier/macs" in row and "multiplier/density" not in row  # a budget alone
    assert "params_target" not in row and math.isnan(float(row["target"]))
    done = out.splitlines()[-1]
    assert done.startswith("done:") and "MACs budget 0.9000 m" in done
    assert (tmp_path / "training.png").is_file()


def test_cli_budget_and_density_target_train_together(tmp_path):
    argv = smoke_cli(tmp_path, "--epochs", "1", "--batch-size", "128")
    assert main([*argv, "--macs-target", "0.3", "--params-target", "0.4", "--target", "0.5"]) == 0
    (row,) = _csv(tmp_path / "metrics.csv")
    assert {"multiplier/density", "multiplier/macs", "multiplier/params"} <= set(row)
    assert float(row["target"]) == 0.5 and float(row["params_target"]) == 0.4


def test_cli_macs_penalty_alone_trains_without_constraint_and_logs_the_macs(tmp_path):
    argv = smoke_cli(tmp_path, "--epochs", "1", "--batch-size", "128", "--macs-penalty", "2")
    assert main(argv) == 0
    (row,) = _csv(tmp_path / "metrics.csv")
    assert set(COMPUTE_COLUMNS) <= set(row) and math.isnan(float(row["target"]))
    assert not any(key.startswith("multiplier/") for key in row)


def test_cli_budget_below_the_floor_is_one_line_exit_2(tmp_path, capsys):
    argv = smoke_cli(tmp_path / "run", "--model", "resnet18_cifar", "--macs-target", "0.001")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is below the floor" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_budget_tolerance_reaches_the_problem_and_is_checked(tmp_path, capsys):
    argv = smoke_cli(tmp_path / "bad", "--macs-target", "0.5", "--budget-tolerance", "1.5")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "budget_tolerance must be in [0, 1)" in err
    config = SMOKE.replace(
        output_dir=str(tmp_path / "run"), target=None, macs_target=0.9, strict_budgets=True,
        budget_tolerance=0.05,
    )  # fmt: skip
    assert train(config).problem.budget_tolerance == 0.05


def test_resume_restores_the_budget_multipliers_bit_for_bit(tmp_path):
    config = SMOKE.replace(target=None, macs_target=0.5, params_target=0.6)
    full = train(config.replace(epochs=3, output_dir=str(tmp_path / "full")))
    train(config.replace(epochs=1, output_dir=str(tmp_path / "split")))
    resumed = train(config.replace(epochs=3, resume=True, output_dir=str(tmp_path / "split")))
    for name in ("macs", "params"):
        a = getattr(full.problem, name).multiplier.weight
        assert torch.equal(a, getattr(resumed.problem, name).multiplier.weight)
    assert [r["purged_macs"] for r in full.history] == [r["purged_macs"] for r in resumed.history]


@pytest.mark.parametrize(
    "changed",
    [{"macs_target": 0.4}, {"params_target": 0.3}, {"macs_target": None}],
    ids=["other budget", "added budget", "budget dropped"],
)
def test_resuming_with_another_budget_is_refused(tmp_path, changed):
    config = SMOKE.replace(macs_target=0.3, output_dir=str(tmp_path))
    train(config)
    with pytest.raises(CheckpointError, match=r"macs_target 0\.3"):
        train(config.replace(epochs=2, resume=True, **changed))


def test_a_density_run_resumed_with_a_budget_is_refused(tmp_path):
    train(SMOKE.replace(output_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match=r"not model .* with target 0.35 and macs_target"):
        train(SMOKE.replace(epochs=2, resume=True, macs_target=0.5, output_dir=str(tmp_path)))


# ------------------------------------------------------------------- logs and outcome


def _result(**final: float) -> SimpleNamespace:
    problem = SimpleNamespace(mode="budget-only", targets=torch.empty(0))
    return SimpleNamespace(final={"epoch": 9, **final}, problem=problem)


def test_a_budget_is_met_below_it_or_within_the_tolerance_above_it():
    below = _result(macs_target=0.3, purged_macs=0.295)
    assert budgets_met(below) == "; MACs budget 0.3000 met: purged MACs 0.2950, 0.0050 below it"
    assert target_missed(below) == ""
    within = _result(params_target=0.3, purged_params=0.308)
    assert "parameters budget 0.3000 met" in budgets_met(within)
    assert "0.0080 above it, within 0.01" in budgets_met(within)


def test_a_missed_budget_says_by_how_much():
    result = _result(macs_target=0.3, purged_macs=0.35, params_target=0.5, purged_params=0.45)
    missed = target_missed(result)
    assert "MACs budget 0.3000 missed: purged MACs 0.3500 is 0.0500 above it after 10" in missed
    assert "parameters" not in missed and "--dual-lr" in missed
    assert budgets_met(result).startswith("; parameters budget 0.5000 met")


def test_a_run_logged_before_the_compute_columns_resumes_with_a_wider_header(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n0,1.0\n1,0.9\n")
    logger = MetricsLogger(tmp_path, tensorboard=False, resume_epoch=2)
    logger.log({"epoch": 2, "train_loss": 0.8, "expected_macs": 0.5, "macs_target": 0.4})
    logger.log({"epoch": 3, "train_loss": 0.7, "expected_macs": 0.45, "macs_target": 0.4})
    rows = _csv(tmp_path / "metrics.csv")
    assert [r["expected_macs"] for r in rows] == ["", "", "0.5", "0.45"]
    assert logger.plot() is not None
