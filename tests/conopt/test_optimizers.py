"""Specification of SimultaneousGDA and AlternatingGDA, the open path, restarts, proxies."""

import pytest
import torch
from torch import nn
from toy_problems import DUAL_LR, LAM0, LR, X0, A, B, Linear, T, linear_grad, sgd_gda

import conopt
from conopt.optim import AlternatingGDA, Extragradient, ExtraSGD, SimultaneousGDA

D = dict(dtype=torch.float64)


def _setup(cls=SimultaneousGDA, split=False, kind="<=", dual=torch.optim.SGD, **kwargs):
    problem = Linear(split, kind)
    x = X0.clone().requires_grad_()
    optimizer = cls(
        problem,
        torch.optim.SGD([x], lr=LR),
        dual(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
        **kwargs,
    )
    return problem, x, optimizer


# -------------------------------------------------------------------------- the updates
@pytest.mark.parametrize("split", [False, True])
def test_simultaneous_step_moves_both_players_from_the_same_point(split):
    problem, x, optimizer = _setup(split=split)
    optimizer.step(lambda: problem.evaluate(x))
    assert torch.allclose(x.detach(), X0 - LR * linear_grad(X0, LAM0))
    assert torch.allclose(problem.lam(), (LAM0 + DUAL_LR * (A @ X0 - B)).clamp(min=0))


@pytest.mark.parametrize("split", [False, True])
def test_alternating_primal_first_updates_multipliers_at_the_new_point(split):
    problem, x, optimizer = _setup(AlternatingGDA, split=split)
    optimizer.step(lambda: problem.evaluate(x))
    x1 = X0 - LR * linear_grad(X0, LAM0)
    assert torch.allclose(x.detach(), x1)
    assert torch.allclose(problem.lam(), (LAM0 + DUAL_LR * (A @ x1 - B)).clamp(min=0))


@pytest.mark.parametrize("split", [False, True])
def test_alternating_dual_first_moves_x_with_the_new_multipliers(split):
    problem, x, optimizer = _setup(AlternatingGDA, split=split, dual_first=True)
    optimizer.step(lambda: problem.evaluate(x))
    lam1 = (LAM0 + DUAL_LR * (A @ X0 - B)).clamp(min=0)
    assert torch.allclose(problem.lam(), lam1)
    assert torch.allclose(x.detach(), X0 - LR * linear_grad(X0, lam1))


def test_alternating_primal_first_reports_the_new_point():
    problem, x, optimizer = _setup(AlternatingGDA)
    report = optimizer.step(lambda: problem.evaluate(x))
    x1 = X0 - LR * linear_grad(X0, LAM0)
    assert torch.allclose(report.constraints["g"].value, A @ x1 - B)


def test_equality_multipliers_are_not_projected():
    problem, x, optimizer = _setup(kind="==")
    optimizer.step(lambda: problem.evaluate(x))
    assert torch.allclose(problem.lam(), LAM0 + DUAL_LR * (A @ X0 - B))


def test_step_counts_steps_and_reports_them():
    problem, x, optimizer = _setup()
    reports = [optimizer.step(lambda: problem.evaluate(x)) for _ in range(3)]
    assert [r.step for r in reports] == [1, 2, 3] and optimizer.step_count == 3
    assert not any(r.skipped for r in reports)


def test_several_primal_optimizers_each_step_their_parameters():
    problem = Linear()
    x = X0.clone().requires_grad_()
    first, rest = x[:1].detach().clone().requires_grad_(), x[1:].detach().clone()
    rest.requires_grad_()
    optimizer = SimultaneousGDA(
        problem,
        [torch.optim.SGD([first], lr=LR), torch.optim.SGD([rest], lr=LR)],
        torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
    )
    optimizer.step(lambda: problem.evaluate(torch.cat([first, rest])))
    expected = X0 - LR * linear_grad(X0, LAM0)
    assert torch.allclose(torch.cat([first, rest]).detach(), expected)


def test_quadratic_penalty_problem_needs_no_dual_optimizer():
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", 2, formulation=conopt.QuadraticPenalty(rho=2.0))
    x = X0.clone().requires_grad_()
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=LR))

    def closure():
        return conopt.ProblemState(loss=0.5 * (x**2).sum(), constraints={problem.c: A @ x - B})

    optimizer.step(closure)
    g = A @ X0 - B
    assert torch.allclose(x.detach(), X0 - LR * (X0 + 2.0 * A.T @ g.clamp(min=0)))


