"""Model zoo: every model builds, runs, and is gated exactly where the design says."""

import functools

import pytest
import torch
from l0_helpers import SPECS
from torch import nn

from l0_sparsity.models import MODELS, block_conv_names, build_model, gate_blocks
from l0_sparsity.nn import (
    GatedBatchNorm2d,
    L0Conv2d,
    L0Linear,
    gate_parameters,
    gated_layers,
)


@functools.cache
def _model(name: str, gated: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=7, in_channels=SPECS[name][0], gated=gated)


def _input(name: str, batch: int = 2) -> torch.Tensor:
    channels, side = SPECS[name]
    return torch.randn(batch, channels, side, side)


def test_registry_lists_the_six_models():
    assert set(MODELS) == set(SPECS)


@pytest.mark.parametrize("name", list(SPECS))
def test_model_builds_and_runs_a_forward_pass(name: str):
    model = _model(name).eval()
    with torch.no_grad():
        out = model(_input(name))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SPECS))
def test_dense_variant_has_the_same_architecture_without_gates(name: str):
    gated, dense = _model(name), _model(name, gated=False)
    assert gated_layers(dense) == []
    n_gated = sum(p.numel() for p in gated.parameters()) - sum(
        p.numel() for p in gate_parameters(gated)
    )
    assert n_gated == sum(p.numel() for p in dense.parameters())
    assert set(dict(gated.named_modules())) == set(dict(dense.named_modules()))


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"lenet5.*mlp.*resnet18.*resnet18_cifar.*resnet50"):
        build_model("vgg16", num_classes=10, in_channels=3)


def test_mlp_gates_input_neurons_of_every_linear_layer():
    layers = gated_layers(_model("mlp"))
    assert [name for name, _ in layers] == ["layers.0", "layers.2", "layers.4"]
    assert [m.log_alpha.shape[0] for _, m in layers] == [784, 300, 100]
    assert all(isinstance(m, L0Linear) and m.structured for _, m in layers)


def test_mlp_input_size_is_configurable():
    model = build_model("mlp", num_classes=10, in_channels=3, input_size=3072)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model = build_model("mlp", num_classes=10, in_channels=3, image_size=32)
    assert gated_layers(model)[0][1].in_features == 3072


def test_lenet5_is_gated_on_both_convs_and_both_fcs():
    layers = dict(gated_layers(_model("lenet5")))
    assert list(layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert [layers["conv1"].out_channels, layers["conv2"].out_channels] == [20, 50]
    assert [layers["fc1"].in_features, layers["fc1"].out_features] == [800, 500]


def _block_conv(name: str) -> bool:
    parts = name.split(".")
    return parts[0].startswith(("layer", "block")) and parts[-1].startswith("conv")


@pytest.mark.parametrize(
    ("name", "count"), [("resnet18_cifar", 16), ("resnet18", 16), ("resnet50", 48)]
)
def test_resnets_gate_every_conv_inside_a_block_and_nothing_else(name: str, count: int):
    model = _model(name)
    layers = gated_layers(model)
    assert len(layers) == count
    assert all(_block_conv(n) and isinstance(m, L0Conv2d) for n, m in layers)
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):  # everything left dense
            assert not _block_conv(n) or "downsample" in n, n
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.fc, nn.Linear)


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50", "wrn28_10"])
def test_every_gated_conv_in_a_resnet_feeds_a_gated_batchnorm(name: str):
    model = _model(name)
    norms = [m for m in model.modules() if isinstance(m, GatedBatchNorm2d)]
    assert {id(m.gate_layer) for m in norms} == {id(m) for _, m in gated_layers(model)}
    assert all(m.gate_in_norm for _, m in gated_layers(model))


def test_wrn28_10_gates_only_conv1_of_each_of_its_twelve_blocks():
    model = _model("wrn28_10")
    names = [n for n, _ in gated_layers(model)]
    assert len(names) == 12 and all(n.endswith(".conv1") for n in names)
    widths = sorted({m.out_channels for _, m in gated_layers(model)})
    assert widths == [160, 320, 640]


def test_resnet18_cifar_accepts_one_channel_fashion_mnist_input():
    model = build_model("resnet18_cifar", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_builders_pass_droprate_and_structure_to_the_gates():
    model = build_model("lenet5", num_classes=10, droprate_init=0.1, structured=False)
    for _, layer in gated_layers(model):
        assert not layer.structured and layer.log_alpha.shape == layer.weight.shape
        assert layer.log_alpha.mean().item() == pytest.approx(2.197, abs=0.01)


def test_image_size_is_ignored_by_size_agnostic_models():
    model = build_model("resnet18", num_classes=3, in_channels=3, image_size=64)
    assert model.fc.out_features == 3


def test_gated_resnet_training_step_reaches_gates_and_weights():
    model = build_model("resnet18_cifar", num_classes=10, in_channels=3).train()
    loss = model(torch.randn(2, 3, 16, 16)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in gate_parameters(model))
    assert model.conv1.weight.grad is not None


def test_gate_blocks_gates_exactly_the_block_convolutions():
    dense = build_model("resnet18_cifar", gated=False)
    assert gate_blocks(dense, gated=False) is dense and not gated_layers(dense)
    model = gate_blocks(dense, droprate_init=0.2)
    assert {name for name, _ in gated_layers(model)} == block_conv_names(model)
    assert all(layer.droprate_init == 0.2 for _, layer in gated_layers(model))
    assert model.joint_sampling.gates.layers == [layer for _, layer in gated_layers(model)]
