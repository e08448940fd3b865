"""The base of every gated layer, and the helpers that find gated layers and their parameters.

A gated layer multiplies its weight by hard-concrete gates ``z``
(:mod:`~l0_sparsity.nn.gates`):

* **structured** gates remove whole groups: one gate per *input neuron* of a linear layer
  (:mod:`~l0_sparsity.nn.linear`) and one per *output filter* of a convolution
  (:mod:`~l0_sparsity.nn.conv`);
* **unstructured** gates remove single weights (one gate per weight, group size 1).

In training mode one ``z`` is sampled per forward pass (shared across the batch); in eval mode
the deterministic test-time gate (the distribution's median) is used.

:class:`GatedLayer` holds what all gated layers share (the gate parameters ``log α``,
sampling, ``P(z ≠ 0)``, test-time gates); :func:`gated_layers`, :func:`gate_parameters` and
:func:`weight_parameters` find them in a model. This module depends only on the gate
distribution; the gate set, ``sparsify`` and everything downstream depend on it.
"""

from __future__ import annotations

import abc
import math
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from l0_sparsity.nn.gates import HardConcrete, init_log_alpha_

__all__ = ["GatedLayer", "gate_parameters", "gated_layers", "weight_parameters"]

_Gated = TypeVar("_Gated", bound="GatedLayer")


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
        cls: type[_Gated], dense: nn.Linear | nn.Conv2d, *geometry: Any, **options: Any
    ) -> _Gated:
        """``cls(*geometry, bias, **options)`` with ``dense``'s weights, bias, device, dtype, mode.

        ``options`` are the gate keywords of ``cls`` (``droprate_init``, ``distribution``, ...).
        """
        layer = cls(
            *geometry,
            dense.bias is not None,
            **options,
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


@torch.no_grad()
def default_init(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """PyTorch's default Linear/Conv init: Kaiming-uniform(a=√5) weights, U(±1/√fan_in) bias.

    Args:
        weight: The weight to fill in place.
        bias: The bias to fill in place, if any.
        fan_in: Number of inputs feeding one output (the bias bound is ``1/√fan_in``).
    """
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)
