"""Density measures: the fraction of gated weights the gates keep.

Expected density (model-wise and per layer, differentiable in the gates), the deterministic
test-time density, and the expected L2 norm of the gated weights (the paper's weight decay).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from l0_sparsity.nn import GatedLayer, GateSet, gated_layers

__all__ = ["expected_density", "expected_l2", "layer_densities", "test_density"]


def _require_gated(model: nn.Module) -> list[tuple[str, GatedLayer]]:
    layers = gated_layers(model)
    if not layers:
        raise ValueError("the model has no gated layers (see l0_sparsity.sparsify)")
    return layers


def expected_density(model: nn.Module) -> Tensor:
    """Model-wise expected density ``Σ_layers E[#active] / Σ_layers #gated``.

    Args:
        model: A model with at least one gated layer.

    Returns:
        A scalar tensor in ``[0, 1]``, differentiable w.r.t. the gate parameters.
    """
    layers = [layer for _, layer in _require_gated(model)]
    total = sum(layer.num_gated_params for layer in layers)
    return GateSet(layers).expected_active_params().sum() / total


def layer_densities(model: nn.Module) -> dict[str, Tensor]:
    """Layer-wise expected densities ``E[#active] / #gated`` keyed by qualified layer name.

    Args:
        model: A model with at least one gated layer.

    Returns:
        One differentiable scalar per gated layer.
    """
    named = _require_gated(model)
    active = GateSet([layer for _, layer in named]).expected_active_params()
    return {
        name: count / layer.num_gated_params
        for (name, layer), count in zip(named, active.unbind(), strict=True)
    }


@torch.no_grad()
def test_density(model: nn.Module) -> float:
    """Fraction of gated weights whose test-time gate is positive.

    Args:
        model: A model with at least one gated layer.

    Returns:
        The deterministic density the purged model will have on the gated layers.
    """
    layers = _require_gated(model)
    total = sum(layer.num_gated_params for _, layer in layers)
    return sum(layer.num_active_params() for _, layer in layers) / total


test_density.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def expected_l2(model: nn.Module) -> Tensor:
    """Sum of :meth:`~l0_sparsity.nn.GatedLayer.expected_l2` over the gated layers (0 if none).

    Args:
        model: Any module.

    Returns:
        A scalar tensor, differentiable w.r.t. weights and gate parameters.
    """
    terms = [layer.expected_l2() for _, layer in gated_layers(model)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
