"""conopt.integrations.wrapped_optimizer: the framework-free base of the integrations' optimizers.

Its ``state`` setter is exercised directly and through ``accelerate``'s ``AcceleratedOptimizer``,
whose own ``state`` setter forwards to it.
"""

import pytest
import torch
from accelerate_qp import make_run, reset_accelerate
from fresh_python import run_python
from lightning_qp import QP

import conopt
from conopt.integrations.accelerate import AccelerateConstrainedOptimizer
from conopt.integrations.lightning import LightningConstrainedOptimizer
from conopt.integrations.wrapped_optimizer import WrappedConstrainedOptimizer

torch.set_num_threads(1)
A = torch.tensor([[1.3, 0.5, 0.1], [0.7, 1.1, -0.5]])
W = torch.tensor([[1.2, 0.9, 0.0], [0.8, 1.1, 0.0]])


def _wrapped(kind: type = WrappedConstrainedOptimizer) -> tuple:
    """The QP with momentum on both players (so both have per-parameter state)."""
    problem, x = QP(), torch.nn.Parameter(torch.zeros(3))
    gda = conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD([x], lr=0.2, momentum=0.9),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.2, momentum=0.5, maximize=True),
    )
    return kind(gda), problem, x


def _step(optimizer: WrappedConstrainedOptimizer, problem: QP, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    optimizer.lagrangian(problem.evaluate(x, A, W)).backward()
    optimizer.step()


def test_the_base_steps_both_players_without_any_framework():
    wrapped, problem, x = _wrapped()
    reference, ref_problem, ref_x = _wrapped()
    for _ in range(3):
        _step(wrapped, problem, x)
        state = ref_problem.evaluate(ref_x, A, W)
        reference.constrained.zero_grad()
        reference.constrained.lagrangian(state).backward()
        reference.constrained.apply()
    assert wrapped.last_report.step == 3
    assert torch.equal(x, ref_x)
    for mine, theirs in zip(problem.dual_parameters(), ref_problem.dual_parameters(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("kind", [WrappedConstrainedOptimizer, LightningConstrainedOptimizer])
def test_assigning_the_state_gives_each_wrapped_optimizer_its_own_entries(kind):
    wrapped, problem, x = _wrapped(kind)
    _step(wrapped, problem, x)
    primal, dual = wrapped.constrained.primal_optimizers[0], wrapped.constrained.dual_optimizer
    saved = wrapped.state
    dual_keys = set(dual.state)
    assert set(saved) == {x} | dual_keys and len(dual_keys) == 2

    wrapped.state = {}
    assert not wrapped.state and not primal.state and not dual.state
    wrapped.state = saved
    assert primal.state[x] is saved[x] and set(primal.state) == {x}
    assert set(dual.state) == dual_keys
    assert all(dual.state[p] is saved[p] for p in dual_keys)
    assert primal.state[torch.zeros(1)] == {}  # still torch's defaultdict(dict)


def test_assigning_entries_of_foreign_parameters_is_refused():
    wrapped, problem, x = _wrapped()
    _step(wrapped, problem, x)
    before = wrapped.state
    stray = torch.nn.Parameter(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"WrappedConstrainedOptimizer.state.*\[\(2, 5\)\].*not "):
        wrapped.state = {**before, stray: {"momentum_buffer": torch.zeros(2, 5)}}
    assert wrapped.state == before  # nothing was assigned


def test_the_accelerated_optimizers_state_setter_reaches_the_wrapped_optimizers():
    reset_accelerate()
    try:
        run = make_run(batch_size=16, adam=True)
        run.epoch()
        primal = run.constrained.constrained.primal_optimizers[0]
        saved = run.optimizer.state  # the AcceleratedOptimizer's, read from ours
        assert set(saved) == set(run.constrained.state) and run.net.x in saved
        run.optimizer.state = {p: s for p, s in saved.items() if p is run.net.x}
        assert (
            set(primal.state) == {run.net.x}
            and not run.constrained.constrained.dual_optimizer.state
        )
        run.optimizer.state = saved
        assert set(run.constrained.state) == set(saved)
        run.epoch()  # the restored states step on
        assert run.reports[-1].step == 8
    finally:
        reset_accelerate()


def test_the_base_refuses_what_it_cannot_drive_naming_the_subclass():
    with pytest.raises(TypeError, match="AccelerateConstrainedOptimizer wraps a conopt"):
        AccelerateConstrainedOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))]))


def test_a_new_group_goes_to_the_primal_optimizer_and_never_holds_a_multiplier():
    optimizer, problem, _ = _wrapped(LightningConstrainedOptimizer)
    extra = torch.nn.Parameter(torch.ones(2))
    optimizer.add_param_group({"params": [extra], "lr": 0.01})
    primal = optimizer.constrained.primal_optimizers[0]
    assert optimizer.param_groups == primal.param_groups and len(primal.param_groups) == 2
    assert primal.param_groups[1]["momentum"] == 0.9  # the primal optimizer's default
    generated = torch.nn.Parameter(torch.ones(1))
    optimizer.add_param_group({"params": (p for p in [generated])})  # a generator, read once
    assert primal.param_groups[2]["params"] == [generated]
    with pytest.raises(ValueError, match="holds 1 multiplier"):
        optimizer.add_param_group({"params": problem.budget.multiplier.weight})
    with pytest.raises(ValueError, match="holds 1 multiplier"):
        multiplier = problem.balance.multiplier.weight
        optimizer.param_groups = [*primal.param_groups, {"params": [multiplier]}]
    assert len(primal.param_groups) == 3  # nothing changed


def _two_primal_optimizers() -> tuple:
    problem, x, y = QP(), torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))
    gda = conopt.optim.SimultaneousGDA(
        problem,
        primal=[torch.optim.SGD([x], lr=0.2), torch.optim.Adam([y], lr=0.1)],
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.2, maximize=True),
    )
    return WrappedConstrainedOptimizer(gda), gda


def test_assigned_groups_go_back_to_the_primal_optimizers_in_order():
    optimizer, gda = _two_primal_optimizers()
    groups = [dict(g, lr=g["lr"] / 2) for g in optimizer.param_groups]
    optimizer.param_groups = groups
    assert [o.param_groups[0]["lr"] for o in gda.primal_optimizers] == [0.1, 0.05]
    assert gda.primal_optimizers[1].param_groups[0] is groups[1]
    with pytest.raises(ValueError, match="given 3 groups, but it drives 2 primal optimizers"):
        optimizer.param_groups = [*groups, {"params": [torch.nn.Parameter(torch.ones(1))]}]
    with pytest.raises(TypeError, match="drives 2 primal optimizers, so which one"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})


def test_the_base_imports_no_framework():
    code = (
        "import sys\n"
        "import conopt.integrations.wrapped_optimizer\n"
        "loaded = {'lightning', 'accelerate', 'transformers'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    run_python(code)
