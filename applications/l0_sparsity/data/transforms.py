"""Image transforms written for this package (no torchvision).

Two families:

* **Batch transforms** on ``(N, C, H, W)`` tensors for in-memory datasets, vectorized over the
  batch: :class:`Normalize`, :class:`RandomCrop` (padding + one ``gather``),
  :class:`RandomHorizontalFlip` (``torch.where``) and :class:`Compose`. Random parameters are drawn
  on the CPU from an explicit :class:`torch.Generator`, so results do not depend on the device.
* **PIL pipelines** for image-folder datasets: :class:`ImageTrainTransform` (random resized crop
  + horizontal flip) and :class:`ImageEvalTransform` (resize + center crop), each ending in a
  normalized ``float32`` tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .base import BatchTransform

__all__ = [
    "Compose",
    "ImageEvalTransform",
    "ImageTrainTransform",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "center_crop_box",
    "pil_to_tensor",
    "random_resized_crop_box",
]

Box = tuple[int, int, int, int]


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


def pil_to_tensor(image: Image.Image) -> Tensor:
    """Convert a PIL image to a ``uint8`` tensor ``(C, H, W)`` (RGB images give ``C = 3``).

    Args:
        image: Any PIL image; modes other than ``L`` and ``RGB`` are converted to ``RGB``.

    Returns:
        The pixels, channel-first.
    """
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    channels = 1 if image.mode == "L" else 3
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, channels).permute(2, 0, 1).contiguous()


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high]``."""
    return int(torch.randint(0, high + 1, (), generator=generator))


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Box:
    """Sample the crop box of Inception-style random-resized-crop augmentation.

    Up to ``attempts`` times: draw an area fraction uniformly from ``scale`` and an aspect ratio
    log-uniformly from ``ratio``; accept the first box that fits, at a uniform position. If none
    fits, fall back to the largest centered box whose aspect ratio is clamped into ``ratio``.

    Args:
        width: Image width.
        height: Image height.
        scale: Range of the crop's area as a fraction of the image area.
        ratio: Range of the crop's width / height.
        generator: Source of randomness (global RNG if ``None``).
        attempts: Number of tries before the fallback.

    Returns:
        ``(left, top, right, bottom)`` in pixels, as PIL expects.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_low, log_high, generator))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = _randint(height - crop_h, generator)
            left = _randint(width - crop_w, generator)
            return (left, top, left + crop_w, top + crop_h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return (left, top, left + crop_w, top + crop_h)


def center_crop_box(width: int, height: int, size: int) -> Box:
    """The centered ``size × size`` box (clipped to the image if it is smaller).

    Args:
        width: Image width.
        height: Image height.
        size: Side of the square crop.

    Returns:
        ``(left, top, right, bottom)``.
    """
    crop_w, crop_h = min(size, width), min(size, height)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


class ImageTrainTransform:
    """Training pipeline: random resized crop to ``size``, horizontal flip, normalize.

    Args:
        size: Output side (224 for ImageNet, 64 for TinyImageNet).
        mean: Per-channel mean of ``[0, 1]`` pixels.
        std: Per-channel standard deviation.
        scale: Area range of :func:`random_resized_crop_box`.
        ratio: Aspect-ratio range of :func:`random_resized_crop_box`.
        flip_p: Probability of a horizontal flip.
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
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_p = flip_p
        self.normalize = Normalize(mean, std)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        """Transform one RGB image into a normalized ``(3, size, size)`` tensor."""
        box = random_resized_crop_box(image.width, image.height, self.scale, self.ratio, generator)
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if float(torch.rand((), generator=generator)) < self.flip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.normalize(pil_to_tensor(image))


class ImageEvalTransform:
    """Evaluation pipeline: resize the shorter side to ``resize``, center-crop ``size``, normalize.

    Args:
        size: Output side.
        resize: Shorter side after resizing (256 for ImageNet's 224 crop; ``size`` for none).
        mean: Per-channel mean of ``[0, 1]`` pixels.
        std: Per-channel standard deviation.
    """

    def __init__(self, size: int, resize: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.resize = resize
        self.normalize = Normalize(mean, std)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        """Transform one RGB image into a normalized ``(3, size, size)`` tensor (no randomness)."""
        short = min(image.width, image.height)
        if short != self.resize:
            factor = self.resize / short
            new_size = (
                max(self.resize, round(image.width * factor)),
                max(self.resize, round(image.height * factor)),
            )
            image = image.resize(new_size, Image.Resampling.BILINEAR)
        image = image.crop(center_crop_box(image.width, image.height, self.size))
        if image.size != (self.size, self.size):  # the image was smaller than the crop
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return self.normalize(pil_to_tensor(image))
