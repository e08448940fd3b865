"""Purging: the smaller plain-torch model computes exactly the gated model's eval output."""

import functools
import subprocess
import sys
import textwrap

import pytest
import torch
from l0_helpers import SPECS
from torch import nn

from l0_sparsity.models import build_model
from l0_sparsity.nn import GatedBatchNorm2d, L0Linear, gated_layers, sparsify
from l0_sparsity.purging import (
    PurgeReport,
    count_flops,
    count_params,
    export,
    purge,
    purge_report,
    save_purged,
)

DENSITIES = [0.7, 0.5, 0.3, 0.0]


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=7, in_channels=SPECS[name][0]).eval()


def _input(name: str) -> torch.Tensor:
    channels, side = SPECS[name]
    return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _force(model: nn.Module, fraction: float, seed: int = 0) -> None:
    """Keep about ``fraction`` of the groups, with fractional test gates; random BN stats."""
    gen = torch.Generator().manual_seed(seed)
    for _, layer in gated_layers(model):
        la = layer.log_alpha
        alive = torch.rand(la.shape, generator=gen) < fraction
        la.copy_(torch.where(alive, -1.0 + 2.0 * torch.rand(la.shape, generator=gen), -3.0))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))


@pytest.mark.parametrize("name", list(SPECS))
def test_purged_model_matches_gated_eval_output_at_every_density(name: str):
    model, x = _model(name), _input(name)
    params = count_params(model)
    for density in DENSITIES:
        _force(model, density)
        purged = purge(model)
        with torch.no_grad():
            torch.testing.assert_close(purged(x), model(x), atol=1e-5, rtol=1e-5)
        assert count_params(purged) < params


def test_purge_does_not_modify_the_gated_model_or_its_mode():
    model = build_model("lenet5", num_classes=10).train()
    _force(model, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    purged = purge(model)
    assert model.training and not purged.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(p is q for p in purged.parameters() for q in model.parameters())


def test_purged_model_is_made_of_plain_torch_modules():
    model = _model("resnet18_cifar")
    _force(model, 0.5)
    purged = purge(model)
    kinds = {type(m) for m in purged.modules()} - {type(purged)}
    assert all(k.__module__.startswith("torch.") for k in kinds), kinds


def test_purge_removes_dead_filters_and_slices_the_next_layer():
    model = build_model("lenet5", num_classes=10).eval()
    _force(model, 0.5)
    purged = purge(model)
    kept1 = int(model.conv1.active_mask().sum())
    kept2 = int(model.conv2.active_mask().sum())
    assert purged.conv1.out_channels == kept1
    assert purged.conv2.in_channels == kept1 and purged.conv2.out_channels == kept2
    assert purged.fc1.in_features <= 16 * kept2


def test_purge_shrinks_the_producer_of_a_gated_linear_layer():
    model = build_model("mlp", num_classes=10).eval()
    _force(model, 0.3)
    purged = purge(model)
    kept = int(model.layers[2].active_mask().sum())
    first, second = purged.get_submodule("layers.0"), purged.get_submodule("layers.2")
    assert first.out_features == kept == second.in_features


def test_fully_dead_residual_block_outputs_its_shortcut():
    model = _model("resnet18")
    _force(model, 0.0)
    purged = purge(model)
    block = purged.get_submodule("layer1.0")
    assert block.conv1.out_channels == 1 and block.conv2.in_channels == 1
    with torch.no_grad():
        torch.testing.assert_close(purged(_input("resnet18")), model(_input("resnet18")))


def test_purge_folds_unstructured_gates_into_the_weights():
    model = build_model("lenet5", num_classes=10, structured=False).eval()
    _force(model, 0.5)
    purged = purge(model)
    x = _input("lenet5")
    with torch.no_grad():
        torch.testing.assert_close(purged(x), model(x), atol=1e-5, rtol=1e-5)
    zeros = (purged.conv1.weight == 0).float().mean().item()
    assert 0.3 < zeros < 0.7


def test_purge_of_a_sparsified_user_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(6 * 4 * 4, 5),
    )
    sparsify(model).eval()
    _force(model, 0.5)
    purged = purge(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(purged(x), model(x), atol=1e-5, rtol=1e-5)
    assert purged.get_submodule("4").in_channels == int(model[0].active_mask().sum())


def test_gated_conv_feeding_an_addition_keeps_its_width_by_scattering():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + x

    model = sparsify(Residual()).eval()
    assert isinstance(model.bn, GatedBatchNorm2d)
    _force(model, 0.5)
    with torch.no_grad():
        model.conv.log_alpha.copy_(torch.tensor([0.5, -3.0, 0.2, -3.0]))
    purged = purge(model)
    x = torch.randn(2, 4, 5, 5)
    assert purged.conv.out_channels == 2
    with torch.no_grad():
        torch.testing.assert_close(purged(x), model(x))


def test_count_params_excludes_gates_by_default():
    layer = nn.Sequential(L0Linear(4, 3))
    assert count_params(layer) == 15
    assert count_params(layer, include_gates=True) == 19


def test_count_flops_counts_two_flops_per_multiply_add():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert count_flops(model, (5, 4)) == 2 * 5 * (4 * 3 + 3 * 2)


def test_purge_report_compares_sizes_and_lists_kept_groups():
    model = build_model("lenet5", num_classes=10).eval()
    _force(model, 0.3)
    report = purge_report(model, (1, 1, 28, 28))
    assert isinstance(report, PurgeReport)
    assert report.params_purged < report.params_gated
    assert report.flops_purged < report.flops_gated
    assert 0 < report.param_ratio < 1 and 0 < report.flop_ratio < 1
    assert report.kept_groups["conv1"] == (int(model.conv1.active_mask().sum()), 20)
    assert "conv1" in str(report)


def test_saved_purged_model_reloads_without_l0_sparsity(tmp_path):
    model = build_model("lenet5", num_classes=10).eval()
    _force(model, 0.5)
    x = torch.randn(3, 1, 28, 28)
    path = tmp_path / "lenet.pt2"
    export(model, path, x[:2])
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["l0_sparsity"] = None  # any import of the package now fails
        import torch
        program = torch.export.load({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        torch.save(program.module()(x), {str(tmp_path / "y.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-5, rtol=1e-5)


def test_save_purged_is_a_deprecated_alias_of_export(tmp_path):
    model = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))).eval()
    x = torch.randn(3, 4)
    with pytest.warns(DeprecationWarning, match=r"l0_sparsity\.purging\.export"):
        program = save_purged(model, tmp_path / "small.pt2", x[:2], dynamic_batch=False)
    reloaded = torch.export.load(tmp_path / "small.pt2")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.module()(x[:2]), model(x[:2]))
        torch.testing.assert_close(program.module()(x[:2]), model(x[:2]))


@pytest.mark.parametrize("name", ["mlp", "resnet18_cifar"])
def test_purged_model_pickles_with_torch_save_and_loads_without_l0_sparsity(name: str, tmp_path):
    model, x = _model(name), _input(name)
    _force(model, 0.5)
    torch.save(purge(model), tmp_path / "purged.pt")  # the models annotate with postponed strings
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["l0_sparsity"] = None  # any import of the package now fails
        import torch
        purged = torch.load({str(tmp_path / "purged.pt")!r}, weights_only=False)
        x = torch.load({str(tmp_path / "x.pt")!r})
        with torch.no_grad():
            torch.save(purged(x), {str(tmp_path / "y.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-5, rtol=1e-5)