def test_zero_grad_clears_both_players():
    problem, x, optimizer = _setup()
    optimizer.lagrangian(problem.evaluate(x)).backward()
    assert x.grad is not None and problem.g.multiplier.weight.grad is not None
    optimizer.zero_grad()
    assert x.grad is None and problem.g.multiplier.weight.grad is None


# -------------------------------------------------------------------------- the open path
def test_open_path_equals_step():
    problem, x, optimizer = _setup()
    optimizer.step(lambda: problem.evaluate(x))
    reference = (x.detach().clone(), problem.lam())
    problem, x, optimizer = _setup()
    optimizer.zero_grad()
    optimizer.lagrangian(problem.evaluate(x)).backward()
    report = optimizer.apply()
    assert torch.equal(x.detach(), reference[0]) and torch.equal(problem.lam(), reference[1])
    assert report.step == 1


def test_lagrangian_value_is_the_lagrangian():
    problem, x, optimizer = _setup()
    value = optimizer.lagrangian(problem.evaluate(x))
    assert value.item() == pytest.approx(float(0.5 * ((X0 - T) ** 2).sum() + LAM0 @ (A @ X0 - B)))


def test_apply_needs_a_preceding_lagrangian():
    _, _, optimizer = _setup()
    with pytest.raises(RuntimeError, match=r"lagrangian\(state\)"):
        optimizer.apply()


@pytest.mark.parametrize("cls", [AlternatingGDA, Extragradient])
def test_optimizers_without_an_open_path_refuse_it(cls):
    problem = Linear()
    x = X0.clone().requires_grad_()
    sgd = ExtraSGD if cls is Extragradient else torch.optim.SGD
    optimizer = cls(
        problem, sgd([x], lr=LR), sgd(problem.dual_parameters(), lr=DUAL_LR, maximize=True)
    )
    with pytest.raises(TypeError, match="no open step path"):
        optimizer.lagrangian(problem.evaluate(x))


def _clipped_open_step(scaler, max_norm=0.5):
    problem, x, optimizer = _setup()
    primal = optimizer.primal_optimizers[0]
    optimizer.zero_grad()
    objective = optimizer.lagrangian(problem.evaluate(x))
    (objective if scaler is None else scaler.scale(objective)).backward()
    if scaler is not None:
        scaler.unscale_(primal)
    torch.nn.utils.clip_grad_norm_([x], max_norm)
    report = optimizer.apply(scaler=scaler)
    if scaler is not None:
        scaler.update()
    return problem, x, report


def test_open_path_with_grad_scaler_and_clipping_equals_the_unscaled_step():
    problem, x, _ = _clipped_open_step(None)
    scaled_problem, scaled_x, report = _clipped_open_step(
        torch.amp.GradScaler("cpu", init_scale=2.0**10)
    )
    assert torch.equal(scaled_x.detach(), x.detach())
    assert torch.equal(scaled_problem.lam(), problem.lam())
    # the dual step is exactly lr * g: the closed-form dual gradient is never scaled
    assert torch.allclose(problem.lam(), (LAM0 + DUAL_LR * (A @ X0 - B)).clamp(min=0))
    gradient = linear_grad(X0, LAM0)
    assert torch.allclose(x.detach(), X0 - LR * gradient * 0.5 / gradient.norm())
    assert report.stationarity == pytest.approx(0.5, abs=1e-5)  # the clipped gradient's norm


