"""torchvision CNNs: sparsify, switch off about half of every layer's gates, purge, export.

For each model (random weights, BatchNorms calibrated on random data so that outputs have a
non-degenerate scale): the purged model's eval output equals the gated model's; its parameter
count and its MACs (``torch.utils.flop_counter``) equal what :class:`~l0_sparsity.ComputeCost`
predicts from the test-time gates; the ``torch.export`` file reloads and matches. Depthwise and
grouped convolutions (MobileNet, EfficientNet, ShuffleNet, RegNet) follow the gates of the conv
feeding them and lose filters, or whole groups, with its channels.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import l0_sparsity as l0
from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import L0Conv2d, gated_layers
from l0_sparsity.purging import count_flops, count_params, purge

torch.set_num_threads(1)

SIDE = 64
FAST = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
]
SLOW = ["resnet50", "convnext_tiny", "densenet121"]
MODELS = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]


@torch.no_grad()
def _calibrate(model: nn.Module) -> None:
    """Running statistics of every BatchNorm from two random batches (cumulative average)."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for _ in range(2):
        model(torch.randn(8, 3, SIDE, SIDE, generator=gen))
    model.eval()


@torch.no_grad()
def _switch_off_half(model: nn.Module) -> None:
    """Half of every gated layer's gates dead, the others alive with test gates in (0, 1]."""
    gen = torch.Generator().manual_seed(2)
    for _, layer in gated_layers(model):
        flat = layer.log_alpha.data.view(-1)
        flat.uniform_(0.5, 2.0, generator=gen)
        flat[torch.randperm(flat.numel(), generator=gen)[: flat.numel() // 2]] = -5.0


@functools.cache
def _gated(name: str) -> nn.Module:
    """``name`` with random weights, calibrated, sparsified, half of its gates off (cached)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    _calibrate(model)
    with warnings.catch_warnings():  # layers left dense are reported: tested on their own
        warnings.simplefilter("ignore", UserWarning)
        l0.sparsify(model)
    _switch_off_half(model)
    return model.eval()


def _input() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", MODELS)
def test_purged_torchvision_model_is_exact_counted_and_exported(name: str, tmp_path: Path):
    model = _gated(name)
    x = _input()
    with torch.no_grad():
        reference = model(x)
    scale = reference.abs().max().item()
    assert scale > 1e-4, f"degenerate output scale {scale}"

    purged = purge(model)
    with torch.no_grad():
        out = purged(x)
    assert (out - reference).abs().max().item() <= 1e-4 * scale

    cost = ComputeCost(model, x)
    assert count_params(purged) == cost.test_params()
    assert count_flops(purged, x[:1]) // 2 == cost.test_macs()
    assert count_params(purged) < 0.7 * count_params(model)

    path = tmp_path / f"{name}.pt2"
    l0.export(purged, path, x)
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        assert torch.allclose(loaded(x), out, rtol=0.0, atol=1e-5 * scale)


def _depthwise(model: nn.Module) -> list[nn.Conv2d]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5"])
def test_depthwise_convs_follow_their_producer_and_shrink(name: str):
    model = _gated(name)
    followers = dict(model.sparsify_report.followers)
    assert followers, "no depthwise conv follows its producer"
    for depthwise, producer in followers.items():
        assert type(model.get_submodule(depthwise)) is nn.Conv2d  # not gated itself
        assert isinstance(model.get_submodule(producer), L0Conv2d)
    before = {m.groups for m in _depthwise(model)}
    after = [m.groups for m in _depthwise(purge(model))]
    assert after and max(after) < max(before)


def test_convnext_depthwise_convs_keep_their_own_kept_filters():
    """Fed by a residual stream, a ConvNeXt block's depthwise conv is gated itself and shrinks."""
    model = _small_convnext()
    gated = model.get_submodule("features.1.0.block.0")
    assert isinstance(gated, L0Conv2d) and gated.groups == gated.in_channels
    kept = int(gated.active_mask().sum())
    purged = purge(model)
    assert purged.get_submodule("features.1.0.block.0").groups == kept < gated.groups


def _small_convnext() -> nn.Module:
    """A ConvNeXt with one block per stage, sparsified, half of its gates off."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    stages = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)]
    model = ConvNeXt(stages, num_classes=10).eval()
    with pytest.warns(UserWarning, match=r"features\.1\.0 \(CNBlock\)"):  # its layer_scale
        l0.sparsify(model)
    _switch_off_half(model)
    return model


def test_regnet_group_convs_follow_tied_producer_gates_and_lose_groups():
    """RegNetY-400MF: every group conv (group width 8) follows its block's 1×1 conv, whose gates
    decide 8 channels each; half of them off removes half of each group conv's groups."""
    model = _gated("regnet_y_400mf")
    report = model.sparsify_report
    followers = dict(report.followers)
    grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped and set(grouped) == set(followers)
    assert not report.not_gateable
    for name, producer in followers.items():
        conv, gated = model.get_submodule(name), model.get_submodule(producer)
        assert isinstance(gated, L0Conv2d) and gated.num_gates == conv.groups
        assert gated.channels_per_gate == conv.in_channels // conv.groups == 8

    x = _input()
    purged = purge(model)
    lost = 0
    for name, producer in followers.items():
        before, after = model.get_submodule(name), purged.get_submodule(name)
        kept = int(model.get_submodule(producer).active_mask().sum())
        assert after.groups == kept and after.in_channels == 8 * kept
        assert after.out_channels == before.out_channels // before.groups * kept
        lost += after.groups < before.groups
    assert lost == len(followers)
    with torch.no_grad():
        reference = model(x)
        assert (purged(x) - reference).abs().max() <= 1e-4 * reference.abs().max()
    cost = ComputeCost(model, x)
    assert count_params(purged) == cost.test_params() < 0.5 * cost.dense_params
    assert count_flops(purged, x[:1]) // 2 == cost.test_macs() < 0.5 * cost.dense_macs
