"""Compute measures: expected MACs / parameters of the purge, exact at the test-time gates."""

import functools
import itertools
import math

import pytest
import torch
from l0_helpers import SPECS
from torch import nn

from l0_sparsity.measures import ComputeCost, cost_terms
from l0_sparsity.models import MODELS, build_model
from l0_sparsity.nn import GatedLayer, L0Conv2d, L0Linear, gated_layers, sparsify
from l0_sparsity.nn.structure import Kept, PurgeStructure
from l0_sparsity.purging import count_flops, count_params, purge

DENSITIES = [1.0, 0.6, 0.3, 0.05, 0.0]


@torch.no_grad()
def _force(model: nn.Module, density: float, seed: int = 0) -> None:
    """``round(density · n)`` random gates of each layer alive (test gates in (0, 1]), others dead.

    Small layers at low densities are then entirely dead (the purge keeps their first group).
    """
    gen = torch.Generator().manual_seed(seed)
    for _, layer in gated_layers(model):
        flat = layer.log_alpha.data.view(-1)
        alive = torch.randperm(flat.numel(), generator=gen)[: round(density * flat.numel())]
        flat.fill_(-3.0)
        flat[alive] = torch.empty(alive.numel(), dtype=flat.dtype).uniform_(
            -1.0, 1.0, generator=gen
        )


def _purged_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """MACs per example (flop_counter / 2) and parameters of ``purge(model)``."""
    purged = purge(model)
    flops = count_flops(purged, x)
    assert flops % (2 * x.shape[0]) == 0
    return flops // (2 * x.shape[0]), count_params(purged)


def _assert_exact(model: nn.Module, x: torch.Tensor, cost: ComputeCost) -> None:
    macs, params = _purged_counts(model, x)
    assert (cost.test_macs(), cost.test_params()) == (macs, params)
    breakdown = cost.test_breakdown()
    assert sum(m for m, _ in breakdown.values()) == macs
    assert sum(p for _, p in breakdown.values()) == params


def _check_all_patterns(model: nn.Module, x: torch.Tensor, seeds: int = 2) -> ComputeCost:
    cost = ComputeCost(model, x)
    _force(model, 1.0)
    dense = _purged_counts(model, x)
    assert (cost.dense_macs, cost.dense_params) == dense
    for density, seed in itertools.product(DENSITIES, range(seeds)):
        _force(model, density, seed)
        _assert_exact(model, x, cost)
        if density == 0.0:
            assert (cost.test_macs(), cost.test_params()) == (cost.fixed_macs, cost.fixed_params)
    return cost


@functools.cache
def _model(name: str, structured: bool) -> nn.Module:
    torch.manual_seed(0)
    channels = SPECS[name][0]
    return build_model(name, num_classes=7, in_channels=channels, structured=structured).eval()


def _input(name: str) -> torch.Tensor:
    channels, side = SPECS[name]
    return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(1))


def test_every_shipped_model_is_covered():
    assert set(SPECS) == set(MODELS)


@pytest.mark.parametrize("name", list(SPECS))
def test_exact_at_test_gates_for_every_shipped_model(name: str):
    model, x = _model(name, True), _input(name)
    cost = _check_all_patterns(model, x)
    assert cost.dense_params == count_params(model)
    assert cost.fixed_macs < cost.dense_macs and cost.fixed_params < cost.dense_params


@pytest.mark.parametrize("name", list(SPECS))
def test_unstructured_gates_shrink_nothing_the_purge_keeps_dense(name: str):
    model, x = _model(name, False), _input(name)
    cost = ComputeCost(model, x)
    assert (cost.fixed_macs, cost.fixed_params) == (cost.dense_macs, cost.dense_params)
    _force(model, 0.3)
    _assert_exact(model, x, cost)
    assert cost.expected_macs().item() == pytest.approx(cost.dense_macs)


def test_an_ungated_model_costs_a_constant():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    cost = ComputeCost(model, (1, 4))
    assert cost.test_macs() == cost.dense_macs == cost.fixed_macs == 4 * 3 + 3 * 2
    assert cost.test_params() == cost.fixed_params == count_params(model)
    assert cost.expected().tolist() == [18.0, 23.0]


def test_shape_and_batch_give_the_same_per_example_counts():
    model = _model("lenet5", True)
    by_shape, by_batch = ComputeCost(model, (5, 1, 28, 28)), ComputeCost(model, _input("lenet5"))
    assert (by_shape.dense_macs, by_shape.fixed_macs) == (by_batch.dense_macs, by_batch.fixed_macs)
    assert by_shape.dense_macs == count_flops(model, (1, 1, 28, 28)) // 2


# --------------------------------------------------------------------------- hand-made models


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.bn(self.conv(y)) + y
        return self.head(y.mean((2, 3)))


