"""Image transforms: batch transforms of our own, and torchvision pipelines for image files.

Two families:

* **Batch transforms** on ``(N, C, H, W)`` tensors for in-memory datasets, vectorized over the
  batch: :class:`Normalize`, :class:`RandomCrop` (padding + one ``gather``),
  :class:`RandomHorizontalFlip` (``torch.where``) and :class:`Compose`. Random parameters are drawn
  on the CPU from an explicit :class:`torch.Generator`, so results do not depend on the device.
* **Per-image pipelines** for image-folder datasets, built from ``torchvision.transforms.v2``
  (the ``vision`` extra, imported when a pipeline is built): :class:`ImageTrainTransform`
  (random resized crop + horizontal flip) and :class:`ImageEvalTransform` (resize + center
  crop), each ending in a normalized ``float32`` tensor. torchvision draws its random parameters
  from the global torch RNG; given a :class:`torch.Generator`, a pipeline draws one seed from it
  and runs under :func:`torch.random.fork_rng` seeded with it, so a sample's augmentation is a
  pure function of that generator and the global RNG is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from l0_sparsity._vision_extra import import_torchvision

from .base import BatchTransform

__all__ = [
    "Compose",
    "ImageEvalTransform",
    "ImageTrainTransform",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
]


class Normalize:
    """``(x * scale - mean) / std`` per channel, returning ``float32``.

    Args:
        mean: Per-channel means (of inputs already multiplied by ``scale``).
        std: Per-channel standard deviations.
        scale: Factor applied first; ``1/255`` turns ``uint8`` pixels into ``[0, 1]``.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], scale: float = 1.0 / 255.0
    ) -> None:
        if len(mean) != len(std):
            raise ValueError("mean and std must have one entry per channel")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.scale = scale
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device)
            std = torch.tensor(self.std, dtype=torch.float32, device=device)
            self._cache[device] = (mean.view(-1, 1, 1), std.view(-1, 1, 1))
        return self._cache[device]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalize ``(..., C, H, W)`` images; ``generator`` is unused (deterministic)."""
        mean, std = self._stats(images.device)
        return (images.float() * self.scale - mean) / std


class RandomCrop:
    """Zero-pad each side by ``padding`` then take a random ``size × size`` crop per sample.

    Vectorized: one offset pair per sample, one ``gather`` over the flattened padded images.
    Offsets are uniform in ``[0, H + 2·padding − size]`` (and likewise for the width).

    Args:
        size: Output height and width.
        padding: Zero padding added to every side first.
    """

    def __init__(self, size: int, padding: int = 0) -> None:
        self.size = size
        self.padding = padding

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Crop ``(N, C, H, W)`` images to ``(N, C, size, size)``, keeping the dtype."""
        n, c, h, w = images.shape
        p, size = self.padding, self.size
        padded = F.pad(images, (p, p, p, p)) if p else images
        hp, wp = h + 2 * p, w + 2 * p
        if size > hp or size > wp:
            raise ValueError(f"crop {size} larger than padded image {hp}x{wp}")
        top = torch.randint(0, hp - size + 1, (n,), generator=generator)
        left = torch.randint(0, wp - size + 1, (n,), generator=generator)
        span = torch.arange(size)
        rows = top[:, None] + span  # (N, size)
        cols = left[:, None] + span
        flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, size * size)
        flat = flat.to(images.device).expand(n, c, size * size)
        out = padded.reshape(n, c, hp * wp).gather(2, flat)
        return out.reshape(n, c, size, size)


class RandomHorizontalFlip:
    """Mirror each sample left-right with probability ``p`` (``torch.where`` over the batch).

    Args:
        p: Flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flip a random subset of the ``(N, C, H, W)`` batch."""
        flip = torch.rand(images.shape[0], generator=generator) < self.p
        flip = flip.to(images.device).view(-1, 1, 1, 1)
        return torch.where(flip, images.flip(-1), images)


class Compose:
    """Apply batch transforms in order, all drawing from the same generator.

    Args:
        transforms: The transforms, first applied first.
    """

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Run every transform on the batch."""
        for transform in self.transforms:
            images = transform(images, generator)
        return images


def _run_seeded(
    pipeline: Callable[[Any], Tensor], image: Any, generator: torch.Generator | None
) -> Tensor:
    """Apply a torchvision pipeline; with ``generator``, under a CPU RNG seeded from it."""
    if generator is None:
        return pipeline(image)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return pipeline(image)


def _to_normalized_tensor(v2: Any, mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]


class ImageTrainTransform:
    """Training pipeline: random resized crop to ``size``, horizontal flip, normalize.

    ``torchvision.transforms.v2``: ``RandomResizedCrop(size, scale, ratio)``,
    ``RandomHorizontalFlip(flip_p)``, then ``ToImage``, ``ToDtype(float32, scale=True)`` and
    ``Normalize(mean, std)``.

    Args:
        size: Output side (224 for ImageNet, 64 for TinyImageNet).
        mean: Per-channel mean of ``[0, 1]`` pixels.
        std: Per-channel standard deviation.
        scale: Range of the crop's area as a fraction of the image area.
        ratio: Range of the crop's width / height.
        flip_p: Probability of a horizontal flip.

    Raises:
        ImportError: If torchvision is not installed (the message names the ``vision`` extra).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
    ) -> None:
        v2 = import_torchvision("ImageTrainTransform", "torchvision.transforms.v2")
        self.pipeline = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True),
                v2.RandomHorizontalFlip(flip_p),
                *_to_normalized_tensor(v2, mean, std),
            ]
        )

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> Tensor:
        """Transform one RGB image (PIL or ``uint8`` tensor) into a ``(3, size, size)`` tensor."""
        return _run_seeded(self.pipeline, image, generator)


class ImageEvalTransform:
    """Evaluation pipeline: resize the shorter side to ``resize``, center-crop ``size``, normalize.

    ``torchvision.transforms.v2``: ``Resize(resize)``, ``CenterCrop(size)``, then ``ToImage``,
    ``ToDtype(float32, scale=True)`` and ``Normalize(mean, std)``.

    Args:
        size: Output side.
        resize: Shorter side after resizing (256 for ImageNet's 224 crop; ``size`` for none).
        mean: Per-channel mean of ``[0, 1]`` pixels.
        std: Per-channel standard deviation.

    Raises:
        ImportError: If torchvision is not installed (the message names the ``vision`` extra).
    """

    def __init__(self, size: int, resize: int, mean: Sequence[float], std: Sequence[float]) -> None:
        v2 = import_torchvision("ImageEvalTransform", "torchvision.transforms.v2")
        self.pipeline = v2.Compose(
            [
                v2.Resize(resize, antialias=True),
                v2.CenterCrop(size),
                *_to_normalized_tensor(v2, mean, std),
            ]
        )

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> Tensor:
        """Transform one RGB image into a normalized ``(3, size, size)`` tensor (no randomness)."""
        return self.pipeline(image)
