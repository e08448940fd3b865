"""Errors: each names the constraint and what was expected, and comes before any change."""

import pytest
import torch
from toy_problems import assert_same, sgd_gda, snapshot

import conopt
from conopt.optim import (
    AlternatingGDA,
    ExtraAdam,
    Extragradient,
    ExtraSGD,
    NonFiniteError,
    SimultaneousGDA,
)

D = dict(dtype=torch.float64)
NAN, INF = float("nan"), float("inf")


class Budget(conopt.ConstrainedProblem):
    def __init__(self):
        super().__init__()
        self.budget = conopt.Constraint("<=", multiplier=conopt.DenseMultiplier(init=0.5))
        self.pair = conopt.Constraint(
            "==", 2, formulation=conopt.AugmentedLagrangian(rho=1.0), multiplier=None
        )

    def evaluate(self, x, **corrupt):
        loss = ((x - 1) ** 2).sum() * corrupt.get("loss", 1.0)
        budget = x.sum() - 1
        pair = (x[:2] - 0.5) * corrupt.get("pair", 1.0)
        strict = budget.detach() * corrupt.get("strict", 1.0)
        return conopt.ProblemState(
            loss=loss,
            constraints={
                self.budget: conopt.ConstraintState(budget, strict_value=strict),
                self.pair: pair,
            },
        )


METHODS = ["simultaneous", "alternating", "dual_first", "extragradient", "open"]


def _build(method, problem=None, **kwargs):
    problem = Budget() if problem is None else problem
    x = torch.tensor([0.2, -0.3, 0.4], **D).requires_grad_()
    if method == "extragradient":
        primal = ExtraSGD([x], lr=0.1, momentum=0.9)
        dual = ExtraAdam(problem.dual_parameters(), lr=0.1, maximize=True)
        optimizer = Extragradient(problem, primal, dual, **kwargs)
    else:
        primal = torch.optim.SGD([x], lr=0.1, momentum=0.9)
        dual = torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True)
        cls = AlternatingGDA if method in ("alternating", "dual_first") else SimultaneousGDA
        if method == "dual_first":
            kwargs["dual_first"] = True
        optimizer = cls(problem, primal, dual, **kwargs)
    for _ in range(2):  # warm the optimizers' states
        optimizer.step(lambda: problem.evaluate(x))
    return problem, x, optimizer


def _take_step(method, optimizer, closure):
    if method == "open":
        objective = optimizer.lagrangian(closure())
        if objective.requires_grad:
            objective.backward()
        return optimizer.apply()
    return optimizer.step(closure)


def _everything(problem, x, optimizer):
    return snapshot(
        x,
        problem,
        optimizer.primal_optimizers[0],
        optimizer.dual_optimizer,
        optimizer.step_count,
        optimizer.skipped_steps,
    )


NONFINITE = [
    pytest.param({"loss": NAN}, "the loss is not finite", id="nan-loss"),
    pytest.param({"loss": INF}, "the loss is not finite", id="inf-loss"),
    pytest.param({"pair": INF}, "constraint 'pair': its value contains NaN or Inf", id="inf"),
    pytest.param({"pair": NAN}, "constraint 'pair': its value contains NaN or Inf", id="nan"),
    pytest.param(
        {"strict": NAN}, "constraint 'budget': its strict value contains NaN", id="nan-strict"
    ),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("corrupt", "message"), NONFINITE)
def test_nonfinite_values_raise_before_any_change(method, corrupt, message):
    problem, x, optimizer = _build(method)
    before = _everything(problem, x, optimizer)
    with pytest.raises(NonFiniteError, match=message) as error:
        _take_step(method, optimizer, lambda: problem.evaluate(x, **corrupt))
    assert isinstance(error.value, ValueError)
    assert_same(_everything(problem, x, optimizer), before)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("corrupt", "message"), NONFINITE)
def test_nonfinite_values_are_skipped_and_counted_with_nothing_changed(method, corrupt, message):
    problem, x, optimizer = _build(method, on_nonfinite="skip")
    before = _everything(problem, x, optimizer)
    report = _take_step(method, optimizer, lambda: problem.evaluate(x, **corrupt))
    assert report.skipped
    assert optimizer.skipped_steps == 1 and optimizer.step_count == 3
    after = _everything(problem, x, optimizer)
    assert_same(after[:4], before[:4])


