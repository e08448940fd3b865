"""Synthetic data: Gaussian images with class-dependent means, for tests and smoke runs."""

from __future__ import annotations

import os

import torch

from .base import DatasetInfo, TensorImageDataset

__all__ = ["build_synthetic"]


def build_synthetic(
    root: str | os.PathLike[str] | None = None,
    *,
    num_train: int = 1024,
    num_test: int = 256,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    separation: float = 1.0,
    seed: int = 0,
) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
    """Random Gaussian images with class-dependent means, deterministic from ``seed``.

    ``x = separation · prototype[y] + noise`` with standard normal prototypes and noise, and
    uniform labels; ``separation = 0`` gives pure noise. Already normalized (mean 0, std 1).

    Args:
        root: Ignored (accepted so every builder has the same signature).
        num_train: Training samples.
        num_test: Test samples.
        num_classes: Number of classes.
        in_channels: Channels per image.
        image_size: Height and width.
        separation: Scale of the class prototypes (signal-to-noise).
        seed: Seed of everything.

    Returns:
        ``(train, test, info)``.
    """
    del root
    generator = torch.Generator()
    generator.manual_seed(seed)
    shape = (in_channels, image_size, image_size)
    prototypes = torch.randn((num_classes, *shape), generator=generator)

    def make(count: int) -> TensorImageDataset:
        targets = torch.randint(0, num_classes, (count,), generator=generator)
        noise = torch.randn((count, *shape), generator=generator)
        return TensorImageDataset(separation * prototypes[targets] + noise, targets)

    train, test = make(num_train), make(num_test)
    zeros, ones = (0.0,) * in_channels, (1.0,) * in_channels
    return train, test, DatasetInfo("synthetic", num_classes, in_channels, image_size, zeros, ones)
