"""Attention heads as gate groups: :class:`GatedMultiheadAttention`.

One structured gate per head ``h`` governs the head's query, key and value projection rows and
the out-projection columns that read its output: the head's output is multiplied by ``z_h``
before the out projection, so a head whose gate is 0 contributes nothing, whatever its query and
key. The attention itself is written with explicit matrix products
(:func:`~l0_sparsity.nn.attention_kernel.head_attention`) rather than PyTorch's fused kernels,
so that it never takes a path that skips the gates and so that ``torch.utils.flop_counter``
sees its score and value products (it counts none for the fused CPU kernel).

:meth:`GatedMultiheadAttention.dense_module` builds the purged attention: a
:class:`torch.fx.GraphModule` made of four plain ``nn.Linear`` projections (the kept heads only,
test-time gates folded into the out projection) and torch ops, which runs without this package.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from l0_sparsity.nn.attention_kernel import head_attention
from l0_sparsity.nn.base import GatedLayer, default_init
from l0_sparsity.nn.gates import HardConcrete
from l0_sparsity.nn.head_gates import HeadGatedLayer

__all__ = [
    "GatedMultiheadAttention",
    "check_attention_call",
    "head_attention",
    "kept_groups",
    "unsupported_attention",
]


def kept_groups(layer: GatedLayer) -> Tensor:
    """Indices of the groups a purge keeps: test-time gate > 0, or the first if none is.

    Args:
        layer: A structured gated layer.

    Returns:
        A non-empty vector of gate indices.
    """
    keep = layer.active_mask().nonzero().flatten()
    return keep if keep.numel() else keep.new_zeros(1)


def unsupported_attention(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot get head gates, or ``None`` if it can.

    Args:
        mha: A multi-head attention layer.

    Returns:
        A reason naming the feature (separate key/value sizes, ``add_bias_kv``,
        ``add_zero_attn``), or ``None``.
    """
    if not mha._qkv_same_embed_dim:
        return "MultiheadAttention with kdim/vdim != embed_dim"
    if mha.bias_k is not None:
        return "MultiheadAttention with add_bias_kv"
    if mha.add_zero_attn:
        return "MultiheadAttention with add_zero_attn"
    return None


def check_attention_call(target: str, node: fx.Node) -> None:
    """Refuse a traced call of a gated attention layer that its purged form would not compute.

    The purged attention (:meth:`GatedMultiheadAttention.dense_module`) takes no masks and
    returns no attention weights (they would average over other heads).

    Args:
        target: The layer's qualified name, for the message.
        node: The graph node calling it.

    Raises:
        ValueError: If the call passes a mask or ``is_causal``, or the attention weights it
            returns are used; naming the layer.
    """
    call = inspect.signature(GatedMultiheadAttention.forward).bind(None, *node.args, **node.kwargs)
    for name in ("key_padding_mask", "attn_mask", "is_causal"):
        if call.arguments.get(name) not in (None, False):
            raise ValueError(
                f"purge: the attention layer {target!r} is called with {name}; the purged "
                "attention supports no masks (purge a model whose attention takes none)"
            )
    for user in node.users:
        index = user.args[1] if user.target is operator.getitem else None
        if index != 0 and (index != 1 or user.users):
            raise ValueError(
                f"purge: the output of the attention layer {target!r} is used as {user.name!r}; "
                "only its first element (the attention output) can be purged exactly, not the "
                "attention weights"
            )


