"""Grouped convolutions (ResNeXt, RegNet) that follow the gates of the conv feeding them.

* The producer gets one gate per group of the grouped conv (``channels_per_gate``), the grouped
  conv and its BatchNorm follow; a purge rebuilds the grouped conv with fewer groups, exactly,
  and ``ComputeCost`` counts it exactly (and in expectation, over every gate pattern).
* A grouped conv that cannot follow stays dense and is reported with the reason; its purge and
  counts stay exact.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import l0_sparsity as l0
from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import GatedBatchNorm2d, L0Conv2d, gated_layers
from l0_sparsity.purging import count_flops, count_params, purge

torch.set_num_threads(1)

CHANNELS, WIDTH, GROUPS = 16, 32, 8  # 4 channels per group


class Bottleneck(nn.Module):
    """A ResNeXt bottleneck: 1×1 reduce, grouped 3×3, 1×1 expand, each with a BatchNorm.

    Args:
        wide: Output channels of the grouped conv (``WIDTH``, or more for wider groups).
        between: What runs between the first norm and the grouped conv.
        source: Where the grouped conv reads from: ``"reduce"`` or the block input.
        norm: Whether the grouped conv has a BatchNorm of its own.
    """

    def __init__(
        self,
        wide: int = WIDTH,
        between: str = "relu",
        source: str = "reduce",
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.between, self.source = between, source
        inputs = WIDTH if source == "reduce" else CHANNELS
        groups = GROUPS if source == "reduce" else GROUPS // 2
        self.reduce = nn.Conv2d(CHANNELS, WIDTH, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTH)
        self.grouped = nn.Conv2d(inputs, wide, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(wide) if norm else nn.Identity()
        self.expand = nn.Conv2d(wide + (0 if source == "reduce" else WIDTH), CHANNELS, 1)
        self.bn3 = nn.BatchNorm2d(CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.reduce(x))
        if self.between == "relu":
            y = F.relu(y)
        elif self.between == "pool":
            y = F.max_pool2d(F.relu(y), 2)
        else:
            y = torch.sigmoid(y)
        if self.source == "reduce":
            z = F.relu(self.bn2(self.grouped(y)))
        else:
            z = torch.cat([F.relu(self.bn2(self.grouped(x))), y], 1)
        out = self.bn3(self.expand(z))
        return out if self.between == "pool" else x + out


@torch.no_grad()
def _random_stats(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm; eval mode."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.5, generator=gen)
            module.running_var.uniform_(0.5, 2.0, generator=gen)
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.normal_(0.0, 0.5, generator=gen)
    return model.eval()


@torch.no_grad()
def _switch_off_half(model: nn.Module) -> None:
    """Even gates of every gated layer dead, odd ones alive with test gates in (0, 1]."""
    gen = torch.Generator().manual_seed(2)
    for _, layer in gated_layers(model):
        layer.log_alpha.uniform_(0.5, 2.0, generator=gen)
        layer.log_alpha.view(-1)[::2] = -5.0


def _input() -> torch.Tensor:
    return torch.randn(2, CHANNELS, 8, 8, generator=torch.Generator().manual_seed(1))


def _assert_exact(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The purge matches the gated eval output and ComputeCost's parameter and MAC counts."""
    purged = purge(model)
    with torch.no_grad():
        reference = model.eval()(x)
        torch.testing.assert_close(purged(x), reference, atol=1e-5, rtol=1e-5)
    cost = ComputeCost(model, x)
    assert count_params(purged) == cost.test_params()
    assert count_flops(purged, x[:1]) // 2 == cost.test_macs()
    return purged


@pytest.mark.parametrize(
    ("wide", "between"), [(WIDTH, "relu"), (2 * WIDTH, "relu"), (WIDTH, "pool")]
)
def test_grouped_conv_follows_and_a_purge_drops_whole_groups(wide: int, between: str):
    model = l0.sparsify(_random_stats(Bottleneck(wide, between)))
    assert model.sparsify_report.followers == (("grouped", "reduce"),)
    assert type(model.grouped) is nn.Conv2d and not model.sparsify_report.not_gateable
    assert model.reduce.channels_per_gate == WIDTH // GROUPS and model.reduce.num_gates == GROUPS
    assert isinstance(model.bn2, GatedBatchNorm2d) and model.bn2.gate_layer is model.reduce
    assert model.bn2.channels_per_gate == wide // GROUPS
    _switch_off_half(model)
    kept = int(model.reduce.active_mask().sum())
    assert kept == GROUPS // 2
    purged = _assert_exact(model, _input())
    assert purged.reduce.out_channels == purged.grouped.in_channels == 4 * kept
    assert purged.grouped.groups == kept and purged.grouped.out_channels == wide // GROUPS * kept
    assert purged.bn2.num_features == purged.expand.in_channels == wide // GROUPS * kept
    assert count_params(purged) < 0.7 * count_params(model)


