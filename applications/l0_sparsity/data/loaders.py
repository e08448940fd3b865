"""Epoch-deterministic, shardable batch loading.

**Order.** The sample order of an epoch is :func:`epoch_permutation`, a pure function of
``(seed, epoch)``: call ``loader.set_epoch(epoch)`` before iterating each epoch (as with
``DistributedSampler``). The epoch is *not* advanced automatically; a run resumed at the start of
epoch ``e`` calls ``set_epoch(e)`` and sees exactly the order (and augmentations) it would have
seen without the interruption.

**Sharding** (DDP). The epoch permutation is made divisible by ``world_size`` by *padding*
(default: the first samples of the permutation are repeated, every sample is seen at least once,
at most ``world_size − 1`` twice) or by *dropping* its tail (``pad_shards=False``); rank ``r``
then takes positions ``r, r + W, r + 2W, …``. All ranks get equally many samples, and shards are
disjoint positions of the same permutation. Batches carry sample indices, so duplicates from
padding can be told apart (e.g. when evaluating).

Two loaders share this rule (:class:`EpochOrder`):

* :class:`TensorBatchLoader` for :class:`TensorImageDataset`: each batch is one gather on whole
  tensors plus a vectorized augmentation (no per-sample collate).
* :func:`make_image_loader` for :class:`ImageFileDataset`: a ``torch.utils.data.DataLoader``
  (worker processes, pinned memory) driven by :class:`EpochShardSampler`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import Batch, TensorImageDataset, mix_seed

__all__ = [
    "EpochDataLoader",
    "EpochOrder",
    "EpochShardSampler",
    "TensorBatchLoader",
    "collate_samples",
    "epoch_permutation",
    "make_image_loader",
    "make_loader",
    "shard_indices",
]

_AUGMENT_STREAM = 0x41554721  # separates augmentation seeds from permutation seeds


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> Tensor:
    """The order of the samples in ``epoch``: a pure function of ``(num_samples, seed, epoch)``.

    Args:
        num_samples: Dataset size.
        seed: Run seed.
        epoch: Epoch number.
        shuffle: If ``False``, the identity order.

    Returns:
        ``int64`` permutation of ``range(num_samples)`` (CPU, independent of the device).
    """
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator()
    generator.manual_seed(mix_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator)


def _shard_size(num_samples: int, world_size: int, pad: bool) -> int:
    return math.ceil(num_samples / world_size) if pad else num_samples // world_size


def shard_indices(order: Tensor, rank: int, world_size: int, pad: bool = True) -> Tensor:
    """Rank ``rank``'s equal-size share of ``order`` (see the module docstring for the rule).

    Args:
        order: The epoch's order of all samples.
        rank: This process's rank in ``[0, world_size)``.
        world_size: Number of processes.
        pad: Pad ``order`` cyclically to a multiple of ``world_size`` (else drop its tail).

    Returns:
        ``order[rank::world_size]`` of the padded (or truncated) order.

    Raises:
        ValueError: On an invalid rank or world size.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    total = _shard_size(order.numel(), world_size, pad) * world_size
    if total > order.numel():
        repeats = math.ceil(total / order.numel())
        order = order.repeat(repeats)
    return order[:total][rank::world_size]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