class GatedMultiheadAttention(HeadGatedLayer):
    """``nn.MultiheadAttention`` with one hard-concrete gate per head.

    Same call signature and outputs as ``nn.MultiheadAttention`` (``batch_first`` either way,
    with or without bias, boolean or additive masks, ``need_weights``). The gate ``z_h`` scales
    head ``h``'s output before the out projection; the attention weights returned with
    ``need_weights`` are those of every head (a gate does not change them).

    ``weight`` and ``bias`` are the out projection's; ``in_proj_weight`` and ``in_proj_bias`` the
    packed query/key/value projection. One gate's group is the head's ``3·d`` projection rows and
    its ``d`` out-projection columns: ``4·E·d`` weights (``d = E / H``).

    Args:
        embed_dim: Model width ``E``.
        num_heads: Number of heads ``H`` (must divide ``E``).
        dropout: Dropout on the attention weights (training only).
        bias: Whether the projections have biases.
        batch_first: Inputs as ``(batch, seq, feature)`` instead of ``(seq, batch, feature)``.
        droprate_init: Initial drop rate of the gates.
        distribution: Hard-concrete parameters.
        device: Device of the parameters.
        dtype: Floating dtype of the parameters.

    Raises:
        ValueError: If ``num_heads`` does not divide ``embed_dim``.
    """

    in_proj_bias: nn.Parameter | None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        *,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            embed_dim,
            embed_dim,
            num_heads,
            droprate_init=droprate_init,
            distribution=distribution,
            width_name="embed_dim",
        )
        self.embed_dim = embed_dim
        self.dropout = dropout
        self.batch_first = batch_first
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory)) if bias else None
        self.weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
        self.bias = nn.Parameter(torch.empty(embed_dim, **factory)) if bias else None
        self.log_alpha.data = self.log_alpha.data.to(**factory)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.in_proj_weight)
            if self.in_proj_bias is not None:
                self.in_proj_bias.zero_()
            default_init(self.weight, None, embed_dim)
            if self.bias is not None:
                self.bias.zero_()

    @classmethod
    def from_dense(
        cls,
        mha: nn.MultiheadAttention,
        *,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
    ) -> GatedMultiheadAttention:
        """Gated copy of ``mha`` (same weights, device, dtype and mode).

        Args:
            mha: The attention layer to copy.
            droprate_init: Initial drop rate of the gates.
            distribution: Hard-concrete parameters.

        Returns:
            A new :class:`GatedMultiheadAttention`.

        Raises:
            ValueError: If :func:`unsupported_attention` names a feature of ``mha``.
        """
        reason = unsupported_attention(mha)
        if reason is not None:
            raise ValueError(f"GatedMultiheadAttention.from_dense: cannot gate a {reason}")
        weight = mha.in_proj_weight
        layer = cls(
            mha.embed_dim,
            mha.num_heads,
            mha.dropout,
            mha.in_proj_bias is not None,
            mha.batch_first,
            droprate_init=droprate_init,
            distribution=distribution,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            layer.in_proj_weight.copy_(weight)
            layer.weight.copy_(mha.out_proj.weight)
            if layer.in_proj_bias is not None and mha.in_proj_bias is not None:
                layer.in_proj_bias.copy_(mha.in_proj_bias)
            if layer.bias is not None and mha.out_proj.bias is not None:
                layer.bias.copy_(mha.out_proj.bias)
        return layer.train(mha.training)

    @property
    def num_gated_params(self) -> int:
        """Projection weights the head gates govern: ``4·E²`` (biases are not counted)."""
        return self.in_proj_weight.numel() + self.weight.numel()

    def group_sq_norms(self) -> Tensor:
        """Squared norm of each head's projection rows and out-projection columns."""
        heads, d = self.num_heads, self.head_dim
        rows = self.in_proj_weight.square().view(3, heads, d, -1).sum((0, 2, 3))
        cols = self.weight.square().view(-1, heads, d).sum((0, 2))
        return rows + cols

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Gated multi-head attention; the arguments are ``nn.MultiheadAttention``'s.

        ``is_causal`` is a hint about ``attn_mask`` there; here the mask alone decides.

        Raises:
            RuntimeError: If ``is_causal`` is given without ``attn_mask`` (as in PyTorch).
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("GatedMultiheadAttention: is_causal needs attn_mask (as in PyTorch)")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        heads, weights = head_attention(
            F.linear(query, w_q, b_q),
            F.linear(key, w_k, b_k),
            F.linear(value, w_v, b_v),
            self.num_heads,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        merged = heads.transpose(1, 2).flatten(2)
        out = F.linear(merged, self.gate_weight(self.gates()), self.bias)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights

    @torch.no_grad()
    def dense_module(self) -> fx.GraphModule:
        """The purged attention: the kept heads only, test-time gates folded in.

        Keeps the heads whose test-time gate is positive (the first, with its gate 0, if none
        is). The result is a :class:`torch.fx.GraphModule` of plain ``nn.Linear`` layers and
        torch ops, in eval mode, called like this layer. It ignores masks and returns
        ``(output, None)``: the purge refuses every call site that passes a mask or reads the
        weights (:func:`check_attention_call`), so only a call made outside the purged graph
        could pass one.
        """
        gates = self.test_gates()
        keep = kept_groups(self)
        cols = (keep[:, None] * self.head_dim + torch.arange(self.head_dim)).flatten()
        plain = _KeptHeads(self, keep.numel())
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        projections = (plain.q_proj, plain.k_proj, plain.v_proj)
        for proj, w, b in zip(projections, self.in_proj_weight.chunk(3), biases, strict=True):
            proj.weight.copy_(w[cols])
            if b is not None:
                proj.bias.copy_(b[cols])
        plain.out_proj.weight.copy_(self.gate_weight(gates)[:, cols])
        if self.bias is not None:
            plain.out_proj.bias.copy_(self.bias)
        traced = fx.symbolic_trace(plain.eval())
        for node in traced.graph.nodes:
            node.type = None  # string annotations would stop the purged model from pickling
        traced.graph._tracer_cls = None
        traced.recompile()
        return traced.eval()

    def extra_repr(self) -> str:
        """Shape and gating summary."""
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"bias={self.bias is not None}, batch_first={self.batch_first}, {self._gate_repr()}"
        )


class _KeptHeads(nn.Module):
    """Plain attention over ``num_heads`` kept heads; traced into the purged GraphModule."""

    def __init__(self, gated: GatedMultiheadAttention, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.batch_first = gated.batch_first
        width, embed = num_heads * gated.head_dim, gated.embed_dim
        factory: dict[str, Any] = {"device": gated.weight.device, "dtype": gated.weight.dtype}
        in_bias, out_bias = gated.in_proj_bias is not None, gated.bias is not None
        self.q_proj = nn.Linear(embed, width, in_bias, **factory)
        self.k_proj = nn.Linear(embed, width, in_bias, **factory)
        self.v_proj = nn.Linear(embed, width, in_bias, **factory)
        self.out_proj = nn.Linear(width, embed, out_bias, **factory)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        heads, _ = head_attention(
            self.q_proj(query), self.k_proj(key), self.v_proj(value), self.num_heads
        )
        out = self.out_proj(heads.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None
