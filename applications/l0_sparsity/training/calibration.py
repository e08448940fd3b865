"""BatchNorm running statistics for the test-time gates.

In training, a BatchNorm's running mean and variance are gathered under *sampled* gates, which
switch groups on and off from step to step; the evaluated (and purged) model uses the
deterministic test-time gates. Where the two differ much, early in training or after a fast
change of the gates, the statistics no longer fit the evaluated network and the test error
swings. :func:`recalibrate_batchnorm` recomputes them under the test-time gates from a few
training batches, as one would after changing a network's weights by hand.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from l0_sparsity.training.precision import mixed_precision

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> int:
    """Recompute every BatchNorm's running statistics with the test-time gates.

    The running statistics are reset and re-estimated as the plain average over ``batches``
    (``momentum=None``), with every other module in eval mode: gated layers use their median
    gates, dropout is off. The model's train/eval mode and each norm's ``momentum`` are restored
    afterwards; if a batch raises, or there is none, the previous statistics are kept. Norms
    without running statistics are left alone.

    Args:
        model: The model (unwrapped from DDP).
        batches: Input batches, e.g. a few from the training loader.
        device: Move each batch there first (default: leave it where it is).
        dtype: Autocast dtype of the forward passes, or ``None`` for full precision.

    Returns:
        The number of batches used (0 when the model has no BatchNorm with running statistics).

    Example:
        >>> import torch
        >>> from l0_sparsity.training.calibration import recalibrate_batchnorm
        >>> from l0_sparsity.models import build_model
        >>> model = build_model("resnet18_cifar")
        >>> recalibrate_batchnorm(model, [torch.randn(4, 3, 32, 32) for _ in range(2)])
        2
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    previous = [{k: v.clone() for k, v in norm.state_dict().items()} for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    used = 0
    try:
        for inputs in batches:
            if device is not None:
                inputs = inputs.to(device, non_blocking=True)
            with mixed_precision(inputs.device.type, dtype):
                model(inputs)
            used += 1
    except BaseException:
        used = 0
        raise
    finally:
        if used == 0:  # nothing measured, or a batch raised: keep the previous statistics
            for norm, state in zip(norms, previous, strict=True):
                norm.load_state_dict(state)
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return used
