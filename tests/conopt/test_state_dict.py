"""Resuming from state dicts continues bit-for-bit like an uninterrupted run."""

import io

import pytest
import torch
from toy_problems import QP, assert_same, random_qp

import conopt
from conopt.optim import AlternatingGDA, ExtraAdam, Extragradient, SimultaneousGDA, nuPI

K = 6
DATA = random_qp(seed=7, n=4, m_ineq=2, m_eq=1)
STAGNATION = conopt.IncreaseOnStagnation(factor=2.0, tolerance=0.9)


def _sgd(params, **kwargs):
    return torch.optim.SGD(params, momentum=0.9, **kwargs)


CONFIGS = {
    "sgd-momentum": dict(primal=_sgd, dual=_sgd),
    "sgd-momentum-restarts": dict(primal=_sgd, dual=_sgd, dual_restarts=True),
    "adam": dict(primal=torch.optim.Adam, dual=torch.optim.Adam),
    "adam-restarts": dict(primal=torch.optim.Adam, dual=torch.optim.Adam, dual_restarts=True),
    "augmented-lagrangian-penalty-growth": dict(
        primal=_sgd,
        dual=torch.optim.SGD,
        dual_lr=1.0,
        formulation=lambda: conopt.AugmentedLagrangian(rho=0.2, penalty_update=STAGNATION),
    ),
    "quadratic-penalty-growth": dict(
        primal=torch.optim.Adam,
        dual=None,
        formulation=lambda: conopt.QuadraticPenalty(rho=0.5, penalty_update=STAGNATION),
    ),
    "nupi": dict(primal=_sgd, dual=lambda ps, **kw: nuPI(ps, kp=2.0, ema_nu=0.5, **kw)),
    "nupi-restarts": dict(
        primal=_sgd, dual=lambda ps, **kw: nuPI(ps, kp=2.0, **kw), dual_restarts=True
    ),
    "alternating-dual-first": dict(
        cls=AlternatingGDA, primal=torch.optim.Adam, dual=_sgd, dual_first=True
    ),
    "extragradient-extra-adam": dict(cls=Extragradient, primal=ExtraAdam, dual=ExtraAdam),
}


def _build(config):
    config = dict(config)
    cls = config.pop("cls", SimultaneousGDA)
    primal, dual = config.pop("primal"), config.pop("dual")
    dual_lr = config.pop("dual_lr", 0.05)
    problem = QP(DATA, split=True, formulation=config.pop("formulation", None), ineq_init=0.5)
    x = torch.zeros(DATA.n).requires_grad_()
    dual_optimizer = (
        None if dual is None else dual(problem.dual_parameters(), lr=dual_lr, maximize=True)
    )
    optimizer = cls(problem, primal([x], lr=0.05), dual_optimizer, **config)
    return problem, x, optimizer


def _run(problem, x, optimizer, steps):
    for _ in range(steps):
        optimizer.step(lambda: problem.evaluate(x))


def _final(problem, x, optimizer):
    return [x.detach().clone(), problem.state_dict(), optimizer.state_dict()]


def _saved(problem, x, optimizer):
    """A run's checkpoint after a round trip through ``torch.save`` / ``torch.load``."""
    buffer = io.BytesIO()
    torch.save(
        {"x": x.detach(), "problem": problem.state_dict(), "optimizer": optimizer.state_dict()},
        buffer,
    )
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(name):
    config = CONFIGS[name]
    reference = _build(config)
    _run(*reference, 2 * K)

    first = _build(config)
    _run(*first, K)
    saved = _saved(*first)

    problem, x, optimizer = resumed = _build(config)
    with torch.no_grad():
        x.copy_(saved["x"])
    problem.load_state_dict(saved["problem"])
    optimizer.load_state_dict(saved["optimizer"])
    assert optimizer.step_count == K
    _run(*resumed, K)

    assert_same(_final(*resumed), _final(*reference))
    assert resumed[2].step_count == 2 * K


def test_restarts_change_the_trajectory_of_the_restart_configs():
    """Sanity check of the configurations above: restarts do happen on this problem."""
    with_restarts = _build(CONFIGS["sgd-momentum-restarts"])
    without = _build(CONFIGS["sgd-momentum"])
    _run(*with_restarts, 2 * K)
    _run(*without, 2 * K)
    assert not torch.equal(with_restarts[1], without[1])


def test_penalty_grows_in_the_penalty_configs():
    problem, x, optimizer = _build(CONFIGS["augmented-lagrangian-penalty-growth"])
    _run(problem, x, optimizer, 2 * K)
    rhos = [float(c.formulation.rho) for c in problem.constraints()]
    assert max(rhos) > 0.2


def test_optimizer_state_dict_holds_both_players_and_the_counters():
    problem, x, optimizer = _build(CONFIGS["adam"])
    _run(problem, x, optimizer, 2)
    state = optimizer.state_dict()
    assert set(state) == {"primal", "dual", "step_count", "skipped_steps"}
    assert len(state["primal"]) == 1 and state["step_count"] == 2
    assert state["dual"]["state"]  # Adam moments of the multipliers


def _float32_built_float64_run():
    """A float64 problem whose multipliers are built float32 (the default dtype of most code)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        problem = QP(DATA, split=True, ineq_init=0.5)
    finally:
        torch.set_default_dtype(previous)
    x = torch.zeros(DATA.n, dtype=torch.float64).requires_grad_()
    dual = torch.optim.Adam(problem.dual_parameters(), lr=0.05, maximize=True)
    return problem, x, SimultaneousGDA(problem, _sgd([x], lr=0.05), dual)


def test_multipliers_that_followed_float64_values_resume_bit_for_bit():
    reference = _float32_built_float64_run()
    _run(*reference, 2 * K)
    assert {p.dtype for p in reference[0].dual_parameters()} == {torch.float64}

    first = _float32_built_float64_run()
    _run(*first, K)
    saved = _saved(*first)

    problem, x, optimizer = resumed = _float32_built_float64_run()
    assert {p.dtype for p in problem.dual_parameters()} == {torch.float32}
    with torch.no_grad():
        x.copy_(saved["x"])
    problem.load_state_dict(saved["problem"])  # widens the multipliers: no value is rounded
    optimizer.load_state_dict(saved["optimizer"])
    assert {p.dtype for p in problem.dual_parameters()} == {torch.float64}
    _run(*resumed, K)

    assert_same(_final(*resumed), _final(*reference))
