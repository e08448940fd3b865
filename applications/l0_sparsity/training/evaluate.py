"""Accuracy counting: correct top-1 predictions with the test-time gates, shard by shard.

Under DDP each rank counts its shard of the padded test order; the padding is left out, so
the counts summed over the ranks count every test sample once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from l0_sparsity.training.precision import amp_dtype, mixed_precision

__all__ = ["count_correct", "evaluate_accuracy"]


@torch.no_grad()
def count_correct(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    dtype: torch.dtype | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_samples: int | None = None,
) -> tuple[int, int]:
    """Correct top-1 predictions of ``model`` (eval mode, test-time gates) on this rank's shard.

    Args:
        model: The (unwrapped) model.
        loader: An evaluation loader: rank ``rank``'s shard of a padded, unshuffled order.
        device: Where the model is.
        dtype: The autocast dtype, or ``None`` for full precision.
        rank: This process's rank.
        world_size: The number of ranks sharing the test set.
        num_samples: The test set's size: positions past it are padding (repeats that make the
            shards equal) and are not counted. ``None`` counts everything.

    Returns:
        ``(correct, counted)``; summed over the ranks they count every test sample once.
    """
    model.eval()
    correct = total = seen = 0
    for inputs, targets, _ in loader:
        inputs, targets = (
            inputs.to(device, non_blocking=True),
            targets.to(device, non_blocking=True),
        )
        with mixed_precision(device.type, dtype):
            logits = model(inputs)
        hits = logits.argmax(dim=1) == targets
        if num_samples is not None:
            positions = rank + world_size * (seen + torch.arange(targets.numel(), device=device))
            valid = positions < num_samples
            hits = hits & valid
            total += int(valid.sum())
        else:
            total += targets.numel()
        seen += targets.numel()
        correct += int(hits.sum())
    model.train()
    return correct, total


def evaluate_accuracy(
    model: nn.Module, loader: Any, device: torch.device, amp: str = "off"
) -> tuple[float, int]:
    """Top-1 accuracy of ``model`` (eval mode, test-time gates) and the number of samples.

    Args:
        model: The model.
        loader: Batches ``(inputs, targets, indices)``.
        device: Where the model is.
        amp: The trainer's ``amp`` setting.

    Returns:
        ``(accuracy, samples)``: the fraction of correct predictions and how many were counted.
    """
    correct, total = count_correct(model, loader, device, amp_dtype(amp, device))
    return correct / max(total, 1), total
