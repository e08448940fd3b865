"""Values shared by every dataset source: metadata, errors, batches and the in-memory dataset.

An in-memory dataset stores its images as one tensor (``uint8`` or already-normalized
``float32``) and serves whole batches with :meth:`TensorImageDataset.get_batch`: one gather, then
an optional random *augmentation* (training only), then an optional deterministic *transform*
(usually :class:`~l0_sparsity.data.transforms.Normalize`). Batches carry the sample indices, which
per-sample constraints with indexed multipliers need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DEFAULT_DATA_ROOT",
    "Batch",
    "BatchTransform",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Stats",
    "SubsettableDataset",
    "TensorImageDataset",
    "apply_subsets",
    "mix_seed",
    "stratified_split",
    "stratified_subset",
]

BatchTransform = Callable[[Tensor, "torch.Generator | None"], Tensor]
"""A batch-wise transform ``f(images, generator) -> images`` on ``(N, C, H, W)`` tensors."""
Stats = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel ``(mean, std)`` of a dataset's ``[0, 1]`` pixels."""
DEFAULT_DATA_ROOT = Path("data")
"""Root searched for user datasets (CIFAR, TinyImageNet, ImageNet) when none is given."""

_MASK64 = (1 << 64) - 1


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message lists the expected paths and how to get them."""


class DatasetFormatError(DatasetNotFoundError):
    """A dataset's files exist but are malformed (wrong layout, size, header or content).

    It subclasses :class:`DatasetNotFoundError`, so one ``except DatasetNotFoundError`` catches
    every "this dataset is not usable" condition.
    """


def missing_files_error(
    name: str, expected: Sequence[Path | str], how_to_get: str
) -> DatasetNotFoundError:
    """Build the standard error for missing dataset files.

    Args:
        name: Dataset name as given to ``build_datasets``.
        expected: The paths that were looked for.
        how_to_get: One sentence saying how to obtain the files.

    Returns:
        The error, ready to be raised.
    """
    lines = [f"dataset {name!r} not found; expected these files:"]
    lines += [f"  - {path}" for path in expected]
    lines.append(f"How to get it: {how_to_get}")
    return DatasetNotFoundError("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset, enough to build a model and undo the normalization.

    Attributes:
        name: Registry name (``"mnist5k"``, ``"cifar10"``, ...).
        num_classes: Number of target classes; targets are in ``[0, num_classes)``.
        in_channels: Channels of one input image.
        image_size: Height (= width) of the inputs the loaders produce.
        mean: Per-channel mean subtracted from inputs scaled to ``[0, 1]``.
        std: Per-channel standard deviation the centered inputs are divided by.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one input image."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def num_features(self) -> int:
        """Number of scalars in one flattened input, ``C * H * W`` (an MLP's input width)."""
        return self.in_channels * self.image_size * self.image_size


class Batch(NamedTuple):
    """One batch: inputs, integer targets and the dataset indices of its samples.

    Attributes:
        inputs: Float tensor ``(B, C, H, W)``.
        targets: ``int64`` tensor ``(B,)``.
        indices: ``int64`` tensor ``(B,)``, positions of the samples in their dataset.
    """

    inputs: Tensor
    targets: Tensor
    indices: Tensor


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def mix_seed(*values: int) -> int:
    """Hash a tuple of integers into one 63-bit seed (SplitMix64 chained over the values).

    Unlike ``seed + epoch`` (DistributedSampler's rule), distinct tuples give unrelated seeds:
    ``(seed=0, epoch=1)`` and ``(seed=1, epoch=0)`` do not collide.

    Args:
        *values: Integers (any sign) to combine, e.g. ``(seed, epoch, rank)``.

    Returns:
        A seed in ``[0, 2**63)`` usable with :meth:`torch.Generator.manual_seed`.
    """
    state = 0
    for value in values:
        state = _splitmix64(state ^ (value & _MASK64))
    return state >> 1


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def stratified_split(targets: Tensor, test_per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into train/test with exactly ``test_per_class`` test samples per class.

    Each class's indices are shuffled with a generator seeded by ``mix_seed(seed, class)``; the
    first ``test_per_class`` go to the test split. The result depends only on ``targets`` and
    ``seed``.

    Args:
        targets: ``int64`` labels ``(N,)``.
        test_per_class: Test samples taken from each class.
        seed: Seed of the split.

    Returns:
        ``(train_indices, test_indices)``, each sorted ascending.

    Raises:
        ValueError: If a class has no more than ``test_per_class`` samples.
    """
    train_parts: list[Tensor] = []
    test_parts: list[Tensor] = []
    for label in torch.unique(targets).tolist():
        members = torch.nonzero(targets == label).flatten()
        if members.numel() <= test_per_class:
            raise ValueError(
                f"class {label} has {members.numel()} samples, cannot hold out {test_per_class}"
            )
        order = torch.randperm(members.numel(), generator=_generator(mix_seed(seed, label)))
        test_parts.append(members[order[:test_per_class]])
        train_parts.append(members[order[test_per_class:]])
    return torch.cat(train_parts).sort().values, torch.cat(test_parts).sort().values


def stratified_subset(targets: Tensor, size: int, seed: int) -> Tensor:
    """Choose ``size`` indices keeping the class proportions (largest-remainder allocation).

    Args:
        targets: ``int64`` labels ``(N,)``.
        size: Number of indices to keep, ``1 <= size <= N``.
        seed: Seed of the choice inside each class.

    Returns:
        Sorted ``int64`` indices ``(size,)``.

    Raises:
        ValueError: If ``size`` is out of range.
    """
    total = targets.numel()
    if not 1 <= size <= total:
        raise ValueError(f"subset size must be in [1, {total}], got {size}")
    labels, counts = torch.unique(targets, return_counts=True)
    exact = counts.double() * size / total
    quota = exact.floor().long()
    remainder = size - int(quota.sum())
    if remainder:
        # Stable sort: ties go to the smaller label, so the allocation is deterministic.
        order = torch.sort(exact - quota, descending=True, stable=True).indices
        quota[order[:remainder]] += 1
    parts: list[Tensor] = []
    for label, take in zip(labels.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(targets == label).flatten()
        order = torch.randperm(members.numel(), generator=_generator(mix_seed(seed, label)))
        parts.append(members[order[:take]])
    return torch.cat(parts).sort().values


_Subsettable = TypeVar("_Subsettable", bound="SubsettableDataset")


class SubsettableDataset(Protocol):
    """A dataset with integer labels that can build a dataset of some of its samples."""

    @property
    def targets(self) -> Tensor:
        """``int64`` labels ``(N,)``."""
        ...

    def subset(self: _Subsettable, indices: Tensor) -> _Subsettable:
        """A dataset of the samples at ``indices``."""
        ...


_Train = TypeVar("_Train", bound=SubsettableDataset)
_Test = TypeVar("_Test", bound=SubsettableDataset)


def apply_subsets(
    train: _Train, test: _Test, subset: int | None, test_subset: int | None, seed: int
) -> tuple[_Train, _Test]:
    """Stratified subsets of a train/test pair, as every dataset builder offers them.

    Args:
        train: The training set.
        test: The test set.
        subset: Training samples to keep (:func:`stratified_subset`), or ``None`` for all.
        test_subset: Test samples to keep, or ``None`` for all.
        seed: Seed of the choice (the two splits use independent streams derived from it).

    Returns:
        ``(train, test)``, subsetted where asked.

    Example:
        >>> import torch
        >>> from l0_sparsity.data.base import TensorImageDataset, apply_subsets
        >>> data = TensorImageDataset(torch.zeros(10, 1, 2, 2), torch.arange(10) % 2)
        >>> train, test = apply_subsets(data, data, 4, None, seed=0)
        >>> len(train), len(test), train.targets.bincount().tolist()
        (4, 10, [2, 2])
    """
    if subset is not None:
        train = train.subset(stratified_subset(train.targets, subset, mix_seed(seed, 0)))
    if test_subset is not None:
        test = test.subset(stratified_subset(test.targets, test_subset, mix_seed(seed, 1)))
    return train, test


class TensorImageDataset(Dataset):
    """Images and labels held as two tensors, served batch-wise.

    Args:
        inputs: Images ``(N, C, H, W)``, ``uint8`` or floating point.
        targets: Labels ``(N,)``, converted to ``int64``.
        transform: Deterministic batch transform applied last (e.g. normalization), or ``None``.
        augmentation: Random batch transform applied first, only when asked (training), or
            ``None``.

    Raises:
        ValueError: On mismatched lengths or a wrong ``inputs`` rank.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        transform: BatchTransform | None = None,
        augmentation: BatchTransform | None = None,
    ) -> None:
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
        if targets.dim() != 1 or targets.numel() != inputs.shape[0]:
            raise ValueError(
                f"targets must be (N,) with N = {inputs.shape[0]}, got {tuple(targets.shape)}"
            )
        self.inputs = inputs
        self.targets = targets.long()
        self.transform = transform
        self.augmentation = augmentation

    def __len__(self) -> int:
        """Number of samples."""
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        """One sample ``(input, target, index)`` with the transform but no augmentation."""
        batch = self.get_batch(torch.tensor([index]), augment=False)
        return batch.inputs[0], int(batch.targets[0]), index

    @property
    def device(self) -> torch.device:
        """Device holding the tensors."""
        return self.inputs.device

    def get_batch(
        self,
        indices: Tensor,
        *,
        generator: torch.Generator | None = None,
        augment: bool = True,
    ) -> Batch:
        """Gather a batch: ``transform(augmentation(inputs[indices]))``.

        Args:
            indices: ``int64`` indices ``(B,)``.
            generator: CPU generator driving the augmentation (global RNG if ``None``).
            augment: Apply the augmentation (if the dataset has one).

        Returns:
            The batch, with ``indices`` on the dataset's device.
        """
        indices = indices.to(self.device)
        inputs = self.inputs.index_select(0, indices)
        if augment and self.augmentation is not None:
            inputs = self.augmentation(inputs, generator)
        if self.transform is not None:
            inputs = self.transform(inputs, None)
        return Batch(inputs, self.targets.index_select(0, indices), indices)

    def subset(self, indices: Tensor) -> TensorImageDataset:
        """A new dataset with the given samples (copies the rows) and the same transforms.

        Args:
            indices: ``int64`` indices to keep.

        Returns:
            The smaller dataset; its indices are renumbered from 0.
        """
        indices = indices.to(self.device)
        return TensorImageDataset(
            self.inputs.index_select(0, indices),
            self.targets.index_select(0, indices),
            transform=self.transform,
            augmentation=self.augmentation,
        )

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same dataset with its tensors on ``device`` (e.g. GPU-resident MNIST).

        Args:
            device: Target device.

        Returns:
            A new dataset sharing the transforms.
        """
        return TensorImageDataset(
            self.inputs.to(device),
            self.targets.to(device),
            transform=self.transform,
            augmentation=self.augmentation,
        )
