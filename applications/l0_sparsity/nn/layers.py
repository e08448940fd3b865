"""Gated layers with hard-concrete L0 gates, and model-level helpers.

A gated layer multiplies its weight by hard-concrete gates ``z``:

* **structured** gates remove whole groups: one gate per *input neuron* of a linear layer
  (group = a column of ``out_features`` weights) and one per *output filter* of a convolution
  (group = ``in_channels / groups · kh · kw`` weights);
* **unstructured** gates remove single weights (one gate per weight, group size 1).

In training mode one ``z`` is sampled per forward pass (shared across the batch); in eval mode
the deterministic test-time gate (the distribution's median) is used.

A structured :class:`L0Conv2d` that feeds a BatchNorm would lose its gates in training, since
batch normalization undoes any per-channel scale and turns a zeroed channel into its bias. Such
a pair is therefore gated *after* the normalization: :class:`GatedBatchNorm2d` computes
``z · BN(conv(x))`` by scaling its affine parameters, ``BN_{γz, βz}``, and the convolution runs
ungated (``conv.gate_in_norm`` is set). The pair then outputs exactly 0 on dead channels, both
in training (``z = 0``) and in eval mode (median gate 0), which is what makes purging exact.
"""

from __future__ import annotations

import abc
import fnmatch
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l0_sparsity.nn.gate_set import sample_jointly
from l0_sparsity.nn.gates import HardConcrete, init_log_alpha_

__all__ = [
    "GateLeafTracer",
    "GatedBatchNorm2d",
    "GatedLayer",
    "L0Conv2d",
    "L0Linear",
    "SkipSpec",
    "SparsifyReport",
    "gate_parameters",
    "gated_layers",
    "sparsify",
    "weight_parameters",
]

SkipSpec = str | Iterable[str] | Callable[[str, nn.Module], bool] | None
"""Layers to leave dense in :func:`sparsify`: glob pattern(s) on qualified names, or a predicate."""

_Gated = TypeVar("_Gated", bound="GatedLayer")
_log = logging.getLogger(__name__)