class EpochOrder:
    """This rank's share of each epoch's sample order: the rule both loaders follow.

    The order of epoch ``e`` is :func:`epoch_permutation` of ``(seed, e)``, sharded by
    :func:`shard_indices`. Call :meth:`set_epoch` before each epoch.

    Args:
        num_samples: Dataset size.
        shuffle: Permute each epoch (else keep the dataset order).
        seed: Run seed of the permutations (and augmentations).
        rank: This process's rank.
        world_size: Number of processes sharing the epoch.
        pad_shards: Make shards equal by padding (default) or by dropping samples.

    Raises:
        ValueError: On an invalid rank or world size.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
    ) -> None:
        shard_indices(torch.arange(1), rank, world_size)  # validates rank / world size
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad_shards = pad_shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentations) the next iteration produces.

        Same contract as ``DistributedSampler.set_epoch``: the epoch is not advanced
        automatically.

        Args:
            epoch: Epoch number (0-based by convention).
        """
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        """Samples per epoch on this rank."""
        return _shard_size(self.num_samples, self.world_size, self.pad_shards)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in iteration order."""
        order = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        return shard_indices(order, self.rank, self.world_size, self.pad_shards)


class TensorBatchLoader(EpochOrder):
    """Fast batches ``(inputs, targets, indices)`` from an in-memory dataset.

    Each batch gathers whole tensors with a slice of the epoch's (sharded) permutation, then
    applies the dataset's augmentation (if ``augment``) from a generator seeded by
    ``(seed, epoch, rank)``, then its transform. Call :meth:`set_epoch` before each epoch.

    Args:
        dataset: The data.
        batch_size: Samples per batch (per rank).
        shuffle: Permute each epoch (else keep the dataset order).
        augment: Apply the dataset's random augmentation (training).
        drop_last: Drop this rank's last incomplete batch.
        seed: Run seed of the permutations and augmentations.
        rank: This process's rank.
        world_size: Number of processes sharing the epoch.
        pad_shards: Make shards equal by padding (default) or by dropping samples.
        device: Move each batch there (``None``: stay on the dataset's device).
    """

    def __init__(
        self,
        dataset: TensorImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        _check_batch_size(batch_size)
        super().__init__(
            len(dataset),
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            pad_shards=pad_shards,
        )
        self.dataset = dataset
        self.batch_size = batch_size
        self.augment = augment
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        size = self.shard_size
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        """Yield this rank's batches of the current epoch."""
        indices = self.indices()
        generator = torch.Generator()
        generator.manual_seed(mix_seed(self.seed, self.epoch, self.rank, _AUGMENT_STREAM))
        for number in range(len(self)):
            chunk = indices[number * self.batch_size : (number + 1) * self.batch_size]
            batch = self.dataset.get_batch(chunk, generator=generator, augment=self.augment)
            if self.device is not None:
                batch = Batch(*(t.to(self.device, non_blocking=True) for t in batch))
            yield batch


class EpochShardSampler(EpochOrder, Sampler[tuple[int, int]]):
    """Sampler with the same order and sharding as :class:`TensorBatchLoader`.

    Yields ``(index, augmentation_seed)`` pairs with ``seed = mix_seed(seed, epoch, index)``,
    which :class:`~l0_sparsity.data.folders.ImageFileDataset` uses to seed that sample's
    augmentation: results are independent of ``num_workers`` and of the rank count.
    Constructed as :class:`EpochOrder`.
    """

    def __len__(self) -> int:
        """Samples per epoch on this rank."""
        return self.shard_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yield ``(index, augmentation_seed)`` for this rank's share of the epoch."""
        for index in self.indices().tolist():
            yield index, mix_seed(self.seed, self.epoch, index)


def collate_samples(samples: list[tuple[Tensor, int, int]]) -> Batch:
    """Stack ``(input, target, index)`` samples into a :class:`Batch`.

    Args:
        samples: Items returned by a dataset's ``__getitem__``.

    Returns:
        The batch.
    """
    inputs = torch.stack([sample[0] for sample in samples])
    targets = torch.tensor([sample[1] for sample in samples], dtype=torch.long)
    indices = torch.tensor([sample[2] for sample in samples], dtype=torch.long)
    return Batch(inputs, targets, indices)


class EpochDataLoader(DataLoader):
    """A ``DataLoader`` whose :meth:`set_epoch` forwards to its :class:`EpochShardSampler`."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration.

        Args:
            epoch: Epoch number.
        """
        sampler = self.sampler
        if isinstance(sampler, EpochShardSampler):
            sampler.set_epoch(epoch)


def make_image_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    pad_shards: bool = True,
    pin_memory: bool | None = None,
) -> EpochDataLoader:
    """A worker-backed loader for lazily decoded datasets (TinyImageNet, ImageNet).

    Uses :class:`EpochShardSampler` (for any ``world_size``) rather than
    ``DistributedSampler``: the same order and sharding rule as :class:`TensorBatchLoader`, and
    per-sample augmentation seeds that make results independent of ``num_workers``.

    Args:
        dataset: A dataset accepting ``dataset[(index, seed)]``, e.g. ``ImageFileDataset``.
        batch_size: Samples per batch (per rank).
        train: Shuffle each epoch (training) or keep the order (evaluation).
        num_workers: Decoding processes (0: in the main process).
        seed: Run seed.
        rank: This process's rank.
        world_size: Number of processes.
        drop_last: Drop the last incomplete batch.
        pad_shards: Equalize shards by padding (default) or dropping.
        pin_memory: Pin host memory (default: when CUDA is available).

    Returns:
        The loader; call its ``set_epoch(epoch)`` before each epoch.
    """
    _check_batch_size(batch_size)
    sampler = EpochShardSampler(
        len(dataset),  # type: ignore[arg-type]
        shuffle=train,
        seed=seed,
        rank=rank,
        world_size=world_size,
        pad_shards=pad_shards,
    )
    options: dict[str, Any] = {}
    if num_workers > 0:
        options = {"persistent_workers": True}
    return EpochDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        **options,
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 4,
    device: torch.device | str | None = None,
) -> TensorBatchLoader | EpochDataLoader:
    """The right loader for ``dataset``: in-memory → :class:`TensorBatchLoader`, else workers.

    Training loaders shuffle and augment; evaluation loaders keep the order and do not augment.
    Both pad shards.

    Args:
        dataset: A :class:`TensorImageDataset` or a lazily decoded dataset.
        batch_size: Samples per batch (per rank).
        train: Training or evaluation settings.
        seed: Run seed.
        rank: This process's rank.
        world_size: Number of processes.
        drop_last: Drop the last incomplete batch.
        num_workers: Decoding processes (ignored for in-memory data).
        device: Destination of in-memory batches (ignored for worker loaders, which pin).

    Returns:
        A loader with ``set_epoch`` and ``len``, yielding :class:`Batch`.
    """
    common = {"seed": seed, "rank": rank, "world_size": world_size, "drop_last": drop_last}
    if isinstance(dataset, TensorImageDataset):
        return TensorBatchLoader(
            dataset, batch_size, shuffle=train, augment=train, device=device, **common
        )
    return make_image_loader(dataset, batch_size, train=train, num_workers=num_workers, **common)