def test_open_path_unscales_gradients_itself_when_the_user_did_not():
    problem, x, optimizer = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(optimizer.lagrangian(problem.evaluate(x))).backward()
    optimizer.apply(scaler=scaler)
    scaler.update()
    assert torch.allclose(x.detach(), X0 - LR * linear_grad(X0, LAM0))
    assert torch.allclose(problem.lam(), (LAM0 + DUAL_LR * (A @ X0 - B)).clamp(min=0))


def test_open_path_reports_a_grad_scaler_that_already_stepped_the_optimizer():
    problem, x, optimizer = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(optimizer.lagrangian(problem.evaluate(x))).backward()
    scaler.step(optimizer.primal_optimizers[0])  # a misuse: apply() steps it itself
    with pytest.raises(RuntimeError, match=r"after step\(\)"):
        optimizer.apply(scaler=scaler)


class WithImplicit(conopt.ConstrainedProblem):
    """A dense and an implicit multiplier in the same group (Lagrangian, '==')."""

    def __init__(self):
        super().__init__()
        self.dense = conopt.Constraint("==", 2, multiplier=conopt.DenseMultiplier(init=LAM0))
        model = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.5, -0.25]]))
        self.implicit = conopt.Constraint("==", 1, multiplier=conopt.ImplicitMultiplier(model))
        self.features = torch.tensor([[1.0, 2.0], [3.0, -1.0]])

    def evaluate(self, x):
        return conopt.ProblemState(
            loss=0.5 * (x**2).sum(),
            constraints={
                self.dense: A @ x - B,
                self.implicit: conopt.ConstraintState(x[:2, None] - 0.1, features=self.features),
            },
        )


def _implicit_open_step(scaler):
    problem = WithImplicit()
    x = X0.clone().requires_grad_()
    optimizer = SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=LR),
        torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
    )
    objective = optimizer.lagrangian(problem.evaluate(x))
    (objective if scaler is None else scaler.scale(objective)).backward()
    optimizer.apply(scaler=scaler)
    return x.detach(), [p.detach().clone() for p in problem.dual_parameters()]


def test_grad_scaler_unscales_implicit_and_closed_form_dual_gradients_alike():
    x, duals = _implicit_open_step(None)
    scaled_x, scaled_duals = _implicit_open_step(torch.amp.GradScaler("cpu", init_scale=2.0**8))
    assert torch.equal(scaled_x, x)
    for scaled, reference in zip(scaled_duals, duals, strict=True):
        assert torch.allclose(scaled, reference, rtol=1e-12, atol=0)


def test_open_path_runs_under_bf16_autocast_with_a_grad_scaler():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        problem = conopt.ConstrainedProblem()
        problem.c = conopt.Constraint("<=", 2)
        optimizer = SimultaneousGDA(
            problem,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.optim.SGD(problem.dual_parameters(), lr=0.5, maximize=True),
        )
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        inputs = torch.randn(4, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs)
            value = out.mean(0) + 1
            state = conopt.ProblemState(
                loss=out.float().square().mean(), constraints={problem.c: value}
            )
        assert value.dtype == torch.bfloat16
        scaler.scale(optimizer.lagrangian(state)).backward()
        report = optimizer.apply(scaler=scaler)
        scaler.update()
        weight = problem.c.multiplier.weight
        assert weight.dtype == torch.float32
        assert torch.equal(weight.detach(), (0.5 * value.detach().float()).clamp(min=0))
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert report.kkt.max_violation > 0
    finally:
        torch.set_default_dtype(previous)


