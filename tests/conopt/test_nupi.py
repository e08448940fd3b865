"""Specification of the nuPI dual optimizer."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.optim.optimizer import _default_to_fused_or_foreach

import conopt
from conopt.optim import SimultaneousGDA, nuPI

D = dict(dtype=torch.float64)
ERRORS = [
    torch.tensor([1.0, -2.0, 0.5], **D),
    torch.tensor([0.5, 1.0, -1.0], **D),
    torch.tensor([-0.25, 0.0, 2.0], **D),
    torch.tensor([2.0, 0.5, 0.5], **D),
]


def _trajectory(optimizer_factory, errors=ERRORS):
    """Feed the errors as gradients of one parameter; return the parameter after each step."""
    p = torch.nn.Parameter(torch.tensor([0.1, 0.2, 0.3], **D))
    optimizer = optimizer_factory([p])
    out = []
    for e in errors:
        p.grad = e.clone()
        optimizer.step()
        out.append(p.detach().clone())
    return out


def test_kp_zero_ki_one_is_gradient_ascent():
    pi = _trajectory(lambda ps: nuPI(ps, lr=0.3, kp=0.0, ki=1.0, maximize=True))
    sgd = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.3, maximize=True))
    for a, b in zip(pi, sgd, strict=True):
        assert torch.allclose(a, b, rtol=1e-15, atol=0)


def test_kp_ki_one_without_ema_is_optimistic_gradient_ascent():
    """λ_{t+1} = λ_t + η(2e_t − e_{t−1}), with e_{−1} = 0."""
    pi = _trajectory(lambda ps: nuPI(ps, lr=0.3, kp=1.0, ki=1.0, maximize=True))
    lam, previous = torch.tensor([0.1, 0.2, 0.3], **D), torch.zeros(3, **D)
    for got, e in zip(pi, ERRORS, strict=True):
        lam = lam + 0.3 * (2 * e - previous)
        previous = e
        assert torch.allclose(got, lam)


@pytest.mark.parametrize(("kp", "ki", "nu"), [(0.5, 1.0, 0.3), (2.0, 0.5, 0.9), (1.0, 0.0, 0.5)])
def test_nupi_follows_its_pi_recursion(kp, ki, nu):
    """ξ_t = νξ_{t−1} + (1−ν)e_t,  λ_{t+1} = λ_t + η(K_I e_t + K_P(ξ_t − ξ_{t−1})), ξ_{−1} = 0."""
    pi = _trajectory(lambda ps: nuPI(ps, lr=0.2, kp=kp, ki=ki, ema_nu=nu, maximize=True))
    lam, xi = torch.tensor([0.1, 0.2, 0.3], **D), torch.zeros(3, **D)
    for got, e in zip(pi, ERRORS, strict=True):
        new_xi = nu * xi + (1 - nu) * e
        lam = lam + 0.2 * (ki * e + kp * (new_xi - xi))
        xi = new_xi
        assert torch.allclose(got, lam)


def test_without_maximize_nupi_descends():
    up = _trajectory(lambda ps: nuPI(ps, lr=0.1, kp=1.0, maximize=True))
    down = _trajectory(lambda ps: nuPI(ps, lr=0.1, kp=1.0))
    start = torch.tensor([0.1, 0.2, 0.3], **D)
    assert torch.allclose(down[-1] - start, -(up[-1] - start))


def test_parameters_without_gradient_are_left_alone():
    p = torch.nn.Parameter(torch.ones(2, **D))
    optimizer = nuPI([p], lr=0.1, maximize=True)
    optimizer.step()
    assert p.tolist() == [1.0, 1.0] and len(optimizer.state) == 0


def test_step_evaluates_a_closure():
    p = torch.nn.Parameter(torch.ones(1, **D))
    optimizer = nuPI([p], lr=0.1)

    def closure():
        p.grad = torch.ones(1, **D)
        return torch.tensor(3.0)

    assert float(optimizer.step(closure)) == 3.0
    assert p.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be > 0"),
        ({"kp": -1.0}, "kp and ki must be >= 0"),
        ({"ki": -0.5}, "kp and ki must be >= 0"),
        ({"ema_nu": 1.0}, r"ema_nu must be in \[0, 1\)"),
        ({"ema_nu": -0.1}, r"ema_nu must be in \[0, 1\)"),
    ],
)
def test_nupi_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nuPI([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_restarts_reset_the_pi_state_of_strictly_feasible_entries():
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", 3, multiplier=conopt.DenseMultiplier(init=1.0))
    x = torch.zeros(3, **D).requires_grad_()
    dual = nuPI(problem.dual_parameters(), lr=0.1, kp=1.0, ki=1.0, ema_nu=0.5, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=0.1), dual, dual_restarts=True)
    for values in ([1.0, 1.0, 1.0], [-1.0, 0.0, 2.0]):
        g = torch.tensor(values, **D)
        optimizer.step(
            lambda g=g: conopt.ProblemState(loss=x.sum(), constraints={problem.c: g + 0 * x})
        )
    weight = problem.c.multiplier.weight
    xi = dual.state[weight]["xi"]
    assert weight[0] == 0 and xi[0] == 0
    assert weight[1] > 0 and xi[1] != 0 and xi[2] != 0


def test_nupi_inequality_multipliers_are_projected():
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", 2, multiplier=conopt.DenseMultiplier(init=0.05))
    x = torch.zeros(2, **D).requires_grad_()
    dual = nuPI(problem.dual_parameters(), lr=0.1, kp=3.0, ki=1.0, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=0.1), dual)
    g = torch.tensor([-1.0, 1.0], **D)
    optimizer.step(lambda: conopt.ProblemState(loss=x.sum(), constraints={problem.c: g + 0 * x}))
    assert problem.c.multiplier.weight.tolist() == pytest.approx([0.0, 0.45])


# ------------------------------------------------------------------------------ foreach path
SHAPES = st.sampled_from([(), (1,), (3,), (2, 3), (0,), (4, 1)])


@st.composite
def multiplier_sets(draw):
    """Several multipliers of mixed shapes and dtypes; some without a gradient at some steps."""
    count = draw(st.integers(1, 8))
    return {
        "shapes": [draw(SHAPES) for _ in range(count)],
        "dtypes": [draw(st.sampled_from([torch.float32, torch.float64])) for _ in range(count)],
        "lr": draw(st.floats(1e-3, 2.0)),
        "kp": draw(st.floats(0.0, 5.0)),
        "ki": draw(st.floats(0.0, 2.0)),
        "ema_nu": draw(st.floats(0.0, 0.99)),
        "maximize": draw(st.booleans()),
        "missing": [draw(st.lists(st.booleans(), min_size=count, max_size=count)) for _ in "abcd"],
        "seed": draw(st.integers(0, 2**16)),
        "two_groups": draw(st.booleans()),
    }


def _run_nupi(case, foreach):
    """Four steps of nuPI on the case's multipliers; the parameters and states after each."""
    generator = torch.Generator().manual_seed(case["seed"])
    params = [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))
        for shape, dtype in zip(case["shapes"], case["dtypes"], strict=True)
    ]
    hyper = {k: case[k] for k in ("lr", "kp", "ki", "ema_nu", "maximize")}
    if case["two_groups"] and len(params) > 1:
        groups = [{"params": params[::2]}, {"params": params[1::2], "kp": case["kp"] / 2}]
        optimizer = nuPI(groups, **hyper, foreach=foreach)
    else:
        optimizer = nuPI(params, **hyper, foreach=foreach)
    history = []
    for missing in case["missing"]:
        for p, skip in zip(params, missing, strict=True):
            grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
            p.grad = None if skip else grad
        optimizer.step()
        states = {i: optimizer.state[p]["xi"].clone() for i, p in enumerate(params)
                  if p in optimizer.state}  # fmt: skip
        history.append(([p.detach().clone() for p in params], states))
    return history, optimizer