class GatedLayer(nn.Module, abc.ABC):
    """Common interface of layers whose weights are multiplied by hard-concrete gates.

    Subclasses own ``weight`` (the gated parameters), an optional ``bias`` (never counted as
    gated) and ``log_alpha`` (one entry per gate, kept apart from the weights so that it can get
    its own optimizer or learning rate).

    Attributes:
        log_alpha: Gate parameters ``log α``.
        structured: Whether one gate governs a group of weights (``True``) or a single weight.
        group_size: Number of weights governed by one gate.
        distribution: The hard-concrete distribution of the gates.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    log_alpha: nn.Parameter

    def __init__(
        self,
        gate_shape: tuple[int, ...],
        group_size: int,
        *,
        structured: bool,
        droprate_init: float,
        distribution: HardConcrete | None,
    ) -> None:
        super().__init__()
        self.structured = structured
        self.group_size = group_size
        self.droprate_init = droprate_init
        self.distribution = distribution if distribution is not None else HardConcrete()
        self.log_alpha = nn.Parameter(torch.empty(gate_shape))
        init_log_alpha_(self.log_alpha, droprate_init)

    @property
    def num_gated_params(self) -> int:
        """Number of weights governed by the gates (the whole ``weight``)."""
        return self.weight.numel()

    @property
    def num_gates(self) -> int:
        """Number of gates."""
        return self.log_alpha.numel()

    def reset_gates(self, droprate_init: float | None = None) -> None:
        """Re-draw ``log α ~ N(log((1 − p)/p), 0.01²)``.

        Args:
            droprate_init: Initial drop rate ``p``; defaults to the one given at construction.
        """
        if droprate_init is not None:
            self.droprate_init = droprate_init
        init_log_alpha_(self.log_alpha, self.droprate_init)

    def sample_gates(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw one reparameterized gate per gate parameter.

        Args:
            generator: Optional random generator.

        Returns:
            Gates in ``[0, 1]`` shaped like ``log_alpha``.
        """
        return self.distribution.sample(self.log_alpha, generator)

    def gates(self) -> Tensor:
        """Gates for the current forward pass.

        In training: the gates offered for this pass (:meth:`offer_gates`, which joint sampling
        uses), consumed by this call, or else a fresh sample. In eval: the median gates.
        """
        if not self.training:
            return self.test_gates()
        offered = self.__dict__.pop("_offered_gates", None)
        return offered if offered is not None else self.sample_gates()

    def offer_gates(self, gates: Tensor | None) -> None:
        """Give the next training-mode :meth:`gates` call these gates instead of a fresh sample.

        :func:`~l0_sparsity.nn.gate_set.sample_jointly` offers each layer its slice of one joint
        sample before a forward pass, and withdraws what the pass did not use.

        Args:
            gates: Gates shaped like ``log_alpha`` (one use), or ``None`` to withdraw an offer.
        """
        if gates is None:
            self.__dict__.pop("_offered_gates", None)
        else:
            self.__dict__["_offered_gates"] = gates

    def prob_active(self) -> Tensor:
        """``P(z ≠ 0)`` per gate, differentiable w.r.t. ``log α``."""
        return self.distribution.prob_nonzero(self.log_alpha)

    def expected_active_params(self) -> Tensor:
        """Expected number of active weights ``Σ_gates P(z ≠ 0) · group_size`` (a scalar)."""
        return self.prob_active().sum() * self.group_size

    def expected_l2(self) -> Tensor:
        """Expected squared L2 norm of the gated weights ``Σ_groups P(z ≠ 0) · ‖w_group‖²``."""
        return (self.prob_active() * self.group_sq_norms()).sum()

    def test_gates(self) -> Tensor:
        """Test-time (median) gate per gate parameter."""
        return self.distribution.median(self.log_alpha)

    def active_mask(self) -> Tensor:
        """Boolean mask of the gates whose test-time value is positive."""
        return self.test_gates() > 0

    def num_active_params(self) -> int:
        """Number of weights whose test-time gate is positive."""
        return int(self.active_mask().sum()) * self.group_size

    @abc.abstractmethod
    def group_sq_norms(self) -> Tensor:
        """Squared L2 norm of each group of weights, shaped like ``log_alpha``."""

    @abc.abstractmethod
    def gate_weight(self, gates: Tensor) -> Tensor:
        """Multiply ``weight`` by ``gates`` (one broadcasted multiply).

        Args:
            gates: Gate values shaped like ``log_alpha``.

        Returns:
            The gated weight, shaped like ``weight``.
        """

    @abc.abstractmethod
    def dense_module(self) -> nn.Module:
        """A plain torch layer computing this layer's eval-mode output, gates folded in."""

    @classmethod
    def _copy_of(
        cls: type[_Gated],
        dense: nn.Linear | nn.Conv2d,
        *geometry: Any,
        structured: bool,
        droprate_init: float,
        distribution: HardConcrete | None,
    ) -> _Gated:
        """``cls(*geometry, bias, ...)`` with ``dense``'s weights, bias, device, dtype and mode."""
        layer = cls(
            *geometry,
            dense.bias is not None,
            structured=structured,
            droprate_init=droprate_init,
            distribution=distribution,
            device=dense.weight.device,
            dtype=dense.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(dense.weight)
            if dense.bias is not None and layer.bias is not None:
                layer.bias.copy_(dense.bias)
        layer.train(dense.training)
        return layer

    def _gate_repr(self) -> str:
        kind = "structured" if self.structured else "unstructured"
        return f"{kind}, gates={self.num_gates}, group_size={self.group_size}"


class L0Linear(GatedLayer):
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
        self.in_features = in_features
        self.out_features = out_features
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.log_alpha.data = self.log_alpha.data.to(**factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize weights and bias like :class:`torch.nn.Linear`."""
        _default_init(self.weight, self.bias, self.in_features)

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

    def extra_repr(self) -> str:
        """Shape and gating summary."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self._gate_repr()}"
        )


class L0Conv2d(GatedLayer):
    """2-D convolution with hard-concrete gates.

    Structured gates act on output filters (``z`` has ``out_channels`` entries, each governing
    ``in_channels / groups · kh · kw`` weights and the filter's bias); unstructured gates have
    the shape of the weight and leave the bias ungated. Only zero padding is supported.

    When ``gate_in_norm`` is set (done by :func:`sparsify` for a structured conv whose only
    consumer is a BatchNorm), the convolution itself runs ungated and the following
    :class:`GatedBatchNorm2d` applies the gates after normalization.

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
        device: Device of the parameters.
        dtype: Floating dtype of the parameters.
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        ks = _pair(kernel_size)
        weight_shape = (out_channels, in_channels // groups, *ks)
        group = in_channels // groups * ks[0] * ks[1]
        super().__init__(
            (out_channels,) if structured else weight_shape,
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
        _default_init(self.weight, self.bias, self.weight[0].numel())

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        *,
        structured: bool = True,
        droprate_init: float = 0.5,
        distribution: HardConcrete | None = None,
    ) -> L0Conv2d:
        """Gated copy of ``conv`` (same weights, geometry, device and dtype).

        Args:
            conv: The dense convolution to copy (zero padding only).
            structured: Output-filter gates or one gate per weight.
            droprate_init: Initial drop rate of the gates.
            distribution: Hard-concrete parameters.

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
        )

    def group_sq_norms(self) -> Tensor:
        """Squared norm of each filter (structured) or each weight squared."""
        sq = self.weight.square()
        return sq.sum((1, 2, 3)) if self.structured else sq

    def gate_weight(self, gates: Tensor) -> Tensor:
        """``W ⊙ z`` (output-filter gates broadcast over a filter's weights)."""
        gates = gates.to(self.weight.dtype)
        if self.structured:
            gates = gates.view(-1, 1, 1, 1)
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
            bias = bias * z.to(bias.dtype)
        return self._conv(x, self.gate_weight(z), bias)

    @torch.no_grad()
    def dense_module(self) -> nn.Conv2d:
        """Plain :class:`torch.nn.Conv2d` computing this layer's eval output (gates folded).

        With ``gate_in_norm`` set the weights are copied ungated: the gates then belong to the
        following :class:`GatedBatchNorm2d`.
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
            out.bias.copy_(self.bias * z if self.structured else self.bias)
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
        if self.gate_in_norm:
            s += ", gate_in_norm=True"
        return s


class GatedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that multiplies its output by the output-filter gates of the preceding conv.

    Computes ``z ⊙ BN(x) = BN_{γ·z, β·z}(x)``: the gates scale the affine parameters, so the
    gating costs no extra pass over the activations. ``z`` is a fresh sample in training and
    the median gate in eval mode, so dead channels output exactly 0. Running statistics are
    those of the ungated convolution output, hence consistent between training and eval.

    The gate layer is referenced, not registered as a submodule, so it appears once in
    ``named_modules()`` and ``state_dict()`` (under its own name).

    Args:
        num_features: Number of channels.
        gate_layer: Structured :class:`L0Conv2d` whose gates this norm applies; its
            ``gate_in_norm`` flag is set.
        eps: Added to the variance for numerical stability.
        momentum: Running-statistics momentum (``None`` for a cumulative average).
        affine: Whether the norm has learnable ``weight`` and ``bias``.
        track_running_stats: Whether running statistics are tracked.
        device: Device of the parameters and buffers.
        dtype: Dtype of the parameters and buffers.
    """

    def __init__(
        self,
        num_features: int,
        gate_layer: L0Conv2d,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.attach(gate_layer)

    def attach(self, gate_layer: L0Conv2d) -> None:
        """Make this norm apply the gates of ``gate_layer`` (and that conv run ungated).

        Args:
            gate_layer: A structured :class:`L0Conv2d` with ``num_features`` output channels.

        Raises:
            ValueError: If the conv is unstructured or its width does not match.
        """
        if not (isinstance(gate_layer, L0Conv2d) and gate_layer.structured):
            raise ValueError("GatedBatchNorm2d needs a structured L0Conv2d")
        if gate_layer.out_channels != self.num_features:
            raise ValueError(
                f"conv has {gate_layer.out_channels} filters, norm has {self.num_features}"
            )
        object.__setattr__(self, "_gate_layer", gate_layer)
        gate_layer.gate_in_norm = True

    @property
    def gate_layer(self) -> L0Conv2d:
        """The convolution whose gates this norm applies."""
        return self.__dict__["_gate_layer"]

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, gate_layer: L0Conv2d) -> GatedBatchNorm2d:
        """Gated copy of ``bn`` (parameters, running statistics and mode are copied).

        Args:
            bn: The norm to copy.
            gate_layer: The structured conv whose gates the new norm applies.

        Returns:
            A new :class:`GatedBatchNorm2d`.
        """
        ref = bn.weight if bn.weight is not None else bn.running_mean
        new = cls(
            bn.num_features,
            gate_layer,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Batch-normalize ``x`` and multiply each channel by its gate."""
        self._check_input_dim(x)
        z = self.gate_layer.gates()
        weight = z if self.weight is None else self.weight * z.to(self.weight.dtype)
        bias = None if self.bias is None else self.bias * z.to(self.bias.dtype)
        factor = 0.0
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            weight,
            bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    @torch.no_grad()
    def dense_module(self) -> nn.BatchNorm2d:
        """Plain BatchNorm2d with the test-time gates folded into ``weight`` and ``bias``."""
        z = self.gate_layer.test_gates()
        ref = self.running_mean if self.running_mean is not None else z
        out = nn.BatchNorm2d(
            self.num_features,
            self.eps,
            self.momentum,
            True,
            self.track_running_stats,
            device=ref.device,
            dtype=ref.dtype,
        )
        out.weight.copy_(z if self.weight is None else self.weight * z)
        out.bias.copy_(torch.zeros_like(z) if self.bias is None else self.bias * z)
        if self.running_mean is not None and self.running_var is not None:
            out.running_mean.copy_(self.running_mean)
            out.running_var.copy_(self.running_var)
            if self.num_batches_tracked is not None and out.num_batches_tracked is not None:
                out.num_batches_tracked.copy_(self.num_batches_tracked)
        return out.train(self.training)

    def extra_repr(self) -> str:
        """BatchNorm summary plus the gating note."""
        return super().extra_repr() + ", gated"


# --------------------------------------------------------------------------- model helpers


def gated_layers(model: nn.Module) -> list[tuple[str, GatedLayer]]:
    """All gated layers of ``model`` with their qualified names, in module order.

    Args:
        model: Any module.

    Returns:
        ``(name, layer)`` pairs.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GatedLayer)]


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``log α`` parameters of every gated layer.

    Args:
        model: Any module.

    Returns:
        Gate parameters; disjoint from :func:`weight_parameters` and together covering
        ``model.parameters()``.
    """
    return [layer.log_alpha for _, layer in gated_layers(model)]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that is not a gate parameter.

    Args:
        model: Any module.

    Returns:
        Weights, biases, norm parameters, ...; in ``model.parameters()`` order.
    """
    gates = {id(p) for p in gate_parameters(model)}
    return [p for p in model.parameters() if id(p) not in gates]