@pytest.mark.parametrize("method", ["alternating", "extragradient"])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_second_evaluation_restores_parameters_and_multipliers(method, policy):
    problem, x, optimizer = _build(method, on_nonfinite=policy)
    before = snapshot(x, problem)
    calls = []

    def closure():
        calls.append(None)
        return problem.evaluate(x, pair=1.0 if len(calls) == 1 else NAN)

    if policy == "raise":
        with pytest.raises(NonFiniteError, match="'pair'"):
            optimizer.step(closure)
    else:
        assert optimizer.step(closure).skipped and optimizer.skipped_steps == 1
    assert len(calls) == 2
    assert_same(snapshot(x, problem), before)
    optimizer.step(lambda: problem.evaluate(x))  # and the next step works from there


def _bad_state(problem, x, kind):
    ok = problem.evaluate(x)
    constraints = dict(ok.constraints)
    if kind == "shape":
        constraints[problem.pair] = x - 0.5
    elif kind == "strict-shape":
        value = x.sum() - 1
        constraints[problem.budget] = conopt.ConstraintState(value, strict_value=x.detach())
    elif kind == "unregistered":
        constraints[conopt.Constraint("<=", 3)] = x
    elif kind == "unknown-name":
        constraints["nope"] = x.sum()
    elif kind == "type":
        constraints[problem.pair] = [0.0, 0.0]
    elif kind == "loss-shape":
        return conopt.ProblemState(loss=x, constraints=constraints)
    elif kind == "not-a-state":
        return {"loss": ok.loss}
    return conopt.ProblemState(loss=ok.loss, constraints=constraints)


BAD_STATES = [
    pytest.param(
        "shape", ValueError, r"constraint 'pair': value has shape \(3,\), expected \(2,\)"
    ),
    pytest.param("strict-shape", ValueError, r"constraint 'budget': strict_value has shape"),
    pytest.param("unregistered", ValueError, r"not registered in the problem.*'budget'"),
    pytest.param("unknown-name", ValueError, r"unknown constraint 'nope'.*'budget', 'pair'"),
    pytest.param("type", TypeError, "constraint 'pair': expected a tensor or a ConstraintState"),
    pytest.param("loss-shape", ValueError, "the loss must be a scalar tensor"),
    pytest.param("not-a-state", TypeError, "expected a conopt.ProblemState, got dict"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("kind", "error", "message"), BAD_STATES)
def test_malformed_states_raise_before_any_change(method, kind, error, message):
    problem, x, optimizer = _build(method, on_nonfinite="skip")  # never skipped: always raised
    before = _everything(problem, x, optimizer)
    with pytest.raises(error, match=message):
        _take_step(method, optimizer, lambda: _bad_state(problem, x, kind))
    assert_same(_everything(problem, x, optimizer), before)


def test_indexed_constraint_given_a_plain_tensor_is_named():
    problem = conopt.ConstrainedProblem()
    problem.rows = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(4))
    x = torch.zeros(3, **D).requires_grad_()
    optimizer = sgd_gda(problem, x)
    with pytest.raises(ValueError, match="constraint 'rows': its IndexedMultiplier needs a"):
        optimizer.lagrangian(conopt.ProblemState(loss=x.sum(), constraints={problem.rows: x}))
    state = conopt.ConstraintState(x)
    with pytest.raises(ValueError, match=r"constraint 'rows': .*indices"):
        optimizer.lagrangian(conopt.ProblemState(loss=x.sum(), constraints={problem.rows: state}))
    state = conopt.ConstraintState(x, indices=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"constraint 'rows': value has shape \(3,\), expected"):
        optimizer.lagrangian(conopt.ProblemState(loss=x.sum(), constraints={problem.rows: state}))
    assert problem.rows.multiplier.weight.grad is None


# ------------------------------------------------------------------------ construction
def _players(problem):
    x = torch.zeros(3, **D).requires_grad_()
    return x, torch.optim.SGD([x], lr=0.1)


def test_dual_optimizer_must_maximize():
    problem = Budget()
    _, primal = _players(problem)
    with pytest.raises(TypeError, match=r"\(SGD\) must be built with maximize=True"):
        SimultaneousGDA(problem, primal, torch.optim.SGD(problem.dual_parameters(), lr=0.1))


def test_every_dual_parameter_group_must_maximize():
    problem = Budget()
    problem.more = conopt.Constraint("<=")
    _, primal = _players(problem)
    dual = torch.optim.SGD(
        [
            {"params": [problem.budget.multiplier.weight], "maximize": True},
            {"params": [problem.more.multiplier.weight], "maximize": False},
        ],
        lr=0.1,
    )
    with pytest.raises(TypeError, match="maximize=True"):
        SimultaneousGDA(problem, primal, dual)


