"""Smoke test of benchmarks/l0_speed.py: every section runs on its smallest setting.

No timing is asserted; the script's numbers come from running it by hand.
"""

import pytest
import torch

from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers

speed = pytest.importorskip("benchmarks.l0_speed")
pytestmark = pytest.mark.usefixtures("keep_threads")  # the scripts set one thread


def test_interleaved_timing_reports_every_contender():
    calls = {"a": 0, "b": 0}

    def bump(key):
        def run():
            calls[key] += 1

        return run

    timing = speed.interleaved({"a": bump("a"), "b": bump("b")}, rounds=3, reps=2, warmup=1)
    assert calls == {"a": 7, "b": 7}
    assert len(timing.samples["a"]) == 3 and set(timing.faults) == {"a", "b"}
    assert timing.median("a") >= 0 and timing.ratio("a", "a") == pytest.approx(1.0)


@pytest.mark.parametrize("variant", speed.VARIANTS)
def test_train_step_variants_update_the_model(variant):
    step = speed.make_train_step("mlp", variant, batch=8)
    model = step.model
    assert any(True for _ in gated_layers(model)) == (variant != "dense")
    before = [p.detach().clone() for p in model.parameters()]
    step()
    step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_train_section_on_the_mlp(capsys):
    rows = speed.train_overhead(["mlp"], rounds=1, reps=1, batch=8, warmup=0)
    assert [r.model for r in rows] == ["mlp"] and rows[0].batch == 8
    assert rows[0].ratio("gated") > 0 and rows[0].ratio("constrained") > 0
    out = capsys.readouterr().out
    assert "(a) training step" in out and "<= 1.3x" in out


def test_set_density_keeps_the_wanted_fraction_of_groups():
    model = build_model("mlp").eval()
    density = speed.set_density(model, 0.3)
    for _, layer in gated_layers(model):
        assert int(layer.active_mask().sum()) == round(0.3 * layer.num_gates)
    assert density == pytest.approx(0.3, abs=0.01)


def test_purge_section_on_the_mlp(capsys):
    rows = speed.purge_speed(["mlp"], densities=[0.3], batches=[1], rounds=1, reps=1, warmup=0)
    (row,) = rows
    assert row.params[1] < row.params[0] and row.flops[1] < row.flops[0]
    assert row.speedup > 0
    assert ">= 2x" in capsys.readouterr().out


def test_gpu_section_skips_or_runs(capsys):
    rows = speed.gpu_throughput(["resnet18_cifar"], batch=4, steps=1, warmup=1)
    out = capsys.readouterr().out
    if torch.cuda.is_available():
        assert rows and rows[0].images_per_s["constrained"] > 0
    else:
        assert rows == [] and "CUDA not available: skipped" in out


@pytest.mark.parametrize("variant", ["dense", "constrained"])
def test_gpu_section_step_runs_with_bf16_and_channels_last_on_cpu(variant):
    """The GPU section's step configuration, on CPU: everything but the CUDA calls."""
    step = speed.make_train_step(
        "resnet18_cifar", variant, batch=2, amp=torch.bfloat16, channels_last=True
    )
    before = [p.detach().clone() for p in step.model.parameters()]
    step()
    step()
    after = list(step.model.parameters())
    assert all(p.dtype == torch.float32 for p in after)  # autocast leaves parameters in fp32
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, p) for b, p in zip(before, after, strict=True))


def test_main_runs_the_chosen_section(capsys):
    speed.main(["--purge", "--models", "mlp", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "(b) inference latency" in out and "(a) training step" not in out