class _Branches(nn.Module):
    """A gated conv read by two convs, one of them after pooling; a depthwise conv after another."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.c = nn.Conv2d(6, 5, 1)
        self.d = nn.Conv2d(5, 4, 3)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        z = self.b(y) + self.c(nn.functional.max_pool2d(y, 1))
        z = self.dw(self.d(z).relu())
        return self.fc(z.flatten(1))


class _Twice(nn.Module):
    """A gated layer called twice (the purge keeps it whole)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(torch.relu(self.fc(x))))


def _seq_conv_bn_conv() -> nn.Module:
    """conv → BN → GELU → avg-pool → conv → ReLU6 → flatten → linear."""
    features = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.AvgPool2d(2)]
    features += [nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.ReLU6()]
    return nn.Sequential(*features, nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


def _seq_bn_without_affine() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5, affine=False), nn.ReLU(), nn.Conv2d(5, 4, 3)
    )


def _seq_linear_chain() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(48, 20), nn.Tanh(), nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 4)
    )


# name -> (builder, skip of sparsify, input shape)
HANDMADE = {
    "conv_bn_relu_conv_flatten_linear": (_seq_conv_bn_conv, None, (2, 3, 8, 8)),
    "bn_without_affine": (_seq_bn_without_affine, None, (2, 3, 8, 8)),
    "linear_chain": (_seq_linear_chain, None, (2, 3, 4, 4)),
    "linear_chain_first_dense": (_seq_linear_chain, ["1"], (2, 3, 4, 4)),
    "residual_add": (_Residual, ["stem", "head"], (2, 3, 8, 8)),
    "branches_and_depthwise": (_Branches, None, (2, 3, 8, 8)),
    "called_twice": (_Twice, None, (2, 5)),
}


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("name", list(HANDMADE))
def test_exact_on_small_hand_made_models(name: str, structured: bool):
    build, skip, shape = HANDMADE[name]
    torch.manual_seed(0)
    model = sparsify(build(), structured=structured, skip=skip).eval()
    x = torch.randn(shape)
    _check_all_patterns(model, x, seeds=3)


def test_expected_counts_are_the_expectation_over_all_gate_patterns():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 1 * 2, 2)
    )
    model = sparsify(model).double().eval()
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    cost = ComputeCost(model, x)
    layers = [layer for _, layer in gated_layers(model)]
    with torch.no_grad():
        for layer in layers:
            layer.log_alpha.uniform_(-3.0, 2.0)
    probs = torch.cat([layer.prob_active().detach().reshape(-1) for layer in layers])
    expected = cost.expected().detach()
    saved = [layer.log_alpha.detach().clone() for layer in layers]
    total = torch.zeros(2, dtype=torch.float64)
    for pattern in itertools.product([0.0, 1.0], repeat=probs.numel()):
        z = torch.tensor(pattern, dtype=torch.float64)
        weight = torch.where(z > 0, probs, 1 - probs).prod()
        with torch.no_grad():
            for layer, part in zip(layers, z.split([m.num_gates for m in layers]), strict=True):
                layer.log_alpha.copy_(torch.where(part > 0, 3.0, -3.0).view_as(layer.log_alpha))
        total += weight * torch.tensor([cost.test_macs(), cost.test_params()], dtype=torch.float64)
    torch.testing.assert_close(expected, total, rtol=1e-12, atol=1e-9)
    with torch.no_grad():
        for layer, la in zip(layers, saved, strict=True):
            layer.log_alpha.copy_(la)


# --------------------------------------------------------------------------- values, gradients


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet18_cifar"])
def test_all_gates_kept_gives_the_dense_counts(name: str):
    model = _model(name, True)
    cost = ComputeCost(model, _input(name))
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.log_alpha.fill_(40.0)
    assert cost.expected_macs().item() == pytest.approx(cost.dense_macs, rel=1e-6)
    assert cost.expected_params().item() == pytest.approx(cost.dense_params, rel=1e-6)
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.log_alpha.fill_(-40.0)
    assert cost.expected_macs().item() == pytest.approx(cost.fixed_macs, rel=1e-6)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet18_cifar"])
