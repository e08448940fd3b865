"""Specification of conopt.multipliers: dense, indexed and implicit multipliers."""

import contextlib

import pytest
import torch
from torch import nn

import conopt
from conopt.optim import SimultaneousGDA


def _problem(**constraints):
    problem = conopt.ConstrainedProblem()
    for name, constraint in constraints.items():
        setattr(problem, name, constraint)
    return problem


def _optimizer(problem, x, dual, **kwargs):
    return SimultaneousGDA(problem, torch.optim.SGD([x], lr=0.1), dual, **kwargs)


def _sgd(problem, lr=0.1, **kwargs):
    return torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True, **kwargs)


# --------------------------------------------------------------------------------- Dense
def test_dense_multiplier_takes_the_constraint_shape_and_init_value():
    c = conopt.Constraint("<=", shape=(2, 3), multiplier=conopt.DenseMultiplier(init=0.5))
    assert torch.equal(c.multiplier.weight, torch.full((2, 3), 0.5))


def test_dense_multiplier_accepts_a_tensor_init():
    init = torch.tensor([0.0, 1.0, 2.0])
    c = conopt.Constraint("<=", shape=3, multiplier=conopt.DenseMultiplier(3, init=init))
    assert torch.equal(c.multiplier.weight.detach(), init)


def test_dense_multiplier_without_shape_broadcasts_a_tensor_init_at_binding():
    multiplier = conopt.DenseMultiplier(init=torch.tensor([1.0, 2.0]))
    conopt.Constraint("==", shape=(3, 2), multiplier=multiplier)
    assert multiplier.weight.tolist() == [[1.0, 2.0]] * 3


def test_dense_multiplier_value_is_its_weight():
    c = conopt.Constraint("==", shape=2)
    assert c.multiplier.value(None) is c.multiplier.weight
    assert c.multiplier.expected_shape(conopt.ConstraintState(torch.zeros(2))) == (2,)


def test_dense_inequality_multiplier_must_start_nonnegative():
    with pytest.raises(ValueError, match="non-negative"):
        conopt.Constraint("<=", shape=2, multiplier=conopt.DenseMultiplier(init=-1.0))


def test_dense_equality_multiplier_may_start_negative():
    c = conopt.Constraint("==", shape=2, multiplier=conopt.DenseMultiplier(init=-1.0))
    assert torch.equal(c.multiplier.weight.detach(), torch.full((2,), -1.0))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("<=", [0.0, 0.15]), ("==", [-0.05, 0.15])],  # inequality multipliers projected onto >= 0
)
def test_dense_multiplier_after_a_dual_step_is_projected_only_for_inequalities(kind, expected):
    problem = _problem(c=conopt.Constraint(kind, 2, multiplier=conopt.DenseMultiplier(init=0.05)))
    x = torch.zeros(2, requires_grad=True)
    optimizer = _optimizer(problem, x, _sgd(problem))
    values = torch.tensor([-1.0, 1.0])
    optimizer.step(lambda: conopt.ProblemState(loss=x.sum(), constraints={problem.c: x + values}))
    assert problem.c.multiplier.weight.tolist() == pytest.approx(expected)


# ------------------------------------------------------------------------------- Indexed
def _indexed(kind="<=", shape=(), num=6, init=0.0):
    return conopt.Constraint(kind, shape, multiplier=conopt.IndexedMultiplier(num, init=init))


def test_indexed_multiplier_holds_one_multiplier_per_index():
    c = _indexed(shape=2, num=6, init=0.25)
    assert torch.equal(c.multiplier.weight.detach(), torch.full((6, 2), 0.25))


def test_indexed_multiplier_value_selects_the_rows_named_by_indices():
    c = _indexed(num=5)
    with torch.no_grad():
        c.multiplier.weight.copy_(torch.arange(5.0))
    state = conopt.ConstraintState(torch.zeros(3), indices=torch.tensor([4, 0, 4]))
    assert c.multiplier.value(state).tolist() == [4.0, 0.0, 4.0]
    assert c.multiplier.expected_shape(state) == (3,)