# --------------------------------------------------------------------------- sparsify


def _skip_patterns(skip: SkipSpec) -> list[str] | None:
    """The glob patterns of ``skip`` (``None`` for no skip or a predicate), type-checked."""
    if skip is None or callable(skip):
        return None
    patterns = [skip] if isinstance(skip, str) else list(skip)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"sparsify: skip patterns must be strings (glob patterns on layer names), got "
                f"{pattern!r} ({type(pattern).__name__})"
            )
    return patterns


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has hooks of its own, which a gated copy would not carry over."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for name in names)


def _not_gateable(module: nn.Module) -> str | None:
    """Why :func:`sparsify` must leave a weight-bearing ``module`` dense, or ``None``.

    ``None`` for exact ``nn.Linear`` / ``nn.Conv2d`` layers without hooks (the ones it gates),
    for layers that are already gated, and for layers without weight matrices or kernels
    (norms, activations, containers). Subclasses of ``nn.Linear`` are not gated either: e.g.
    ``nn.MultiheadAttention`` reads its ``out_proj`` weight directly, bypassing any gate.
    """
    if isinstance(module, GatedLayer | GatedBatchNorm2d):
        return None
    if type(module) in (nn.Linear, nn.Conv2d):
        return f"{type(module).__name__} with hooks" if _hooked(module) else None
    uninitialized = nn.parameter.UninitializedParameter
    own = module.parameters(recurse=False)
    if any(isinstance(p, uninitialized) or p.dim() >= 2 for p in own):
        return type(module).__name__
    return None