def test_gradient_accumulation_over_two_halves_equals_one_full_batch():
    data = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 1.5]], **D)

    class Batch(conopt.ConstrainedProblem):
        def __init__(self):
            super().__init__()
            self.mean = conopt.Constraint("<=", multiplier=conopt.DenseMultiplier(init=0.2))
            self.pair = conopt.Constraint("==", 2, multiplier=conopt.DenseMultiplier(init=0.1))

        def evaluate(self, w, rows, weight):
            prediction = data[rows] @ w
            return conopt.ProblemState(
                loss=weight * ((prediction - 1) ** 2).mean(),
                constraints={
                    self.mean: weight * (prediction.mean() - 0.5),
                    self.pair: weight * (w * data[rows].mean(0) - 0.1),
                },
            )

    def run(batches):
        problem = Batch()
        w = torch.tensor([0.3, -0.2], **D).requires_grad_()
        optimizer = SimultaneousGDA(
            problem,
            torch.optim.SGD([w], lr=LR),
            torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
        )
        optimizer.zero_grad()
        for rows in batches:
            optimizer.lagrangian(problem.evaluate(w, rows, 1 / len(batches))).backward()
        optimizer.apply()
        return w.detach(), [p.detach().clone() for p in problem.dual_parameters()]

    w_acc, duals_acc = run([torch.tensor([0, 1]), torch.tensor([2, 3])])
    w_full, duals_full = run([torch.tensor([0, 1, 2, 3])])
    assert torch.allclose(w_acc, w_full, rtol=1e-13, atol=1e-15)
    for acc, full in zip(duals_acc, duals_full, strict=True):
        assert torch.allclose(acc, full, rtol=1e-13, atol=1e-15)


class _Halves(conopt.ConstrainedProblem):
    """Two constraints whose values are a weighted mean of given rows (no primal dependence)."""

    def __init__(self, penalty=False):
        super().__init__()
        growth = conopt.IncreaseOnStagnation()
        formulation = conopt.AugmentedLagrangian(1.0, penalty_update=growth) if penalty else None
        kwargs = {} if formulation is None else {"formulation": formulation}
        self.c = conopt.Constraint("<=", 2, multiplier=conopt.DenseMultiplier(init=0.3), **kwargs)
        self.h = conopt.Constraint("==", multiplier=conopt.DenseMultiplier(init=0.1))

    def evaluate(self, x, values, weight):
        return conopt.ProblemState(
            loss=weight * (x**2).sum(),
            constraints={self.c: weight * values.mean(0), self.h: weight * (x.sum() - 1)},
        )


# Rows of c's values: the full batch is infeasible in entry 0 and feasible in entry 1, while its
# second half alone says the opposite (so a step that read the last micro-batch would restart
# the wrong entry).
_ROWS = torch.tensor([[4.0, -3.0], [2.0, -3.0], [-1.0, 1.0], [-1.0, 1.0]], **D)


def _gda(problem, x, **kwargs):
    """SimultaneousGDA with plain SGD for both players (the accumulation tests' optimizer)."""
    return SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=LR),
        torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
        **kwargs,
    )


def _accumulated_step(batches, problem_kwargs=None, on_nonfinite="raise"):
    problem = _Halves(**(problem_kwargs or {}))
    x = torch.tensor([0.4, 0.2], **D).requires_grad_()
    optimizer = _gda(problem, x, dual_restarts=True, on_nonfinite=on_nonfinite)
    optimizer.zero_grad()
    for rows in batches:
        optimizer.lagrangian(problem.evaluate(x, _ROWS[rows], 1 / len(batches))).backward()
    report = optimizer.apply()
    return problem, x.detach(), report


def test_accumulated_step_restarts_and_reports_the_full_batch_values():
    halves = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    assert (_ROWS[halves[1]].mean(0) * torch.tensor([-1.0, 1.0], **D) > 0).all()  # see _ROWS
    problem, x, report = _accumulated_step(halves)
    full_problem, x_full, full = _accumulated_step([torch.tensor([0, 1, 2, 3])])
    assert torch.allclose(x, x_full)
    lam, lam_full = problem.c.multiplier.weight, full_problem.c.multiplier.weight
    assert torch.allclose(lam.detach(), lam_full.detach())
    assert lam[1] == 0 and lam[0] > 0.3  # entry 1 restarted, entry 0 ascended
    for name in ("c", "h"):
        assert torch.allclose(report.constraints[name].value, full.constraints[name].value)
        assert torch.allclose(
            report.constraints[name].strict_value, full.constraints[name].strict_value
        )
    assert torch.allclose(report.loss, full.loss)
    assert torch.allclose(report.lagrangian, full.lagrangian)
    assert report.kkt.max_violation == pytest.approx(full.kkt.max_violation)


