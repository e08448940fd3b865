r"""Compute measures of BERT-style encoders, block by block (they do not trace with torch.fx).

At sequence length ``L``, model width ``E`` and head width ``d``, a block of the model that
:func:`~l0_sparsity.purging.bert.purge_bert` makes costs, per kept head and per kept FFN unit,

.. math::

    \text{MACs}_\text{head} = 4 E d L + 2 d L^2, \qquad \text{MACs}_\text{unit} = 2 E L,

(query, key, value and out projections; scores and weighted values; the unit's row of
``intermediate.dense`` and column of ``output.dense``) and holds ``4 E d + 3 d`` parameters per
head and ``2 E + 1`` per unit. Head and unit counts are the
:class:`~l0_sparsity.nn.structure.Kept` counts of the gates, so the terms are those of
:class:`~l0_sparsity.measures.cost_terms.CostTerms`; everything else (embeddings, norms, biases,
the pooler) is a constant: ``torch.utils.flop_counter`` on the model at batch 1, with the
attention computed by explicit products (Hugging Face's ``"eager"`` implementation: the counter
sees no product inside the fused CPU kernel), minus the variable part at full width.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from l0_sparsity.measures.cost_terms import CostTerms
from l0_sparsity.measures.counting import RuleCounts
from l0_sparsity.nn import GatedLayer, L0Linear, weight_parameters
from l0_sparsity.nn.bert import HeadGatedLinear, bert_blocks
from l0_sparsity.nn.structure import Kept

__all__ = ["bert_terms"]


def _ids(example_input: Tensor | tuple[int, ...], device: torch.device | None) -> Tensor:
    """One example of token ids: ``example_input[:1]``, or zeros of its shape at batch 1."""
    if isinstance(example_input, Tensor):
        return example_input[:1]
    return torch.zeros((1, *tuple(example_input)[1:]), dtype=torch.long, device=device)


def _eager_flops(model: nn.Module, ids: Tensor) -> int:
    """FLOPs of one forward of a copy of ``model`` with explicit attention products."""
    counted = copy.deepcopy(model).eval()
    hf_models = [m for m in counted.modules() if hasattr(m, "set_attn_implementation")]
    if not hf_models:
        raise ValueError(
            f"ComputeCost: {type(model).__name__} has BERT-style blocks but no module with "
            "set_attn_implementation (a Hugging Face model); its attention products could not "
            "be counted"
        )
    hf_models[0].set_attn_implementation("eager")  # the outermost one
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        counted(ids)
    return int(counter.get_total_flops())


def bert_terms(model: nn.Module, example_input: Tensor | tuple[int, ...]) -> CostTerms:
    """The purged MACs and parameters of a head-gated BERT-style model, as terms.

    Args:
        model: A model whose blocks :func:`~l0_sparsity.nn.sparsify` gave head and unit gates.
        example_input: Token ids ``(batch, L)`` (the first row is used) or their shape.

    Returns:
        The terms, following the model's live gates.

    Raises:
        ValueError: If the attention products could not be counted.
    """
    anchor = next(iter(model.parameters()), None)
    ids = _ids(example_input, None if anchor is None else anchor.device)
    length = ids.shape[1]
    layers: dict[str, GatedLayer] = {}
    blocks: list[tuple[str, tuple[int, int], int]] = []  # (target, (MACs, params), full)
    for block in bert_blocks(model):
        heads = model.get_submodule(block.attention_output)
        if isinstance(heads, HeadGatedLinear):
            width, d = heads.out_features, heads.head_dim
            unit = (4 * width * d * length + 2 * d * length * length, 4 * width * d + 3 * d)
            layers[block.attention_output] = heads
            blocks.append((block.attention_output, unit, heads.num_heads))
        units = model.get_submodule(block.output)
        if isinstance(units, L0Linear) and units.structured:
            width = units.out_features
            layers[block.output] = units
            blocks.append((block.output, (2 * width * length, 2 * width + 1), units.in_features))
    variable_macs = sum(unit[0] * full for _, unit, full in blocks)
    variable_params = sum(unit[1] * full for _, unit, full in blocks)
    total_macs = _eager_flops(model, ids) // 2
    total_params = sum(p.numel() for p in weight_parameters(model))
    terms = CostTerms(
        RuleCounts(layers), (total_macs - variable_macs, total_params - variable_params)
    )
    for target, unit, full in blocks:
        terms.add(target, terms.counts.slot(Kept(target), full), (0, 1), unit)
    return terms
