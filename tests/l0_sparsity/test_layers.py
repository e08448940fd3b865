"""Gated layers, the dead-channel BatchNorm, model-level helpers and sparsify()."""

import copy
import dataclasses
import logging
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l0_sparsity.measures import expected_density, expected_l2, layer_densities, test_density
from l0_sparsity.nn import (
    GatedBatchNorm2d,
    GatedLayer,
    GatedMultiheadAttention,
    L0Conv2d,
    L0Linear,
    gate_parameters,
    gated_layers,
    sparsify,
    weight_parameters,
)
from l0_sparsity.nn.gates import HardConcrete

HC = HardConcrete()
OPEN, DEAD = 20.0, -20.0  # log α giving median gates of exactly 1 and 0


def _randomize_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.normal_(0, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 1)


# --------------------------------------------------------------------------- shapes


def test_structured_linear_has_one_gate_per_input_neuron():
    layer = L0Linear(5, 3)
    assert layer.log_alpha.shape == (5,)
    assert layer.group_size == 3
    assert layer.num_gated_params == 15


def test_unstructured_linear_has_one_gate_per_weight():
    layer = L0Linear(5, 3, structured=False)
    assert layer.log_alpha.shape == (3, 5)
    assert layer.group_size == 1
    assert layer.num_gated_params == 15


def test_structured_conv_has_one_gate_per_output_filter():
    layer = L0Conv2d(4, 6, 3)
    assert layer.log_alpha.shape == (6,)
    assert layer.group_size == 4 * 3 * 3
    assert layer.num_gated_params == 6 * 4 * 9


def test_unstructured_conv_has_one_gate_per_weight():
    layer = L0Conv2d(4, 6, (3, 2), structured=False)
    assert layer.log_alpha.shape == layer.weight.shape == (6, 4, 3, 2)
    assert layer.group_size == 1


def test_grouped_conv_group_size_counts_only_connected_inputs():
    layer = L0Conv2d(4, 6, 3, groups=2)
    assert layer.group_size == 2 * 9
    assert layer.num_gated_params == layer.weight.numel() == 6 * 2 * 9


def test_gate_parameters_are_separate_from_weights():
    layer = L0Linear(5, 3)
    names = dict(layer.named_parameters())
    assert set(names) == {"weight", "bias", "log_alpha"}


def test_log_alpha_initialisation_follows_droprate():
    layer = L0Linear(2000, 2, droprate_init=0.2)
    assert layer.log_alpha.mean().item() == pytest.approx(math.log(0.8 / 0.2), abs=2e-3)


# --------------------------------------------------------------------------- forward


def test_training_forward_shares_one_gate_sample_across_the_batch():
    layer = L0Linear(50, 4, structured=True).train()
    x = torch.randn(1, 50).expand(8, 50)
    y = layer(x)
    assert torch.allclose(y, y[:1].expand_as(y))


def test_training_forwards_draw_fresh_gates():
    layer = L0Linear(50, 4).train()
    x = torch.randn(3, 50)
    assert not torch.allclose(layer(x), layer(x))


def test_eval_forward_uses_the_median_gate():
    layer = L0Linear(6, 4).eval()
    with torch.no_grad():
        layer.log_alpha.copy_(torch.linspace(-3, 3, 6))
    x = torch.randn(5, 6)
    expected = F.linear(x, layer.weight * HC.median(layer.log_alpha), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x), layer(x))


def test_dead_input_neuron_does_not_influence_the_output():
    layer = L0Linear(4, 3).eval()
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([OPEN, DEAD, OPEN, OPEN]))
    x = torch.randn(2, 4)
    x2 = x.clone()
    x2[:, 1] += 100.0
    torch.testing.assert_close(layer(x), layer(x2))


def test_structured_conv_dead_filter_outputs_exact_zeros_including_bias():
    layer = L0Conv2d(3, 4, 3, padding=1).eval()
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([OPEN, DEAD, OPEN, DEAD]))
    y = layer(torch.randn(2, 3, 5, 5))
    assert (y[:, [1, 3]] == 0).all()
    assert (y[:, [0, 2]] != 0).any()