def test_accumulated_step_grows_penalties_from_the_full_batch_violation():
    halves = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    problem, _, _ = _accumulated_step(halves, {"penalty": True})
    full_problem, _, _ = _accumulated_step([torch.tensor([0, 1, 2, 3])], {"penalty": True})
    assert problem.c.formulation.state_dict() == full_problem.c.formulation.state_dict()


def test_accumulation_refuses_micro_batches_with_other_constraints():
    problem = _Halves()
    x = torch.tensor([0.4, 0.2], **D).requires_grad_()
    optimizer = _gda(problem, x)
    state = problem.evaluate(x, _ROWS, 0.5)
    optimizer.lagrangian(state)
    only_c = conopt.ProblemState(
        loss=state.loss, constraints={problem.c: state.constraints[problem.c]}
    )
    with pytest.raises(ValueError, match=r"same constraints.*\['c', 'h'\] and then \['c'\]"):
        optimizer.lagrangian(only_c)


class _PerSample(conopt.ConstrainedProblem):
    """A batch-mean constraint and a per-sample one (IndexedMultiplier), in one group."""

    def __init__(self):
        super().__init__()
        self.mean = conopt.Constraint("<=", multiplier=conopt.DenseMultiplier(init=0.2))
        self.each = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(6, init=0.3))

    def evaluate(self, x, rows):
        values = _SAMPLES[rows] * x.sum()
        return conopt.ProblemState(
            loss=(x**2).sum() + values.mean(),
            constraints={
                self.mean: values.mean() - 0.2,
                self.each: conopt.ConstraintState(values, indices=rows),
            },
        )


# Per-sample values at x = [0.4, 0.2]: rows 1 and 4 strictly feasible (restarted), 0 and 3
# violated, 2 and 5 exactly 0.
_SAMPLES = torch.tensor([1.0, -2.0, 0.0, 3.0, -1.0, 0.0], **D)


def _per_sample_step(batches):
    problem = _PerSample()
    x = torch.tensor([0.4, 0.2], **D).requires_grad_()
    optimizer = _gda(problem, x, dual_restarts=True)
    optimizer.zero_grad()
    for rows in batches:
        state = problem.evaluate(x, rows).scaled(len(rows) / 6)
        optimizer.lagrangian(state).backward()
    return problem, x.detach(), optimizer.apply()


def test_accumulation_concatenates_per_sample_constraints_and_sums_the_others():
    problem, x, report = _per_sample_step([torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])])
    full_problem, x_full, full = _per_sample_step([torch.arange(6)])
    assert torch.allclose(x, x_full)
    for name in ("mean", "each"):
        ours = getattr(problem, name).multiplier.weight.detach()
        theirs = getattr(full_problem, name).multiplier.weight.detach()
        assert torch.allclose(ours, theirs), name
        assert torch.allclose(report.constraints[name].value, full.constraints[name].value)
        assert torch.allclose(
            report.constraints[name].multiplier, full.constraints[name].multiplier
        )
    each = problem.each.multiplier.weight.detach()
    assert each[1] == 0 and each[4] == 0 and each[0] > 0.3  # restarts, from every micro-batch
    assert report.constraints["each"].value.shape == (6,)
    assert report.kkt.max_violation == pytest.approx(full.kkt.max_violation)