def test_indexed_multiplier_needs_indices():
    c = _indexed()
    with pytest.raises(ValueError, match="indices"):
        c.multiplier.value(conopt.ConstraintState(torch.zeros(3)))


def test_indexed_multiplier_needs_a_positive_number_of_indices():
    with pytest.raises(ValueError, match="num_indices > 0"):
        conopt.IndexedMultiplier(0)


def test_indexed_inequality_multiplier_must_start_nonnegative():
    with pytest.raises(ValueError, match="non-negative"):
        _indexed(init=-0.5)


def test_indexed_multiplier_gets_a_dense_gradient_with_zeros_on_unused_rows():
    problem = _problem(c=_indexed(num=6))
    x = torch.zeros(3, requires_grad=True)
    optimizer = _optimizer(problem, x, _sgd(problem))
    indices = torch.tensor([1, 3, 3])
    state = conopt.ConstraintState(x + torch.tensor([1.0, 2.0, 4.0]), indices=indices)
    optimizer.lagrangian(conopt.ProblemState(loss=x.sum(), constraints={problem.c: state}))
    grad = problem.c.multiplier.weight.grad
    assert grad.layout == torch.strided and not grad.is_sparse
    assert grad.tolist() == [0.0, 1.0, 0.0, 6.0, 0.0, 0.0]  # repeated rows accumulate


def test_indexed_multiplier_trains_with_adam():
    problem = _problem(c=_indexed(num=6))
    x = torch.zeros(3, requires_grad=True)
    dual = torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True)
    optimizer = _optimizer(problem, x, dual)
    indices = torch.tensor([0, 2, 5])
    violation = torch.tensor([1.0, -1.0, 2.0])
    report = optimizer.step(
        lambda: conopt.ProblemState(
            loss=(x**2).sum(),
            constraints={problem.c: conopt.ConstraintState(x + violation, indices=indices)},
        )
    )
    # Adam's first step moves each used row by lr * sign(gradient); projection clips at 0.
    assert problem.c.multiplier.weight.tolist() == pytest.approx([0.1, 0, 0, 0, 0, 0.1])
    assert report.constraints["c"].multiplier.tolist() == [0.0, 0.0, 0.0]


def test_indexed_multiplier_restarts_only_the_strictly_feasible_rows_of_the_batch():
    problem = _problem(c=_indexed(num=4, init=1.0))
    x = torch.zeros(3, requires_grad=True)
    dual = _sgd(problem, momentum=0.9)
    optimizer = _optimizer(problem, x, dual, dual_restarts=True)

    def closure():
        state = conopt.ConstraintState(
            x + torch.tensor([-1.0, 0.0, 2.0]), indices=torch.tensor([0, 1, 2])
        )
        return conopt.ProblemState(loss=x.sum(), constraints={problem.c: state})

    optimizer.step(closure)
    weight = problem.c.multiplier.weight.detach()
    assert weight.tolist() == pytest.approx([0.0, 1.0, 1.2, 1.0])
    momentum = dual.state[problem.c.multiplier.weight]["momentum_buffer"]
    assert momentum.tolist() == pytest.approx([0.0, 0.0, -2.0, 0.0])


# ------------------------------------------------------------------------------ Implicit
def _implicit(kind="<=", features=3):
    model = nn.Linear(features, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    return conopt.Constraint(kind, shape=1, multiplier=conopt.ImplicitMultiplier(model))


FEATURES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)


def test_implicit_inequality_multiplier_is_the_relu_of_the_model():
    c = _implicit("<=")
    state = conopt.ConstraintState(torch.zeros(3, 1), features=FEATURES)
    assert c.multiplier.value(state).flatten().tolist() == [1.0, 0.0, 1.0]


def test_implicit_equality_multiplier_is_the_model_itself():
    c = _implicit("==")
    state = conopt.ConstraintState(torch.zeros(3, 1), features=FEATURES)
    assert c.multiplier.value(state).flatten().tolist() == [1.0, -1.0, 1.0]
    assert c.multiplier.expected_shape(state) == (3, 1)


