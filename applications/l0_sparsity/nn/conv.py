"""The gated 2-D convolution :class:`L0Conv2d`.

Structured gates act on output filters: one gate per filter, governing its
``in_channels / groups · kh · kw`` weights and its bias, or one gate per block of
``channels_per_gate`` consecutive filters (the producer of a grouped convolution that follows its
gates, :mod:`~l0_sparsity.nn.following`: a group's input channels then live or die together).
Unstructured gates have the shape of the weight and leave the bias ungated. A structured conv
followed by a BatchNorm hands its gates to that norm (:mod:`~l0_sparsity.nn.batchnorm`) and runs
ungated itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l0_sparsity.nn.base import GatedLayer, default_init
from l0_sparsity.nn.gates import HardConcrete

__all__ = ["L0Conv2d"]


class L0Conv2d(GatedLayer):
    """2-D convolution with hard-concrete gates.

    Structured gates act on output filters (``z`` has ``out_channels / channels_per_gate``
    entries, each governing ``channels_per_gate`` consecutive filters: their
    ``in_channels / groups · kh · kw`` weights each and their biases); unstructured gates have
    the shape of the weight and leave the bias ungated. Only zero padding is supported.

    When ``gate_in_norm`` is set (done by :func:`~l0_sparsity.nn.sparsifying.sparsify` for a
    structured conv whose only consumer is a BatchNorm), the convolution itself runs ungated and
    the following :class:`~l0_sparsity.nn.batchnorm.GatedBatchNorm2d` applies the gates after
    normalization.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels (filters).
        kernel_size: Size of the convolving kernel.
        stride: Stride of the convolution.
        padding: Zero padding added to both sides, or ``"same"`` / ``"valid"``.
        dilation: Spacing between kernel elements.
        groups: Number of blocked connections from input to output channels.
        bias: Whether to learn an additive bias.
        structured: Output-filter gates (``True``) or one gate per weight (``False``).
        droprate_init: Initial drop rate ``p`` of the gates.
        distribution: Hard-concrete parameters; defaults to β = 2/3, γ = −0.1, ζ = 1.1.
        channels_per_gate: Consecutive filters one structured gate governs (a divisor of
            ``out_channels``; 1 for unstructured gates).
        device: Device of the parameters.
        dtype: Floating dtype of the parameters.

    Raises:
        ValueError: If the channels do not divide by ``groups``, or ``channels_per_gate`` does
            not divide ``out_channels`` (or is not 1 for unstructured gates).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        structured: bool = True,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
        channels_per_gate: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        if channels_per_gate < 1 or out_channels % channels_per_gate:
            raise ValueError(
                f"channels_per_gate={channels_per_gate} must divide out_channels={out_channels}"
            )
        if channels_per_gate != 1 and not structured:
            raise ValueError("channels_per_gate needs structured gates")
        ks = _pair(kernel_size)
        weight_shape = (out_channels, in_channels // groups, *ks)
        group = channels_per_gate * in_channels // groups * ks[0] * ks[1]
        super().__init__(
            (out_channels // channels_per_gate,) if structured else weight_shape,
            group if structured else 1,
            structured=structured,
            droprate_init=droprate_init,
            distribution=distribution,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ks
        self.stride = _pair(stride)
        self.padding: tuple[int, int] | str = (
            padding if isinstance(padding, str) else _pair(padding)
        )
        self.dilation = _pair(dilation)
        self.groups = groups
        self.gate_in_norm = False
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.log_alpha.data = self.log_alpha.data.to(**factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize weights and bias like :class:`torch.nn.Conv2d`."""
        default_init(self.weight, self.bias, self.weight[0].numel())

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        *,
        structured: bool = True,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
        channels_per_gate: int = 1,
    ) -> L0Conv2d:
        """Gated copy of ``conv`` (same weights, geometry, device, dtype and mode).

        Args:
            conv: The dense convolution to copy (zero padding only).
            structured: Output-filter gates or one gate per weight.
            droprate_init: Initial drop rate of the gates.
            distribution: Hard-concrete parameters.
            channels_per_gate: Consecutive filters one structured gate governs.

        Returns:
            A new :class:`L0Conv2d`.

        Raises:
            ValueError: If ``conv`` uses a padding mode other than ``"zeros"``.
        """
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, got {conv.padding_mode!r}")
        return cls._copy_of(
            conv,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            structured=structured,
            droprate_init=droprate_init,
            distribution=distribution,
            channels_per_gate=channels_per_gate,
        )

    @property
    def channels_per_gate(self) -> int:
        """Consecutive filters one structured gate governs (1 for unstructured gates)."""
        return self.out_channels // self.num_gates if self.structured else 1

    def filter_gates(self, gates: Tensor) -> Tensor:
        """Structured gates repeated to one per filter (each over its block of filters).

        Args:
            gates: Gate values shaped like ``log_alpha`` (structured).

        Returns:
            One value per output filter.
        """
        k = self.channels_per_gate
        return gates if k == 1 else gates.repeat_interleave(k)

    def group_sq_norms(self) -> Tensor:
        """Squared norm of each filter (structured) or each weight squared."""
        sq = self.weight.square()
        if not self.structured:
            return sq
        return sq.sum((1, 2, 3)).view(-1, self.channels_per_gate).sum(1)

    def gate_weight(self, gates: Tensor) -> Tensor:
        """``W ⊙ z`` (output-filter gates broadcast over their filters' weights)."""
        gates = gates.to(self.weight.dtype)
        if self.structured:
            gates = self.filter_gates(gates).view(-1, 1, 1, 1)
        return self.weight * gates

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gated convolution (ungated when the following norm applies the gates)."""
        if self.gate_in_norm:
            return self._conv(x, self.weight, self.bias)
        z = self.gates()
        bias = self.bias
        if self.structured and bias is not None:
            bias = bias * self.filter_gates(z).to(bias.dtype)
        return self._conv(x, self.gate_weight(z), bias)

    @torch.no_grad()
    def dense_module(self) -> nn.Conv2d:
        """Plain :class:`torch.nn.Conv2d` computing this layer's eval output (gates folded).

        With ``gate_in_norm`` set the weights are copied ungated: the gates then belong to the
        following :class:`~l0_sparsity.nn.batchnorm.GatedBatchNorm2d`.
        """
        out = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        z = self.test_gates()
        if self.gate_in_norm:
            out.weight.copy_(self.weight)
            if self.bias is not None:
                out.bias.copy_(self.bias)
            return out
        out.weight.copy_(self.gate_weight(z))
        if self.bias is not None:
            out.bias.copy_(self.bias * self.filter_gates(z) if self.structured else self.bias)
        return out

    def extra_repr(self) -> str:
        """Shape and gating summary."""
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        s += f", bias={self.bias is not None}, {self._gate_repr()}"
        if self.channels_per_gate != 1:
            s += f", channels_per_gate={self.channels_per_gate}"
        if self.gate_in_norm:
            s += ", gate_in_norm=True"
        return s


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))