@dataclass(frozen=True)
class SparsifyReport:
    """What one :func:`sparsify` call did; stored as ``model.sparsify_report`` and logged.

    Attributes:
        model: Class name of the model.
        gated: Qualified names of the layers replaced by gated copies in this call.
        gated_norms: Names of the ``BatchNorm2d`` layers replaced by :class:`GatedBatchNorm2d`.
        skipped: Names of the layers that ``skip`` kept dense.
        not_gateable: ``(name, kind)`` of the layers holding weights that sparsify cannot gate
            and left dense (e.g. ``nn.MultiheadAttention``, ``nn.Conv1d``, ``nn.Embedding``, a
            ``Linear`` with hooks); ``skip`` patterns naming them are not counted here.
        unmatched_patterns: The ``skip`` glob patterns that matched no layer.
    """

    model: str
    gated: tuple[str, ...]
    gated_norms: tuple[str, ...]
    skipped: tuple[str, ...]
    not_gateable: tuple[tuple[str, str], ...]
    unmatched_patterns: tuple[str, ...]

    def summary(self) -> str:
        """One line listing what was gated, kept dense and left ungated."""
        parts = [f"sparsify({self.model}): gated {len(self.gated)} layer(s) {_names(self.gated)}"]
        if self.gated_norms:
            parts.append(f"BatchNorm2d gated after their conv: {_names(self.gated_norms)}")
        if self.skipped:
            parts.append(f"kept dense by skip: {_names(self.skipped)}")
        if self.not_gateable:
            listed = _names(tuple(f"{name} ({kind})" for name, kind in self.not_gateable))
            parts.append(f"left dense, cannot gate: {listed}")
        if self.unmatched_patterns:
            parts.append(f"skip patterns matching nothing: {list(self.unmatched_patterns)}")
        return "; ".join(parts)


