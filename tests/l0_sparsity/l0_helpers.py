"""Helpers shared by the l0_sparsity tests: model specs, the smoke-run command line, IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# name -> (in_channels, input side): 28 for MNIST models, 32 for CIFAR ones, 64 for ImageNet ones
SPECS = {
    "mlp": (1, 28),
    "lenet5": (1, 28),
    "resnet18_cifar": (3, 32),
    "wrn28_10": (3, 32),
    "resnet18": (3, 64),
    "resnet50": (3, 64),
}


def smoke_cli(output_dir: Path, *extra: str) -> list[str]:
    """``l0-sparsity`` arguments training the ``synthetic_smoke`` preset on one CPU thread."""
    return [
        "train",
        "--preset",
        "synthetic_smoke",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--num-workers",
        "0",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_fashion(directory: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict:
    """Write a fake Fashion-MNIST (random images, cyclic labels) to ``directory``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(directory / (stem + (".gz" if gz else "")), array)
    return arrays