def test_accumulation_concatenates_implicit_multiplier_constraints():
    features = torch.tensor([[1.0, 0.0], [0.5, 1.0], [-1.0, 2.0], [0.0, -1.0]], **D)

    def run(batches):
        torch.manual_seed(0)
        model = nn.Linear(2, 1, **D)
        problem = conopt.ConstrainedProblem()
        problem.each = conopt.Constraint("<=", 1, multiplier=conopt.ImplicitMultiplier(model))
        x = torch.tensor([0.4, 0.2], **D).requires_grad_()
        optimizer = _gda(problem, x)
        optimizer.zero_grad()
        for rows in batches:
            values = (features[rows] @ x).unsqueeze(1) + 0.1
            state = conopt.ProblemState(
                loss=(x**2).sum(),
                constraints={problem.each: conopt.ConstraintState(values, features=features[rows])},
            )
            optimizer.lagrangian(state.scaled(len(rows) / 4)).backward()
        report = optimizer.apply()
        return x.detach(), [p.detach().clone() for p in model.parameters()], report

    x, params, report = run([torch.tensor([0, 1]), torch.tensor([2, 3])])
    x_full, params_full, full = run([torch.arange(4)])
    assert torch.allclose(x, x_full)
    for ours, theirs in zip(params, params_full, strict=True):
        assert torch.allclose(ours, theirs)
    assert torch.allclose(report.constraints["each"].value, full.constraints["each"].value)


def test_one_refused_micro_batch_refuses_the_accumulated_step():
    problem = _Halves()
    x = torch.tensor([0.4, 0.2], **D).requires_grad_()
    optimizer = _gda(problem, x, on_nonfinite="skip")
    bad = _ROWS.clone()
    bad[0, 0] = float("nan")
    optimizer.zero_grad()
    optimizer.lagrangian(problem.evaluate(x, bad[:2], 0.5)).backward()
    optimizer.lagrangian(problem.evaluate(x, _ROWS[2:], 0.5)).backward()
    report = optimizer.apply()
    assert report.skipped and optimizer.skipped_steps == 1
    assert torch.equal(x.detach(), torch.tensor([0.4, 0.2], **D))


def test_zero_grad_forgets_an_unapplied_lagrangian():
    halves = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    _, _, expected = _accumulated_step([halves[1]])
    problem = _Halves()
    x = torch.tensor([0.4, 0.2], **D).requires_grad_()
    optimizer = _gda(problem, x, dual_restarts=True)
    optimizer.lagrangian(problem.evaluate(x, _ROWS[halves[0]], 1.0))  # abandoned
    optimizer.zero_grad()
    optimizer.lagrangian(problem.evaluate(x, _ROWS[halves[1]], 1.0)).backward()
    report = optimizer.apply()
    assert torch.equal(report.constraints["c"].value, expected.constraints["c"].value)


# ------------------------------------------------------------------------------ restarts
def _fixed_values_problem(init):
    """A problem whose constraint takes whatever value the closure gives (x only in f)."""
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", 3, multiplier=conopt.DenseMultiplier(init=init))
    return problem


def _restart_run(dual_cls, restarts, **dual_kwargs):
    problem = _fixed_values_problem(1.0)
    x = torch.zeros(3, **D).requires_grad_()
    dual = dual_cls(problem.dual_parameters(), lr=0.1, maximize=True, **dual_kwargs)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=LR), dual, dual_restarts=restarts)
    for values in ([1.0, 1.0, 1.0], [-1.0, 0.0, 2.0]):  # strictly feasible, boundary, violated
        g = torch.tensor(values, **D)
        optimizer.step(
            lambda g=g: conopt.ProblemState(loss=(x**2).sum(), constraints={problem.c: g + 0 * x})
        )
    weight = problem.c.multiplier.weight
    state = {k: v.clone() for k, v in dual.state[weight].items() if torch.is_tensor(v)}
    return weight.detach().clone(), state