def test_every_multiplier_must_be_in_the_dual_optimizer():
    problem = Budget()
    problem.more = conopt.Constraint("<=")
    _, primal = _players(problem)
    dual = torch.optim.SGD([problem.budget.multiplier.weight], lr=0.1, maximize=True)
    with pytest.raises(ValueError, match=r"does not drive the multipliers of constraints \['more'"):
        SimultaneousGDA(problem, primal, dual)


def test_multipliers_need_a_dual_optimizer():
    problem = Budget()
    _, primal = _players(problem)
    with pytest.raises(ValueError, match="constraint 'budget' has a multiplier but no dual"):
        SimultaneousGDA(problem, primal)


def test_multiplier_in_the_primal_optimizer_is_rejected():
    problem = Budget()
    x = torch.zeros(3, **D).requires_grad_()
    primal = torch.optim.SGD([x, problem.budget.multiplier.weight], lr=0.1)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    with pytest.raises(TypeError, match=r"primal optimizer holds the multiplier of .*'budget'"):
        SimultaneousGDA(problem, primal, dual)


@pytest.mark.parametrize("rho", [-1.0, -1e-12])
def test_negative_penalty_coefficient_is_rejected(rho):
    with pytest.raises(ValueError, match="AugmentedLagrangian: the penalty coefficient"):
        conopt.Constraint("<=", formulation=conopt.AugmentedLagrangian(rho=rho))


def test_on_nonfinite_must_be_raise_or_skip():
    problem = Budget()
    _, primal = _players(problem)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=0.1, maximize=True)
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise' or 'skip'"):
        SimultaneousGDA(problem, primal, dual, on_nonfinite="ignore")


def test_problem_must_be_a_constrained_problem():
    _, primal = _players(None)
    with pytest.raises(TypeError, match="problem must be a ConstrainedProblem"):
        SimultaneousGDA(torch.nn.Linear(1, 1), primal)


@pytest.mark.parametrize("primal", [[], "sgd"])
def test_primal_must_be_optimizers(primal):
    with pytest.raises(TypeError, match=r"primal must be a torch\.optim\.Optimizer"):
        SimultaneousGDA(Budget(), primal)


def test_load_state_dict_refuses_a_different_number_of_primal_optimizers():
    *_, optimizer = _build("simultaneous")
    state = optimizer.state_dict()
    state["primal"] = state["primal"] * 2
    with pytest.raises(ValueError, match="2 primal optimizer states, this optimizer has 1"):
        optimizer.load_state_dict(state)


def test_load_state_dict_refuses_a_missing_dual_state():
    *_, optimizer = _build("simultaneous")
    state = optimizer.state_dict() | {"dual": None}
    with pytest.raises(ValueError, match="disagree on having a dual optimizer"):
        optimizer.load_state_dict(state)


# ------------------------------------------------------------------ indices out of range
class Rows(conopt.ConstrainedProblem):
    """Per-sample constraints x_i <= 0.5 of the samples named by ``indices``, of 4 samples."""

    def __init__(self):
        super().__init__()
        self.rows = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(4, init=0.5))

    def evaluate(self, x, indices=(0, 2, 3)):
        state = conopt.ConstraintState(x - 0.5, indices=torch.tensor(indices))
        return conopt.ProblemState(loss=((x - 1) ** 2).sum(), constraints={self.rows: state})


@pytest.fixture(params=["host", "folded"])
def index_check(request, monkeypatch):
    """Indices range-checked at once (host indices), or at the step's one host sync (device)."""
    if request.param == "folded":
        monkeypatch.setattr(conopt.IndexedMultiplier, "host_checked_devices", frozenset())
    return request.param


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("policy", ["raise", "skip"])  # a malformed state is never skipped
@pytest.mark.parametrize("indices", [(0, 9, 3), (0, -1, 3)], ids=["N+5", "negative"])
def test_indices_out_of_range_are_named_before_any_change(method, policy, indices, index_check):
    problem, x, optimizer = _build(method, problem=Rows(), on_nonfinite=policy)
    before = _everything(problem, x, optimizer)
    bad = indices[1]
    message = rf"constraint 'rows': indices must be in \[0, 4\).*\[{bad}\]; the step was refused"
    with pytest.raises(ValueError, match=message) as error:
        _take_step(method, optimizer, lambda: problem.evaluate(x, indices))
    assert not isinstance(error.value, NonFiniteError)
    assert_same(_everything(problem, x, optimizer), before)
    _take_step(method, optimizer, lambda: problem.evaluate(x))  # and the next step works


