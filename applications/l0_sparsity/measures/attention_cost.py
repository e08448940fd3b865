r"""Compute measures of gated attention: MACs and parameters per kept head.

A purged :class:`~l0_sparsity.nn.attention.GatedMultiheadAttention` keeping ``k`` of its ``H``
heads (``d = E / H`` wide each) at sequence lengths ``L`` (queries) and ``S`` (keys) costs

.. math::

    \text{MACs} = k \cdot d \cdot (3 E L + L S + L S + E L)

(query/key/value projections, scores, weighted values, out projection) and holds
``k · (4 E d + 3 d) + E`` parameters (the ``3 d`` and ``E`` biases if it has them). Both are
linear in ``k``, the :class:`~l0_sparsity.nn.structure.Kept` count of its heads, so the compute
measures add one term per layer. The MACs per head are read from ``torch.utils.flop_counter``
on the gated layer (its attention is written with explicit products that the counter sees).
"""

from __future__ import annotations

from l0_sparsity.nn.attention import GatedMultiheadAttention

__all__ = ["attention_units"]


def attention_units(
    target: str, attention: GatedMultiheadAttention, flops: int
) -> tuple[tuple[int, int], int]:
    """MACs and parameters per kept head, and the parameters no head gate removes.

    Args:
        target: The layer's module target, for messages.
        attention: The gated attention layer.
        flops: FLOPs ``torch.utils.flop_counter`` counted in its calls (one example).

    Returns:
        ``((MACs, params) per head, constant params)``.

    Raises:
        ValueError: If the layer is sequence-first (its example would be one position) or its
            FLOPs are not a whole number of MACs per head, naming the layer.
    """
    if not attention.batch_first:
        raise ValueError(
            f"ComputeCost: the attention layer {target!r} is sequence-first (batch_first=False), "
            "but ComputeCost measures the first example along dim 0 of its input, which would "
            "be one position of the sequence there; use batch_first=True attention"
        )
    heads, d, width = attention.num_heads, attention.head_dim, attention.embed_dim
    if flops % (2 * heads):
        raise ValueError(
            f"ComputeCost: the FLOPs of the attention layer {target!r} ({flops}) are not the "
            f"same for each of its {heads} heads; cannot follow its purge exactly"
        )
    per_head = 4 * width * d + (3 * d if attention.in_proj_bias is not None else 0)
    constant = width if attention.bias is not None else 0
    return (flops // (2 * heads), per_head), constant
