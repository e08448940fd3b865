import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from l0_sparsity.cli.app import main
from l0_sparsity.models import build_model
from l0_sparsity.nn import HardConcrete, gate_parameters, weight_parameters
from l0_sparsity.problem import SparsityProblem
from l0_sparsity.training.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_atomic,
)
from l0_sparsity.training.optimizers import make_constrained_optimizer, make_scheduler
from l0_sparsity.training.presets import PRESETS, get_preset
from l0_sparsity.training.trainer import train

SMOKE = get_preset("synthetic_smoke").replace(threads=1, num_workers=0)


def test_smoke_run_writes_metrics_plot_and_checkpoint(tmp_path):
    result = train(SMOKE.replace(output_dir=str(tmp_path)))
    assert len(result.history) == SMOKE.epochs
    assert {"metrics.csv", "training.png", "checkpoint.pt"} <= {p.name for p in tmp_path.iterdir()}
    row = result.final
    assert 0 <= row["expected_density"] <= 1 and "multiplier/density" in row


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    full = train(SMOKE.replace(epochs=3, output_dir=str(tmp_path / "full")))
    train(SMOKE.replace(epochs=1, output_dir=str(tmp_path / "split")))
    resumed = train(SMOKE.replace(epochs=3, resume=True, output_dir=str(tmp_path / "split")))
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert torch.equal(
        full.problem.density.multiplier.weight, resumed.problem.density.multiplier.weight
    )
    assert [r["expected_density"] for r in full.history] == [
        r["expected_density"] for r in resumed.history
    ]


def test_layer_wise_run_with_one_target_applies_it_to_every_layer(tmp_path):
    result = train(SMOKE.replace(epochs=1, layer_targets=(0.5,), output_dir=str(tmp_path)))
    assert result.problem.mode == "layer-wise"
    assert result.problem.targets.tolist() == [0.5, 0.5, 0.5]


def test_penalized_run_goes_through_the_same_loop(tmp_path):
    result = train(SMOKE.replace(epochs=1, penalty=1.0, output_dir=str(tmp_path)))
    assert result.problem.mode == "penalized"
    assert not any(k.startswith("multiplier") for k in result.final)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_model_and_problem(name):
    preset = PRESETS[name]
    in_channels = 1 if preset.dataset in ("mnist5k", "fashion_mnist", "synthetic") else 3
    num_classes = {"cifar100": 100, "tinyimagenet": 200, "imagenet": 1000}.get(preset.dataset, 10)
    model = build_model(preset.model, num_classes=num_classes, in_channels=in_channels)
    if preset.penalty is not None:
        SparsityProblem(model, penalty=preset.penalty)
    else:
        side = {"mnist5k": 28, "fashion_mnist": 28, "synthetic": 28}.get(preset.dataset, 32)
        SparsityProblem(
            model,
            target=preset.target,
            macs_target=preset.macs_target,
            params_target=preset.params_target,
            example_input=(1, in_channels, side, side),
        )