def test_expected_counts_are_the_expectation_over_all_gate_patterns():
    """Multilinear in the tied gates: the measure's expectation equals the exhaustive one."""
    torch.manual_seed(0)
    model = l0.sparsify(_random_stats(Bottleneck()).double(), skip=["expand"])
    x = _input().double()[:1]
    cost = ComputeCost(model, x)
    layer = model.reduce
    with torch.no_grad():
        layer.log_alpha.uniform_(-3.0, 2.0)
    probs = layer.prob_active().detach()
    expected = cost.expected().detach()
    total = torch.zeros(2, dtype=torch.float64)
    saved = layer.log_alpha.detach().clone()
    for pattern in itertools.product([0.0, 1.0], repeat=GROUPS):
        z = torch.tensor(pattern, dtype=torch.float64)
        weight = torch.where(z > 0, probs, 1 - probs).prod()
        with torch.no_grad():
            layer.log_alpha.copy_(torch.where(z > 0, 3.0, -3.0))
        total += weight * torch.tensor([cost.test_macs(), cost.test_params()], dtype=torch.float64)
    torch.testing.assert_close(expected, total, rtol=1e-12, atol=1e-9)
    with torch.no_grad():
        layer.log_alpha.copy_(saved)
    grad = torch.autograd.grad(cost.expected_macs(), layer.log_alpha)[0]
    assert bool((grad > 0).all())  # more groups, more MACs


def test_both_norms_apply_one_sample_per_group_in_training():
    torch.manual_seed(0)
    model = l0.sparsify(_random_stats(Bottleneck())).train()
    with torch.no_grad():
        model.reduce.log_alpha.zero_()  # gates that are 0 in about a third of the samples
    seen: dict[str, torch.Tensor] = {}
    for name in ("bn1", "bn2"):
        norm = model.get_submodule(name)
        norm.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    died = 0
    for _ in range(3):
        model(_input())
        dead1 = seen["bn1"].abs().amax((0, 2, 3)).view(GROUPS, -1) == 0
        dead2 = seen["bn2"].abs().amax((0, 2, 3)).view(GROUPS, -1) == 0
        assert torch.equal(dead1.all(1), dead1.any(1))  # a group lives or dies whole
        assert torch.equal(dead1.all(1), dead2.all(1)) and torch.equal(dead2.all(1), dead2.any(1))
        died += int(dead1.all(1).sum())
    assert died > 0