@pytest.mark.parametrize(
    ("dual_cls", "kwargs", "buffers"),
    [
        (torch.optim.SGD, {"momentum": 0.9}, ["momentum_buffer"]),
        (torch.optim.Adam, {}, ["exp_avg", "exp_avg_sq"]),
        (torch.optim.Adam, {"amsgrad": True}, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ],
)
def test_restarts_zero_multiplier_and_optimizer_state_of_strictly_feasible_entries_only(
    dual_cls, kwargs, buffers
):
    weight, state = _restart_run(dual_cls, True, **kwargs)
    reference_weight, reference_state = _restart_run(dual_cls, False, **kwargs)
    assert weight[0] == 0 and reference_weight[0] > 0
    assert torch.equal(weight[1:], reference_weight[1:])
    for name in buffers:
        assert state[name][0] == 0 and reference_state[name][0] != 0, name
        assert torch.equal(state[name][1:], reference_state[name][1:]), name


@pytest.mark.parametrize("shape", [(), (3,)], ids=["scalar", "vector"])
def test_restarts_keep_the_dual_optimizers_step_counter(shape):
    """Adam's ``step`` counts the parameter's updates, not an entry's: no restart resets it.

    A scalar multiplier's 0-d counter has the multiplier's shape; it must not be taken for
    per-entry state.
    """
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", shape, multiplier=conopt.DenseMultiplier(init=1.0))
    x = torch.zeros((), **D).requires_grad_()
    dual = torch.optim.Adam(problem.dual_parameters(), lr=0.1, maximize=True)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=LR), dual, dual_restarts=True)
    for value in (1.0, 1.0, -1.0):  # violated twice, then strictly feasible: restarted
        g = torch.full(shape, value, **D)
        optimizer.step(
            lambda g=g: conopt.ProblemState(loss=(x**2).sum(), constraints={problem.c: g + 0 * x})
        )
    state = dual.state[problem.c.multiplier.weight]
    assert (problem.c.multiplier.weight == 0).all()
    assert (state["exp_avg"] == 0).all() and (state["exp_avg_sq"] == 0).all()
    assert int(state["step"]) == 3


def test_restarts_leave_equality_multipliers_alone():
    problem, x, optimizer = _setup(kind="==", dual_restarts=True)
    optimizer.step(lambda: problem.evaluate(x))
    assert torch.allclose(problem.lam(), LAM0 + DUAL_LR * (A @ X0 - B))


def test_restarts_use_the_values_of_the_step_even_when_the_value_is_the_parameter():
    problem = conopt.ConstrainedProblem()
    problem.c = conopt.Constraint("<=", 2, multiplier=conopt.DenseMultiplier(init=1.0))
    x = torch.tensor([-1.0, 0.5], **D).requires_grad_()
    optimizer = sgd_gda(problem, x, lr=1.0, dual_restarts=True)
    # g(x) = x itself; the primal step moves x[0] to a positive value before the dual step
    report = optimizer.step(
        lambda: conopt.ProblemState(loss=-10 * x.sum(), constraints={problem.c: x})
    )
    assert problem.c.multiplier.weight.tolist() == pytest.approx([0.0, 1.05])
    assert report.constraints["c"].strict_value.tolist() == [-1.0, 0.5]


class _DenseSubclass(conopt.DenseMultiplier):
    """Behaves as a DenseMultiplier, but is read, written and restarted one at a time."""


def _many_constraints_run(multiplier_cls, shapes, dual_cls, **dual_kwargs):
    problem = conopt.ConstrainedProblem()
    problem.each = nn.ModuleList(
        conopt.Constraint("<=", shape, multiplier=multiplier_cls(init=0.5)) for shape in shapes
    )
    x = torch.zeros(3, **D).requires_grad_()
    dual = dual_cls(problem.dual_parameters(), lr=0.1, maximize=True, **dual_kwargs)
    optimizer = SimultaneousGDA(problem, torch.optim.SGD([x], lr=LR), dual, dual_restarts=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        values = [torch.randn(shape, generator=generator, **D) for shape in shapes]
        optimizer.step(
            lambda values=values: conopt.ProblemState(
                loss=(x**2).sum(),
                constraints={c: v + 0 * x.sum() for c, v in zip(problem.each, values, strict=True)},
            )
        )
    weights = [c.multiplier.weight for c in problem.each]
    states = [{k: v.clone() for k, v in dual.state[w].items()} for w in weights]
    return [w.detach().clone() for w in weights], states


@pytest.mark.parametrize("shapes", [[(), (), ()], [(), (2,), (2, 2)]], ids=["scalars", "mixed"])
@pytest.mark.parametrize(
    ("dual_cls", "kwargs"),
    [(torch.optim.SGD, {}), (torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {})],
)
def test_many_dense_multipliers_step_and_restart_as_each_one_alone(shapes, dual_cls, kwargs):
    """The batched path of a group of DenseMultipliers equals their one-at-a-time methods."""
    weights, states = _many_constraints_run(conopt.DenseMultiplier, shapes, dual_cls, **kwargs)
    reference, reference_states = _many_constraints_run(_DenseSubclass, shapes, dual_cls, **kwargs)
    assert any(bool((w == 0).any()) for w in weights)  # restarts happened
    for weight, expected in zip(weights, reference, strict=True):
        assert torch.equal(weight, expected)
    for state, expected in zip(states, reference_states, strict=True):
        assert state.keys() == expected.keys()
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected[key])), key


