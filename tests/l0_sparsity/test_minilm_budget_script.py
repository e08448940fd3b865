"""Smoke test of benchmarks/minilm_budget.py at its quickest settings (no number is asserted):
the real MiniLM distilled for 2 batches, both magnitude baselines, the penalty bisection (2
trainings at most), ONNX latencies, calibration."""

import pytest

minilm_budget = pytest.importorskip("benchmarks.minilm_budget")
pytestmark = pytest.mark.usefixtures("keep_threads")  # the script sets its thread count


def test_the_quick_run_prints_every_method_and_the_calibration(capsys):
    minilm_budget.main(
        ["--quick", "--targets", "0.5", "--threads", "1", "--baselines", "--penalty-bisection"]
    )
    out = capsys.readouterr().out
    assert "calibration: the teacher with its dropout on: mean cos" in out
    header, *rows = out[out.index("      target") :].splitlines()
    assert header.split() == [
        *("target", "method", "purged_macs", "params", "mean_cos", "min_cos", "nn_agree"),
        *("dense_ms", "purged_ms", "speedup", "train_min", "trainings"),
    ]
    assert [row.split()[1] for row in rows] == ["l0", "magnitude", "magnitude+ft", "penalty"]
    assert "penalty bisection 1: macs_penalty 0.1 -> purged MACs" in out