@pytest.mark.parametrize("method", ["alternating", "extragradient"])
def test_indices_out_of_range_at_the_second_evaluation_restore_the_parameters(method, index_check):
    problem, x, optimizer = _build(method, problem=Rows())
    before = snapshot(x, problem, optimizer.step_count)
    calls = []

    def closure():
        calls.append(None)
        return problem.evaluate(x, (0, 2, 3) if len(calls) == 1 else (0, 2, 4))

    with pytest.raises(ValueError, match=r"constraint 'rows': indices must be in \[0, 4\)"):
        optimizer.step(closure)
    assert len(calls) == 2
    assert_same(snapshot(x, problem, optimizer.step_count), before)


def test_indices_of_a_float_dtype_are_named():
    problem, x, optimizer = _build("open", problem=Rows())
    state = conopt.ConstraintState(x - 0.5, indices=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"constraint 'rows': the indices .* int64 or int32"):
        optimizer.lagrangian(conopt.ProblemState(loss=x.sum(), constraints={problem.rows: state}))


def test_indices_out_of_range_in_an_accumulated_micro_batch_are_named(index_check):
    problem, x, optimizer = _build("open", problem=Rows())
    optimizer.zero_grad()
    optimizer.lagrangian(problem.evaluate(x, (0, 1, 2))).backward()
    grads = snapshot(problem.rows.multiplier.weight.grad)
    with pytest.raises(ValueError, match=r"'rows': indices must be in \[0, 4\).*\[-1\]"):
        optimizer.lagrangian(problem.evaluate(x, (3, -1, 3)))
    assert_same(snapshot(problem.rows.multiplier.weight.grad), grads)


# ----------------------------------------------------------------- non-finite dual updates
class Overflowing(conopt.ConstrainedProblem):
    """Finite values whose dual updates overflow when ``corrupt`` scales them.

    ``cap``: an augmented Lagrangian inequality with a huge rho, strictly satisfied: its term
    stays flat (finite), but rho * g overflows once g is scaled up. ``big``: a multiplier near
    the largest float64 whose strict value pushes lambda + g past it.
    """

    def __init__(self):
        super().__init__()
        self.cap = conopt.Constraint("<=", formulation=conopt.AugmentedLagrangian(rho=1e300))
        self.big = conopt.Constraint("==", multiplier=conopt.DenseMultiplier(init=1e308))

    def evaluate(self, x, **corrupt):
        cap = (x.sum() - 10) * corrupt.get("cap", 1.0)
        big = x.sum() * 0.0  # the strict value alone drives the multiplier
        strict = big.detach() + corrupt.get("big", 0.0)
        return conopt.ProblemState(
            loss=((x - 1) ** 2).sum(),
            constraints={self.cap: cap, self.big: conopt.ConstraintState(big, strict)},
        )


DUAL_OVERFLOWS = [
    pytest.param({"cap": 1e10}, "constraint 'cap': its dual update is not finite", id="rho-g"),
    pytest.param({"big": 1e308}, "constraint 'big': its dual update is not finite", id="lam+g"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("corrupt", "message"), DUAL_OVERFLOWS)
def test_nonfinite_dual_updates_raise_before_any_change(method, corrupt, message):
    problem, x, optimizer = _build(method, problem=Overflowing())
    before = _everything(problem, x, optimizer)
    with pytest.raises(NonFiniteError, match=message + r" in the multiplier's dtype torch\."):
        _take_step(method, optimizer, lambda: problem.evaluate(x, **corrupt))
    assert_same(_everything(problem, x, optimizer), before)
    assert all(torch.isfinite(p).all() for p in problem.dual_parameters())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("corrupt", "message"), DUAL_OVERFLOWS)
def test_nonfinite_dual_updates_are_skipped_with_nothing_changed(method, corrupt, message):
    problem, x, optimizer = _build(method, problem=Overflowing(), on_nonfinite="skip")
    before = _everything(problem, x, optimizer)
    report = _take_step(method, optimizer, lambda: problem.evaluate(x, **corrupt))
    assert report.skipped and optimizer.skipped_steps == 1
    assert_same(_everything(problem, x, optimizer)[:4], before[:4])


def test_non_finite_error_is_one_class_under_each_import_path():
    from conopt.errors import NonFiniteError as from_errors
    from conopt.optim.lagrangian import NonFiniteError as from_lagrangian

    assert conopt.NonFiniteError is NonFiniteError is from_errors is from_lagrangian
    assert issubclass(NonFiniteError, ValueError)
