"""The attention of gated layers, computed head by head with explicit matrix products.

:func:`head_attention` is the scaled dot-product attention that
:class:`~l0_sparsity.nn.attention.GatedMultiheadAttention` and its purged form run. It uses
``matmul`` rather than PyTorch's fused kernels, so that it never takes a path that skips the
gates and so that ``torch.utils.flop_counter`` sees its score and value products (it counts
none for the fused CPU kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["head_attention"]


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (``True``: not allowed) as ``-inf`` / ``0``; a float mask unchanged."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def head_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_heads: int,
    *,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention of projected, batch-first inputs, head by head.

    ``softmax(q_h k_hᵀ / √d + mask) v_h`` for each head ``h``, with explicit matrix
    products (``torch.matmul``).

    Args:
        q: Queries ``(B, L, H·d)``.
        k: Keys ``(B, S, H·d)``.
        v: Values ``(B, S, H·d)``.
        num_heads: ``H``.
        attn_mask: ``(L, S)`` or ``(B·H, L, S)``; boolean (``True``: not allowed) or additive.
        key_padding_mask: ``(B, S)``; boolean (``True``: ignore that key) or additive.
        dropout_p: Dropout probability on the attention weights (0 in eval).

    Returns:
        The heads' outputs ``(B, H, L, d)`` and the attention weights ``(B, H, L, S)``.
    """
    batch, length, width = q.shape
    head_dim = width // num_heads
    q = q.view(batch, length, num_heads, head_dim).transpose(1, 2)
    k = k.view(batch, k.shape[1], num_heads, head_dim).transpose(1, 2)
    v = v.view(batch, v.shape[1], num_heads, head_dim).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / head_dim**0.5)
    if attn_mask is not None:
        mask = _additive(attn_mask, scores.dtype)
        if mask.dim() == 3:
            mask = mask.view(batch, num_heads, length, k.shape[2])
        scores = scores + mask
    if key_padding_mask is not None:
        scores = scores + _additive(key_padding_mask, scores.dtype)[:, None, None, :]
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v), weights
