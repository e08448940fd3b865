"""Smoke test of benchmarks/l0_budgets.py at its quickest settings (no number is asserted)."""

import pytest

budgets = pytest.importorskip("benchmarks.l0_budgets")
pytestmark = pytest.mark.usefixtures("keep_threads")  # the script sets one thread


def test_the_quick_run_prints_every_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L0_SPARSITY_CACHE", str(tmp_path / "cache"))
    budgets.main(["--quick", "--output-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "(a) MACs budgets vs density targets" in out
    assert "MACs, strict" in out and "density" in out
    assert "(a') density targets bisected to the budgets' purged MACs" in out
    assert "(b) constraints vs penalties" in out and "penalty bisection" in out
    assert "(c) latency model" in out and "rel. miss" in out
