"""Counting what a purge saves: parameters, FLOPs, and a report comparing a model with its purge."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from l0_sparsity.nn import gated_layers
from l0_sparsity.purging.rewrite import purge

__all__ = ["PurgeReport", "count_flops", "count_params", "purge_report"]


def count_params(model: nn.Module, include_gates: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters counted once).

    Args:
        model: Any module.
        include_gates: Whether to count the ``log α`` gate parameters too.

    Returns:
        The parameter count.
    """
    gates = set() if include_gates else {id(layer.log_alpha) for _, layer in gated_layers(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in gates)


def _example(model: nn.Module, input_shape: tuple[int, ...] | Tensor) -> Tensor:
    if isinstance(input_shape, Tensor):
        return input_shape
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None else None
    return torch.randn(tuple(input_shape), device=device, dtype=dtype)


def count_flops(model: nn.Module, input_shape: tuple[int, ...] | Tensor) -> int:
    """FLOPs of one eval-mode forward pass, measured with ``FlopCounterMode``.

    Counts the matrix products and convolutions (2 FLOPs per multiply-add); element-wise ops
    are not counted. The model's training mode is restored afterwards.

    Args:
        model: Any module.
        input_shape: Shape of the input batch (a random input is drawn), or the input itself.

    Returns:
        Total FLOPs.
    """
    x = _example(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class PurgeReport:
    """Sizes of a gated model and of its purge.

    Attributes:
        params_gated: Parameters of the gated model, gates excluded.
        params_purged: Parameters of the purged model.
        flops_gated: FLOPs of one gated forward pass.
        flops_purged: FLOPs of one purged forward pass.
        kept_groups: ``{layer name: (kept groups, total groups)}`` per gated layer.
    """

    params_gated: int
    params_purged: int
    flops_gated: int
    flops_purged: int
    kept_groups: dict[str, tuple[int, int]]

    @property
    def param_ratio(self) -> float:
        """``params_purged / params_gated``."""
        return self.params_purged / self.params_gated

    @property
    def flop_ratio(self) -> float:
        """``flops_purged / flops_gated``."""
        return self.flops_purged / self.flops_gated

    def __str__(self) -> str:
        lines = [
            f"params {self.params_gated:,} -> {self.params_purged:,} ({self.param_ratio:.1%})",
            f"FLOPs  {self.flops_gated:,} -> {self.flops_purged:,} ({self.flop_ratio:.1%})",
        ]
        lines += [f"  {name}: {k}/{n}" for name, (k, n) in self.kept_groups.items()]
        return "\n".join(lines)


def purge_report(
    gated: nn.Module,
    input_shape: tuple[int, ...] | Tensor,
    purged: nn.Module | None = None,
) -> PurgeReport:
    """Compare a gated model with its purge.

    Args:
        gated: The gated model.
        input_shape: Input batch shape (or input) for the FLOP count.
        purged: Its purge; computed with :func:`purge` if omitted.

    Returns:
        The report.
    """
    purged = purge(gated) if purged is None else purged
    x = _example(gated, input_shape)
    kept = {
        name: (int(layer.active_mask().sum()), layer.num_gates)
        for name, layer in gated_layers(gated)
    }
    return PurgeReport(
        params_gated=count_params(gated),
        params_purged=count_params(purged),
        flops_gated=count_flops(gated, x),
        flops_purged=count_flops(purged, x),
        kept_groups=kept,
    )