def _names(names: tuple[str, ...], limit: int = 8) -> str:
    """``names`` as ``[a, b, ...]``, at most ``limit`` of them shown."""
    shown = ", ".join(name or "<root>" for name in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


@dataclass(frozen=True)
class _Plan:
    """The layers :func:`sparsify` will gate, and what it will report."""

    targets: list[tuple[str, nn.Module]]
    skipped: tuple[str, ...]
    not_gateable: tuple[tuple[str, str], ...]
    unmatched: tuple[str, ...]
    layer_names: tuple[str, ...]  # what skip patterns may name, for messages


def _plan(model: nn.Module, skip: SkipSpec) -> _Plan:
    """Sort the layers of ``model`` into targets, skipped and not gateable; check ``skip``.

    Raises:
        ValueError: If a target conv uses a padding mode other than zeros, or if the model has
            nothing to gate (before anything is modified).
    """
    patterns = _skip_patterns(skip)

    def matched(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())

    targets: list[tuple[str, nn.Module]] = []
    skipped: list[str] = []
    not_gateable: list[tuple[str, str]] = []
    named: list[str] = []  # the layers a pattern may name: gateable, gated or not gateable
    for name, module in model.named_modules():
        reason = _not_gateable(module)
        gateable = reason is None and type(module) in (nn.Linear, nn.Conv2d)
        if gateable or reason is not None or isinstance(module, GatedLayer):
            named.append(name)
        if reason is not None:  # only patterns may name these: a predicate sees gateable ones
            if matched(name):
                skipped.append(name)
            else:
                not_gateable.append((name, reason))
        elif gateable:
            if matched(name) or (callable(skip) and skip(name, module)):
                skipped.append(name)
            else:
                targets.append((name, module))
    unmatched = tuple(
        p for p in patterns or () if not any(fnmatch.fnmatchcase(n, p) for n in named)
    )
    plan = _Plan(targets, tuple(skipped), tuple(not_gateable), unmatched, tuple(named))
    _check_plan(model, plan)
    return plan


def _check_plan(model: nn.Module, plan: _Plan) -> None:
    """Warn about unmatched skip patterns; refuse what :func:`sparsify` cannot do, loudly."""
    kind = type(model).__name__
    for pattern in plan.unmatched:
        warnings.warn(
            f"sparsify({kind}): skip pattern {pattern!r} matched no layer (patterns are globs on "
            f"qualified names such as {_names(plan.layer_names, 4)})",
            UserWarning,
            stacklevel=4,
        )
    for name, module in plan.targets:
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(
                f"sparsify({kind}): layer {name!r} uses padding_mode={module.padding_mode!r}, "
                f"only 'zeros' can be gated; list it in skip= to keep it dense"
            )
    if plan.targets or gated_layers(model):
        return
    reasons = ["it has no nn.Linear or nn.Conv2d layer"]
    if plan.skipped:
        reasons = [f"skip matched every layer it could gate {_names(plan.skipped)}"]
    if plan.not_gateable:
        listed = _names(tuple(f"{name} ({how})" for name, how in plan.not_gateable))
        reasons.append(f"layers it cannot gate: {listed}")
    raise ValueError(f"sparsify({kind}): nothing to gate: {'; '.join(reasons)}")


class GateLeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps gated layers and gated norms as leaf modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Gated modules are leaves; otherwise the default rule (``torch.nn`` layers)."""
        if isinstance(m, GatedLayer | GatedBatchNorm2d):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Map each Conv2d whose output feeds only a BatchNorm2d to that norm's name.

    Uses torch.fx when the model traces; otherwise looks for adjacent (Conv2d, BatchNorm2d)
    entries of ``nn.Sequential`` containers.
    """
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    try:
        graph = GateLeafTracer().trace(model)
    except Exception:  # untraceable model: fall back to nn.Sequential adjacency
        for name, module in modules.items():
            if isinstance(module, nn.Sequential):
                children = list(module.named_children())
                for (a, ma), (b, mb) in itertools.pairwise(children):
                    if type(ma) is nn.Conv2d and type(mb) is nn.BatchNorm2d:
                        prefix = f"{name}." if name else ""
                        pairs[prefix + a] = prefix + b
        return pairs
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Conv2d:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = modules.get(users[0].target)
        if (
            type(bn) is nn.BatchNorm2d
            and users[0].args[:1] == (node,)
            and calls[node.target] == 1
            and calls[users[0].target] == 1
        ):
            pairs[node.target] = users[0].target
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _report(model: nn.Module, plan: _Plan, norms: tuple[str, ...]) -> SparsifyReport:
    """Build, log and (for layers it could not gate) warn about the report of :func:`sparsify`."""
    report = SparsifyReport(
        type(model).__name__,
        tuple(name for name, _ in plan.targets),
        norms,
        plan.skipped,
        plan.not_gateable,
        plan.unmatched,
    )
    _log.info("%s", report.summary())
    if report.not_gateable:
        listed = _names(tuple(f"{name} ({how})" for name, how in report.not_gateable))
        warnings.warn(
            f"sparsify({report.model}) left {len(report.not_gateable)} layer(s) with weights "
            f"dense because it cannot gate them: {listed}; only exact nn.Linear and nn.Conv2d "
            f"layers are gated (name them in skip= to acknowledge)",
            UserWarning,
            stacklevel=3,
        )
    return report


def sparsify(
    model: nn.Module,
    structured: bool = True,
    droprate_init: float = 0.5,
    skip: SkipSpec = None,
    *,
    distribution: HardConcrete | None = None,
    joint_sampling: bool = True,
) -> nn.Module:
    """Replace the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` by gated copies, in place.

    Weights are copied. A structured conv whose only consumer is a ``BatchNorm2d`` (found with
    torch.fx, or by ``nn.Sequential`` adjacency when the model does not trace) has that norm
    replaced by a :class:`GatedBatchNorm2d` applying its gates, so dead channels are exactly 0.
    With ``joint_sampling``, each training-mode forward pass of ``model`` then draws the gates
    of all its gated layers in one sample (:func:`~l0_sparsity.nn.gate_set.sample_jointly`).

    Only layers of exactly these two types are gated. Other layers holding weights (e.g.
    ``nn.MultiheadAttention`` and its projections, ``nn.Conv1d``, ``nn.Embedding``, subclasses
    of ``nn.Linear``, a ``Linear`` with hooks) are left dense, with a ``UserWarning`` listing
    them unless a ``skip`` pattern names them. What was done is stored as
    ``model.sparsify_report`` (a :class:`SparsifyReport`) and logged at INFO level on the
    ``l0_sparsity.nn.layers`` logger.

    Args:
        model: Any module; modified in place.
        structured: Structured (input-neuron / output-filter) or unstructured gates.
        droprate_init: Initial drop rate of the gates.
        skip: Layers to keep dense: a glob pattern or patterns matched against qualified names
            (e.g. ``"conv1"``, ``"*.downsample.*"``), or a predicate ``(name, module) -> bool``
            called on each ``nn.Linear`` / ``nn.Conv2d``. A pattern that matches no layer
            issues a ``UserWarning``.
        distribution: Hard-concrete parameters for all new gates.
        joint_sampling: Install :func:`~l0_sparsity.nn.gate_set.sample_jointly` on ``model``
            (fewer, larger kernels per step; leave it off for models that run gated layers
            under activation checkpointing).

    Returns:
        ``model`` itself, with ``model.sparsify_report`` set.

    Raises:
        ValueError: If ``model`` itself is a Linear/Conv2d (wrap it in a container first), if
            it has nothing to gate (no gateable layer, or ``skip`` matches all of them, and no
            gated layer yet), or if a conv to gate uses non-zero padding. Nothing is modified.
        TypeError: If a ``skip`` pattern is not a string.

    Example:
        >>> from torch import nn
        >>> from l0_sparsity.nn.layers import sparsify
        >>> model = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        >>> model.sparsify_report.gated
        ('0', '2')
    """
    if isinstance(model, nn.Linear | nn.Conv2d):
        raise ValueError("sparsify works in place on a container; wrap the layer first")
    plan = _plan(model, skip)
    pairs = _conv_bn_pairs(model) if structured and plan.targets else {}
    modules = dict(model.named_modules())
    kwargs: dict[str, Any] = {
        "structured": structured,
        "droprate_init": droprate_init,
        "distribution": distribution,
    }
    norms: list[str] = []
    for name, module in plan.targets:
        if isinstance(module, nn.Linear):
            _set_submodule(model, name, L0Linear.from_dense(module, **kwargs))
            continue
        conv = L0Conv2d.from_dense(module, **kwargs)
        _set_submodule(model, name, conv)
        bn = modules[pairs[name]] if name in pairs else None
        if isinstance(bn, nn.BatchNorm2d):
            _set_submodule(model, pairs[name], GatedBatchNorm2d.from_batchnorm(bn, conv))
            norms.append(pairs[name])
    if joint_sampling and gated_layers(model):
        sample_jointly(model)
    model.sparsify_report = _report(model, plan, tuple(norms))  # type: ignore[assignment]
    return model


# --------------------------------------------------------------------------- utilities


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


@torch.no_grad()
def _default_init(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """PyTorch's default Linear/Conv init: Kaiming-uniform(a=√5) weights, U(±1/√fan_in) bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)