def test_implicit_multiplier_needs_features():
    c = _implicit()
    with pytest.raises(ValueError, match="features"):
        c.multiplier.value(conopt.ConstraintState(torch.zeros(3, 1)))


def test_implicit_multiplier_model_ascends_the_lagrangian():
    problem = _problem(c=_implicit("=="))
    x = torch.zeros(3, 1, requires_grad=True)
    optimizer = _optimizer(problem, x, _sgd(problem, lr=0.5))
    values = torch.tensor([[1.0], [2.0], [-1.0]])
    before = problem.c.multiplier.model.weight.detach().clone()
    optimizer.step(
        lambda: conopt.ProblemState(
            loss=x.sum(),
            constraints={problem.c: conopt.ConstraintState(x + values, features=FEATURES)},
        )
    )
    # d/dW sum_i (W f_i) h_i = sum_i h_i f_i
    expected = before + 0.5 * (values * FEATURES).sum(0)
    assert torch.allclose(problem.c.multiplier.model.weight, expected)


def test_implicit_multiplier_cannot_restart():
    problem = _problem(c=_implicit("<="))
    x = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match=r"'c'.*does not support dual restarts"):
        _optimizer(problem, x, _sgd(problem), dual_restarts=True)


def test_implicit_equality_multiplier_allows_restarts_flag():
    problem = _problem(c=_implicit("=="))
    x = torch.zeros(1, requires_grad=True)
    _optimizer(problem, x, _sgd(problem), dual_restarts=True)  # restarts concern inequalities


# ------------------------------------------------------------------------------- Dtypes
@contextlib.contextmanager
def _default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _float32_built(*constraints):
    """A problem whose multipliers are built float32 (the default dtype of most programs)."""
    with _default_dtype(torch.float32):
        return _problem(**{f"c{i}": c() for i, c in enumerate(constraints)})


def _scalar_step(problem, x, value):
    constraints = dict.fromkeys(problem.constraints(), x.sum() + value)
    return conopt.ProblemState(loss=(x**2).sum(), constraints=constraints)


@pytest.mark.parametrize("dual", ["sgd", "adam"])
def test_float32_multipliers_follow_float64_values_and_hold_2_5e52(dual):
    problem = _float32_built(lambda: conopt.Constraint("<="))
    weight = problem.c0.multiplier.weight
    assert weight.dtype == torch.float32
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    if dual == "sgd":
        dual_optimizer = _sgd(problem, momentum=0.5)
    else:
        dual_optimizer = torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True)
    optimizer = _optimizer(problem, x, dual_optimizer)
    report = optimizer.step(lambda: _scalar_step(problem, x, 2.5e52))  # finite in float64
    assert not report.skipped
    assert problem.c0.multiplier.weight is weight and weight.dtype == torch.float64
    assert bool(torch.isfinite(weight).all())
    expected = 0.1 * 2.5e52 if dual == "sgd" else 0.1  # Adam's first step is lr * sign
    assert weight.item() == pytest.approx(expected, rel=1e-12)
    state = dual_optimizer.state[weight]
    assert all(v.dtype == torch.float64 for k, v in state.items() if k != "step")


def test_multipliers_are_widened_with_their_optimizer_state_exactly():
    problem = _float32_built(lambda: conopt.Constraint("<=", 3))
    weight = problem.c0.multiplier.weight
    x = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    dual = torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True)
    optimizer = _optimizer(problem, x, dual)
    values = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float32)
    optimizer.step(lambda: _scalar_step(problem, x, values))
    before = [weight.detach().clone()] + [v.clone() for v in dual.state[weight].values()]
    assert weight.dtype == torch.float32  # float32 values: nothing to follow
    x64 = x.detach().double().requires_grad_()
    optimizer.lagrangian(_scalar_step(problem, x64, torch.zeros(3, dtype=torch.float64)))
    after = [weight.detach(), *dual.state[weight].values()]
    assert weight.dtype == torch.float64 and weight.grad.dtype == torch.float64
    for old, new in zip(before, after, strict=True):
        assert torch.equal(new, old.to(new.dtype))  # widening changes no value
    assert dual.state[weight]["exp_avg"].dtype == torch.float64
    assert dual.state[weight]["step"].dtype == before[1].dtype  # the counter keeps its dtype


