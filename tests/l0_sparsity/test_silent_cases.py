"""The new user's silent cases: depthwise convs that never shrank, weights read functionally.

* A depthwise conv fed by a gated conv and its BatchNorm follows that conv's gates: a purge
  drops its filters with the producer's channels; a depthwise conv gated itself keeps its own
  kept filters. Both purge exactly and are counted exactly by ``ComputeCost``.
* A layer whose weight the forward reads outside its call is refused by ``sparsify``, naming it.
* A depthwise conv with a channel multiplier follows too, dropping whole groups; other grouped
  convs are covered by ``test_grouped_convs.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import l0_sparsity as l0
from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import GatedBatchNorm2d, L0Conv2d
from l0_sparsity.purging import count_flops, count_params, purge

torch.set_num_threads(1)

CHANNELS, HIDDEN = 16, 64


class InvertedResidual(nn.Module):
    """A MobileNetV2 block: expand 1×1, depthwise 3×3, project 1×1, each with a BatchNorm."""

    def __init__(self, multiplier: int = 1) -> None:
        super().__init__()
        wide = HIDDEN * multiplier
        self.expand = nn.Conv2d(CHANNELS, HIDDEN, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(HIDDEN)
        self.dw = nn.Conv2d(HIDDEN, wide, 3, padding=1, groups=HIDDEN, bias=False)
        self.bn2 = nn.BatchNorm2d(wide)
        self.project = nn.Conv2d(wide, CHANNELS, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))
        return x + self.bn3(self.project(y))


@torch.no_grad()
def _random_stats(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm; eval mode."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.normal_(0.0, 0.5, generator=gen)
            module.running_var.uniform_(0.5, 2.0, generator=gen)
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.normal_(0.0, 0.5, generator=gen)
            assert module.running_mean.numel() == n
    return model.eval()


@torch.no_grad()
def _kill_half(layer: L0Conv2d) -> torch.Tensor:
    """Gates of the even filters dead, the odd ones alive; returns the kept filter indices."""
    layer.log_alpha.fill_(1.0)
    layer.log_alpha[::2] = -5.0
    return layer.active_mask().nonzero().flatten()


def _assert_exact(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The purge matches the gated eval output and ComputeCost's parameter and MAC counts."""
    purged = purge(model)
    with torch.no_grad():
        reference = model.eval()(x)
        assert torch.allclose(purged(x), reference, atol=1e-5, rtol=1e-5)
    cost = ComputeCost(model, x)
    assert count_params(purged) == cost.test_params()
    assert count_flops(purged, x[:1]) // 2 == cost.test_macs()
    return purged


def _input() -> torch.Tensor:
    return torch.randn(2, CHANNELS, 8, 8, generator=torch.Generator().manual_seed(1))


def test_depthwise_conv_follows_the_gates_of_the_conv_feeding_it():
    model = l0.sparsify(_random_stats(InvertedResidual()))
    assert model.sparsify_report.followers == (("dw", "expand"),)
    assert type(model.dw) is nn.Conv2d and "dw" not in model.sparsify_report.gated
    assert isinstance(model.bn2, GatedBatchNorm2d) and model.bn2.gate_layer is model.expand
    assert "dw (follows expand)" in model.sparsify_report.summary()


def test_dead_producer_channels_remove_the_depthwise_filters():
    model = l0.sparsify(_random_stats(InvertedResidual()))
    kept = _kill_half(model.expand).numel()
    purged = _assert_exact(model, _input())
    assert purged.dw.groups == purged.dw.in_channels == purged.dw.out_channels == kept
    assert purged.project.in_channels == kept
    bn = 2 * kept  # a norm's weight and bias
    expected = CHANNELS * kept + bn + 9 * kept + bn + kept * CHANNELS + 2 * CHANNELS
    assert count_params(purged) == expected < count_params(model)


