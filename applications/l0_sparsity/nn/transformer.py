"""Transformer encoders that honour their gates in every mode, and the swap that installs them.

``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder`` around it) has a fused fast path,
taken in eval mode under ``torch.no_grad()``, that reads ``self_attn.in_proj_weight``,
``linear1.weight``, ... directly and so skips any gate. :class:`GatedTransformerEncoderLayer`
and :class:`GatedTransformerEncoder` compute the same function with the same submodules, always
through the submodules' own ``forward`` (the gated one when a submodule is gated), and trace
with torch.fx, so that purging and the compute measures see every gated layer inside them.

:func:`gate_attention` installs them in a model and gives every ``nn.MultiheadAttention`` it can
one gate per head (:class:`~l0_sparsity.nn.attention.GatedMultiheadAttention`). The feed-forward
layers stay ``nn.Linear``: :func:`~l0_sparsity.nn.sparsify` gates them like any other, and the
input-neuron gates of ``linear2`` are then exactly one gate per FFN hidden unit (the purge drops
the unit's ``linear1`` row and ``linear2`` column together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from l0_sparsity.nn.attention import GatedMultiheadAttention, unsupported_attention
from l0_sparsity.nn.bert import gate_bert_blocks
from l0_sparsity.nn.gates import HardConcrete

__all__ = [
    "AttentionGating",
    "GatedTransformerEncoder",
    "GatedTransformerEncoderLayer",
    "gate_attention",
]

# Modules whose children fx traces through (a torch.nn module of another kind is one leaf call).
_TRACED_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class GatedTransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` without its fast path: every call runs the submodules.

    Built from an ``nn.TransformerEncoderLayer``; holds the same
    submodules under the same names (``self_attn``, ``linear1``, ``dropout``, ``linear2``,
    ``norm1``, ``norm2``, ``dropout1``, ``dropout2``) and the same activation.

    Args:
        layer: The layer whose submodules and settings to take over (not copied).
    """

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        self.self_attn: nn.Module = layer.self_attn
        self.linear1 = layer.linear1
        self.dropout = layer.dropout
        self.linear2 = layer.linear2
        self.norm_first = layer.norm_first
        self.norm1 = layer.norm1
        self.norm2 = layer.norm2
        self.dropout1 = layer.dropout1
        self.dropout2 = layer.dropout2
        self.activation: Callable[[Tensor], Tensor] = layer.activation
        self.train(layer.training)

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """``nn.TransformerEncoderLayer``'s computation (its slow path), same arguments."""
        x = src
        if self.norm_first:
            x = x + self._attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))

    def _attention(
        self, x: Tensor, mask: Tensor | None, padding: Tensor | None, is_causal: bool
    ) -> Tensor:
        out = self.self_attn(
            x,
            x,
            x,
            attn_mask=mask,
            key_padding_mask=padding,
            need_weights=False,
            is_causal=is_causal,
        )[0]
        return self.dropout1(out)

    def _feed_forward(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


class GatedTransformerEncoder(nn.Module):
    """``nn.TransformerEncoder`` without its fast path: the layers one after the other.

    Args:
        encoder: The encoder whose ``layers`` and ``norm`` to take over (not copied).
    """

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = encoder.layers
        self.num_layers = encoder.num_layers
        self.norm = encoder.norm
        self.train(encoder.training)

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """``nn.TransformerEncoder``'s computation without nested tensors, same arguments."""
        x = src
        for layer in self.layers:
            x = layer(
                x,
                src_mask=mask,
                src_key_padding_mask=src_key_padding_mask,
                is_causal=bool(is_causal),
            )
        return x if self.norm is None else self.norm(x)


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _traced_into(model: nn.Module, name: str) -> bool:
    """Whether fx traces into the parent of ``name`` (it is not a torch.nn leaf)."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (*_TRACED_CONTAINERS, GatedTransformerEncoderLayer)):
        return True
    return not type(parent).__module__.startswith("torch.nn")


@dataclass(frozen=True)
class AttentionGating:
    """What :func:`gate_attention` did.

    Attributes:
        heads: Qualified names of the layers given one gate per head.
        claimed: Linear layers that ``sparsify`` must leave as they are: the head-gated ones,
            and those whose rows follow the head or FFN-unit gates of another layer
            (BERT-style blocks, :mod:`~l0_sparsity.nn.bert`).
    """

    heads: tuple[str, ...]
    claimed: frozenset[str]


def gate_attention(
    model: nn.Module,
    keep_dense: Callable[[str, nn.Module], bool],
    *,
    droprate_init: float = 0.5,
    distribution: HardConcrete | None = None,
) -> AttentionGating:
    """Swap encoders for :class:`GatedTransformerEncoder` / ``...Layer`` and gate attention heads.

    In place: every ``nn.TransformerEncoder`` and ``nn.TransformerEncoderLayer`` is replaced by
    its fast-path-free counterpart (always, so that gates put on its linear layers are never
    skipped); every ``nn.MultiheadAttention`` that ``keep_dense`` does not name, that
    :func:`~l0_sparsity.nn.attention.unsupported_attention` accepts and whose parent fx traces
    into, by a :class:`~l0_sparsity.nn.attention.GatedMultiheadAttention` with one gate per head.
    Attention layers left alone stay ``nn.MultiheadAttention`` (``sparsify`` reports them).
    BERT-style blocks get head gates on their out projections
    (:func:`~l0_sparsity.nn.bert.gate_bert_blocks`).

    Args:
        model: The model; modified in place.
        keep_dense: ``(name, module) -> bool``: leave this attention layer ungated.
        droprate_init: Initial drop rate of the head gates.
        distribution: Hard-concrete parameters of the head gates.

    Returns:
        The layers given head gates, and the linear layers they claim.
    """
    for name, module in list(model.named_modules()):
        if type(module) is nn.TransformerEncoder:
            _set_child(model, name, GatedTransformerEncoder(module))
        elif type(module) is nn.TransformerEncoderLayer:
            _set_child(model, name, GatedTransformerEncoderLayer(module))
    gated: list[str] = []
    kwargs: dict[str, Any] = {"droprate_init": droprate_init, "distribution": distribution}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.MultiheadAttention or not name:
            continue
        if keep_dense(name, module) or unsupported_attention(module) is not None:
            continue
        if _traced_into(model, name):
            _set_child(model, name, GatedMultiheadAttention.from_dense(module, **kwargs))
            gated.append(name)
    bert_heads, claimed = gate_bert_blocks(model, keep_dense, **kwargs)
    return AttentionGating((*gated, *bert_heads), claimed)