def test_gradients_match_finite_differences(name: str):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=SPECS[name][0]).double().eval()
    cost = ComputeCost(model, _input(name).double())
    layers = [layer for _, layer in gated_layers(model)]
    with torch.no_grad():
        for layer in layers:
            layer.log_alpha.uniform_(-4.0, 3.0)
            layer.log_alpha[: max(1, layer.num_gates // 2)] = -8.0  # nearly dead groups too
    values = cost.expected()
    assert values.dtype == torch.float64
    for index, _ in enumerate(values):
        grads = torch.autograd.grad(values[index], [m.log_alpha for m in layers], retain_graph=True)
        gen = torch.Generator().manual_seed(index)
        for layer, grad in zip(layers, grads, strict=True):
            for i in torch.randint(layer.num_gates, (3,), generator=gen).tolist():
                numeric = _central_difference(cost, layer.log_alpha, i, index)
                scale = 1e-9 * abs(values[index].item())  # float64 rounding of f, divided by h
                assert grad.reshape(-1)[i].item() == pytest.approx(numeric, rel=1e-5, abs=scale)


def _central_difference(cost: ComputeCost, la: torch.Tensor, i: int, index: int) -> float:
    h, flat = 1e-4, la.data.view(-1)
    old = flat[i].item()
    with torch.no_grad():
        flat[i] = old + h
        up = cost.expected()[index].item()
        flat[i] = old - h
        down = cost.expected()[index].item()
        flat[i] = old
    return (up - down) / (2 * h)


def test_gradients_stay_finite_where_keep_probabilities_round_to_one():
    model = _model("lenet5", True)
    cost = ComputeCost(model, _input("lenet5"))
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.log_alpha.fill_(60.0)
    grads = torch.autograd.grad(cost.expected_macs(), [m.log_alpha for _, m in gated_layers(model)])
    assert all(torch.isfinite(g).all() for g in grads)


def test_measure_follows_the_live_gates_without_retracing():
    model = build_model("lenet5", num_classes=10).eval()
    cost = ComputeCost(model, (1, 1, 28, 28))
    before = cost.expected_macs().item()
    _force(model, 0.2)
    assert cost.expected_macs().item() < before
    assert cost.test_macs() == _purged_counts(model, torch.randn(1, 1, 28, 28))[0]


# --------------------------------------------------------------------------- refusals


def test_refuses_a_model_that_does_not_trace():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ValueError, match="Branchy does not trace"):
        ComputeCost(sparsify(Branchy()), (1, 4))


def test_refuses_a_gated_weight_read_outside_its_layer():
    class Peek(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + self.fc.weight.sum()

    model = Peek()
    model.fc = L0Linear(4, 2)  # gated by hand: sparsify itself refuses this model
    with pytest.raises(ValueError, match=r"reads 'fc\.weight' outside the gated module 'fc'"):
        ComputeCost(model, (1, 4))


def test_refuses_a_gated_layer_inside_a_module_the_graph_does_not_open():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    layer.linear1 = L0Linear(8, 16)
    model = nn.Sequential(layer)
    with pytest.raises(ValueError, match=r"'0\.linear1' runs inside '0'"):
        ComputeCost(model, (1, 3, 8))


def test_refuses_gated_layers_it_does_not_know():
    class Scaled(GatedLayer):
        def __init__(self) -> None:
            super().__init__((3,), 1, structured=True, droprate_init=0.5, distribution=None)
            self.weight = nn.Parameter(torch.ones(3))
            self.bias = None

        def group_sq_norms(self) -> torch.Tensor:
            return self.weight.square()

        def gate_weight(self, gates: torch.Tensor) -> torch.Tensor:
            return self.weight * gates

        def dense_module(self) -> nn.Module:
            return nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gate_weight(self.gates())

    with pytest.raises(ValueError, match="'0' is a Scaled"):
        ComputeCost(nn.Sequential(Scaled()), (1, 3))


def test_refuses_a_shrinkable_layer_that_shares_its_weight():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gated = nn.Conv2d(3, 4, 1)
            self.reader = nn.Conv2d(4, 4, 1)
            self.twin = nn.Conv2d(4, 4, 1)
            self.twin.weight = self.reader.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.reader(torch.relu(self.gated(x)))
            return self.twin(y)

    model = sparsify(Tied(), skip=["reader", "twin"])
    with pytest.raises(ValueError, match="'reader' shares a parameter with twin"):
        ComputeCost(model, (1, 3, 4, 4))


def test_refuses_rows_and_columns_that_depend_on_the_same_gates(monkeypatch):
    def same_gates(graph):
        return PurgeStructure(outputs={"0": Kept("0")}, inputs={"0": Kept("0")})

    monkeypatch.setattr(cost_terms, "purge_structure", same_gates)
    model = nn.Sequential(L0Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="of '0' depend on the same gates"):
        ComputeCost(model, (1, 4, 3, 3))


def test_counts_are_integers_at_the_test_gates():
    model = _model("resnet50", True)
    _force(model, 0.4, seed=3)
    cost = ComputeCost(model, _input("resnet50"))
    values = cost.expected()
    assert values.shape == (2,) and values.requires_grad
    assert isinstance(cost.test_macs(), int) and isinstance(cost.fixed_params, int)
    assert math.isfinite(values.sum().item())