def test_unstructured_conv_eval_matches_masked_weight():
    layer = L0Conv2d(3, 4, 3, structured=False).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = F.conv2d(x, layer.weight * HC.median(layer.log_alpha), layer.bias)
    torch.testing.assert_close(layer(x), expected)


def test_open_gates_reproduce_the_dense_layer():
    dense = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    gated = L0Conv2d.from_dense(dense).eval()
    with torch.no_grad():
        gated.log_alpha.fill_(OPEN)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(gated(x), dense(x))


def test_training_gradients_reach_weights_and_log_alpha():
    layer = L0Conv2d(3, 4, 3).train()
    layer(torch.randn(2, 3, 6, 6)).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.log_alpha.grad is not None and layer.log_alpha.grad.abs().sum() > 0


def test_from_dense_keeps_dtype_and_weights():
    dense = nn.Linear(4, 3).double()
    gated = L0Linear.from_dense(dense, structured=False)
    assert gated.weight.dtype == gated.log_alpha.dtype == torch.float64
    torch.testing.assert_close(gated.weight, dense.weight)
    torch.testing.assert_close(gated.bias, dense.bias)


# --------------------------------------------------------------------------- statistics


def test_expected_active_params_is_prob_active_times_group_size():
    layer = L0Conv2d(2, 3, 3)
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([-2.0, 0.0, 2.0]))
    p = torch.sigmoid(torch.tensor([-2.0, 0.0, 2.0]) - HC.threshold)
    torch.testing.assert_close(layer.prob_active(), p)
    torch.testing.assert_close(layer.expected_active_params(), p.sum() * 18)


def test_expected_l2_weights_each_group_norm_by_its_prob_active():
    layer = L0Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        layer.log_alpha.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    p = layer.prob_active()
    expected = p[0] * (1 + 16) + p[1] * (4 + 25) + p[2] * (9 + 36)
    torch.testing.assert_close(layer.expected_l2(), expected)


def test_expected_l2_is_differentiable_wrt_weights_and_gates():
    layer = L0Conv2d(2, 3, 3, structured=False)
    layer.expected_l2().backward()
    assert layer.weight.grad is not None and layer.log_alpha.grad is not None


def test_active_mask_is_positive_test_gate():
    layer = L0Linear(4, 2)
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([-3.0, HC.threshold - 1e-3, HC.threshold + 1e-3, 3.0]))
    assert layer.active_mask().tolist() == [False, False, True, True]
    assert layer.num_active_params() == 4


def _small_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(L0Linear(4, 3), nn.ReLU(), L0Linear(3, 2, structured=False))
    with torch.no_grad():
        model[0].log_alpha.copy_(torch.tensor([-3.0, -1.0, 1.0, 3.0]))
        model[2].log_alpha.copy_(torch.tensor([[-3.0, 0.0, 3.0], [2.0, -2.0, 0.5]]))
    return model


def test_model_wise_expected_density_by_hand():
    model = _small_model()
    p0 = torch.sigmoid(torch.tensor([-3.0, -1.0, 1.0, 3.0]) - HC.threshold)
    p2 = torch.sigmoid(torch.tensor([-3.0, 0.0, 3.0, 2.0, -2.0, 0.5]) - HC.threshold)
    expected = (p0.sum() * 3 + p2.sum()) / (12 + 6)
    torch.testing.assert_close(expected_density(model), expected)


def test_layer_wise_expected_densities_by_hand():
    model = _small_model()
    dens = layer_densities(model)
    assert list(dens) == ["0", "2"]
    p0 = torch.sigmoid(torch.tensor([-3.0, -1.0, 1.0, 3.0]) - HC.threshold)
    torch.testing.assert_close(dens["0"], p0.mean())


def test_test_density_counts_weights_with_positive_test_gate():
    model = _small_model()
    # layer 0: inputs 1 (log α = -1 > -1.599), 2, 3 active -> 3 × 3 weights; layer 2: 4 of 6
    assert test_density(model) == pytest.approx((9 + 4) / 18)


def test_expected_density_is_differentiable_wrt_gates_only():
    model = _small_model()
    expected_density(model).backward()
    assert all(p.grad is not None for p in gate_parameters(model))
    assert all(p.grad is None for p in weight_parameters(model))


def test_model_expected_l2_sums_layers():
    model = _small_model()
    torch.testing.assert_close(expected_l2(model), model[0].expected_l2() + model[2].expected_l2())


