"""The latency model and the latency budget (issue #14, item 3).

Timings depend on the machine, so nothing here asserts a time: the tests check the mechanics
(cache hits and misses, what the cache key follows, the gradient against finite differences,
monotonicity, the floor's refusal, the CLI flag). Every model is measured with the smallest
grid and few repeats, on one thread.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from l0_helpers import smoke_cli
from torch import nn

import conopt
from l0_sparsity import purge
from l0_sparsity.cli.app import main
from l0_sparsity.measures import LatencyModel, LatencyRow
from l0_sparsity.measures import latency as latency_module
from l0_sparsity.measures.timing import fit_bilinear
from l0_sparsity.nn import L0Linear
from l0_sparsity.problem import SparsityProblem

torch.set_num_threads(1)

SHAPE = (8, 16)
QUICK = {"fractions": (0.5, 1.0), "calibration": (1.0, 0.5), "warmup": 1, "repeats": 3}


def tiny() -> nn.Module:
    """Two gated linear layers and an ungated classifier."""
    torch.manual_seed(0)
    return nn.Sequential(
        L0Linear(16, 12, droprate_init=0.3), nn.ReLU(), L0Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def measured(model: nn.Module, cache: Path, shape: tuple[int, ...] = SHAPE, **options):
    return LatencyModel(
        model, shape, purge=purge, cache_dir=cache, threads=1, progress=False, **QUICK, **options
    )


def _weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def synthetic_timing(monkeypatch):
    """Times proportional to the weights run (plus an overhead): the fit is then deterministic."""

    def probe_seconds(self, probe, r, c):
        module, _ = probe.build(r, c)
        return 1e-6 + 1e-8 * _weights(module)

    def modules_seconds(modules, example, **timing):
        return [2e-6 + 1e-8 * _weights(module) for module in modules]

    monkeypatch.setattr(LatencyModel, "_time_probe", probe_seconds)
    monkeypatch.setattr(latency_module, "module_seconds", modules_seconds)


@pytest.fixture
def model_and_latency(tmp_path, synthetic_timing):
    model = tiny()
    return model, measured(model, tmp_path)


# ------------------------------------------------------------------------ the cache


def test_a_second_build_reads_the_cache_without_timing(tmp_path, monkeypatch):
    first = measured(tiny(), tmp_path)
    assert not first.from_cache and first.cache_path is not None and first.cache_path.is_file()

    def no_timing(*args, **kwargs):
        raise AssertionError("a cache hit must not time anything")

    monkeypatch.setattr(latency_module, "median_seconds", no_timing)
    monkeypatch.setattr(latency_module, "module_seconds", no_timing)
    second = measured(tiny(), tmp_path)
    assert second.from_cache and second.cache_key == first.cache_key
    assert second.dense_predicted == first.dense_predicted
    assert second.offset == first.offset and second.gain == first.gain


@pytest.mark.parametrize(
    "change", [{"shape": (4, 16)}, {"threads": 2}, {"dtype": torch.float64}], ids=str
)
def test_the_cache_key_follows_shape_threads_and_dtype(tmp_path, change):
    model = tiny()
    base = measured(model, tmp_path)
    shape = change.pop("shape", SHAPE)
    threads = change.pop("threads", 1)
    other = LatencyModel(
        model, shape, purge=purge, cache_dir=tmp_path, threads=threads, progress=False,
        **QUICK, **change,
    )  # fmt: skip
    assert other.cache_key != base.cache_key and not other.from_cache


def test_the_cache_key_follows_the_model_structure(tmp_path):
    base = measured(tiny(), tmp_path)
    torch.manual_seed(0)
    wider = nn.Sequential(L0Linear(16, 20), nn.ReLU(), L0Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))
    assert measured(wider, tmp_path).cache_key != base.cache_key


def test_without_the_cache_nothing_is_written(tmp_path):
    latency = measured(tiny(), tmp_path, use_cache=False)
    assert latency.cache_path is None and not latency.from_cache
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ the function


def test_expected_latency_gradient_matches_finite_differences(model_and_latency):
    model, latency = model_and_latency
    model.double()
    layer = model[0]
    with torch.no_grad():
        layer.log_alpha.copy_(torch.linspace(-2.0, 3.0, layer.log_alpha.numel()))
    value = latency.expected()
    assert value.dtype == torch.float64
    (grad,) = torch.autograd.grad(value, layer.log_alpha)
    step = 1e-6
    for i in (0, 5, 11, 15):
        with torch.no_grad():
            layer.log_alpha[i] += step
            up = float(latency.expected())
            layer.log_alpha[i] -= 2 * step
            down = float(latency.expected())
            layer.log_alpha[i] += step
        assert float(grad[i]) == pytest.approx((up - down) / (2 * step), rel=1e-5, abs=1e-12)


def test_expected_latency_increases_with_every_keep_probability(model_and_latency):
    """Non-negative fitted coefficients and counts that grow with each gate's P(z ≠ 0)."""
    model, latency = model_and_latency
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.log_alpha.normal_(0.0, 2.0)
    grads = torch.autograd.grad(latency.expected(), [model[0].log_alpha, model[2].log_alpha])
    assert all(bool((g >= 0).all()) for g in grads)
    assert sum(float(g.sum()) for g in grads) > 0


