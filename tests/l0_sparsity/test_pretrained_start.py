"""Sparsifying a trained torchvision model keeps its function; torchvision stays optional."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from l0_helpers import write_fashion
from torch import nn

pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")

from l0_sparsity.data import DatasetInfo
from l0_sparsity.models import build_model, gate_blocks, mark_residual_blocks
from l0_sparsity.nn import HardConcrete, gated_layers
from l0_sparsity.nn.gates import log_alpha_for_droprate
from l0_sparsity.training.builders import make_model
from l0_sparsity.training.presets import get_preset

torch.set_num_threads(1)
PRETRAINED = get_preset("fashion_resnet18_pretrained")


@torch.no_grad()
def trained_like_resnet18() -> tuple[nn.Module, torch.Tensor]:
    """A dense torchvision ResNet-18 whose BatchNorms hold statistics of real-looking inputs."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1, gated=False)
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average: one pass sets the statistics
    model.train()(images)
    return model.eval(), images[:4]


def test_sparsify_at_the_presets_drop_rate_keeps_the_trained_models_function():
    dense, images = trained_like_resnet18()
    with torch.no_grad():
        expected = dense(images)
    gated = gate_blocks(dense, droprate_init=PRETRAINED.droprate_init).eval()
    gates = torch.cat([layer.test_gates().flatten() for _, layer in gated_layers(gated)])
    assert len(gated_layers(gated)) == 16 and bool((gates == 1.0).all())
    assert expected.abs().max() > 1e-2
    with torch.no_grad():
        torch.testing.assert_close(gated(images), expected, rtol=1e-6, atol=1e-6)


def test_the_default_drop_rate_would_halve_every_test_time_gate():
    """Why the recipe sets the drop rate: at p = 0.5 the test-time gate is 0.5, not 1."""
    dense, _ = trained_like_resnet18()
    gated = gate_blocks(dense, droprate_init=0.5)
    gates = torch.cat([layer.test_gates().flatten() for _, layer in gated_layers(gated)])
    assert gates.max() < 0.6


def test_the_presets_drop_rate_opens_every_gate_with_a_wide_margin():
    """Test-time gate = 1 iff log α ≥ β·log((1 − γ)/(ζ − 1)): the init mean is 10 std above."""
    hard_concrete = HardConcrete()
    opening = hard_concrete.beta * torch.log(
        torch.tensor((1.0 - hard_concrete.gamma) / (hard_concrete.zeta - 1.0))
    )
    mean = log_alpha_for_droprate(PRETRAINED.droprate_init)
    assert mean - 10 * 0.01 > opening.item()
    assert hard_concrete.median(torch.tensor([mean - 10 * 0.01])).item() == 1.0


def test_the_pretrained_preset_trains_to_a_macs_budget_only():
    assert PRETRAINED.macs_target == 0.5 and PRETRAINED.target is None
    assert PRETRAINED.model == "resnet18" and PRETRAINED.lr < get_preset("fashion_resnet18").lr


def test_a_run_with_weights_starts_from_them(tmp_path: Path):
    dense, images = trained_like_resnet18()
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    config = PRETRAINED.replace(weights=str(tmp_path / "dense.pt"))
    model = make_model(config, DatasetInfo("fashion_mnist", 10, 1, 28, (0.5,), (0.5,))).eval()
    assert len(gated_layers(model)) == 16
    with torch.no_grad():
        torch.testing.assert_close(model(images), dense(images), rtol=1e-6, atol=1e-6)


def test_weights_of_another_shape_are_refused_naming_the_model():
    state = build_model("resnet18", num_classes=3, gated=False).state_dict()
    with pytest.raises(ValueError, match=r"(?s)weights do not fit model 'resnet18'.*fc\.weight"):
        build_model("resnet18", num_classes=10, weights=state)


def test_mark_residual_blocks_refuses_a_model_without_torchvision_blocks():
    with pytest.raises(ValueError, match="mark_residual_blocks: Sequential holds no torchvision"):
        mark_residual_blocks(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_torchvision_resnet_without_torchvision_names_the_vision_extra(monkeypatch):
    for name in {"torchvision"} | {m for m in sys.modules if m.startswith("torchvision.")}:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"model 'resnet18'.*'vision' extra"):
        build_model("resnet18")


def test_the_package_and_an_mnist_run_work_where_torchvision_cannot_be_imported(tmp_path):
    child = textwrap.dedent(
        f"""
        import sys

        class RefuseTorchvision:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "torchvision":
                    raise ModuleNotFoundError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, RefuseTorchvision())
        import l0_sparsity, l0_sparsity.cli, l0_sparsity.data, l0_sparsity.models
        from l0_sparsity.training.presets import get_preset

        config = get_preset("mnist_mlp").replace(
            epochs=1, subset=200, test_subset=100, output_dir={str(tmp_path / "run")!r},
            progress=False, tensorboard=False, num_workers=0, threads=1, device="cpu",
        )
        result = l0_sparsity.train(config)
        assert "test_error" in result.final
        try:
            l0_sparsity.models.build_model("resnet50")
        except ImportError as error:
            assert "'vision' extra" in str(error), error
        else:
            raise SystemExit("resnet50 was built without torchvision")
        assert not any(m.partition(".")[0] == "torchvision" for m in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.usefixtures("keep_threads")  # the script sets its thread count
def test_the_benchmark_pretrains_finetunes_exports_and_times(tmp_path, capsys):
    script = pytest.importorskip("benchmarks.l0_pretrained_torchvision")
    write_fashion(tmp_path / "fashion", gz=True, n_train=40, n_test=20)
    script.main(
        [
            *("--data-dir", str(tmp_path / "fashion"), "--subset", "40", "--test-subset", "20"),
            *("--dense-epochs", "1", "--epochs", "1", "--rounds", "1", "--latency-batch", "4"),
            *("--output-dir", str(tmp_path / "run")),
        ]
    )
    out = capsys.readouterr().out
    assert "test-time gates all 1: True, max |logit difference| to the dense model 0.0e+00" in out
    assert "test accuracy (20 images): dense" in out and "purged MACs" in out
    assert "pytorch" in out and "onnxruntime" in out and "speed-up" in out
    assert (tmp_path / "run" / "dense.pt").is_file() and (
        tmp_path / "run" / "purged.onnx"
    ).is_file()