# ----------------------------------------------------------------------------- proxies
class Proxy(conopt.ConstrainedProblem):
    """g's proxy is 2x − 1 (differentiable); its strict value is a step function of x."""

    def __init__(self, formulation=None, init=0.5):
        super().__init__()
        self.c = conopt.Constraint(
            "<=", 2, formulation=formulation, multiplier=conopt.DenseMultiplier(init=init)
        )

    def evaluate(self, x):
        proxy = 2 * x - 1
        strict = (x > 0.25).to(x.dtype) - 0.5 + torch.tensor([0.0, -1.0], **D)
        return conopt.ProblemState(
            loss=0.5 * (x**2).sum(),
            constraints={self.c: conopt.ConstraintState(proxy, strict_value=strict)},
        )


X_PROXY = torch.tensor([0.8, 0.8], **D)  # proxy [0.6, 0.6] > 0; strict [0.5, -0.5]


def _proxy_step(formulation=None, **kwargs):
    problem = Proxy(formulation)
    x = X_PROXY.clone().requires_grad_()
    optimizer = SimultaneousGDA(
        problem,
        torch.optim.SGD([x], lr=LR),
        torch.optim.SGD(problem.dual_parameters(), lr=DUAL_LR, maximize=True),
        **kwargs,
    )
    report = optimizer.step(lambda: problem.evaluate(x))
    return problem, x, report


def test_proxy_value_drives_the_primal_gradient():
    _, x, _ = _proxy_step()
    assert torch.allclose(x.detach(), X_PROXY - LR * (X_PROXY + 2 * 0.5))


def test_strict_value_drives_the_dual_update():
    problem, _, _ = _proxy_step()
    assert problem.c.multiplier.weight.tolist() == pytest.approx([0.75, 0.25])


def test_strict_value_drives_the_augmented_lagrangian_dual_update():
    problem, _, _ = _proxy_step(conopt.AugmentedLagrangian(rho=2.0))
    assert problem.c.multiplier.weight.tolist() == pytest.approx([1.0, 0.0])


def test_strict_value_drives_restarts():
    problem, _, _ = _proxy_step(dual_restarts=True)
    assert problem.c.multiplier.weight.tolist() == pytest.approx([0.75, 0.0])


def test_strict_value_drives_the_kkt_report():
    _, _, report = _proxy_step()
    assert report.constraints["c"].value.tolist() == pytest.approx([0.6, 0.6])
    assert report.constraints["c"].strict_value.tolist() == pytest.approx([0.5, -0.5])
    assert report.kkt.max_violation == pytest.approx(0.5)
    assert report.kkt.max_complementary_slackness == pytest.approx(0.25)


# -------------------------------------------------------------------------------- reports
@pytest.mark.parametrize("split", [False, True])
def test_report_holds_the_multipliers_the_step_used(split):
    problem, x, optimizer = _setup(split=split)
    report = optimizer.step(lambda: problem.evaluate(x))
    names = ["rows.0", "rows.1"] if split else ["g"]
    used = torch.cat([report.constraints[n].multiplier.reshape(-1) for n in names])
    assert torch.equal(used, LAM0)
    assert not torch.equal(problem.lam(), LAM0)