@given(case=multiplier_sets())
def test_foreach_and_single_tensor_paths_agree_bitwise(case):
    """On CPU the foreach ops run the per-tensor kernels in the same order: equal bit for bit."""
    loop, loop_optimizer = _run_nupi(case, foreach=False)
    multi, multi_optimizer = _run_nupi(case, foreach=True)
    for (loop_params, loop_states), (multi_params, multi_states) in zip(loop, multi, strict=True):
        for a, b in zip(loop_params, multi_params, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert loop_states.keys() == multi_states.keys()
        for i, xi in loop_states.items():
            assert xi.dtype == multi_states[i].dtype and torch.equal(xi, multi_states[i])
    loop_state = loop_optimizer.state_dict()["state"]
    assert loop_state.keys() == multi_optimizer.state_dict()["state"].keys()
    assert all(set(s) == {"xi"} for s in loop_state.values())


def test_foreach_default_follows_torch(monkeypatch):
    """foreach=None takes the path torch.optim would take (the loop on CPU tensors)."""
    from conopt.optim import nupi as module

    calls = []
    real = module._multi_tensor_nupi

    def spy(*args):
        calls.append(True)
        return real(*args)

    monkeypatch.setattr(module, "_multi_tensor_nupi", spy)
    p = torch.nn.Parameter(torch.zeros(3, **D))
    p.grad = torch.ones(3, **D)
    nuPI([p], lr=0.1, maximize=True).step()
    expected = _default_to_fused_or_foreach([p], False, use_fused=False)[1]
    assert bool(calls) == expected
    nuPI([p], lr=0.1, maximize=True, foreach=True).step()
    assert len(calls) == 1 + expected


def test_a_state_dict_saved_before_foreach_existed_loads():
    """Checkpoints whose groups have no "foreach" key load, step alike, and default to None."""
    p = torch.nn.Parameter(torch.tensor([0.1, 0.2, 0.3], **D))
    optimizer = nuPI([p], lr=0.2, kp=1.0, ema_nu=0.5, maximize=True)
    p.grad = ERRORS[0].clone()
    optimizer.step()
    saved = optimizer.state_dict()
    del saved["param_groups"][0]["foreach"]
    q = torch.nn.Parameter(p.detach().clone())
    resumed = nuPI([q], lr=0.2, kp=1.0, ema_nu=0.5, maximize=True, foreach=True)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["foreach"] is None
    for optimizer_, param in ((optimizer, p), (resumed, q)):
        param.grad = ERRORS[1].clone()
        optimizer_.step()
    assert torch.equal(p, q) and torch.equal(optimizer.state[p]["xi"], resumed.state[q]["xi"])