def test_a_small_torchvision_resnext_purges_exactly_with_fewer_groups():
    from torchvision.models.resnet import Bottleneck as TorchBottleneck
    from torchvision.models.resnet import ResNet

    torch.manual_seed(0)
    model = ResNet(TorchBottleneck, [1, 1, 1, 1], num_classes=10, groups=8, width_per_group=4)
    l0.sparsify(_random_stats(model))
    followers = dict(model.sparsify_report.followers)
    assert sorted(followers) == [f"layer{i}.0.conv2" for i in range(1, 5)]
    assert not model.sparsify_report.not_gateable
    _switch_off_half(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    purged = purge(model)
    with torch.no_grad():
        reference = model(x)
        assert (purged(x) - reference).abs().max() <= 1e-4 * reference.abs().max()
    cost = ComputeCost(model, x)
    assert count_params(purged) == cost.test_params()
    assert count_flops(purged, x[:1]) // 2 == cost.test_macs()
    for name in followers:
        grouped = purged.get_submodule(name)
        assert grouped.groups == 4 < model.get_submodule(name).groups
        after = purged.get_submodule(name.replace("conv2", "conv3"))
        assert after.in_channels == grouped.out_channels  # shrunk, not scattered back


REFUSALS = {
    "reads_the_block_input": (
        dict(source="input"),
        "its input is not the output of an ungrouped conv to gate",
    ),
    "after_a_sigmoid": (dict(between="sigmoid"), "may not keep zeros at zero"),
    "without_a_norm": (dict(norm=False), "no BatchNorm2d of its own"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_grouped_conv_that_cannot_follow_stays_dense_and_is_reported(case: str):
    kwargs, why = REFUSALS[case]
    model = _random_stats(Bottleneck(**kwargs))
    with pytest.warns(UserWarning, match=r"grouped \(grouped Conv2d \(groups="):
        l0.sparsify(model)
    reason = dict(model.sparsify_report.not_gateable)["grouped"]
    assert "cannot follow the conv feeding it" in reason and why in reason
    assert type(model.grouped) is nn.Conv2d and model.sparsify_report.followers == ()
    assert model.reduce.channels_per_gate == 1  # no gates tied for nothing
    _switch_off_half(model)
    purged = _assert_exact(model, _input())
    assert purged.grouped.groups == model.grouped.groups


def test_a_grouped_conv_named_in_skip_never_follows():
    model = _random_stats(Bottleneck())
    l0.sparsify(model, skip=["grouped"])  # no warning: the pattern acknowledges it
    report = model.sparsify_report
    assert report.skipped == ("grouped",) and report.followers == () and not report.not_gateable
    assert model.reduce.channels_per_gate == 1 and type(model.bn2) is nn.BatchNorm2d
    _switch_off_half(model)
    _assert_exact(model, _input())


def test_unstructured_gating_leaves_grouped_convs_dense_and_reported():
    model = _random_stats(Bottleneck())
    with pytest.warns(UserWarning, match="a purge cannot remove its filters exactly"):
        l0.sparsify(model, structured=False)
    assert type(model.grouped) is nn.Conv2d


def test_tied_gates_govern_their_block_of_filters():
    layer = L0Conv2d(4, 6, 3, channels_per_gate=3)
    assert layer.num_gates == 2 and layer.group_size == 3 * 4 * 9
    gated = layer.gate_weight(torch.tensor([0.0, 1.0]))
    assert bool((gated[:3] == 0).all()) and torch.equal(gated[3:], layer.weight[3:])
    norms = layer.weight.detach().square().sum((1, 2, 3)).view(2, 3).sum(1)
    torch.testing.assert_close(layer.group_sq_norms().detach(), norms)
    with pytest.raises(ValueError, match="must divide out_channels"):
        L0Conv2d(4, 6, 3, channels_per_gate=4)
    with pytest.raises(ValueError, match="needs structured gates"):
        L0Conv2d(4, 6, 3, structured=False, channels_per_gate=2)


def test_the_latency_model_times_a_following_grouped_conv_by_whole_groups():
    from l0_sparsity.measures.cost_terms import build_terms
    from l0_sparsity.measures.latency_layers import probe_layers

    model = l0.sparsify(_random_stats(Bottleneck(2 * WIDTH)))
    shape = (2, CHANNELS, 8, 8)
    probes = {p.target: p for p in probe_layers(model, shape, build_terms(model, shape).counts)}
    probe = probes["grouped"]
    assert probe.groups == GROUPS and probe.rows[1] * probe.out_full == 2 * WIDTH // GROUPS
    module, input_shape = probe.build(0.5, 0.25)
    assert (module.groups, module.in_channels, module.out_channels) == (4, 16, WIDTH)
    assert input_shape == (2, 16, 8, 8) and probe.achieved(0.5, 0.25) == (0.5, 1.0)
    assert module(torch.zeros(input_shape)).shape == (2, WIDTH, 8, 8)


def test_shrinking_a_grouped_conv_keeps_whole_groups_or_refuses():
    from l0_sparsity.purging.shrink import shrunk

    conv = nn.Conv2d(8, 16, 3, groups=4)
    kept = shrunk(conv, torch.tensor([4, 5, 6, 7, 12, 13, 14, 15]), None)
    assert isinstance(kept, nn.Conv2d) and (kept.groups, kept.in_channels) == (2, 4)
    torch.testing.assert_close(kept.weight, conv.weight[[4, 5, 6, 7, 12, 13, 14, 15]])
    for keep_out, keep_in in [([4, 5, 6, 8], None), ([1, 2, 3, 4], None), (None, [0, 1])]:
        with pytest.raises(ValueError, match="only whole groups can be dropped"):
            shrunk(
                conv,
                None if keep_out is None else torch.tensor(keep_out),
                None if keep_in is None else torch.tensor(keep_in),
            )