def test_multipliers_are_never_narrowed():
    problem = _problem(c=conopt.Constraint("=="))  # float64, the tests' default dtype
    x = torch.zeros((), dtype=torch.float32, requires_grad=True)
    optimizer = _optimizer(problem, x, _sgd(problem))
    optimizer.step(lambda: _scalar_step(problem, x, 0.5))
    assert problem.c.multiplier.weight.dtype == torch.float64
    assert problem.c.multiplier.weight.item() == 0.05


def test_a_group_of_mixed_dtypes_follows_together_also_after_module_to():
    with _default_dtype(torch.float32):
        first = conopt.Constraint("<=")
    problem = _problem(a=first, b=conopt.Constraint("<="))  # b is built float64
    x = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = _optimizer(problem, x, _sgd(problem))
    for _ in range(2):  # the second step takes the cached fast path
        optimizer.step(lambda: _scalar_step(problem, x, 1e45))
    assert [p.dtype for p in problem.dual_parameters()] == [torch.float64] * 2
    with torch.no_grad():
        torch._foreach_zero_(list(problem.dual_parameters()))
    problem.float()  # the user narrows them: the next step widens them again
    optimizer.step(lambda: _scalar_step(problem, x, 1e45))
    assert [p.dtype for p in problem.dual_parameters()] == [torch.float64] * 2
    assert all(1e43 < p.item() < 1e45 for p in problem.dual_parameters())  # > float32 max


def test_indexed_multiplier_follows_float64_values():
    problem = _float32_built(lambda: _indexed(num=4))
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = _optimizer(problem, x, _sgd(problem, momentum=0.9))
    state = conopt.ConstraintState(x + 1e45, indices=torch.tensor([1, 3]))  # > float32 max
    optimizer.step(lambda: conopt.ProblemState(loss=x.sum(), constraints={problem.c0: state}))
    weight = problem.c0.multiplier.weight
    assert weight.dtype == torch.float64
    assert weight.tolist() == pytest.approx([0.0, 1e44, 0.0, 1e44], rel=1e-15)


def test_a_float32_state_dict_loads_into_a_widened_multiplier_and_back():
    problem = _float32_built(lambda: conopt.Constraint("==", 2))
    saved32 = {k: v.clone() for k, v in problem.state_dict().items()}
    with torch.no_grad():
        problem.c0.multiplier.weight.copy_(torch.tensor([0.1, 0.2]))
    wide = {"c0.multiplier.weight": torch.tensor([0.1, 0.2], dtype=torch.float64)}
    problem.load_state_dict(wide)  # widens the float32 multiplier: loading is exact
    assert problem.c0.multiplier.weight.dtype == torch.float64
    assert torch.equal(problem.c0.multiplier.weight.detach(), wide["c0.multiplier.weight"])
    problem.load_state_dict(saved32)  # an older float32 state dict still loads
    assert torch.equal(problem.c0.multiplier.weight.detach(), torch.zeros(2, dtype=torch.float64))


def test_each_multiplier_kind_is_importable_from_conopt_multipliers():
    from conopt.multipliers import (
        DenseMultiplier,
        ImplicitMultiplier,
        IndexedMultiplier,
        Multiplier,
    )

    kinds = (DenseMultiplier, IndexedMultiplier, ImplicitMultiplier)
    assert kinds == (conopt.DenseMultiplier, conopt.IndexedMultiplier, conopt.ImplicitMultiplier)
    assert Multiplier is conopt.Multiplier and all(issubclass(k, Multiplier) for k in kinds)
