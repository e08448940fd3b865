"""Attention heads and FFN units as gate groups: nn.MultiheadAttention, TransformerEncoder, ViT."""

import io
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from l0_helpers import OFF, ON, assert_all_off_costs_the_fixed_part, fill_gates, half_off
from torch import nn

import l0_sparsity as l0
from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import gated_layers
from l0_sparsity.nn.attention import GatedMultiheadAttention
from l0_sparsity.nn.transformer import GatedTransformerEncoder, GatedTransformerEncoderLayer
from l0_sparsity.purging import count_flops, count_params

torch.set_num_threads(1)


class _Classifier(nn.Module):
    """A TransformerEncoder (the container with its own fast path) and a linear head."""

    def __init__(self, norm_first: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            32, 4, 64, dropout=0.1, batch_first=batch_first, norm_first=norm_first
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return self.head(out.mean(1 if self.batch_first else 0))


class _Attend(nn.Module):
    """A bare nn.MultiheadAttention between two linear layers, called like users call it."""

    def __init__(self, batch_first: bool, bias: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first)
        self.out = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.out(a + h)


def _purge_and_check(model: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> nn.Module:
    """Purge; outputs equal the gated eval outputs; MACs/params equal ComputeCost's, exactly.

    ComputeCost refuses sequence-first attention (its first example would be one position).
    """
    model.eval()
    with torch.no_grad():
        gated = model(x)
    purged = l0.purge(model)
    with torch.no_grad():
        out = purged(x)
    scale = gated.abs().max()
    assert scale > 1e-3
    assert (out - gated).abs().max() <= rtol * scale
    leftovers = [type(m).__name__ for m in purged.modules() if "l0_sparsity" in type(m).__module__]
    assert leftovers == []
    if not getattr(model, "batch_first", True):
        with pytest.raises(ValueError, match="sequence-first"):
            ComputeCost(model, x)
        return purged
    cost = ComputeCost(model, x)
    assert cost.test_macs() * 2 * x.shape[0] == count_flops(purged, x)
    assert cost.test_params() == count_params(purged)
    return purged


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_gated_attention_with_gates_on_equals_multihead_attention(batch_first, bias):
    torch.manual_seed(0)
    dense = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()
    gated = GatedMultiheadAttention.from_dense(dense, droprate_init=0.01).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    calls = [{}, {"key_padding_mask": padding}, {"attn_mask": causal, "is_causal": True}]
    calls.append({"attn_mask": causal.float() * -1e9, "key_padding_mask": padding.float() * -1e9})
    for kwargs in calls:
        for need_weights, average in [(False, True), (True, True), (True, False)]:
            kw = {"need_weights": need_weights, "average_attn_weights": average, **kwargs}
            want, got = dense(x, x, x, **kw), gated(x, x, x, **kw)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            if need_weights:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_one_gate_per_head_groups_projection_rows_and_output_columns():
    gated = GatedMultiheadAttention(16, 4)
    assert gated.num_gates == 4
    assert gated.group_size == 4 * 16 * 4
    assert gated.num_gated_params == 4 * 16 * 16 == gated.num_gates * gated.group_size


def test_a_head_switched_off_contributes_nothing():
    torch.manual_seed(0)
    gated = GatedMultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        gated.log_alpha.copy_(torch.tensor([ON, OFF, ON, ON]))
        before = gated(x, x, x)[0]
        gated.in_proj_weight.view(3, 4, 4, 16)[:, 1].normal_()  # the dead head's q, k, v rows
        assert torch.equal(gated(x, x, x)[0], before)


def test_sparsify_gives_heads_gates_and_reports_them():
    model = l0.sparsify(_Classifier())
    report = model.sparsify_report
    assert "encoder.layers.0.self_attn" in report.gated
    assert not any("self_attn" in name for name, _ in report.not_gateable)
    assert isinstance(model.encoder, GatedTransformerEncoder)
    assert isinstance(model.encoder.layers[1], GatedTransformerEncoderLayer)
    assert isinstance(model.encoder.layers[1].self_attn, GatedMultiheadAttention)


def test_skip_keeps_an_attention_layer_dense_and_unsupported_ones_are_reported():
    model = l0.sparsify(_Classifier(), skip="encoder.layers.0.self_attn*")
    assert type(model.encoder.layers[0].self_attn) is nn.MultiheadAttention
    assert isinstance(model.encoder.layers[1].self_attn, GatedMultiheadAttention)
    odd = nn.Module()
    odd.attn = nn.MultiheadAttention(16, 4, kdim=8, vdim=8)
    odd.fc = nn.Linear(16, 2)
    with pytest.warns(UserWarning, match="kdim"):
        l0.sparsify(odd)
    assert type(odd.attn) is nn.MultiheadAttention


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_honours_gates_with_and_without_grad_in_train_and_eval(norm_first):
    torch.manual_seed(0)
    model = l0.sparsify(_Classifier(norm_first=norm_first), droprate_init=0.01)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, GatedMultiheadAttention):
            module.dropout = 0.0
    with torch.no_grad():
        for _, layer in gated_layers(model):
            flat = layer.log_alpha.view(-1)
            flat.copy_(torch.where(torch.arange(flat.numel()) % 2 == 0, ON, OFF))
    x = torch.randn(3, 6, 32)
    outputs = []
    for training in (False, True):
        model.train(training)
        outputs.append(model(x).detach())
        with torch.no_grad():
            outputs.append(model(x))
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-5, atol=1e-6)
    _purge_and_check(model, x)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_with_half_the_heads_and_units_off_purges_exactly(norm_first):
    torch.manual_seed(1)
    model = l0.sparsify(_Classifier(norm_first=norm_first))
    half_off(model)
    purged = _purge_and_check(model, torch.randn(2, 7, 32))
    kept = [m.out_features for n, m in purged.named_modules() if n.endswith("q_proj")]
    assert kept == [16, 16]  # 2 of 4 heads of width 8 in each layer
    buffer = io.BytesIO()
    torch.save(purged, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(reloaded(x), purged(x))


def test_sequence_first_encoder_purges_exactly():
    torch.manual_seed(2)
    model = l0.sparsify(_Classifier(batch_first=False))
    half_off(model)
    _purge_and_check(model, torch.randn(7, 2, 32))


def test_a_layer_losing_all_heads_and_all_ffn_units_keeps_its_residual_path():
    torch.manual_seed(3)
    model = l0.sparsify(_Classifier())
    half_off(model)
    layer = model.encoder.layers[0]
    with torch.no_grad():
        layer.self_attn.log_alpha.fill_(OFF)
        layer.linear2.log_alpha.fill_(OFF)
    x = torch.randn(2, 7, 32)
    _purge_and_check(model, x)
    assert_all_off_costs_the_fixed_part(model, x)
    _purge_and_check(model, x)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_bare_multihead_attention_purges_exactly(batch_first, bias):
    torch.manual_seed(4)
    model = l0.sparsify(_Attend(batch_first, bias))
    model.batch_first = batch_first
    half_off(model)
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    _purge_and_check(model, x)


def test_expected_macs_move_with_the_kept_heads():
    torch.manual_seed(5)
    model = l0.sparsify(_Classifier())
    x = torch.randn(1, 9, 32)
    cost = ComputeCost(model, x)
    fill_gates(model, ON)
    full = cost.expected_macs()
    attention = model.encoder.layers[0].self_attn
    with torch.no_grad():
        attention.log_alpha[:2] = OFF
    per_head = 8 * (4 * 32 * 9 + 2 * 9 * 9)  # d · (4 E L + 2 L S)
    assert cost.test_macs() == cost.dense_macs - 2 * per_head
    torch.testing.assert_close(full - cost.expected_macs(), torch.tensor(2.0 * per_head))


def test_purge_refuses_masks_and_used_attention_weights_naming_the_layer():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

        def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            return self.layer(x, src_key_padding_mask=padding)

    class Weights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, weights = self.attn(x, x, x)
            return self.fc(out) + weights.sum()

    masked = l0.sparsify(Masked())
    with pytest.raises(ValueError, match=r"'layer\.self_attn'.*key_padding_mask"):
        l0.purge(masked)
    with pytest.raises(ValueError, match=r"'layer\.self_attn'.*key_padding_mask"):
        ComputeCost(masked, (1, 4, 16))
    with pytest.raises(ValueError, match=r"'attn'.*attention weights"):
        l0.purge(l0.sparsify(Weights()))


def test_torchvision_vit_with_half_the_heads_and_units_off_purges_exactly():
    torch.manual_seed(6)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
    )
    nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision zero-initializes it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = vit.eval()(x)
    model = l0.sparsify(vit, droprate_init=0.01)
    assert sum(isinstance(m, GatedMultiheadAttention) for m in model.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), dense)
    half_off(model)
    _purge_and_check(model, x)


