"""The trainer's and purge's accelerator paths: AMP (bf16, fp16 + GradScaler), channels_last.

The CUDA cases run wherever CUDA is present (``pytest tests/l0_sparsity/test_device_paths.py``
on a GPU machine checks every CUDA path of the application in about a minute) and are skipped
elsewhere. The CPU cases run the same assertions where the CPU supports the setting, so the
tests' own logic is exercised on every machine.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers
from l0_sparsity.purging import purge
from l0_sparsity.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.presets import get_preset
from l0_sparsity.training.trainer import train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (device, model, amp); convolutional models get channels_last on CUDA.
TRAIN_CASES = [
    pytest.param("cpu", "lenet5", "bf16", id="cpu-lenet5-bf16"),
    pytest.param("cpu", "mlp", "off", id="cpu-mlp-fp32"),
    pytest.param("cuda", "resnet18_cifar", "bf16", marks=CUDA, id="cuda-resnet18-bf16"),
    pytest.param("cuda", "resnet18_cifar", "fp16", marks=CUDA, id="cuda-resnet18-fp16"),
    pytest.param("cuda", "resnet18_cifar", "off", marks=CUDA, id="cuda-resnet18-fp32"),
    pytest.param("cuda", "wrn28_10", "bf16", marks=CUDA, id="cuda-wrn28_10-bf16"),
    pytest.param("cuda", "mlp", "auto", marks=CUDA, id="cuda-mlp-auto"),
]


def _config(device: str, model: str, amp: str, output_dir: Path) -> TrainConfig:
    return get_preset("synthetic_smoke").replace(
        device=device,
        model=model,
        amp=amp,
        channels_last=True,
        epochs=1,
        batch_size=64,
        threads=1,
        num_workers=0,
        dual_lr=5e-2,  # the multiplier must move within one short epoch
        output_dir=str(output_dir),
    )


@pytest.mark.parametrize(("device", "model", "amp"), TRAIN_CASES)
def test_training_on_device_moves_density_and_resumes(device, model, amp, tmp_path):
    config = _config(device, model, amp, tmp_path)
    first = train(config)
    params = list(first.model.parameters())
    assert {p.device.type for p in params} == {device}
    assert {p.dtype for p in params} == {torch.float32}  # autocast leaves the masters alone
    final = first.final
    assert math.isfinite(final["train_loss"]) and final["skipped_steps"] == 0
    assert 0.0 < final["expected_density"] < 1.0
    assert final["multiplier/density"] > 0.0  # the density (about 0.83 at init) exceeds 0.35
    for _, layer in gated_layers(first.model):
        assert torch.isfinite(layer.log_alpha).all()
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    scaler = saved.get("scaler")
    assert bool(scaler) == (amp == "fp16")  # a GradScaler exactly for fp16

    second = train(config.replace(epochs=2, resume=True))
    assert second.final["epoch"] == 1 and math.isfinite(second.final["train_loss"])


PURGE_CASES = [
    pytest.param("cpu", "lenet5", id="cpu-lenet5"),
    pytest.param("cuda", "resnet18_cifar", marks=CUDA, id="cuda-resnet18"),
    pytest.param("cuda", "wrn28_10", marks=CUDA, id="cuda-wrn28_10"),
]


@torch.no_grad()
@pytest.mark.parametrize(("device", "name"), PURGE_CASES)
def test_purged_model_on_device_matches_the_gated_model(device, name):
    torch.manual_seed(0)
    channels = 1 if name == "lenet5" else 3
    side = 28 if name == "lenet5" else 32
    model = build_model(name, num_classes=10, in_channels=channels).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    for _, layer in gated_layers(model):  # about half the groups dead
        alive = torch.rand(layer.log_alpha.shape, generator=generator) < 0.5
        layer.log_alpha.copy_(torch.where(alive, 1.0, -3.0).to(device))
    purged = purge(model)
    x = torch.randn(4, channels, side, side, generator=generator).to(device)
    if device == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
        purged = purged.to(memory_format=torch.channels_last)
    expected = model(x)
    assert {p.device.type for p in purged.parameters()} == {device}
    torch.testing.assert_close(purged(x), expected, atol=1e-4, rtol=1e-4)
    with torch.autocast(device, dtype=torch.bfloat16):
        low = purged(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, atol=0.1, rtol=0.05)
