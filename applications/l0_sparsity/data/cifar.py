"""CIFAR-10 and CIFAR-100 from the official python pickles, read safely, held in memory.

The pickles are read by an unpickler that rebuilds numpy arrays and nothing else, so a file
cannot run code. Images stay ``uint8``; batches are normalized on the fly and the training set
carries the standard augmentation (zero-pad 4, random 32×32 crop, horizontal flip).

Why not ``torchvision.datasets.CIFAR10`` / ``CIFAR100``, when the image folders do use
torchvision: they read the same files with ``pickle.load``, which executes whatever a pickle
asks for, so a tampered or mislabelled download runs code on the training machine; this reader
refuses any object other than the arrays and lists the format holds. Keeping the images in one
tensor also lets the augmentation run on whole batches (:mod:`l0_sparsity.data.transforms`)
instead of one sample at a time.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import (
    DEFAULT_DATA_ROOT,
    DatasetFormatError,
    DatasetInfo,
    Stats,
    TensorImageDataset,
    apply_subsets,
    missing_files_error,
)
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = ["CIFAR10_STATS", "CIFAR100_STATS", "build_cifar10", "build_cifar100"]

CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
"""CIFAR-10 per-channel mean/std over the 50k training images."""
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
"""CIFAR-100 per-channel mean/std over the 50k training images."""

Split = tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (CIFAR batches hold nothing else)."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # no warning on numpy 2
        return super().find_class(module, name)


def _load_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        # The official files were pickled by Python 2: keys decode as bytes.
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(label_key.encode(), batch.get(label_key))
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        targets = np.asarray(labels, dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path} is not a CIFAR python batch ({e})") from e
    if targets.shape != (images.shape[0],):
        raise DatasetFormatError(f"{path}: {images.shape[0]} images but {targets.shape} labels")
    return images, targets


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
    """Files, labels and statistics of one CIFAR variant's python version."""

    name: str
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    stats: Stats
    url: str


_CIFAR10 = _CifarLayout(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    stats=CIFAR10_STATS,
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
)
_CIFAR100 = _CifarLayout(
    name="cifar100",
    title="CIFAR-100 (fine labels)",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    stats=CIFAR100_STATS,
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
)


def _build_cifar(
    layout: _CifarLayout,
    root: str | os.PathLike[str] | None,
    augment: bool,
    subset: int | None,
    test_subset: int | None,
    subset_seed: int,
) -> Split:
    """Load the CIFAR variant ``layout`` describes (the body of the ``build_cifar*`` builders)."""
    base = Path(root) if root is not None else DEFAULT_DATA_ROOT
    directory = base if base.name == layout.folder else base / layout.folder
    needed = [directory / f for f in layout.train_files + layout.test_files]
    if not all(path.is_file() for path in needed):
        raise missing_files_error(
            layout.name,
            needed,
            f"download the CIFAR python version ({layout.url}) and extract it into {base}, "
            f"which then holds {layout.folder}/",
        )

    def load(files: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        parts = [_load_cifar_batch(directory / f, layout.label_key) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
            raise DatasetFormatError(
                f"{layout.name}: labels outside [0, {layout.num_classes}) in {directory}"
            )
        return torch.from_numpy(images), torch.from_numpy(labels)

    normalize = Normalize(*layout.stats)
    augmentation = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()]) if augment else None
    train = TensorImageDataset(
        *load(layout.train_files), transform=normalize, augmentation=augmentation
    )
    test = TensorImageDataset(*load(layout.test_files), transform=normalize)
    train, test = apply_subsets(train, test, subset, test_subset, subset_seed)
    return train, test, DatasetInfo(layout.name, layout.num_classes, 3, 32, *layout.stats)


_BUILDER_DOC = """{title} from the official python pickles, kept in memory as ``uint8``.

    Batches are normalized on the fly; the training set carries the standard augmentation
    (zero-pad 4, random 32×32 crop, horizontal flip), applied batch-wise by the loader.

    Args:
        root: ``{folder}`` itself or its parent directory (default ``./data``).
        augment: Attach the training augmentation.
        subset: Keep only this many training images (stratified).
        test_subset: Keep only this many test images (stratified).
        subset_seed: Seed of the subsets.

    Returns:
        ``(train, test, info)``.

    Raises:
        DatasetNotFoundError: If files are missing; :class:`DatasetFormatError` if malformed.
    """


def _builder(layout: _CifarLayout) -> Callable[..., Split]:
    """The registry builder ``build_<name>`` of the CIFAR variant ``layout`` describes."""

    def build(
        root: str | os.PathLike[str] | None = None,
        *,
        augment: bool = True,
        subset: int | None = None,
        test_subset: int | None = None,
        subset_seed: int = 0,
    ) -> Split:
        return _build_cifar(layout, root, augment, subset, test_subset, subset_seed)

    build.__name__ = build.__qualname__ = f"build_{layout.name}"
    build.__doc__ = _BUILDER_DOC.format(title=layout.title, folder=layout.folder)
    return build


build_cifar10 = _builder(_CIFAR10)
build_cifar100 = _builder(_CIFAR100)
