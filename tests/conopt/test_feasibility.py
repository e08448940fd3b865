"""Held-out feasibility: constraint values on held-out data in closed form, and the tracker."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import conopt

torch.set_num_threads(1)

WEIGHT = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def heldout(count: int = 10) -> torch.Tensor:
    """Rows i = (i, 1, i / 10): every constraint below has a closed-form held-out value."""
    i = torch.arange(count, dtype=torch.float64)
    return torch.stack([i, torch.ones(count, dtype=torch.float64), i / 10], dim=1)


class Linear(conopt.ConstrainedProblem):
    """Prediction x·w with a mean bound, a summed bound, an equality and per-sample bounds."""

    def __init__(self, mean_bound: float = 1.0) -> None:
        super().__init__()
        self.weight = WEIGHT.clone().requires_grad_()
        self.mean_bound = mean_bound
        self.mean = conopt.Constraint("<=")
        self.total = conopt.Constraint("<=", reduction="sum")
        self.balance = conopt.Constraint("==")
        self.each = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(100))

    def evaluate(self, x: torch.Tensor) -> conopt.ProblemState:
        prediction = x @ self.weight
        indices = torch.arange(len(x))
        return conopt.ProblemState(
            loss=prediction.square().mean(),
            constraints={
                self.mean: prediction.mean() - self.mean_bound,
                "total": prediction.sum() - 100.0,
                self.balance: conopt.ConstraintState(
                    x[:, 1].mean() - 0.75, strict_value=x[:, 1].mean() - 1.0
                ),
                self.each: conopt.ConstraintState(prediction - 5.0, indices=indices),
            },
        )


def test_mean_constraints_over_uneven_batches_are_the_mean_over_all_samples():
    """Batches of 3, 3, 3, 1 rows: Σ n_b v_b / Σ n_b equals the mean over the 10 rows."""
    x = heldout()
    report = conopt.evaluate_feasibility(Linear(), x.split(3))
    mean_prediction = float((x @ WEIGHT).mean())  # 0.5·4.5 - 1 + 2·0.45 = 2.15
    assert report.values["mean"].item() == pytest.approx(mean_prediction - 1.0, abs=1e-12)
    assert report.violations["mean"] == pytest.approx(1.15, abs=1e-12)


def test_sum_constraints_add_the_batches_values():
    """reduction="sum": Σ_b v_b = Σ_i x_i·w - 100 · (number of batches)."""
    x = heldout()
    report = conopt.evaluate_feasibility(Linear(), x.split(4))
    expected = float((x @ WEIGHT).sum()) - 3 * 100.0
    assert report.values["total"].item() == pytest.approx(expected, abs=1e-12)
    assert report.violations["total"] == 0.0


def test_the_strict_value_of_a_proxy_constraint_is_the_one_evaluated():
    """The proxy says x[:, 1] - 0.75 (violated by 0.25); the strict value is exactly 0."""
    report = conopt.evaluate_feasibility(Linear(), heldout().split(3))
    assert report.values["balance"].item() == 0.0
    assert report.violations["balance"] == 0.0


def test_per_sample_constraints_report_their_largest_violation():
    """Prediction_i - 5 = 0.5 i - 1 + 0.2 i - 5 = 0.7 i - 6: largest at i = 9, 0.3."""
    report = conopt.evaluate_feasibility(Linear(), heldout().split(3))
    assert report.violations["each"] == pytest.approx(0.3, abs=1e-12)
    assert "each" not in report.values


def test_the_report_names_the_most_violated_constraint_and_says_if_it_is_feasible():
    report = conopt.evaluate_feasibility(Linear(), heldout().split(3))
    assert report.most_violated == "mean"
    assert report.max_violation == pytest.approx(1.15, abs=1e-12)
    assert not report.feasible
    loose = conopt.evaluate_feasibility(Linear(mean_bound=3.0), heldout()[:5].split(2))
    assert loose.feasible and loose.most_violated is None and loose.max_violation == 0.0


def test_the_tolerance_decides_feasibility():
    report = conopt.evaluate_feasibility(Linear(), heldout().split(3), tolerance=1.2)
    assert report.feasible


def test_evaluation_builds_no_graph_and_leaves_gradients_alone():
    problem = Linear()
    report = conopt.evaluate_feasibility(problem, heldout().split(3))
    assert not report.values["mean"].requires_grad
    assert problem.weight.grad is None


def test_a_custom_evaluate_and_batch_size_read_any_batch_type():
    """Batches as dicts; the weights of the means come from batch_size."""
    problem = Linear()
    batches = [{"rows": part} for part in heldout().split(3)]
    report = conopt.evaluate_feasibility(
        problem,
        batches,
        lambda batch: problem.evaluate(batch["rows"]),
        batch_size=lambda batch: float(len(batch["rows"])),
    )
    assert report.values["mean"].item() == pytest.approx(1.15, abs=1e-12)


def test_a_mean_without_a_readable_batch_size_is_refused_naming_the_constraint():
    problem = Linear()
    with pytest.raises(ValueError, match=r"constraint 'mean'.*batch_size="):
        conopt.evaluate_feasibility(problem, ["a"], lambda _: problem.evaluate(heldout()))


def test_an_unregistered_constraint_is_refused():
    problem = Linear()
    stranger = conopt.Constraint("<=")
    state = conopt.ProblemState(torch.zeros(()), {stranger: torch.zeros(())})
    with pytest.raises(ValueError, match="not registered"):
        conopt.evaluate_feasibility(problem, [heldout()], lambda _: state)


def test_a_value_of_the_wrong_shape_is_refused_naming_the_constraint():
    problem = Linear()
    state = conopt.ProblemState(torch.zeros(()), {problem.mean: torch.zeros(2)})
    with pytest.raises(ValueError, match="constraint 'mean' has shape"):
        conopt.evaluate_feasibility(problem, [heldout()], lambda _: state)


def _report(violation: float) -> conopt.FeasibilityReport:
    return conopt.FeasibilityReport(values={}, violations={"mean": violation, "other": 0.0})


def test_the_tracker_says_since_which_step_the_constraints_hold():
    """feasible_since is the first step of the latest run of feasible evaluations."""
    tracker = conopt.FeasibilityTracker()
    assert tracker.as_dict()["heldout/feasible"] == 0.0
    for step, violation, since in [(10, 0.3, None), (20, 0.0, 20), (30, 0.0, 20), (40, 0.1, None)]:
        tracker.update(step, _report(violation))
        assert tracker.feasible_since == since
    tracker.update(50, _report(0.0))
    assert tracker.feasible_since == 50 and tracker.feasible


def test_the_tracker_logs_flat_values():
    tracker = conopt.FeasibilityTracker()
    tracker.update(7, _report(0.25))
    assert tracker.as_dict() == {
        "heldout/feasible": 0.0,
        "heldout/feasible_since": None,
        "heldout/max_violation": 0.25,
        "heldout/most_violated": "mean",
        "heldout/mean/violation": 0.25,
        "heldout/other/violation": 0.0,
    }


def test_the_tracker_resumes_from_its_state_dict_and_refuses_going_back():
    tracker = conopt.FeasibilityTracker()
    tracker.update(3, _report(0.0))
    resumed = conopt.FeasibilityTracker()
    resumed.load_state_dict(tracker.state_dict())
    resumed.update(4, _report(0.0))
    assert resumed.feasible_since == 3
    with pytest.raises(ValueError, match="step 2 is earlier than the last recorded step 4"):
        resumed.update(2, _report(0.0))


def test_training_becomes_feasible_on_heldout_data_and_the_tracker_says_when():
    """min ‖w‖² s.t. mean(x·w) <= 1 from an infeasible w: the held-out mean, m·w with m the
    held-out rows' mean, falls below 1 and stays there; the tracker names the first evaluation
    at which it is."""
    problem = Linear()
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD([problem.weight], lr=0.01),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    train, test = heldout(), heldout().flip(0)
    tracker = conopt.FeasibilityTracker()

    def evaluate(x: torch.Tensor) -> conopt.ProblemState:
        prediction = x @ problem.weight
        return conopt.ProblemState(
            problem.weight.square().sum(), {problem.mean: prediction.mean() - 1.0}
        )

    closed_form = []  # (step, held-out mean(x·w) - 1 = m·w - 1)
    for step in range(1, 101):
        optimizer.step(lambda: evaluate(train))
        if step % 5 == 0:
            report = conopt.evaluate_feasibility(problem, test.split(4), evaluate)
            tracker.update(step, report)
            expected = float(test.mean(0) @ problem.weight.detach()) - 1.0
            assert report.values["mean"].item() == pytest.approx(expected, abs=1e-12)
            closed_form.append((step, expected))
    first = next(step for step, value in closed_form if value <= 0.0)
    assert closed_form[0][1] > 0.0  # infeasible at the first evaluation
    assert all(value <= 0.0 for step, value in closed_form if step >= first)
    assert tracker.feasible and tracker.feasible_since == first
    assert tracker.as_dict()["heldout/feasible_since"] == float(first)


# ------------------------------------------------------------------------------ two ranks
def _worker(rank: int, world_size: int, store: str, out: dict) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        rows = heldout()
        shard = rows[:3] if rank == 0 else rows[3:]  # 3 and 7 rows: uneven
        report = conopt.evaluate_feasibility(Linear(), shard.split(2))
        out[rank] = ({k: v.item() for k, v in report.values.items()}, dict(report.violations))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_report_what_one_process_reports_over_all_the_data(tmp_path):
    """Sums, counts and maxima are all-reduced: both ranks get the one-process report."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    rows = heldout()
    single = conopt.evaluate_feasibility(
        Linear(), list(rows[:3].split(2)) + list(rows[3:].split(2))
    )
    assert out[0] == out[1]
    values, violations = out[0]
    for name, value in single.values.items():
        assert values[name] == pytest.approx(value.item(), abs=1e-12), name
    assert violations == pytest.approx(dict(single.violations), abs=1e-12)
