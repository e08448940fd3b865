"""The base of layers with one gate per attention head: :class:`HeadGatedLayer`.

:class:`~l0_sparsity.nn.attention.GatedMultiheadAttention` (the whole attention) and
:class:`~l0_sparsity.nn.bert.HeadGatedLinear` (the out projection of a Hugging Face BERT block)
share it: the head count check, the gates' group size and the gated out projection.
"""

from __future__ import annotations

from torch import Tensor

from l0_sparsity.nn.base import GatedLayer
from l0_sparsity.nn.gates import HardConcrete

__all__ = ["HeadGatedLayer"]


class HeadGatedLayer(GatedLayer):
    """A layer with one structured gate per attention head, scaling its out-projection columns.

    One gate's group is the head's query, key and value projection rows and its out-projection
    columns: ``4 · out_width · d`` weights (``d = width / H``). ``weight`` is the out projection,
    whose ``width`` input columns are the heads' outputs, head-major.

    Args:
        width: Width of the heads' concatenated outputs (``H · d``), named ``width_name``.
        out_width: Width of the out projection's output.
        num_heads: Number of heads ``H`` (must divide ``width``).
        droprate_init: Initial drop rate of the gates.
        distribution: Hard-concrete parameters.
        width_name: The name of ``width`` in the subclass's arguments, for the message.

    Raises:
        ValueError: If ``num_heads`` does not divide ``width``.
    """

    def __init__(
        self,
        width: int,
        out_width: int,
        num_heads: int,
        *,
        droprate_init: float,
        distribution: HardConcrete | None,
        width_name: str,
    ) -> None:
        if num_heads <= 0 or width % num_heads:
            raise ValueError(
                f"{type(self).__name__}: num_heads={num_heads} must divide {width_name}={width}"
            )
        head_dim = width // num_heads
        super().__init__(
            (num_heads,),
            4 * out_width * head_dim,
            structured=True,
            droprate_init=droprate_init,
            distribution=distribution,
        )
        self.num_heads = num_heads
        self.head_dim = head_dim

    def gate_weight(self, gates: Tensor) -> Tensor:
        """The out projection ``W`` with head ``h``'s columns scaled by ``z_h``."""
        return self.weight * gates.to(self.weight.dtype).repeat_interleave(self.head_dim)