def test_all_kept_is_one_and_all_dead_is_the_floor(model_and_latency):
    model, latency = model_and_latency
    with torch.no_grad():
        for value, expected in ((20.0, 1.0), (-20.0, latency.floor)):
            for layer in (model[0], model[2]):
                layer.log_alpha.fill_(value)
            assert float(latency.expected_fraction()) == pytest.approx(expected, rel=1e-6)
            assert latency.test_fraction() == pytest.approx(expected, rel=1e-9)
    assert 0 < latency.floor < 1


def test_the_accuracy_table_has_one_row_per_keep_level(model_and_latency):
    _, latency = model_and_latency
    rows = latency.accuracy([0.75, 0.25])
    assert [row.keep for row in rows] == [0.75, 0.25]
    assert all(isinstance(row, LatencyRow) and 0 < row.measured < 1 for row in rows)
    assert all(
        row.relative_error == pytest.approx(row.predicted / row.measured - 1) for row in rows
    )


def test_the_bilinear_fit_recovers_non_negative_coefficients_and_clips_negative_ones():
    r = [0.25, 0.5, 1.0, 0.25, 0.5, 1.0]
    c = [0.25, 0.25, 0.25, 1.0, 1.0, 1.0]
    exact = [1.0 + 2.0 * ri + 3.0 * ri * ci for ri, ci in zip(r, c, strict=True)]
    assert fit_bilinear(r, c, exact) == pytest.approx((1.0, 2.0, 0.0, 3.0), abs=1e-9)
    falling = [2.0 - ri for ri in r]  # a negative slope is not a cost: held at zero
    assert min(fit_bilinear(r, c, falling)) >= 0


# ------------------------------------------------------------------------ the budget


def test_a_latency_budget_below_the_floor_is_refused_giving_it(model_and_latency):
    model, latency = model_and_latency
    with pytest.raises(
        ValueError, match=r"latency_target 0\.\d+ is below the floor 0\.\d{4} of the ungated"
    ):
        SparsityProblem(model, latency_target=latency.floor / 2, latency_model=latency)


def test_a_latency_budget_needs_a_latency_model():
    with pytest.raises(ValueError, match="latency_target needs latency_model"):
        SparsityProblem(tiny(), latency_target=0.5)


def test_a_latency_budget_constrains_the_expected_fraction(model_and_latency):
    model, latency = model_and_latency
    problem = SparsityProblem(model, latency_target=0.6, latency_model=latency)
    assert problem.budgets == {"latency": 0.6} and problem.mode == "budget-only"
    state = problem.evaluate(torch.randn(4, 16), torch.tensor([0, 1, 2, 0]))
    value = state.constraints[problem.latency]
    fraction = float(latency.expected_fraction().detach())
    assert float(value.detach()) == pytest.approx(fraction - 0.6)
    assert float(state.extras["latency"]) == pytest.approx(fraction)


def test_strict_budgets_give_the_dual_step_the_test_time_fraction(model_and_latency):
    model, latency = model_and_latency
    example = torch.zeros(1, 16)
    problem = SparsityProblem(
        model, latency_target=0.6, latency_model=latency, macs_target=0.5,
        example_input=example, strict_budgets=True,
    )  # fmt: skip
    state = problem.evaluate(torch.randn(4, 16), torch.tensor([0, 1, 2, 0]))
    macs = state.constraints[problem.macs]
    assert isinstance(macs, conopt.ConstraintState) and macs.value.requires_grad
    assert float(macs.strict_value) == pytest.approx(problem.test_compute()["macs"] - 0.5)
    late = state.constraints[problem.latency]
    assert float(late.strict_value) == pytest.approx(latency.test_fraction() - 0.6)


def test_the_cli_latency_flag_logs_expected_and_purged_latency(tmp_path, monkeypatch):
    monkeypatch.setenv("L0_SPARSITY_CACHE", str(tmp_path / "cache"))
    argv = smoke_cli(tmp_path / "run", "--epochs", "1", "--latency-target", "0.95")
    assert main(argv) == 0
    with open(tmp_path / "run" / "metrics.csv") as handle:
        row = list(csv.DictReader(handle))[-1]
    assert float(row["latency_target"]) == 0.95
    assert 0 < float(row["expected_latency"]) <= 1 and float(row["purged_latency"]) > 0
    assert list((tmp_path / "cache" / "latency").glob("*.json"))
