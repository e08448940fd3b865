"""Head and FFN-unit gates for Hugging Face BERT-style encoders (BERT, MiniLM, RoBERTa, ...).

These models do not trace with torch.fx, so their gates are placed, purged and measured block
by block. A block (:class:`BertBlock`, found by :func:`bert_blocks`) is a module with

* ``attention.self``: ``query``, ``key``, ``value`` linear layers and ``num_attention_heads`` /
  ``attention_head_size`` (the heads' columns are contiguous, head-major);
* ``attention.output.dense``: the out projection reading the heads' outputs;
* ``intermediate.dense`` → activation → ``output.dense``: the feed-forward network (FFN).

:func:`gate_bert_blocks` gives the out projection a :class:`HeadGatedLinear` (one gate per head,
over the head's ``d`` input columns: with the gate at 0 the head contributes nothing, whatever
its query, key and value) and leaves ``query`` / ``key`` / ``value`` and ``intermediate.dense``
to the gates that decide their rows: :func:`~l0_sparsity.nn.sparsify` gives ``output.dense`` its
input-neuron gates, one per FFN hidden unit, and a purge drops the unit's ``intermediate.dense``
row with its ``output.dense`` column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l0_sparsity.nn.base import GatedLayer
from l0_sparsity.nn.gates import HardConcrete
from l0_sparsity.nn.head_gates import HeadGatedLayer
from l0_sparsity.nn.linear import GatedLinear

__all__ = [
    "BertBlock",
    "HeadGatedLinear",
    "bert_blocks",
    "gate_bert_blocks",
    "holds_bert_gates",
]


@dataclass(frozen=True)
class BertBlock:
    """Qualified names of the parts of one BERT-style encoder block.

    Attributes:
        block: The block (a ``BertLayer``).
        attention: Its self-attention (``attention.self``: query, key, value).
        attention_output: The heads' out projection (``attention.output.dense``).
        intermediate: The FFN's first linear layer (``intermediate.dense``).
        output: The FFN's second linear layer (``output.dense``).
    """

    block: str
    attention: str
    attention_output: str
    intermediate: str
    output: str

    @property
    def projections(self) -> tuple[str, str, str]:
        """Names of the query, key and value layers."""
        return (f"{self.attention}.query", f"{self.attention}.key", f"{self.attention}.value")


def _linear(module: nn.Module, name: str, gated: bool = False) -> bool:
    """Whether ``module.<name>`` is a linear layer (or, with ``gated``, a gated layer)."""
    kinds = (nn.Linear, GatedLayer) if gated else (nn.Linear,)
    return isinstance(getattr(module, name, None), kinds)


def _is_block(module: nn.Module) -> bool:
    attention = getattr(module, "attention", None)
    heads = getattr(attention, "self", None)
    ffn_in = getattr(module, "intermediate", None)
    ffn_out = getattr(module, "output", None)
    if heads is None or ffn_in is None or ffn_out is None:
        return False
    return (
        all(_linear(heads, n) for n in ("query", "key", "value"))
        and isinstance(getattr(heads, "num_attention_heads", None), int)
        and isinstance(getattr(heads, "attention_head_size", None), int)
        and _linear(getattr(attention, "output", None), "dense", gated=True)
        and _linear(ffn_in, "dense")
        and _linear(ffn_out, "dense", gated=True)
        and getattr(module, "crossattention", None) is None
    )


def bert_blocks(model: nn.Module) -> list[BertBlock]:
    """The BERT-style encoder blocks of ``model`` (none with cross-attention), in module order.

    Args:
        model: Any module.

    Returns:
        One :class:`BertBlock` per block.
    """
    found = []
    for name, module in model.named_modules():
        if name and _is_block(module):
            found.append(
                BertBlock(
                    name,
                    f"{name}.attention.self",
                    f"{name}.attention.output.dense",
                    f"{name}.intermediate.dense",
                    f"{name}.output.dense",
                )
            )
    return found


def holds_bert_gates(model: nn.Module) -> bool:
    """Whether ``model`` has BERT-style blocks with head gates (purged and measured by block).

    Args:
        model: Any module.

    Returns:
        ``True`` if one of its blocks' out projections is a :class:`HeadGatedLinear`.
    """
    return any(
        isinstance(model.get_submodule(b.attention_output), HeadGatedLinear)
        for b in bert_blocks(model)
    )


class HeadGatedLinear(HeadGatedLayer, GatedLinear):
    """The out projection of attention heads, one hard-concrete gate per head.

    ``y = x (W ⊙ z)ᵀ + b`` where gate ``z_h`` covers the ``d`` input columns of head ``h``. One
    gate's group is counted as the head's query, key and value rows and its out-projection
    columns: ``4 · out_features · d`` weights (the projections live in the attention module;
    :meth:`group_sq_norms` sees the out-projection columns only). Its :meth:`dense_module` folds
    the test-time gates in and removes no head (the block's purge does).

    Args:
        in_features: Width of the heads' concatenated outputs (``H · d``).
        out_features: Model width ``E``.
        num_heads: Number of heads ``H``.
        bias: Whether to learn an additive bias.
        droprate_init: Initial drop rate of the gates.
        distribution: Hard-concrete parameters.
        device: Device of the parameters.
        dtype: Floating dtype of the parameters.

    Raises:
        ValueError: If ``num_heads`` does not divide ``in_features``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_heads: int,
        bias: bool = True,
        *,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            num_heads,
            droprate_init=droprate_init,
            distribution=distribution,
            width_name="in_features",
        )
        self._init_linear(in_features, out_features, bias, device, dtype, fill=torch.zeros)

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        num_heads: int,
        *,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
    ) -> HeadGatedLinear:
        """Head-gated copy of an out projection (same weights, device, dtype and mode).

        Args:
            linear: The out projection.
            num_heads: Number of heads whose outputs it reads.
            droprate_init: Initial drop rate of the gates.
            distribution: Hard-concrete parameters.

        Returns:
            A new :class:`HeadGatedLinear`.
        """
        return cls._copy_of(
            linear,
            linear.in_features,
            linear.out_features,
            num_heads,
            droprate_init=droprate_init,
            distribution=distribution,
        )

    @property
    def num_gated_params(self) -> int:
        """Weights the head gates govern: ``4 · out_features · in_features``."""
        return self.num_gates * self.group_size

    def group_sq_norms(self) -> Tensor:
        """Squared norm of each head's out-projection columns."""
        return self.weight.square().view(self.out_features, self.num_heads, -1).sum((0, 2))

    def extra_repr(self) -> str:
        """Shape and gating summary."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_heads={self.num_heads}, {self._gate_repr()}"
        )


def gate_bert_blocks(
    model: nn.Module,
    keep_dense: Callable[[str, nn.Module], bool],
    *,
    droprate_init: float = 0.5,
    distribution: HardConcrete | None = None,
) -> tuple[tuple[str, ...], frozenset[str]]:
    """Give each BERT-style block's out projection head gates; claim the layers they decide.

    In place. A block whose ``attention.output.dense`` ``keep_dense`` names keeps it dense.

    Args:
        model: The model.
        keep_dense: ``(name, module) -> bool``: leave this out projection ungated.
        droprate_init: Initial drop rate of the head gates.
        distribution: Hard-concrete parameters of the head gates.

    Returns:
        The out projections given head gates, and the linear layers that ``sparsify`` must not
        gate: those, and their blocks' query, key, value and ``intermediate.dense`` (whose rows
        follow the head and FFN-unit gates).
    """
    heads: list[str] = []
    claimed: set[str] = set()
    for block in bert_blocks(model):
        linear = model.get_submodule(block.attention_output)
        if keep_dense(block.attention_output, linear):
            continue
        attention = model.get_submodule(block.attention)
        gated = HeadGatedLinear.from_dense(
            linear,  # type: ignore[arg-type]
            int(attention.num_attention_heads),
            droprate_init=droprate_init,
            distribution=distribution,
        )
        parent = model.get_submodule(block.attention_output.rpartition(".")[0])
        parent.dense = gated
        heads.append(block.attention_output)
        claimed.update((block.attention_output, *block.projections, block.intermediate))
    return tuple(heads), frozenset(claimed)
