"""The gated linear layer :class:`L0Linear`: ``y = x (W ⊙ z)ᵀ + b``.

Structured gates act on input neurons: one gate per input feature, governing a column of
``out_features`` weights. Unstructured gates have the shape of ``W``. The bias is not gated.

:class:`GatedLinear` is what every gated linear map shares (its parameters, forward pass and
purged :class:`torch.nn.Linear`), whatever its gates govern: :class:`L0Linear` and the head-gated
out projection :class:`~l0_sparsity.nn.bert.HeadGatedLinear` derive from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l0_sparsity.nn.base import GatedLayer, default_init
from l0_sparsity.nn.gates import HardConcrete

__all__ = ["GatedLinear", "L0Linear"]


class GatedLinear(GatedLayer):
    """A gated linear map ``y = x (W ⊙ z)ᵀ + b``, ``W`` of shape ``(out_features, in_features)``.

    Subclasses choose the gates (:meth:`gate_weight`, :meth:`group_sq_norms`) and create the
    parameters with :meth:`_init_linear`; the forward pass and the purged layer are shared.
    """

    in_features: int
    out_features: int

    def _init_linear(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        *,
        fill: Callable[..., Tensor] = torch.empty,
    ) -> None:
        """Set the shape, create ``weight`` and ``bias`` with ``fill``, move ``log_alpha`` alike."""
        self.in_features = in_features
        self.out_features = out_features
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(fill(out_features, in_features, **factory))
        self.bias = nn.Parameter(fill(out_features, **factory)) if bias else None
        self.log_alpha.data = self.log_alpha.data.to(**factory)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gated linear map with freshly sampled (train) or median (eval) gates."""
        return F.linear(x, self.gate_weight(self.gates()), self.bias)

    @torch.no_grad()
    def dense_module(self) -> nn.Linear:
        """Plain :class:`torch.nn.Linear` with the test-time gates folded into the weight."""
        out = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        out.weight.copy_(self.gate_weight(self.test_gates()))
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out


class L0Linear(GatedLinear):
    """Linear layer ``y = x (W ⊙ z)ᵀ + b`` with hard-concrete gates.

    Structured gates act on input neurons (``z`` has ``in_features`` entries, each governing a
    column of ``out_features`` weights); unstructured gates have the shape of ``W``. The bias
    is not gated.

    Args:
        in_features: Size of each input sample.
        out_features: Size of each output sample.
        bias: Whether to learn an additive bias.
        structured: Input-neuron gates (``True``) or one gate per weight (``False``).
        droprate_init: Initial drop rate ``p`` of the gates.
        distribution: Hard-concrete parameters; defaults to β = 2/3, γ = −0.1, ζ = 1.1.
        device: Device of the parameters.
        dtype: Floating dtype of the parameters.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        structured: bool = True,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        gate_shape = (in_features,) if structured else (out_features, in_features)
        super().__init__(
            gate_shape,
            out_features if structured else 1,
            structured=structured,
            droprate_init=droprate_init,
            distribution=distribution,
        )
        self._init_linear(in_features, out_features, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize weights and bias like :class:`torch.nn.Linear`."""
        default_init(self.weight, self.bias, self.in_features)

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        *,
        structured: bool = True,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
    ) -> L0Linear:
        """Gated copy of ``linear`` (same weights, device and dtype).

        Args:
            linear: The dense layer to copy.
            structured: Input-neuron gates or one gate per weight.
            droprate_init: Initial drop rate of the gates.
            distribution: Hard-concrete parameters.

        Returns:
            A new :class:`L0Linear`.
        """
        return cls._copy_of(
            linear,
            linear.in_features,
            linear.out_features,
            structured=structured,
            droprate_init=droprate_init,
            distribution=distribution,
        )

    def group_sq_norms(self) -> Tensor:
        """Squared norm of each input column (structured) or each weight squared."""
        sq = self.weight.square()
        return sq.sum(0) if self.structured else sq

    def gate_weight(self, gates: Tensor) -> Tensor:
        """``W ⊙ z`` (input-neuron gates broadcast over rows)."""
        return self.weight * gates.to(self.weight.dtype)

    def extra_repr(self) -> str:
        """Shape and gating summary."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._gate_repr()}"
        )