def test_head_gates_learn_and_count_their_projections_in_the_density():
    torch.manual_seed(7)
    model = l0.sparsify(_Classifier()).train()
    model(torch.randn(2, 5, 32)).sum().backward()
    attention = model.encoder.layers[0].self_attn
    assert attention.log_alpha.grad is not None and attention.log_alpha.grad.abs().sum() > 0
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.log_alpha.fill_(OFF if isinstance(layer, GatedMultiheadAttention) else ON)
    total = sum(layer.num_gated_params for _, layer in gated_layers(model))
    heads = 2 * 4 * 32 * 32  # two layers of 4·E² projection weights
    assert l0.test_density(model) == pytest.approx(1 - heads / total)


_LOAD_WITHOUT_L0 = """
import sys
sys.modules["l0_sparsity"] = None  # any import of the package fails
import torch
model = torch.load(sys.argv[1], weights_only=False)
x, want = torch.load(sys.argv[2])
torch.testing.assert_close(model(x), want)
"""


def test_the_purged_encoder_loads_and_runs_without_this_package(tmp_path):
    torch.manual_seed(8)
    model = l0.sparsify(_Classifier())
    half_off(model)
    purged = l0.purge(model)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.save((x, purged(x)), tmp_path / "io.pt")
    torch.save(purged, tmp_path / "model.pt")
    paths = [str(tmp_path / "model.pt"), str(tmp_path / "io.pt")]
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_L0, *paths], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