def test_cli_train_runs_a_preset(tmp_path, capsys):
    code = main(
        [
            "train",
            "--preset",
            "synthetic_smoke",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--output-dir",
            str(tmp_path),
            "--target",
            "0.5",
        ]
    )
    assert code == 0
    assert "done: test error" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--preset", "nope"], "unknown preset"),
        (["--target", "1.5"], "target must be a density"),
        (["--model", "vgg"], "unknown model"),
        (["--dataset", "mnist9"], "unknown dataset"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent/cifar"], "cifar"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, arguments, message):
    code = main(["train", "--preset", "synthetic_smoke", "--output-dir", str(tmp_path), *arguments])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err.lower() and "Traceback" not in err


def test_cli_refuses_a_corrupted_checkpoint_and_leaves_it_untouched(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    code = main(["train", "--preset", "synthetic_smoke", "--output-dir", str(tmp_path), "--resume"])
    assert code == 2 and "corrupted" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"not a checkpoint"


def test_checkpoints_load_safely_and_files_with_other_objects_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    # Any object beyond tensors and plain values, e.g. a format-1 file's NumPy RNG state.
    save_atomic({"format_version": FORMAT_VERSION, "config": np.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="safe load refuses"):
        load_checkpoint(path)


def test_resuming_another_models_checkpoint_is_refused(tmp_path):
    train(SMOKE.replace(epochs=1, output_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="written for model"):
        train(SMOKE.replace(model="lenet5", epochs=2, resume=True, output_dir=str(tmp_path)))


def test_checkpoint_survives_sigkill_while_writing(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {
        "format_version": FORMAT_VERSION,
        "config": {},
        "epoch": 0,
        "model": {},
        "problem": {},
        "optimizer": {},
    }
    save_atomic(payload, path)
    writer = textwrap.dedent(f"""
        import torch
        from l0_sparsity.training.checkpoint import FORMAT_VERSION, save_atomic
        big = torch.zeros(20_000_000)
        epoch = 1
        while True:
            payload = {{"format_version": FORMAT_VERSION, "config": {{}}, "epoch": epoch,
                       "model": {{"w": big}}, "problem": {{}}, "optimizer": {{}}}}
            save_atomic(payload, {str(path)!r})
            epoch += 1
    """)
    process = subprocess.Popen([sys.executable, "-c", writer])
    try:
        for _ in range(200):
            if load_checkpoint(path)["epoch"] >= 1:
                break
            process.poll()
            assert process.returncode is None
            torch.randn(1)  # yield
            os.sched_yield()
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert load_checkpoint(path)["epoch"] >= 0
    leftovers = [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert all(p.name.startswith(".checkpoint.pt.") for p in leftovers)


def test_demo_trains_both_runs_and_prints_the_table(tmp_path):
    from l0_sparsity.demo import run_demo

    table = run_demo(epochs=1, output_dir=str(tmp_path))
    lines = table.splitlines()
    assert "expected density" in lines[0]
    assert lines[1].startswith("constrained (eps=0.35)") and lines[2].startswith("penalized")
    assert (tmp_path / "constrained" / "metrics.csv").exists()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_make_optimizer_is_fused_and_falls_back_to_foreach(kind, monkeypatch):
    from l0_sparsity.training import optimizers

    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = optimizers.make_optimizer(kind, params, 0.1)
    assert optimizer.defaults["fused"] is True and optimizer.defaults["lr"] == 0.1

    name = "SGD" if kind == "sgd" else "Adam"
    original = getattr(torch.optim, name)

    class NoFusedKernel(original):
        def __init__(self, *args, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on CUDA")
            super().__init__(*args, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim, name, NoFusedKernel)
    optimizer = optimizers.make_optimizer(kind, params, 0.1)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]


def test_evaluate_accuracy_counts_every_sample_once():
    from l0_sparsity.data import build_datasets, make_loader
    from l0_sparsity.training.evaluate import evaluate_accuracy

    _, test, info = build_datasets("synthetic", num_train=8, num_test=30)
    model = build_model(
        "mlp",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
    )
    loader = make_loader(test, 8, train=False)
    accuracy, total = evaluate_accuracy(model, loader, torch.device("cpu"))
    assert total == len(test) == 30 and 0.0 <= accuracy <= 1.0
    assert model.training  # restored after evaluating in eval mode


def test_one_primal_optimizer_whose_schedule_decays_the_weights_only():
    config = get_preset("mnist_mlp").replace(
        lr=0.1, gates_lr=0.5, lr_milestones=(3, 1), lr_gamma=0.1
    )
    model = build_model("mlp")
    optimizer = make_constrained_optimizer(config, model, SparsityProblem(model, target=0.3))
    (primal,) = optimizer.primal_optimizers
    weights, gates = primal.param_groups
    assert [id(p) for p in weights["params"]] == [id(p) for p in weight_parameters(model)]
    assert [id(p) for p in gates["params"]] == [id(p) for p in gate_parameters(model)]
    scheduler = make_scheduler(config, primal)
    rates = []
    for _ in range(4):
        primal.step()  # no gradients: changes nothing, but keeps the scheduler's order check
        scheduler.step()
        rates.append([round(group["lr"], 10) for group in primal.param_groups])
    assert rates == [[0.01, 0.5], [0.01, 0.5], [0.001, 0.5], [0.001, 0.5]]


@pytest.fixture
def median_gates(monkeypatch):
    """Deterministic forward passes: every gate "sample" is the median gate.

    Micro-batches otherwise draw their own gates, so only then must accumulated micro-batches
    give the whole batch's gradient up to float rounding.
    """
    monkeypatch.setattr(
        HardConcrete, "sample", lambda self, log_alpha, generator=None: self.median(log_alpha)
    )


def _whole_and_split(tmp_path, batch_size: int, accumulation_steps: int):
    """One epoch with whole batches and one with micro-batches; same parameters at the end."""
    config = SMOKE.replace(epochs=1, batch_size=batch_size)
    whole = train(config.replace(output_dir=str(tmp_path / "whole")))
    split = train(
        config.replace(accumulation_steps=accumulation_steps, output_dir=str(tmp_path / "split"))
    )
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(split.model.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    return whole, split


def test_accumulated_micro_batches_step_like_the_whole_batch(tmp_path, median_gates):
    whole, split = _whole_and_split(tmp_path, batch_size=64, accumulation_steps=2)
    for key in ("multiplier/density", "expected_density", "train_loss", "train_error"):
        assert split.final[key] == pytest.approx(whole.final[key], rel=1e-4, abs=1e-6)
    steps = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)["optimizer"]["step_count"]
    assert steps == 1024 // 64  # one step per batch, not per micro-batch


def test_uneven_micro_batches_are_weighted_by_their_size(tmp_path, median_gates):
    # 1024 = 17 × 60 + 4: a short last batch, split 7 ways unevenly
    whole, split = _whole_and_split(tmp_path, batch_size=60, accumulation_steps=7)
    assert split.final["train_loss"] == pytest.approx(whole.final["train_loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("steps", "message"),
    [(0, "accumulation_steps must be >= 1"), (65, "exceeds the batch of 64 samples")],
)
def test_bad_accumulation_steps_are_refused(tmp_path, steps, message):
    config = SMOKE.replace(batch_size=64, accumulation_steps=steps, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message):
        train(config)


def test_a_density_run_logs_the_compute_it_misses(tmp_path):
    final = train(SMOKE.replace(epochs=1, output_dir=str(tmp_path))).final
    for column in ("expected_macs", "purged_macs", "expected_params", "purged_params"):
        assert 0 < final[column] <= 1, column
    assert not any(key.endswith("_target") or key == "multiplier/macs" for key in final)
