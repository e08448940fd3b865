"""conopt.integrations.accelerate through a real ``accelerate.Accelerator`` loop, on CPU.

The problem is the QP of ``lightning_qp.py`` (known solution x* = (0.5, 0.5, 0), λ* = 0.3,
μ* = 0.2); the loop is ``accelerate_qp.Run.epoch``, the how-to's.
"""

from pathlib import Path

import pytest
import torch
from accelerate_qp import flat_state, make_run, reset_accelerate
from fresh_python import import_error_without
from lightning_qp import LAMBDA, MU, QP, SOLUTION, assert_bitwise_equal, assert_float32_duals
from two_processes import run_on_two_processes

import conopt
from conopt.integrations.accelerate import AccelerateConstrainedOptimizer

torch.set_num_threads(1)
HERE = Path(__file__).parent
OPTIMUM = torch.tensor([LAMBDA, MU])


@pytest.fixture(autouse=True)
def fresh_accelerator():
    """Each test builds its own Accelerator (accelerate keeps one state per process)."""
    reset_accelerate()
    yield
    reset_accelerate()


# ------------------------------------------------------------------------------- training
def test_the_qp_reaches_its_known_optimum():
    run = make_run(batch_size=16, mix=False, dual_momentum=0.0, restarts=False)  # whole pairs
    for _ in range(100):
        run.epoch()

    report = run.reports[-1]
    assert len(run.reports) == report.step == 400
    kkt = report.kkt
    assert kkt.max_violation < 1e-5 and kkt.max_complementary_slackness < 1e-5
    assert kkt.stationarity < 1e-5 and kkt.min_multiplier > 0.29
    torch.testing.assert_close(run.net.x.detach(), SOLUTION, atol=1e-5, rtol=0)
    torch.testing.assert_close(run.multipliers(), OPTIMUM, atol=1e-5, rtol=0)


def test_gradient_accumulation_steps_like_the_whole_batch():
    def run(batch_size, accumulation):
        reset_accelerate()
        result = make_run(batch_size, accumulation)
        for _ in range(3):
            result.epoch()
        return result

    whole, halves = run(16, 1), run(8, 2)
    assert len(halves.reports) == len(whole.reports) == halves.reports[-1].step == 12
    torch.testing.assert_close(halves.net.x, whole.net.x, atol=1e-6, rtol=0)
    torch.testing.assert_close(halves.multipliers(), whole.multipliers(), atol=1e-6, rtol=0)
    for name, entry in whole.reports[-1].constraints.items():
        value = halves.reports[-1].constraints[name].strict_value
        torch.testing.assert_close(value, entry.strict_value, atol=1e-6, rtol=0)


def test_bf16_keeps_multipliers_and_constraint_values_float32():
    run = make_run(
        batch_size=16, mixed_precision="bf16", mix=False, dual_momentum=0.0, restarts=False
    )
    for _ in range(40):
        run.epoch()

    assert run.raw_dtypes == {torch.bfloat16}  # the constraint, computed under autocast
    report = run.reports[-1]
    assert_float32_duals(run.problem, report)
    assert report.kkt.max_violation < 1e-2
    torch.testing.assert_close(run.multipliers(), OPTIMUM, atol=1e-2, rtol=0)


def test_resuming_from_accelerate_save_state_is_bit_for_bit(tmp_path):
    whole = make_run(batch_size=16, adam=True)
    for _ in range(4):
        whole.epoch()

    reset_accelerate()
    stopped = make_run(batch_size=16, adam=True)
    for _ in range(2):
        stopped.epoch()
    stopped.accelerator.save_state(tmp_path / "state")

    reset_accelerate()
    resumed = make_run(batch_size=16, adam=True)
    resumed.accelerator.load_state(tmp_path / "state")
    for _ in range(2):
        resumed.epoch()

    assert resumed.reports[-1].step == whole.reports[-1].step == 16
    assert torch.equal(resumed.net.x, whole.net.x)
    assert torch.equal(resumed.multipliers(), whole.multipliers())
    assert_bitwise_equal(flat_state(resumed.constrained), flat_state(whole.constrained))


def test_two_processes_keep_identical_multipliers_equal_to_one_process(tmp_path):
    """2 CPU processes (gloo), float64: the ranks agree, and match 1 process on 16-batches."""
    run_on_two_processes(HERE / "accelerate_ddp_run.py", str(tmp_path), "5")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["steps"] == 20
    assert ranks[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    assert torch.equal(ranks[0]["multipliers"], ranks[1]["multipliers"])
    assert torch.equal(ranks[0]["x"], ranks[1]["x"])

    single = make_run(batch_size=16, dtype=torch.float64)
    for _ in range(5):
        single.epoch()
    torch.testing.assert_close(ranks[0]["multipliers"], single.multipliers(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ranks[0]["x"], single.net.x.detach(), atol=1e-6, rtol=0)
    for name, entry in single.reports[-1].constraints.items():
        torch.testing.assert_close(ranks[0]["values"][name], entry.strict_value, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ bad use
def test_stepping_the_primal_optimizer_instead_is_refused():
    run = make_run(batch_size=16)
    primal = run.constrained.constrained.primal_optimizers[0]
    a, w = next(iter(run.loader))
    with pytest.raises(RuntimeError, match="would never take their dual step"):
        for _ in range(2):
            loss, x = run.net(a)
            state = conopt.ProblemState(loss=loss, constraints={run.problem.budget: w.mean(0) @ x})
            run.accelerator.backward(run.constrained.lagrangian(state))
            primal.step()  # the dual step is skipped


def test_backpropagating_the_loss_instead_of_the_lagrangian_is_refused():
    run = make_run(batch_size=16)
    a, _ = next(iter(run.loader))
    loss, _ = run.net(a)
    run.accelerator.backward(loss)
    with pytest.raises(RuntimeError, match=r"no Lagrangian to step on"):
        run.optimizer.step()


def test_an_optimizer_that_evaluates_twice_per_step_is_refused():
    problem, x = QP(), torch.nn.Parameter(torch.zeros(3))
    alternating = conopt.optim.AlternatingGDA(
        problem,
        primal=torch.optim.SGD([x], lr=0.1),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True),
    )
    with pytest.raises(TypeError, match="AlternatingGDA evaluates the problem more than once"):
        AccelerateConstrainedOptimizer(alternating)


def test_loading_a_state_without_the_duals_is_refused(tmp_path):
    run = make_run(batch_size=16)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"no conopt multipliers.*'param_groups'"):
        run.optimizer.load_state_dict(plain)


# -------------------------------------------------------------------------------- imports
def test_the_integration_names_its_extra_when_accelerate_is_missing():
    message = import_error_without("accelerate", "conopt.integrations.accelerate")
    assert "pip install torch-conopt[accelerate]" in message