def test_density_of_a_model_without_gates_is_an_error():
    with pytest.raises(ValueError, match="no gated layers"):
        expected_density(nn.Linear(2, 2))


def test_gate_and_weight_parameters_are_disjoint_and_cover_the_model():
    model = nn.Sequential(L0Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    gates = {id(p) for p in gate_parameters(model)}
    weights = {id(p) for p in weight_parameters(model)}
    assert gates.isdisjoint(weights)
    assert gates | weights == {id(p) for p in model.parameters()}
    assert gates == {id(model[0].log_alpha)}


def test_gated_layers_lists_names_in_module_order():
    model = _small_model()
    assert [name for name, _ in gated_layers(model)] == ["0", "2"]
    assert all(isinstance(m, GatedLayer) for _, m in gated_layers(model))


# --------------------------------------------------------------------------- gated BatchNorm


def _conv_bn() -> tuple[L0Conv2d, GatedBatchNorm2d]:
    torch.manual_seed(0)
    conv = L0Conv2d(3, 4, 3, padding=1, bias=False)
    bn = GatedBatchNorm2d(4, conv)
    _randomize_bn(bn)
    with torch.no_grad():
        conv.log_alpha.copy_(torch.tensor([1.0, DEAD, 0.0, DEAD]))
    return conv, bn


def test_gated_batchnorm_zeroes_dead_channels_in_eval():
    conv, bn = _conv_bn()
    conv.eval(), bn.eval()
    y = bn(conv(torch.randn(2, 3, 5, 5)))
    assert (y[:, [1, 3]] == 0).all()
    assert (y[:, [0, 2]] != 0).all()


def test_gated_batchnorm_zeroes_dead_channels_in_training():
    conv, bn = _conv_bn()
    y = bn(conv(torch.randn(4, 3, 5, 5)))
    assert (y[:, [1, 3]] == 0).all()


def test_gated_batchnorm_eval_is_gate_times_plain_batchnorm():
    conv, bn = _conv_bn()
    conv.eval(), bn.eval()
    plain = nn.BatchNorm2d(4).eval()
    plain.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 5, 5)
    h = F.conv2d(x, conv.weight, padding=1)
    expected = plain(h) * conv.test_gates().view(1, -1, 1, 1)
    torch.testing.assert_close(bn(conv(x)), expected)


def test_gated_batchnorm_running_stats_are_those_of_the_ungated_conv():
    conv, bn = _conv_bn()
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 5)
    bn(conv(x))
    plain(F.conv2d(x, conv.weight, padding=1))
    torch.testing.assert_close(bn.running_mean, plain.running_mean)
    torch.testing.assert_close(bn.running_var, plain.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_gated_batchnorm_sets_the_conv_to_run_ungated():
    conv, _ = _conv_bn()
    assert conv.gate_in_norm
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, padding=1))


def test_gated_batchnorm_passes_gradient_to_the_conv_gates():
    conv, bn = _conv_bn()
    with torch.no_grad():
        conv.log_alpha.zero_()
    bn(conv(torch.randn(4, 3, 5, 5))).square().sum().backward()
    assert conv.log_alpha.grad is not None and conv.log_alpha.grad.abs().sum() > 0


def test_gated_batchnorm_does_not_register_the_conv_twice():
    conv, bn = _conv_bn()
    model = nn.Sequential(conv, bn)
    assert set(model.state_dict()) == {
        "0.weight",
        "0.log_alpha",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    assert len(list(model.modules())) == 3


def test_deepcopy_links_the_copied_norm_to_the_copied_conv():
    model = nn.Sequential(*_conv_bn())
    clone = copy.deepcopy(model)
    assert clone[1].gate_layer is clone[0]


def test_gated_batchnorm_rejects_unstructured_or_mismatched_conv():
    with pytest.raises(ValueError, match="structured"):
        GatedBatchNorm2d(4, L0Conv2d(3, 4, 3, structured=False))
    with pytest.raises(ValueError, match="filters"):
        GatedBatchNorm2d(5, L0Conv2d(3, 4, 3))


# --------------------------------------------------------------------------- sparsify


def _user_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
    )
    _randomize_bn(model[1])
    return model.eval()


