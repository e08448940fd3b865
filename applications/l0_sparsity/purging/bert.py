"""Purging BERT-style encoders block by block (they do not trace with torch.fx).

For every block of :func:`~l0_sparsity.nn.bert.bert_blocks` in a copy of the model:

* **heads**: the :class:`~l0_sparsity.nn.bert.HeadGatedLinear` out projection keeps the columns
  of the heads whose test-time gate is positive (gates folded in), ``query`` / ``key`` /
  ``value`` keep the same rows, and the attention's ``num_attention_heads`` /
  ``all_head_size`` follow (its forward reshapes with them);
* **FFN units**: a structured :class:`~l0_sparsity.nn.L0Linear` ``output.dense`` keeps its kept
  input columns (gates folded in) and ``intermediate.dense`` the same rows.

A block whose heads or units are all dead keeps its first one with its folded gate 0 (the
output is then exactly the bias: the residual path and the norm run as before). Every other gated
layer becomes its plain counterpart (gates folded in, nothing removed). The result holds plain
torch modules inside the model's own classes and computes the gated model's eval output.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from l0_sparsity.nn import GatedLayer, L0Linear
from l0_sparsity.nn.attention import kept_groups
from l0_sparsity.nn.bert import BertBlock, HeadGatedLinear, bert_blocks

__all__ = ["purge_bert"]


def purge_bert(model: nn.Module) -> nn.Module:
    """A smaller plain copy of a gated BERT-style model (see :mod:`l0_sparsity.purging.bert`).

    Args:
        model: A model gated by :func:`~l0_sparsity.nn.sparsify`; not modified.

    Returns:
        The purged copy, in eval mode.

    Raises:
        ValueError: If a module of this package other than a gated layer remains, naming it.
    """
    purged = copy.deepcopy(model).eval()
    for block in bert_blocks(purged):
        _purge_heads(purged, block)
        _purge_units(purged, block)
    for name, module in list(purged.named_modules()):
        if isinstance(module, GatedLayer):
            _set(purged, name, module.dense_module())
    for name, module in purged.named_modules():
        if type(module).__module__.startswith("l0_sparsity"):
            raise ValueError(
                f"purge: {name!r} is a {type(module).__name__}, which the block-by-block purge "
                "of BERT-style models cannot turn into a plain module"
            )
    return purged.eval()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    """The plain linear layer at ``name``, refused if it is gated (its rows would be sliced)."""
    layer = model.get_submodule(name)
    if type(layer) is not nn.Linear:
        raise ValueError(
            f"purge: {name!r} is a {type(layer).__name__}; the purge of BERT-style blocks slices "
            "its rows after the head / FFN-unit gates and needs a plain nn.Linear there"
        )
    return layer


@torch.no_grad()
def _sliced(linear: nn.Linear, rows: Tensor | None, cols: Tensor | None) -> nn.Linear:
    weight = linear.weight if rows is None else linear.weight[rows]
    weight = weight if cols is None else weight[:, cols]
    bias = linear.bias if linear.bias is None or rows is None else linear.bias[rows]
    out = nn.Linear(
        weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype
    )
    out.weight.copy_(weight)
    if bias is not None:
        out.bias.copy_(bias)
    return out


def _purge_heads(model: nn.Module, block: BertBlock) -> None:
    out = model.get_submodule(block.attention_output)
    if not isinstance(out, HeadGatedLinear):
        return
    keep = kept_groups(out)
    cols = (keep[:, None] * out.head_dim + torch.arange(out.head_dim)).flatten()
    _set(model, block.attention_output, _sliced(out.dense_module(), None, cols))
    for name in block.projections:
        _set(model, name, _sliced(_linear(model, name), cols, None))
    attention = model.get_submodule(block.attention)
    attention.num_attention_heads = keep.numel()
    attention.all_head_size = cols.numel()


def _purge_units(model: nn.Module, block: BertBlock) -> None:
    out = model.get_submodule(block.output)
    if not isinstance(out, L0Linear) or not out.structured:
        return
    keep = kept_groups(out)
    _set(model, block.output, _sliced(out.dense_module(), None, keep))
    _set(model, block.intermediate, _sliced(_linear(model, block.intermediate), keep, None))