def test_expected_cost_moves_the_follower_with_its_producer_gates():
    dense = _random_stats(InvertedResidual())
    dense_params = count_params(dense)
    model = l0.sparsify(dense)
    cost = ComputeCost(model, _input())
    assert cost.dense_params == dense_params
    macs = cost.expected_macs()
    macs.backward()
    assert model.expand.log_alpha.grad is not None
    assert bool((model.expand.log_alpha.grad > 0).all())  # more channels, more MACs


def test_gated_depthwise_conv_with_half_its_gates_off_shrinks():
    """The user's case: before, 19,114 → 19,114 parameters; now its dead filters are gone."""
    model = l0.sparsify(_random_stats(InvertedResidual()), skip=["expand"])
    assert isinstance(model.dw, L0Conv2d) and model.sparsify_report.followers == ()
    kept = _kill_half(model.dw)
    purged = _assert_exact(model, _input())
    assert purged.dw.groups == purged.dw.out_channels == kept.numel()
    assert purged.project.in_channels == kept.numel()
    assert count_params(purged) < count_params(model)


def test_follower_norm_applies_the_leader_sample_in_training():
    model = l0.sparsify(_random_stats(InvertedResidual())).train()
    with torch.no_grad():
        model.expand.log_alpha.zero_()  # gates that are 0 in about a third of the samples
    seen: dict[str, torch.Tensor] = {}
    for name in ("bn1", "bn2"):
        norm = model.get_submodule(name)
        norm.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    model(_input())
    dead1 = seen["bn1"].abs().amax((0, 2, 3)) == 0
    dead2 = seen["bn2"].abs().amax((0, 2, 3)) == 0
    assert dead1.any() and torch.equal(dead1, dead2)


def test_depthwise_follower_after_an_op_that_is_not_zero_preserving_stays_exact():
    class SigmoidBlock(InvertedResidual):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.sigmoid(self.bn1(self.expand(x)))  # sigmoid(0) = 0.5: channels stay
            y = F.relu6(self.bn2(self.dw(y)))
            return x + self.bn3(self.project(y))

    model = l0.sparsify(_random_stats(SigmoidBlock()))
    _kill_half(model.expand)
    purged = _assert_exact(model, _input())
    assert purged.dw.groups == HIDDEN  # nothing it can drop exactly


def test_depthwise_conv_with_a_channel_multiplier_follows_and_drops_whole_groups():
    model = l0.sparsify(_random_stats(InvertedResidual(multiplier=2)))
    assert model.sparsify_report.followers == (("dw", "expand"),)
    assert model.expand.channels_per_gate == 1 and model.bn2.channels_per_gate == 2
    kept = _kill_half(model.expand).numel()
    purged = _assert_exact(model, _input())
    assert purged.dw.groups == purged.dw.in_channels == kept
    assert purged.dw.out_channels == purged.project.in_channels == 2 * kept


class FunctionalConv(nn.Module):
    """The new user's model: ``c1``'s weight used with ``F.conv2d`` in the parent's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(F.conv2d(x, self.c1.weight, self.c1.bias, padding=1))
        return self.c2(y)


class TransposedWeight(nn.Module):
    """A tied read: ``fc``'s weight transposed in the parent's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.fc.weight


def test_a_conv_weight_used_functionally_is_refused_naming_the_layer():
    model = FunctionalConv()
    with pytest.raises(ValueError, match=r"reads 'c1\.weight' outside the call of layer 'c1'"):
        l0.sparsify(model)
    assert type(model.c1) is nn.Conv2d and type(model.c2) is nn.Conv2d  # nothing modified


def test_a_transposed_linear_weight_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"'fc\.weight' outside the call of layer 'fc'"):
        l0.sparsify(TransposedWeight())


def test_a_layer_read_functionally_can_be_kept_dense_with_skip():
    model = l0.sparsify(FunctionalConv(), skip=["c1"])
    assert type(model.c1) is nn.Conv2d and isinstance(model.c2, L0Conv2d)
    assert model.sparsify_report.skipped == ("c1",)