def test_sparsify_replaces_linear_and_conv_layers_in_place():
    model = _user_model()
    out = sparsify(model, droprate_init=0.3)
    assert out is model
    assert isinstance(model[0], L0Conv2d) and isinstance(model[3], L0Conv2d)
    assert isinstance(model[6], L0Linear)
    assert [m.structured for _, m in gated_layers(model)] == [True, True, True]


def test_sparsify_pairs_a_conv_with_its_batchnorm():
    model = sparsify(_user_model())
    assert isinstance(model[1], GatedBatchNorm2d)
    assert model[1].gate_layer is model[0] and model[0].gate_in_norm
    assert not model[3].gate_in_norm


def test_sparsified_model_with_open_gates_matches_the_original():
    model = _user_model()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    sparsify(model)
    for _, layer in gated_layers(model):
        with torch.no_grad():
            layer.log_alpha.fill_(OPEN)
    torch.testing.assert_close(model(x), expected)


def test_sparsify_skips_layers_by_name_pattern():
    model = sparsify(_user_model(), skip=["0", "6"])
    assert [name for name, _ in gated_layers(model)] == ["3"]
    assert type(model[1]) is nn.BatchNorm2d


def test_sparsify_skips_layers_by_predicate():
    model = sparsify(_user_model(), skip=lambda name, m: isinstance(m, nn.Linear))
    assert [name for name, _ in gated_layers(model)] == ["0", "3"]


def test_sparsify_unstructured_does_not_pair_batchnorms():
    model = sparsify(_user_model(), structured=False)
    assert type(model[1]) is nn.BatchNorm2d
    assert all(not m.structured for _, m in gated_layers(model))


def test_sparsify_uses_the_droprate_for_every_layer():
    model = sparsify(_user_model(), droprate_init=0.1)
    for _, layer in gated_layers(model):
        assert layer.log_alpha.mean().item() == pytest.approx(2.197, abs=0.05)


def test_sparsify_falls_back_to_sequential_adjacency_for_untraceable_models():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow defeats torch.fx
                return self.body(x)
            return -self.body(x)

    model = sparsify(Untraceable())
    assert isinstance(model.body[1], GatedBatchNorm2d)
    assert model(torch.randn(2, 3, 5, 5)).shape == (2, 4, 3, 3)


def test_sparsify_can_be_applied_again_to_a_partly_gated_training_model():
    model = sparsify(_user_model(), skip="3").train()
    sparsify(model, skip=["0", "6"])
    assert [name for name, _ in gated_layers(model)] == ["0", "3", "6"]
    assert model[1].gate_layer is model[0]
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 10)


def test_sparsify_rejects_a_bare_layer():
    with pytest.raises(ValueError, match="container"):
        sparsify(nn.Linear(2, 2))


# --------------------------------------------------------------------------- sparsify: report


class _Attention(nn.Module):
    """A tiny transformer-ish model: attention, a Conv1d, an embedding and two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.ff = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.head(torch.relu(self.ff(x)))


_ATTENTION_LEFT_DENSE = (
    ("embed", "Embedding"),
    ("conv", "Conv1d"),
)


def test_sparsify_reports_what_it_gated_on_the_model():
    model = sparsify(_user_model(), skip="6")
    report = model.sparsify_report
    assert report.model == "Sequential"
    assert report.gated == ("0", "3") and report.gated_norms == ("1",)
    assert report.skipped == ("6",)
    assert report.not_gateable == () and report.unmatched_patterns == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.gated = ()  # type: ignore[misc]


def test_sparsify_logs_its_summary_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="l0_sparsity.nn.sparsifying"):
        sparsify(_user_model(), skip="6")
    (record,) = [r for r in caplog.records if r.name == "l0_sparsity.nn.sparsifying"]
    assert record.levelno == logging.INFO
    assert "gated 2 layer(s) [0, 3]" in record.getMessage()
    assert "kept dense by skip: [6]" in record.getMessage()


def test_sparsify_warns_about_and_reports_layers_it_cannot_gate():
    torch.manual_seed(0)
    model = _Attention().eval()
    tokens = torch.randint(0, 10, (2, 5))
    expected = model(tokens)
    with pytest.warns(UserWarning, match="cannot gate them") as caught:
        sparsify(model)
    message = str(caught[0].message)
    for name, kind in _ATTENTION_LEFT_DENSE:
        assert f"{name} ({kind})" in message
    assert "_Attention" in message
    report = model.sparsify_report
    assert report.gated == ("attn", "ff", "head")  # attention: one gate per head
    assert report.not_gateable == _ATTENTION_LEFT_DENSE
    assert isinstance(model.attn, GatedMultiheadAttention)
    assert type(model.conv) is nn.Conv1d and type(model.embed) is nn.Embedding
    for _, layer in gated_layers(model):
        with torch.no_grad():
            layer.log_alpha.fill_(OPEN)
    torch.testing.assert_close(model(tokens), expected)


def test_a_skip_pattern_naming_a_layer_it_cannot_gate_acknowledges_it():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = sparsify(_Attention(), skip=["embed", "attn", "attn.*", "conv"])
    report = model.sparsify_report
    assert report.skipped == ("embed", "attn", "attn.out_proj", "conv")
    assert report.not_gateable == () and report.gated == ("ff", "head")


def test_a_skip_predicate_is_only_asked_about_linear_and_conv2d_layers():
    asked: list[str] = []

    def wide(name: str, module: nn.Module) -> bool:
        asked.append(name)
        return module.in_features > 8  # only Linear layers have in_features

    with pytest.warns(UserWarning, match="cannot gate them"):
        model = sparsify(_Attention(), skip=wide)
    assert asked == ["ff", "head"]
    assert model.sparsify_report.skipped == ("head",) and type(model.head) is nn.Linear


def test_a_linear_with_hooks_is_left_dense_with_a_warning():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    seen: list[torch.Size] = []
    model[2].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with pytest.warns(UserWarning, match=r"2 \(Linear with hooks\)"):
        sparsify(model)
    assert type(model[2]) is nn.Linear and isinstance(model[0], L0Linear)
    model(torch.randn(5, 3))
    assert seen == [torch.Size([5, 2])]


def test_a_skip_pattern_that_matches_nothing_is_warned_about_by_name():
    with pytest.warns(UserWarning, match=r"skip pattern 'classifier\.\*' matched no layer"):
        model = sparsify(_user_model(), skip=["6", "classifier.*"])
    assert model.sparsify_report.unmatched_patterns == ("classifier.*",)
    assert [name for name, _ in gated_layers(model)] == ["0", "3"]


def test_skip_patterns_naming_already_gated_layers_are_not_unmatched():
    model = sparsify(_user_model(), skip="3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(model, skip=["0", "6"])
    assert model.sparsify_report.gated == ("3",)
    assert model.sparsify_report.unmatched_patterns == ()


def test_a_non_string_skip_pattern_is_refused():
    with pytest.raises(TypeError, match=r"skip patterns must be strings.*6 \(int\)"):
        sparsify(_user_model(), skip=["0", 6])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (
            nn.Sequential(nn.ReLU(), nn.LayerNorm(3)),
            r"sparsify\(Sequential\): nothing to gate: it ",
        ),
        (nn.Sequential(nn.Conv1d(3, 3, 1)), r"no nn.Linear or nn.Conv2d.*0 \(Conv1d\)"),
        (nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), r"skip matched every layer.*\[0, 1\]"),
    ],
    ids=["no layers", "only conv1d", "all skipped"],
)
def test_a_model_with_nothing_to_gate_is_refused_when_sparsified(model, match):
    skip = "*" if len(model) == 2 and isinstance(model[0], nn.Linear) else None
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=match):
            sparsify(model, skip=skip)
    assert not hasattr(model, "sparsify_report") and not hasattr(model, "joint_sampling")
    assert not gated_layers(model)
    assert model.state_dict().keys() == before.keys()


def test_a_conv_with_another_padding_mode_is_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(3, 3), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"layer '1' uses padding_mode='reflect'"):
        sparsify(model)
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Conv2d
    sparsify(model, skip="1")
    assert isinstance(model[0], L0Linear) and type(model[1]) is nn.Conv2d


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet18_cifar"])
def test_the_built_in_models_sparsify_without_warnings(name):
    from l0_sparsity.models import build_model

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(name)
    report = model.sparsify_report
    assert report.gated and report.not_gateable == () and report.unmatched_patterns == ()
